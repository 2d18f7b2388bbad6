"""What a run records about itself in its loggers (W&B config and summary, CSV ``hparams.yaml``), once its data is
set up: the whole resolved ``train.py`` config, the model's hyperparameters as the data made them, versions,
hardware, precision, world size, parameter count, FLOPs per sample, the sha256 of the data files read; the best
value of the selection metric and the test metrics in the summary; ``config.yaml`` as a run file."""

from __future__ import annotations

import hashlib
import os
import platform
import stat
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.data import AttributeDict
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn

from datamodules.contract import DataFiles
from zoo.callbacks._util import wandb_run
from zoo.callbacks.training_record import hardware_string
from zoo.weights.store import sha256_of

__all__ = ["RunMetadata", "loggable", "data_digest"]

LONG = 50  # lists longer than this (vocabularies, class names) are logged as their length; files too
SLOW_HASH_S = 5.0  # hashing that took longer is said in the log (a large image folder), with how to read it


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


def _hash_regular(path: str) -> tuple[str, int] | None:
    """``(sha256, size)`` of a regular file; ``None`` for anything else, unopened (a pipe would block, or hand back
    nothing: it was read once already) or gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (sha256_of(path), st.st_size) if stat.S_ISREG(st.st_mode) else None


def _hash_all(paths: list[str]) -> list[tuple[str, int] | None]:
    """``_hash_regular`` of each path, on threads (hashlib releases the GIL on large updates, so a folder of many
    files hashes on several cores), handed out in slices: a future per file costs more than hashing a small one."""
    workers = min(8, os.cpu_count() or 1)
    step = max(1, -(-len(paths) // (4 * workers)))
    slices = [paths[i : i + step] for i in range(0, len(paths), step)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [r for done in pool.map(lambda part: [_hash_regular(p) for p in part], slices) for r in done]


def data_digest(files: Sequence[str | Path]) -> dict[str, Any]:
    """What identifies the data in ``files`` (a DataModule's ``data_files()``), hashed now, from disk (nothing kept
    between runs that could go stale): ``sha256``, ``count``, ``bytes``, ``root`` (their common folder) and, for up to
    ``LONG`` files, ``files``: path under ``root`` -> sha256.

    ``sha256`` is the file's own for one file (compare it with ``sha256sum`` or a dataset's published checksum);
    for several, the sha256 of their ``sha256sum`` listing sorted by path, lines ``<sha256>  <path under root>``
    (``cd root && sha256sum <files> | LC_ALL=C sort -k2 | sha256sum`` gives it): a changed byte, a renamed file (an
    image moved to another class) or one more file changes it, the data folder moved elsewhere or another file
    beside the data does not. No files (generated data): ``sha256`` is ``None``, the settings are the identity. A
    path that is not a regular file (a pipe, read once and gone, or a file deleted since) cannot be hashed again:
    ``sha256`` is ``None`` and ``not_hashed`` names them."""
    paths = [os.path.abspath(f) for f in dict.fromkeys(os.fspath(f) for f in files)]
    if not paths:
        return {"sha256": None, "count": 0, "files": {}}
    root = os.path.commonpath([os.path.dirname(p) for p in paths])
    cut = len(os.path.join(root, ""))  # the paths under root, by slicing: relative_to costs more than a hash here
    names = [p[cut:].replace(os.sep, "/") for p in paths]
    out: dict[str, Any] = {"sha256": None, "count": len(paths), "root": root}
    hashed = _hash_all(paths)
    gone = [n for n, h in zip(names, hashed) if h is None]
    if gone:
        return {**out, "not_hashed": gone[:LONG]}
    listing = sorted((n, h[0]) for n, h in zip(names, hashed))
    combined = "".join(f"{d}  {n}\n" for n, d in listing)
    out["sha256"] = listing[0][1] if len(paths) == 1 else hashlib.sha256(combined.encode()).hexdigest()
    out["bytes"] = sum(h[1] for h in hashed)
    if len(paths) <= LONG:
        out["files"] = dict(listing)
    return out


def _data_identity(datamodule: object) -> dict[str, Any] | None:
    """``data_digest`` of the files the DataModule read; ``None`` without a DataModule that says (``DataFiles``)."""
    if not isinstance(datamodule, DataFiles):
        return None
    start = time.perf_counter()
    data = data_digest(datamodule.data_files())
    seconds = time.perf_counter() - start
    if seconds > SLOW_HASH_S:
        rank_zero_info(
            f"run metadata: hashed {data['count']:,} data files ({data.get('bytes', 0) / 1e9:.1f} GB) in "
            f"{seconds:.0f} s (sha256 {data['sha256']})"
        )
    return data


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
    """``config``: the resolved ``train.py`` config (nested dict); ``config_file``: saved with the W&B run.

    Checkpoints keep the sha256 of the data (``state_dict``): a run resumed on other data than it was trained on
    says so (a warning, and ``run.data.checkpoint_sha256`` beside the new ``sha256``), since the W&B config of a
    resumed run is overwritten with the new digest."""

    def __init__(self, config: dict | None = None, config_file: str | Path | None = None) -> None:
        self.config, self.config_file = config or {}, config_file
        self._flops_done = False
        self._run: dict[str, Any] = {}
        self._checkpoint_sha256: str | None = None  # of the data the checkpoint resumed from was trained on

    def _meta(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        import zoo

        accel = type(trainer.accelerator).__name__.replace("Accelerator", "").lower()
        params = list(pl_module.parameters())
        return {
            "zoo": zoo.__version__,
            "torch": str(torch.__version__),  # a TorchVersion, which YAML (CSV hparams.yaml) writes as an object
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
        if rank_zero_only.rank == 0:  # the loggers write on rank 0 only: the other ranks do not hash the files
            data = _data_identity(trainer.datamodule)
            if data is not None:
                self._run["data"] = data
                self._compare_with_checkpoint(data)
        for logger in trainer.loggers:
            logger.log_hyperparams({"cli": loggable(self.config), "run": self._run})
        run = wandb_run(trainer)
        if run is not None and rank_zero_only.rank == 0:
            metric, mode = getattr(pl_module, "monitor", ("val_loss", "min"))
            run.define_metric(metric, summary=mode)
            if self.config_file and Path(self.config_file).is_file():
                run.save(str(self.config_file), base_path=str(Path(self.config_file).parent), policy="now")

    def _compare_with_checkpoint(self, data: dict[str, Any]) -> None:
        before, now = self._checkpoint_sha256, data["sha256"]
        if before is not None and now is not None and before != now:
            data["checkpoint_sha256"] = before
            rank_zero_warn(
                f"the data files differ from those the checkpoint was trained on (sha256 {before[:12]}... then, "
                f"{now[:12]}... now, under {data['root']}): the resumed run goes on with other data"
            )

    def state_dict(self) -> dict[str, Any]:
        hashed = "data" in self._run  # rank 0; another rank passes on what it was given
        return {"data_sha256": self._run["data"]["sha256"] if hashed else self._checkpoint_sha256}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._checkpoint_sha256 = state_dict.get("data_sha256")  # Lightning restores callbacks before on_fit_start

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(trainer, pl_module)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "test":
            self._start(trainer, pl_module)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "validate":  # not the validation loops inside fit
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
