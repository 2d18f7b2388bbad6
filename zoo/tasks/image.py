"""Image classification task: wraps any registered CNN from ``zoo.nets``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from zoo import _pretrained
from zoo._registry import get_entry
from zoo.tasks._base import Task
from zoo.tasks._optim import OPTIMIZERS, SCHEDULES, check_choice

__all__ = ["ImageClassifier"]


class ImageClassifier(Task):
    """Cross-entropy classifier with top-1/top-5 accuracy.

    Args:
        arch: registered net name (``zoo.list_models()``), e.g. ``resnet20``.
        num_classes, in_chans: passed to the net.
        net_kwargs: other keyword arguments of the net builder.
        pretrained: published weights ``name.tag`` to start from (``zoo.list_pretrained()``); a different
            ``num_classes`` keeps the backbone and resets the classifier.
        optimizer: ``sgd`` (Nesterov when momentum > 0) or ``adamw``.
        lr, momentum, weight_decay: weight decay is not applied to norm parameters and biases.
        schedule: ``cosine`` (linear warm-up, cosine to 0), ``onecycle`` or ``constant``, stepped per batch.
        warmup_epochs: length of the warm-up (fractions allowed).
        label_smoothing: cross-entropy label smoothing (Szegedy et al. 2016).
        channels_last: keep the net and inputs in NHWC (faster convolutions on CPUs with bf16 and on GPUs).
    """

    monitor = ("val_acc", "max")  # what ModelCheckpoint selects on in train.py
    weights_kwargs = ("num_classes", "in_chans", "net_kwargs")  # what rebuilds the net of published weights

    def __init__(
        self,
        arch: str = "resnet20",
        num_classes: int = 10,
        in_chans: int = 3,
        net_kwargs: dict | None = None,
        pretrained: str | None = None,
        optimizer: str = "sgd",
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        schedule: str = "cosine",
        warmup_epochs: float = 0.0,
        label_smoothing: float = 0.0,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        check_choice("optimizer", optimizer, OPTIMIZERS)
        check_choice("schedule", schedule, SCHEDULES)
        if lr <= 0 or weight_decay < 0 or warmup_epochs < 0 or not 0 <= label_smoothing < 1 or num_classes < 1:
            raise ValueError(
                "need lr > 0, weight_decay >= 0, warmup_epochs >= 0, 0 <= label_smoothing < 1, num_classes >= 1; "
                f"got lr={lr}, weight_decay={weight_decay}, warmup_epochs={warmup_epochs}, "
                f"label_smoothing={label_smoothing}, num_classes={num_classes}"
            )
        self.save_hyperparameters()
        self.net = get_entry(arch).builder(num_classes=num_classes, in_chans=in_chans, **(net_kwargs or {}))
        if pretrained:
            _pretrained.load_into(self.net, pretrained, arch=arch)
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        k5 = min(5, num_classes)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc, self.val_acc5 = (
            MulticlassAccuracy(num_classes, average="micro"),
            MulticlassAccuracy(num_classes, top_k=k5, average="micro"),
        )
        self.test_acc, self.test_acc5 = (
            MulticlassAccuracy(num_classes, average="micro"),
            MulticlassAccuracy(num_classes, top_k=k5, average="micro"),
        )

    def setup(self, stage: str) -> None:
        """Refuse data the net cannot fit: another number of classes or of image channels than it was built for.
        (The DataModule's ``setup`` has run; any DataModule with ``classes`` / ``hparams.channels`` is checked.)"""
        dm = getattr(self.trainer, "datamodule", None)
        classes = getattr(dm, "classes", None)
        if classes and len(classes) != self.hparams.num_classes:
            shown = ", ".join(map(str, classes[:10])) + (", ..." if len(classes) > 10 else "")
            raise ValueError(
                f"the data has {len(classes)} classes ({shown}) but the model was built for "
                f"{self.hparams.num_classes}: pass --model.num_classes {len(classes)} (with pretrained weights the "
                "classifier is then reset)"
            )
        channels = getattr(dm, "hparams", {}).get("channels")
        if channels is not None and channels != self.hparams.in_chans:
            raise ValueError(
                f"the data gives {channels}-channel images but the model takes in_chans={self.hparams.in_chans}: "
                f"pass --data.channels {self.hparams.in_chans} (images are converted) or --model.in_chans {channels}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)  # (B, num_classes)

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), y, label_smoothing=self.hparams.label_smoothing)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self._loss(logits, y)
        self.train_acc(logits, y)
        self.log("train_loss", loss, prog_bar=True)
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def _eval_step(self, batch, stage: str) -> None:
        x, y = batch
        logits = self(x)
        acc, acc5 = getattr(self, f"{stage}_acc"), getattr(self, f"{stage}_acc5")
        acc(logits, y)
        acc5(logits, y)
        self.log(f"{stage}_loss", self._loss(logits, y), sync_dist=True)
        self.log(f"{stage}_acc", acc, prog_bar=True)
        self.log(f"{stage}_acc5", acc5)

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self(x).softmax(-1)  # (B, num_classes) probabilities
