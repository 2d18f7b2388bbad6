"""W&B pictures of the recurrent classifiers (``SequenceClassifier``): how the gradient of the loss with respect to
the hidden state, ``||dL/dh_t||``, falls off through time, drawn on a log axis with one line per measured step, so
that a vanishing (or exploding) gradient and its change over training show in one picture.

The curves are those :class:`~zoo.callbacks.HiddenStateGradients` measured during training when that callback
is on; otherwise this callback measures one curve itself at each logged validation end, on the first validation
batch (one forward and backward of at most ``max_examples`` sequences). Either way it draws them all (at most
``samples`` lines, spread over training, the newest always in) and logs the numbers beside the picture."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from zoo.callbacks.hidden_state_gradients import HiddenStateGradients
from zoo.callbacks.media._base import ValidationMedia
from zoo.callbacks.media._plots import gradient_curves, to_pixels

__all__ = ["GradientCurve", "callbacks"]


class GradientCurve(ValidationMedia):
    """Logs ``media/hidden_grad_curve`` (the picture) and ``media/hidden_grad_norms`` (a table ``step, t,
    grad_norm`` of the lines drawn). See the module docstring for where the curves come from."""

    def __init__(self, every_n_epochs: int = 1, samples: int = 8, max_examples: int = 32) -> None:
        super().__init__(every_n_epochs, samples)
        self.max_examples = max_examples
        self.history: list[tuple[int, list[float]]] = []  # the curves measured here, without HiddenStateGradients

    def collect(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        if not self.batches:
            self.batches.append(batch)

    def _measure(self, pl_module: L.LightningModule, step: int) -> None:
        """One curve on the first validation batch, on the sequences as long as the batch (no padding is read:
        ``hidden_state_gradients`` reads every step)."""
        x, lengths, y = self.batches[0][:3]
        full = lengths.to(x.device) == x.shape[1]
        full = full if bool(full.any()) else torch.ones_like(full)  # data padded beyond its longest sequence
        with torch.inference_mode(False):  # a validate() run sits in inference mode; the gradient needs a graph
            batch = (x[full].clone(), lengths[full.to(lengths.device)].clone(), y[full].clone())
            norms = pl_module.hidden_state_gradients(batch, self.max_examples).float().cpu()
        self.history.append((step, norms.tolist()))

    def media(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        import wandb

        watcher = next((c for c in trainer.callbacks if isinstance(c, HiddenStateGradients)), None)
        if watcher is None:
            self._measure(pl_module, trainer.global_step)
        history = watcher.history if watcher is not None else self.history
        curves = spread(history, self.samples)
        if not curves:
            return {}
        where = "training batches" if watcher is not None else "the first validation batch"
        fig = gradient_curves(curves, title=f"||dL/dh_t|| through time, on {where} (step {trainer.global_step})")
        rows = [[step, t, value] for step, norms in curves for t, value in enumerate(norms)]
        return {
            "hidden_grad_curve": wandb.Image(to_pixels(fig), caption=f"{len(curves)} steps, log scale"),
            "hidden_grad_norms": wandb.Table(columns=["step", "t", "grad_norm"], data=rows),
        }


def spread(history: list[tuple[int, list[float]]], n: int) -> list[tuple[int, list[float]]]:
    """At most ``n`` entries of ``history``, evenly spaced, the first and the newest always in."""
    if len(history) <= n:
        return list(history)
    if n == 1:
        return [history[-1]]
    picks = sorted({round(i * (len(history) - 1) / (n - 1)) for i in range(n)})
    return [history[i] for i in picks]


def callbacks(model: L.LightningModule, every_n_epochs: int, samples: int) -> list[L.Callback]:
    if not hasattr(model, "hidden_state_gradients"):
        return []
    return [GradientCurve(every_n_epochs, samples)]
