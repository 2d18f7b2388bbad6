"""What every family's W&B pictures share: when they are logged (at validation end, every ``every_n_epochs``
epochs and at the last one; never during the sanity check; rank 0 only), how many (``samples`` examples at most),
where (keys ``media/<name>`` at the run's global step) and the one switch that turns them off
(``--wandb.media false``)."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from zoo.callbacks._util import batch_size, wandb_run

__all__ = ["ValidationMedia"]


class ValidationMedia(L.Callback):
    """Base of the per-family media callbacks. A subclass implements :meth:`media` (and, to see more than the
    first batches, :meth:`collect`); the base decides when, and logs what ``media`` returns.

    Args:
        every_n_epochs: log at the end of every n-th validation epoch (and of the last epoch).
        samples: at most this many examples in each picture or table.
    """

    def __init__(self, every_n_epochs: int = 1, samples: int = 8) -> None:
        if every_n_epochs < 1 or samples < 1:
            raise ValueError("every_n_epochs and samples must be >= 1")
        self.every_n_epochs, self.samples = every_n_epochs, samples
        self.batches: list[Any] = []  # what collect() kept in this validation epoch
        self._seen = 0

    def scheduled(self, trainer: L.Trainer) -> bool:
        """This validation epoch is one to log at (on every rank: for what must be gathered across ranks)."""
        if trainer.sanity_checking or wandb_run(trainer) is None:
            return False
        epoch = trainer.current_epoch + 1
        return epoch % self.every_n_epochs == 0 or epoch >= (trainer.max_epochs or 0) > 0

    def due(self, trainer: L.Trainer) -> bool:
        """Log now: a scheduled epoch, on rank 0."""
        return rank_zero_only.rank == 0 and self.scheduled(trainer)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.batches, self._seen = [], 0

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if dataloader_idx == 0 and self.due(trainer):
            self.collect(trainer, pl_module, outputs, batch, batch_idx)

    def collect(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        """Default: keep the first batches until they hold ``samples`` examples (subclasses may gather more,
        e.g. predictions over the whole split for a confusion matrix)."""
        if self._seen < self.samples:
            self.batches.append(batch)
            self._seen += batch_size(batch)

    def media(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """``{name: wandb.Image | wandb.Table | wandb plot}`` built from ``self.batches``."""
        raise NotImplementedError

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not (self.batches and self.due(trainer)):
            return
        was_training = pl_module.training
        pl_module.eval()
        try:
            logged = self.media(trainer, pl_module)
        finally:
            pl_module.train(was_training)
            self.batches = []
        if logged:
            run = wandb_run(trainer)
            step = trainer.fit_loop.epoch_loop._batches_that_stepped  # the step Lightning logs this epoch's val_* at
            run.log({**{f"media/{k}": v for k, v in logged.items()}, "trainer/global_step": step})
