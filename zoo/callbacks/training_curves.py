"""The curves a practitioner reads a run by, every ``log_every_n_steps`` training steps: the learning rate of each
parameter group by name (``lr/backbone``, ``lr/head``; warm-up and one-cycle visible, also after a mid-epoch
resume), the gradient norm before clipping, samples per second and the step time."""

from __future__ import annotations

import time

import lightning as L
import torch

from zoo.callbacks._util import batch_size

__all__ = ["TrainingCurves"]


def _group_names(optimizer: torch.optim.Optimizer) -> list[str]:
    names = [g.get("name") or f"group{i}" for i, g in enumerate(optimizer.param_groups)]
    return names if len(names) > 1 else ["all"]


class TrainingCurves(L.Callback):
    """Logs ``lr/<group>``, ``grad_norm`` (of all gradients, before clipping; for manually optimised tasks, as
    ``optimizer.step`` sees them), ``samples_per_s`` and ``step_time_s`` (the training step, data loading
    excluded) at the steps where Lightning logs."""

    def __init__(self) -> None:
        self._t0: float | None = None
        self._grad_norm: float | None = None

    @staticmethod
    def _due(trainer: L.Trainer) -> bool:  # the steps at which Lightning passes logged values to the loggers
        return (trainer.fit_loop.epoch_loop._batches_that_stepped + 1) % max(trainer.log_every_n_steps, 1) == 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self._t0 = time.perf_counter() if self._due(trainer) else None

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        if self._t0 is None:
            return
        norms = [p.grad.detach().norm(2) for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        self._grad_norm = float(torch.stack(norms).norm(2)) if norms else None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if self._t0 is None or not trainer.loggers:
            return
        elapsed = time.perf_counter() - self._t0
        metrics = {"step_time_s": elapsed, "samples_per_s": batch_size(batch) * trainer.world_size / elapsed}
        for opt in trainer.optimizers:
            prefix = "lr" if len(trainer.optimizers) == 1 else f"lr/{type(opt).__name__}"
            for name, group in zip(_group_names(opt), opt.param_groups):
                metrics[f"{prefix}/{name}"] = float(group["lr"])
        if self._grad_norm is not None:
            metrics["grad_norm"] = self._grad_norm
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=batch_size(batch))
