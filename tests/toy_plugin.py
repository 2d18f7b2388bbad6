"""A user's own package, outside the zoo: a toy model, a toy DataModule and a toy task, added as CONTRIBUTING.md's
checklists say. ``register()`` registers them (tests/test_contributing.py calls it, and restores the registry)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

import zoo
from datamodules._augment import sample_key
from datamodules._base import SplitDataModule, run_seed
from zoo.nets._base import ClassifierNet
from zoo.tasks import Task

CLASSES = ["dark", "mid", "bright"]  # a toy image's class is its brightness: learnable in a few steps


# -- a model: a plain nn.Module with forward_features and a head, and a builder for an existing task -----------------
class ToyCNN(ClassifierNet):
    def __init__(self, num_classes: int = 10, in_chans: int = 3, width: int = 8) -> None:
        super().__init__()
        self.num_classes, self.in_chans = num_classes, in_chans
        self.features = nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(width, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)  # (B, width)


def toy_cnn(**kwargs) -> ToyCNN:
    """A one-convolution CNN for tests: 3x3 convolution, ReLU, global average pooling, linear head."""
    return ToyCNN(**kwargs)


# -- a dataset: a DataModule that meets the image contract (classes, preprocessing, a resumable train loader) -------
class ToyImageSet(Dataset):
    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, len(CLASSES), (n,), generator=g)
        noise = torch.randn(n, 3, 8, 8, generator=g)
        self.images = (self.labels.float()[:, None, None, None] - 1) + 0.5 * noise  # (N, 3, 8, 8)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key):
        i, seed = sample_key(key)  # the training sampler hands (index, augmentation seed)
        x = self.images[i]
        if seed is not None:  # a seeded flip: the same for a resumed run as for an unbroken one
            flip = torch.rand((), generator=torch.Generator().manual_seed(seed)) < 0.5
            x = x.flip(-1) if flip else x
        return x, self.labels[i]


class ToyImages(SplitDataModule):
    """Brightness classes of 8x8 noise images: ``n`` training images, ``n // 4`` each for val and test."""

    licence = "generated: no licence needed"
    classes = CLASSES

    def __init__(self, n: int = 96, batch_size: int = 16, eval_batch_size: int = 64, num_workers: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()

    @property
    def preprocessing(self) -> dict:
        return {"input_size": [3, 8, 8], "scale": "uint8 / 255", "mean": [0.5] * 3, "std": [0.5] * 3}

    def setup(self, stage: str | None = None) -> None:
        n = self.hparams.n
        self.train_set, self.val_set, self.test_set = (ToyImageSet(m, s) for m, s in ((n, 0), (n // 4, 1), (n // 4, 2)))


# -- a task: a LightningModule that knows its metric, rebuilds its net, and registers under a kind ---------------
class ToyRegressor(Task):
    """Regression of a vector's sum with any ``toy_regression`` net; mean squared error, selected on validation."""

    monitor = ("val_mse", "min")
    points_per_unit = 1.0  # the MSE itself
    weights_kwargs = ("dim",)

    def __init__(
        self,
        arch: str = "toy_mlp",
        dim: int = 4,
        net_kwargs: dict | None = None,
        pretrained: str | None = None,
        freeze: str | None = None,
        unfreeze_epoch: int | None = None,
        backbone_lr_mult: float = 1.0,
        optimizer: str = "adamw",
        lr: float = 1e-2,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        schedule: str = "constant",
        warmup_epochs: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.check_training_args()
        if pretrained:  # published weights bring their architecture (weights_kwargs) ...
            self.take_weights_kwargs()
        self.net = zoo.model_info(arch).builder(dim=self.hparams.dim, **(net_kwargs or {}))
        if pretrained:  # ... and their tensors
            self.load_weights()

    @classmethod
    def describe(cls, metrics: dict, split: str) -> str:
        return f"MSE {metrics[f'{split}_mse']:.3f}"

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def _eval_step(self, batch, stage: str) -> None:
        x, y = batch
        self.log(f"{stage}_mse", F.mse_loss(self.net(x), y))


def toy_mlp(*, dim: int, hidden: int = 16) -> nn.Module:
    """A two-layer MLP for the toy regression task: dim -> hidden -> 1 (squeezed)."""
    return nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1), nn.Flatten(0))


class ToyVectors(SplitDataModule):
    """Vectors of ``dim`` normals and their sums."""

    def __init__(
        self, dim: int = 4, n: int = 64, batch_size: int = 16, eval_batch_size: int = 64, num_workers: int = 0
    ):
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        g = torch.Generator().manual_seed(run_seed())
        x = torch.randn(self.hparams.n, self.hparams.dim, generator=g)
        data = torch.utils.data.TensorDataset(x, x.sum(-1))
        self.train_set = self.val_set = self.test_set = _Keyed(data)


class _Keyed(Dataset):
    """A dataset read with the training sampler's ``(index, seed)`` keys as well as plain indices."""

    def __init__(self, data: Dataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key):
        return self.data[sample_key(key)[0]]


def register() -> None:
    zoo.register_model(task="image")(toy_cnn)
    zoo.register_task("toy_regression", ToyRegressor)
    zoo.register_model(task="toy_regression")(toy_mlp)
