"""Gradients through time of recurrent tasks: how fast they vanish."""

from __future__ import annotations

import lightning as L
import torch

__all__ = ["HiddenStateGradients"]


class HiddenStateGradients(L.Callback):
    """Watch gradients vanish (or not) through time: every ``every_n_steps`` training steps, the norm of the loss
    gradient with respect to the hidden state at each step t, ``||dL/dh_t||``, measured on the current batch by
    the task's ``hidden_state_gradients`` (recurrent tasks). A plain RNN's curve falls by orders of magnitude from
    the last step back to the first; an LSTM's or GRU's stays flatter (Bengio et al. 1994; Pascanu et al. 2013).

    Logged at its own steps only, at the run's global step: ``hgrad_first`` (t = 0), ``hgrad_last`` and their
    ratio ``hgrad_ratio``. They go straight to the loggers, since a value logged with ``LightningModule.log`` in a
    batch hook stays in Lightning's results and is written again at every later logging step until the next
    measurement; they are also put in ``trainer.callback_metrics`` (as a logged value would be), for a callback that
    monitors them. ``history`` keeps ``(step, [norm per t])``; with W&B media on (train.py's default) the recurrent
    family's media (``zoo.callbacks.media.sequence``) draws it at validation end, one line per measured step on a
    log axis: the one place the curve is drawn.

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
        if self.history and self.history[-1][0] == step:  # accumulating gradients: several batches, one step
            return
        norms = pl_module.hidden_state_gradients(batch, self.max_examples).float().cpu()
        self.history.append((step, norms.tolist()))
        ratio = norms[0] / norms[-1].clamp_min(torch.finfo(torch.float32).tiny)
        scalars = {"hgrad_first": float(norms[0]), "hgrad_last": float(norms[-1]), "hgrad_ratio": float(ratio)}
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in scalars.items()})
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=step)
