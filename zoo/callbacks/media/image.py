"""W&B pictures of the image family, at validation end (when and how often: :class:`ValidationMedia`):

- ``media/predictions``: a table of the first ``samples`` validation images (back in pixels), their true and
  predicted class, the confidence and whether it is right;
- ``media/confusion_matrix`` and ``media/per_class_accuracy``: over the whole validation split, from the
  predictions the task's own validation forward made (captured by a forward hook: no second pass), summed across
  ranks under DDP (the matrix for up to ``MAX_MATRIX_CLASSES`` classes);
- ``media/gradcam``: each of those images beside its Grad-CAM for the predicted class (captum; without it this
  picture alone is skipped, with one warning).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn

from zoo.callbacks.media._base import ValidationMedia

__all__ = ["ImageMedia", "callbacks"]

MAX_MATRIX_CLASSES = 100  # a confusion matrix is a table of C^2 cells; a W&B table holds 10,000 rows (Table.MAX_ROWS)


class ImageMedia(ValidationMedia):
    """Sample predictions, confusion matrix, per-class accuracy and Grad-CAM of an ``ImageClassifier``."""

    def __init__(self, every_n_epochs: int = 1, samples: int = 8) -> None:
        super().__init__(every_n_epochs, samples)
        self.confusion: torch.Tensor | None = None  # (C, C) counts, rows true, columns predicted
        self._predicted: list[torch.Tensor] = []  # the task's forward outputs since the last batch end
        self._hook = None
        self._warned = False

    # -- the whole split: counts from the task's own forward ---------------------------------------------------
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_epoch_start(trainer, pl_module)
        self._unhook()
        self.confusion = None
        if self.scheduled(trainer):  # on every rank: the counts are summed across ranks
            c = pl_module.hparams.num_classes
            self.confusion = torch.zeros(c, c, dtype=torch.long, device=pl_module.device)
            self._hook = pl_module.register_forward_hook(self._note)

    def _note(self, module, args, output) -> None:
        if isinstance(output, torch.Tensor) and output.dim() == 2:
            self._predicted.append(output.detach().argmax(-1))

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        predicted, self._predicted = self._predicted, []
        if self.confusion is not None and dataloader_idx == 0 and predicted:
            y = batch[1]
            pred = predicted[0]  # the first forward of the step: the image itself (a mirror comes second, with TTA)
            if pred.shape == y.shape:
                c = self.confusion.shape[0]
                self.confusion += (
                    torch.bincount(y * c + pred.to(y.device), minlength=c * c).view(c, c).to(self.confusion.device)
                )
        super().on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._unhook()  # before media(): its own forward passes are not validation predictions
        if self.confusion is not None:
            self.confusion = trainer.strategy.reduce(self.confusion, reduce_op="sum").cpu()
        super().on_validation_epoch_end(trainer, pl_module)
        self.confusion = None

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._unhook()

    def _unhook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._predicted = []

    # -- the pictures ----------------------------------------------------------------------------------------------
    def media(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        import wandb

        from zoo.tasks.explain import gradcam, panel, to_pixels

        h = pl_module.hparams
        names = [str(c) for c in h.classes] if h.classes else [str(i) for i in range(h.num_classes)]
        epoch = trainer.current_epoch + 1
        x = torch.cat([b[0] for b in self.batches])[: self.samples]
        y = torch.cat([b[1] for b in self.batches])[: self.samples].cpu()
        probs = pl_module(x).float().softmax(-1).cpu()  # (N, C); the base put the module in eval mode
        conf, pred = probs.max(-1)
        prep = h.preprocessing or {}
        pixels = to_pixels(x, prep.get("mean"), prep.get("std"))  # (N, H, W, 3)
        table = wandb.Table(columns=["image", "true", "predicted", "confidence", "correct"])
        for i in range(len(y)):
            t, p = names[int(y[i])], names[int(pred[i])]
            table.add_data(wandb.Image(pixels[i], caption=f"{t} -> {p}"), t, p, round(float(conf[i]), 4), t == p)
        logged: dict[str, Any] = {"predictions": table}
        if self.confusion is not None and self.confusion.sum() > 0:
            logged |= self._split_pictures(self.confusion, names, epoch, trainer.world_size)
        try:
            heat, _ = gradcam(pl_module.net, x, target=pred.to(x.device))
        except ImportError as e:
            if not self._warned:
                rank_zero_warn(f"W&B media: no Grad-CAM pictures ({e})")
                self._warned = True
        else:
            logged["gradcam"] = [
                wandb.Image(panel(pixels[i], heat[i]), caption=f"{names[int(y[i])]} -> {names[int(pred[i])]}")
                for i in range(len(y))
            ]
        return logged

    @staticmethod
    def _split_pictures(counts: torch.Tensor, names: list[str], epoch: int, world_size: int) -> dict[str, Any]:
        import wandb

        counts = counts.numpy()
        n = int(counts.sum())
        # wandb.plot takes one (true, predicted) pair per example: the counts are spelled out again (cheap: argmax ids)
        true, pred = np.divmod(np.repeat(np.arange(counts.size), counts.ravel()), counts.shape[0])
        where = f"validation, epoch {epoch}, {n} images" + (f", {world_size} ranks" if world_size > 1 else "")
        logged: dict[str, Any] = {}
        if len(names) <= MAX_MATRIX_CLASSES:  # beyond, per-class accuracy only (ImageNet's 1,000 classes: 1e6 cells)
            logged["confusion_matrix"] = wandb.plot.confusion_matrix(
                y_true=true.tolist(), preds=pred.tolist(), class_names=names, title=f"confusion matrix ({where})"
            )
        per_class = counts.sum(1)
        rows = [[names[c], float(counts[c, c] / per_class[c])] for c in range(len(names)) if per_class[c]]
        bar = wandb.plot.bar(
            wandb.Table(data=rows, columns=["class", "accuracy"]),
            "class",
            "accuracy",
            title=f"per-class accuracy ({where}; classes without images left out)",
        )
        return logged | {"per_class_accuracy": bar}


def callbacks(model: L.LightningModule, every_n_epochs: int, samples: int) -> list[L.Callback]:
    return [ImageMedia(every_n_epochs, samples)]
