"""Saves what ``train.py predict`` computed into the run folder."""

from __future__ import annotations

import os

import torch
from lightning.pytorch.callbacks import BasePredictionWriter

__all__ = ["PredictionSaver"]


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
