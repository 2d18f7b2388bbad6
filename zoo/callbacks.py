"""Callbacks that ``train.py`` adds by default."""

from __future__ import annotations

import os
import platform
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

__all__ = ["TrainingRecord", "PredictionSaver", "HiddenStateGradients", "hardware_string"]


def hardware_string(accelerator: str = "cpu") -> str:
    if accelerator in ("gpu", "cuda") and torch.cuda.is_available():
        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"


class TrainingRecord(L.Callback):
    """Keeps, in every checkpoint, the training wall time summed over resumed runs, the hardware and precision,
    so that published weights can state what they cost without anyone typing it."""

    def __init__(self) -> None:
        self.wall_time_s = 0.0
        self.runs: list[dict] = []
        self._start: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.monotonic()
        accel = type(trainer.accelerator).__name__.replace("Accelerator", "").lower()
        self.runs.append(
            {
                "hardware": hardware_string(accel),
                "devices": trainer.world_size,
                "precision": str(trainer.precision),
                "torch": str(torch.__version__),
                "start_epoch": trainer.current_epoch,
            }
        )

    def _elapsed(self) -> float:
        return self.wall_time_s + (time.monotonic() - self._start if self._start is not None else 0.0)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.wall_time_s, self._start = self._elapsed(), None

    def state_dict(self) -> dict[str, Any]:
        return {"wall_time_s": self._elapsed(), "runs": self.runs}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.wall_time_s = float(state_dict.get("wall_time_s", 0.0))
        self.runs = list(state_dict.get("runs", []))


class PredictionSaver(BasePredictionWriter):
    """Writes what ``predict_step`` returned, concatenated in loader order, to ``<dirpath>/predictions.pt``
    (``predictions_rank<r>.pt`` per process under DDP)."""

    def __init__(self, dirpath: str) -> None:
        super().__init__(write_interval="epoch")
        self.dirpath = dirpath
        self.path: str | None = None

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        loaders = predictions if predictions and isinstance(predictions[0], list) else [predictions]
        out = [torch.cat(p) if p and isinstance(p[0], torch.Tensor) else p for p in loaders]
        suffix = f"_rank{trainer.global_rank}" if trainer.world_size > 1 else ""
        self.path = os.path.join(self.dirpath, f"predictions{suffix}.pt")
        torch.save(out[0] if len(out) == 1 else out, self.path)


class HiddenStateGradients(L.Callback):
    """Watch gradients vanish (or not) through time: every ``every_n_steps`` training steps, the norm of the loss
    gradient with respect to the hidden state at each step t, ``||dL/dh_t||``, measured on the current batch by
    the task's ``hidden_state_gradients`` (recurrent tasks). A plain RNN's curve falls by orders of magnitude from
    the last step back to the first; an LSTM's or GRU's stays flatter (Bengio et al. 1994; Pascanu et al. 2013).

    Logged: ``hgrad_first`` (t = 0), ``hgrad_last`` and their ratio ``hgrad_ratio``; with a W&B logger also the
    whole curve as a line plot. ``history`` keeps ``(step, [norm per t])``.

    Use: ``train.py fit ... --trainer.callbacks+=HiddenStateGradients --trainer.callbacks.every_n_steps 100``.
    """

    def __init__(self, every_n_steps: int = 200, max_examples: int = 32) -> None:
        if every_n_steps < 1 or max_examples < 1:
            raise ValueError("every_n_steps and max_examples must be >= 1")
        self.every_n_steps, self.max_examples = every_n_steps, max_examples
        self.history: list[tuple[int, list[float]]] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every_n_steps or not hasattr(pl_module, "hidden_state_gradients"):
            return
        norms = pl_module.hidden_state_gradients(batch, self.max_examples).float().cpu()
        self.history.append((step, norms.tolist()))
        ratio = norms[0] / norms[-1].clamp_min(torch.finfo(torch.float32).tiny)
        pl_module.log_dict({"hgrad_first": norms[0], "hgrad_last": norms[-1], "hgrad_ratio": ratio})
        for logger in trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                import wandb

                table = wandb.Table(data=[[t, v] for t, v in enumerate(norms.tolist())], columns=["t", "grad_norm"])
                plot = wandb.plot.line(table, "t", "grad_norm", title=f"||dL/dh_t|| at step {step}")
                logger.experiment.log({"hidden_grad_norms": plot, "trainer/global_step": step})
