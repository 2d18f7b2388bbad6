"""Image classification task: wraps any registered CNN from ``zoo.nets``, and reads the images a user holds
(files, PIL images, tensors) with the preprocessing it was trained with."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from PIL import Image, UnidentifiedImageError
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy
from torchvision.transforms.v2 import functional as TF

from datamodules.contract import Labelled, Preprocessed, image_mode, open_image, settings, upright
from zoo._registry import get_entry
from zoo.tasks._base import Task

__all__ = ["ImageClassifier"]

PREDICT_BATCH = 256  # images per forward pass in predict(): bounds memory for a long list of files
ImageInput = str | os.PathLike | Image.Image | torch.Tensor


class ImageClassifier(Task):
    """Cross-entropy classifier with top-1/top-5 accuracy.

    Args:
        arch: registered net name (``zoo.list_models()``), e.g. ``resnet20``.
        num_classes, in_chans: passed to the net.
        net_kwargs: other keyword arguments of the net builder.
        classes: class names, by label; filled from the DataModule's ``classes`` at ``fit`` (or from the weights).
        preprocessing: how an image becomes the net's input, the format of a published weights entry:
            ``{"input_size": [C, H, W], "scale": "uint8 / 255", "mean": [...], "std": [...]}``; filled from the
            DataModule's ``preprocessing`` at ``fit`` (or from the weights), read by ``predict``.
        pretrained: published weights ``name.tag`` to start from (``zoo.list_pretrained()``); a different
            ``num_classes`` keeps the backbone and resets the classifier. Their class names (when the number
            matches) and preprocessing come with them unless given.
        freeze, unfreeze_epoch, backbone_lr_mult: fine-tuning, the same in every task (see :class:`Task`).
        optimizer: ``sgd`` (Nesterov when momentum > 0) or ``adamw``.
        lr, momentum, weight_decay: weight decay is not applied to norm parameters and biases.
        schedule: ``cosine`` (linear warm-up, cosine to 0), ``onecycle`` or ``constant``, stepped per batch.
        warmup_epochs: length of the warm-up (fractions allowed).
        label_smoothing: cross-entropy label smoothing (Szegedy et al. 2016).
        channels_last: keep the net and inputs in NHWC (faster convolutions on CPUs with bf16 and on GPUs).
        compile: ``torch.compile`` the net while fitting (True / False; None: the family's default, off).
    """

    monitor = ("val_acc", "max")  # what ModelCheckpoint selects on in train.py
    train_metrics = ("train_acc",)
    tta_modes = ("flip",)  # test-time augmentation: the mean of the probabilities of the image and its mirror
    tta: str | None = None  # off unless asked for (zoo evaluate / predict --tta flip): never in a headline figure
    weights_kwargs = ("num_classes", "in_chans", "net_kwargs")  # what rebuilds the net of published weights
    data_kwargs = ("classes", "preprocessing")  # what fit_to_data takes from the data besides
    remappable = ("num_classes",)  # another number of classes resets the classifier
    indexed_params = {"head.weight": ("classes", (0,)), "head.bias": ("classes", (0,))}

    @staticmethod
    def vocabularies(h) -> dict[str, list | None]:
        return {"classes": h.get("classes")}

    @classmethod
    def describe(cls, metrics: dict, split: str) -> str:
        tta = metrics.get(f"{split}_acc_tta_flip")
        return f"{100 * metrics[f'{split}_acc']:.2f}%" + (f" (flip TTA {100 * tta:.2f}%)" if tta is not None else "")

    def __init__(
        self,
        arch: str = "resnet20",
        num_classes: int = 10,
        in_chans: int = 3,
        net_kwargs: dict[str, Any] | None = None,
        classes: list[str] | None = None,
        preprocessing: dict | None = None,
        pretrained: str | None = None,
        freeze: str | None = None,
        unfreeze_epoch: int | None = None,
        backbone_lr_mult: float = 1.0,
        optimizer: str = "sgd",
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        schedule: str = "cosine",
        warmup_epochs: float = 0.0,
        label_smoothing: float = 0.0,
        channels_last: bool = False,
        compile: bool | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.check_training_args()
        if num_classes < 2:  # one class: nothing to learn, and torchmetrics' multiclass metrics refuse it
            raise ValueError(f"num_classes must be >= 2 (a classifier tells classes apart); got {num_classes}")
        if classes is not None and len(classes) != num_classes:
            raise ValueError(f"{len(classes)} class names for num_classes={num_classes}")
        if preprocessing:
            _check_preprocessing(preprocessing, in_chans)
        h = self.hparams
        if pretrained:  # the weights bring their architecture, class names and preprocessing
            self.take_weights_kwargs()
            names, prep = self.weights.classes, self.weights.preprocessing
            if classes is None and len(names) == num_classes:  # else the classifier is reset: other classes
                self.adopt(classes=list(names))
            if not preprocessing and prep.get("input_size", [None])[0] == h.in_chans:
                self.adopt(preprocessing=dict(prep))
        self._build()

    def _build(self) -> None:
        h = self.hparams
        self.net = get_entry(h.arch).builder(num_classes=h.num_classes, in_chans=h.in_chans, **(h.net_kwargs or {}))
        if h.pretrained:
            self.load_weights()
        if h.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self._metrics(h.num_classes)

    def _metrics(self, num_classes: int) -> None:
        k5 = min(5, num_classes)
        # validate_args=False: cross_entropy has checked the labels, and the checks cost more than the update
        self.train_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        for stage in ("val", "test"):
            setattr(self, f"{stage}_acc", MulticlassAccuracy(num_classes, average="micro"))
            setattr(self, f"{stage}_acc5", MulticlassAccuracy(num_classes, top_k=k5, average="micro"))
            setattr(self, f"{stage}_mean_loss", MeanMetric())  # summed over DDP ranks (see Tagger._eval_step)

    def fit_to_data(self, stage: str) -> None:
        """Refuse data the net cannot fit: another number of classes or of image channels than it was built for.
        (The DataModule's ``setup`` has run; what is read of it is ``datamodules.contract.ImageData``, each part
        optional.)"""
        dm = self.datamodule
        classes = dm.classes if isinstance(dm, Labelled) else None
        names = [str(c) for c in classes or []]
        if names and names != self.hparams.classes and stage == "fit" and self.hparams.pretrained:
            # fine-tuning on other classes: a classifier for the data's, whose rows for classes the weights know
            # (by name) are theirs; the backbone loaded
            rank_zero_info(f"{self.hparams.pretrained}: a classifier for the data's {len(names)} classes")
            self.adopt(classes=names, num_classes=len(names))
            self._build()
        if classes and len(classes) != self.hparams.num_classes:
            shown = ", ".join(map(str, classes[:10])) + (", ..." if len(classes) > 10 else "")
            raise ValueError(
                f"the data has {len(classes)} classes ({shown}) but the model was built for "
                f"{self.hparams.num_classes}: pass --model.num_classes {len(classes)} (with pretrained weights the "
                "classifier is then reset)"
            )
        channels = settings(dm).get("channels")
        if channels is not None and channels != self.hparams.in_chans:
            raise ValueError(
                f"the data gives {channels}-channel images but the model takes in_chans={self.hparams.in_chans}: "
                f"pass --data.channels {self.hparams.in_chans} (images are converted) or --model.in_chans {channels}"
            )
        # What predict() needs to read raw images: training teaches the model the data's, so fit adopts them; other
        # stages only fill what the model lacks, and say when the data is read otherwise than the model was trained.
        prep = dm.preprocessing if isinstance(dm, Preprocessed) else None
        known = {
            "classes": [str(c) for c in classes] if classes else None,
            "preprocessing": dict(prep) if prep else None,
        }
        known = {k: v for k, v in known.items() if v is not None}
        h = self.hparams
        self.adopt(**{k: v for k, v in known.items() if stage == "fit" or not h.get(k)})
        differ = [k for k, v in known.items() if h[k] != v]
        if differ:
            rank_zero_warn(
                f"the data's {' and '.join(differ)} differ from the model's ({'; '.join(str(h[k]) for k in differ)}): "
                "its scores on this data may not be what it was trained for"
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
        self.train_acc.update(logits.detach(), y)  # logged at the epoch's end (Task.train_metrics)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def probabilities(self, x: torch.Tensor, tta: str | None = None) -> torch.Tensor:
        """Class probabilities (B, num_classes) of a batch of net inputs, averaged over the mirror images with
        ``tta="flip"``."""
        if tta not in (None, *self.tta_modes):
            raise ValueError(f"tta must be one of {', '.join(self.tta_modes)} or None; got {tta!r}")
        probs = self(x).float().softmax(-1)
        return (probs + self(x.flip(-1)).float().softmax(-1)) / 2 if tta == "flip" else probs

    def _eval_step(self, batch, stage: str) -> None:
        x, y = batch
        # with test-time augmentation, the log of the averaged probabilities stands for the logits (same softmax)
        logits = self.probabilities(x, self.tta).log() if self.tta else self(x)
        acc, acc5 = getattr(self, f"{stage}_acc"), getattr(self, f"{stage}_acc5")
        acc(logits, y)
        acc5(logits, y)
        mean_loss = getattr(self, f"{stage}_mean_loss")
        mean_loss.update(self._loss(logits, y), len(y))
        self.log(f"{stage}_loss", mean_loss)
        self.log(f"{stage}_acc", acc, prog_bar=True)
        self.log(f"{stage}_acc5", acc5)

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self(x).softmax(-1)  # (B, num_classes) probabilities

    # -- the images a user holds ----------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(
        self, inputs: ImageInput | Sequence[ImageInput], top_k: int = 5, tta: str | None = None
    ) -> list[list[tuple[str, float]]]:
        """Top-``k`` ``(class name, probability)`` per image, most likely first (``k`` capped at ``num_classes``;
        names "0", "1", ... when the model has none).

        ``inputs``: one or a list of image paths, PIL images, or tensors (C, H, W) / (B, C, H, W) of uint8 0..255
        or floats 0..1; a single input gives a list of one result, a (B, C, H, W) tensor one result per image.
        Each image is read as the model's test split was (``preprocessing``): files and PIL images have their EXIF
        orientation applied and are converted to RGB (``in_chans`` 3) or grayscale L (``in_chans`` 1), whatever
        their mode (L, RGBA, P, CMYK ...; transparency is dropped); then the shorter side is resized to the input
        size, the centre cropped, values scaled to [0, 1] and normalised by the model's mean and std. Runs in eval
        mode without gradients; the previous mode is restored. ``tta="flip"`` averages the probabilities of each
        image and its mirror (test-time augmentation; off by default)."""
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        x = self.preprocess(inputs)  # (N, C, H, W)
        dtype = next(self.net.parameters()).dtype
        with self.evaluating():
            probs = torch.cat([self.probabilities(b.to(self.device, dtype), tta).cpu() for b in x.split(PREDICT_BATCH)])
        names = self.hparams.classes or [str(i) for i in range(self.hparams.num_classes)]
        top = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
        return [[(names[c], float(p)) for p, c in zip(ps, cs)] for ps, cs in zip(top.values, top.indices)]

    def preprocess(self, inputs: ImageInput | Sequence[ImageInput]) -> torch.Tensor:
        """The net's input (N, C, H, W) float32 for raw images, read as ``predict`` reads them."""
        prep = self.hparams.preprocessing
        if not prep:
            raise RuntimeError(
                "the model does not know how its inputs were preprocessed (size, mean, std): train it on a DataModule "
                "with `preprocessing` (CIFAR-10, an image folder), load published weights, or pass preprocessing="
                '{"input_size": [C, H, W], "mean": [...], "std": [...]}'
            )
        items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        if not items:
            raise ValueError("no images given")
        channels, size = prep["input_size"][0], tuple(prep["input_size"][1:])
        out = []
        for item in items:
            x = self._as_tensor(item, channels, max(size))  # (B, C, h, w), uint8 or float in [0, 1]
            if tuple(x.shape[-2:]) != size:  # as the image DataModule: shorter side to the size, then the centre
                x = TF.center_crop(TF.resize(x, [min(size)], antialias=True), list(size))
            out.append(TF.normalize(TF.to_dtype(x, torch.float32, scale=True), prep["mean"], prep["std"]))
        return torch.cat(out)

    def _as_tensor(self, item: ImageInput, channels: int, size: int) -> torch.Tensor:
        if isinstance(item, (str, os.PathLike)):
            return TF.pil_to_tensor(_read_image(Path(item), channels, size))[None]
        if isinstance(item, Image.Image):
            return TF.pil_to_tensor(upright(item, image_mode(channels)))[None]
        if not isinstance(item, torch.Tensor):
            raise TypeError(
                "predict() reads image paths, PIL images and tensors (C, H, W) or (B, C, H, W); "
                f"got {type(item).__name__}"
            )
        x = item.detach().cpu()
        if x.dim() not in (3, 4) or x.shape[-3] != channels:
            raise ValueError(
                f"an image tensor of shape {tuple(x.shape)}: the model takes {channels}-channel images, (C, H, W) = "
                f"({channels}, H, W) or (B, {channels}, H, W)"
            )
        if x.dtype != torch.uint8 and not x.is_floating_point():
            raise TypeError(f"image tensors are uint8 (0..255) or float (0..1); got {x.dtype}")
        if x.is_floating_point() and x.numel() and (x.min() < 0 or x.max() > 1):
            raise ValueError(
                f"a float image tensor with values in [{float(x.min()):.3g}, {float(x.max()):.3g}]: floats are read as "
                "0..1 (pass uint8 for 0..255; the model normalises by itself)"
            )
        return x if x.dim() == 4 else x[None]


def _check_preprocessing(prep: dict, in_chans: int) -> None:
    size, mean, std = prep.get("input_size") or [], prep.get("mean") or [], prep.get("std") or []
    if not (len(size) == 3 and size[0] == in_chans and len(mean) == len(std) == in_chans and min(std) > 0):
        raise ValueError(
            f"preprocessing needs input_size [C, H, W], mean and std (> 0) with C = in_chans = {in_chans}; got {prep}"
        )


def _read_image(path: Path, channels: int, size: int) -> Image.Image:
    """The file decoded as the image DataModule decodes its files (the contract's ``open_image``)."""
    mode = image_mode(channels)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    try:
        return open_image(path, mode, size)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{path} is not an image PIL can read ({type(e).__name__}: {e})") from e
