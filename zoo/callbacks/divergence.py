"""Divergence: a training run whose loss is no longer finite stops at once, with the epoch and step, instead of
training to the end and saving NaN weights."""

from __future__ import annotations

from collections.abc import Mapping

import lightning as L
import torch

__all__ = ["DivergenceError", "StopOnDivergence", "non_finite"]


class DivergenceError(RuntimeError):
    """The training loss (or the weights) stopped being finite."""


def non_finite(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors of ``state_dict`` that hold a NaN or an infinity."""
    return [
        k
        for k, v in state_dict.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]


class StopOnDivergence(L.Callback):
    """Raises :class:`DivergenceError` after the first training batch whose loss is NaN or infinite, before any
    checkpoint can take the weights it produced; every rank decides together under DDP (one collective per step)."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        bad = not bool(torch.isfinite(loss.detach()).all())
        if trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            lr = ", ".join(dict.fromkeys(f"{g['lr']:.3g}" for opt in trainer.optimizers for g in opt.param_groups))
            raise DivergenceError(
                f"training diverged: the loss is {loss.item() if loss.numel() == 1 else 'not finite'} at epoch "
                f"{trainer.current_epoch}, step {trainer.global_step} (batch {batch_idx}), learning rate {lr}. "
                "No checkpoint holds these weights; lower --model.lr (or clip gradients, warm up) and start again, or "
                "resume from the last finite checkpoint with --ckpt_path last"
            )
