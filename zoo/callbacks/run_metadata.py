"""What a run records about itself in its loggers (W&B config and summary, CSV ``hparams.yaml``), once its data is
set up: the whole resolved ``train.py`` config, the model's hyperparameters as the data made them, versions,
hardware, precision, world size, parameter count, FLOPs per sample; the best value of the selection metric and
the test metrics in the summary; ``config.yaml`` as a run file."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.data import AttributeDict
from lightning.pytorch.utilities import rank_zero_only

from zoo.callbacks._util import wandb_run
from zoo.callbacks.training_record import hardware_string

__all__ = ["RunMetadata", "loggable"]

LONG = 50  # lists longer than this (vocabularies, class names) are logged as their length


def loggable(params: dict[str, Any]) -> dict[str, Any]:
    """Hyperparameters as a logger should show them: no private keys (``_instantiator``), long lists as sizes."""
    out = {}
    for k, v in params.items():
        if k.startswith("_"):
            continue
        if isinstance(v, dict):
            v = loggable(v)
        out[k] = f"<{len(v)} entries>" if isinstance(v, (list, tuple)) and len(v) > LONG else v
    return out


def _flops_per_sample(net: torch.nn.Module, batch) -> float | None:
    """Multiply-adds of one forward pass per sample, for image batches (``(x, y)`` with a 4-d ``x``)."""
    x = batch[0] if isinstance(batch, (list, tuple)) else batch
    if not (isinstance(x, torch.Tensor) and x.ndim == 4 and x.is_floating_point()):
        return None
    from torch.utils.flop_counter import FlopCounterMode

    was_training = net.training
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net.eval()(x[:1])
    net.train(was_training)
    return counter.get_total_flops() / 2


class RunMetadata(L.Callback):
    """``config``: the resolved ``train.py`` config (nested dict); ``config_file``: saved with the W&B run."""

    def __init__(self, config: dict | None = None, config_file: str | Path | None = None) -> None:
        self.config, self.config_file = config or {}, config_file
        self._flops_done = False
        self._run: dict[str, Any] = {}

    def _meta(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        import zoo

        accel = type(trainer.accelerator).__name__.replace("Accelerator", "").lower()
        params = list(pl_module.parameters())
        return {
            "zoo": zoo.__version__,
            "torch": torch.__version__,
            "lightning": L.__version__,
            "python": platform.python_version(),
            "hardware": hardware_string(accel),
            "accelerator": accel,
            "precision": str(trainer.precision),
            "world_size": trainer.world_size,
            "num_nodes": trainer.num_nodes,
            "strategy": type(trainer.strategy).__name__,
            "params": sum(p.numel() for p in params),
            "trainable_params": sum(p.numel() for p in params if p.requires_grad),
        }

    def _start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning logs hparams_initial right after on_fit_start: make it what the data made of them
        for part in (pl_module, trainer.datamodule):
            if part is not None and hasattr(part, "_hparams_initial"):
                part._hparams_initial = AttributeDict(loggable(dict(part.hparams)))
        self._run = self._meta(trainer, pl_module)
        for logger in trainer.loggers:
            logger.log_hyperparams({"cli": loggable(self.config), "run": self._run})
        run = wandb_run(trainer)
        if run is not None and rank_zero_only.rank == 0:
            metric, mode = getattr(pl_module, "monitor", ("val_loss", "min"))
            run.define_metric(metric, summary=mode)
            if self.config_file and Path(self.config_file).is_file():
                run.save(str(self.config_file), base_path=str(Path(self.config_file).parent), policy="now")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(trainer, pl_module)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "test":
            self._start(trainer, pl_module)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if self._flops_done:
            return
        self._flops_done = True
        net = getattr(pl_module, "net", None)
        flops = _flops_per_sample(net, batch) if isinstance(net, torch.nn.Module) else None
        if flops is not None:
            self._run["flops_per_sample"] = flops
            for logger in trainer.loggers:
                logger.log_hyperparams({"run": self._run})

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        run, cb = wandb_run(trainer), trainer.checkpoint_callback
        if run is not None and rank_zero_only.rank == 0 and cb is not None and cb.best_model_score is not None:
            run.summary[cb.monitor] = float(cb.best_model_score)  # the selection metric's best, not its last

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        run = wandb_run(trainer)
        if run is not None and rank_zero_only.rank == 0:
            run.summary.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test_")})
