"""The per-epoch record of a run that ``zoo sweep`` tabulates."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning as L

__all__ = ["SweepRecord"]


class SweepRecord(L.Callback):
    """Appends the epoch's metrics (``trainer.callback_metrics``, validation included) and the mean training loss
    over the epoch to ``path`` as one JSON line, so that the runner can tabulate a run without reading W&B's
    internal files. Rank 0 only; the sanity check is not an epoch."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._losses: list[float] = []
        self._start = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None:
            self._losses.append(float(loss))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.global_rank != 0 or trainer.sanity_checking:
            return
        row: dict[str, Any] = {"epoch": trainer.current_epoch + 1, "step": trainer.global_step}
        row |= {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
        if self._losses:
            row["train_loss_epoch_mean"] = sum(self._losses) / len(self._losses)
        row["elapsed_s"] = round(time.monotonic() - self._start, 2)
        self._losses = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
