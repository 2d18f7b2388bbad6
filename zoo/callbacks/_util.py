"""Small helpers the callbacks share."""

from __future__ import annotations

import lightning as L
import torch

__all__ = ["batch_size", "wandb_run"]


def batch_size(batch) -> int:
    """The number of examples in a batch (the first dimension of its first tensor)."""
    while isinstance(batch, (list, tuple, dict)) and batch:
        batch = next(iter(batch.values())) if isinstance(batch, dict) else batch[0]
    return int(batch.shape[0]) if isinstance(batch, torch.Tensor) and batch.ndim else 1


def wandb_run(trainer: L.Trainer):
    """The W&B run of the trainer's WandbLogger, or ``None``."""
    return next((lg.experiment for lg in trainer.loggers if type(lg).__name__ == "WandbLogger"), None)
