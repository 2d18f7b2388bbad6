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
