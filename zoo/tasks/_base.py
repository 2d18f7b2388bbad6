"""What every task shares: the optimiser and per-step schedule from its hyperparameters, a record of the
DataModule class in each checkpoint (so that ``zoo publish`` can rebuild the data it was trained on), and the
restore of resumable train loaders when a run resumes mid-epoch."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import lightning as L

from zoo.tasks._optim import build_optimizer, build_schedule

__all__ = ["Task"]


class Task(L.LightningModule):
    monitor: tuple[str, str] = ("val_loss", "min")  # what ModelCheckpoint selects on in train.py
    weights_kwargs: tuple[str, ...] = ()  # hyperparameters that rebuild the net of published weights

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        """Eval mode (no dropout) inside the block, the previous mode after it."""
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)

    def adopt(self, **values) -> None:
        """Set hyperparameters taken from the DataModule at ``setup`` (its tokenizer ...). They go into the initial
        hyperparameters too: Lightning merges those with the DataModule's when a logger records them, and a key
        both hold with two values is an error there."""
        self.hparams.update(values)
        self._hparams_initial.update(values)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None:
            checkpoint["datamodule_class_path"] = f"{type(dm).__module__}.{type(dm).__qualname__}"

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        loops = checkpoint.get("loops") or {}
        self._loader_states = loops.get("fit_loop", {}).get("state_dict", {}).get("combined_loader") or []

    def on_train_start(self) -> None:
        """Lightning restores a train loader that has ``state_dict`` only if it was not set up before the restore,
        and ``configure_optimizers`` sets it up when it reads ``estimated_stepping_batches`` (Lightning #20550):
        the epoch would replay from its first batch. Apply the saved loader state here, before iteration."""
        states, self._loader_states = getattr(self, "_loader_states", []), []
        loaders = self.trainer.train_dataloader
        loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
        stateful = [dl for dl in loaders if hasattr(dl, "load_state_dict") and hasattr(dl, "state_dict")]
        for loader, state in zip(stateful, states):
            loader.load_state_dict(state)

    # -- evaluation: the same step and epoch end for validation and test, told apart by ``stage`` -----------------
    def _eval_step(self, batch, stage: str) -> None:
        raise NotImplementedError

    def _eval_epoch_end(self, stage: str) -> None:
        """Nothing by default: tasks that log per step need no epoch end."""

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip by the ``grad_clip`` hyperparameter (norm) when the task has one; ``--trainer.gradient_clip_val``
        overrides it."""
        val = gradient_clip_val if gradient_clip_val is not None else self.hparams.get("grad_clip")
        if val:
            self.clip_gradients(optimizer, val, gradient_clip_algorithm=gradient_clip_algorithm or "norm")

    def configure_optimizers(self):
        h = self.hparams
        opt = build_optimizer(self.net, h.optimizer, h.lr, h.weight_decay, h.momentum)
        total = int(self.trainer.estimated_stepping_batches)
        per_epoch = total / max(self.trainer.max_epochs or 1, 1)
        sched = build_schedule(opt, h.schedule, total, int(h.warmup_epochs * per_epoch))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
