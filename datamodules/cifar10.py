"""Augmented CIFAR-10 (Krizhevsky 2009) from the python-batch format (found, downloaded and safely read by
``datamodules.cifar10_files``; ``prepare_data`` downloads the archive when it is not on disk).

Splits: the 50,000 training images are split 45,000/5,000 into train/val by a seeded permutation (He et al.
2016 use the same 45k/5k split for selection); the 10,000 test images are loaded only for ``trainer.test``.
Augmentation (train split only) uses ``torchvision.transforms.v2`` on uint8 tensors, each transform switched
and sized by an argument; Cutout (DeVries & Taylor 2017) is applied after normalisation, so the patch is the
mean colour.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from datamodules import DatasetError, default_data_dir
from datamodules._augment import (
    AUGMENT_ARGS,
    Cutout,
    augmentation,
    check_augmentation,
    normalisation,
    sample_key,
    seeded,
)
from datamodules._base import SplitDataModule, run_seed
from datamodules._batched import BatchAugment, ResidentBatches
from datamodules.cifar10_files import ARCHIVE, FOLDER, download_cifar10, find_cifar10, load_cifar10

__all__ = ["CIFAR10DataModule", "load_cifar10", "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR10_CLASSES", "Cutout"]

# Per-channel statistics of the 50,000 training images in [0, 1].
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class TensorImages(Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        i, seed = sample_key(key)
        return seeded(self.transform, self.images[i], seed), self.labels[i]


class CIFAR10DataModule(SplitDataModule):
    """CIFAR-10 with a seeded 45k/5k train/val split and configurable augmentation.

    Args:
        data_dir: folder holding ``cifar10/cifar-10-python.tar.gz`` (or ``cifar-10-batches-py/``);
            default ``$ZOO_DATA_DIR``, else ``~/.cache/zoo/data``.
        download: download the canonical archive when no files are found.
        val_size: images held out of the 50,000 for validation (model selection).
        split_seed: seed of the train/val permutation (fixed across runs so val stays unseen).
        pin_memory: batches in page-locked memory, so that the copy to a CUDA device overlaps the step (CUDA
            only; nothing on a CPU).
        hflip, vflip: probability of a horizontal / vertical flip.
        crop_padding: pad by this many pixels and crop 32x32 back at random (0: off).
        padding_mode: ``constant`` (zeros, as He et al.) or ``reflect``.
        rotation: maximum rotation in degrees (0: off).
        scale: random zoom range, e.g. ``[0.9, 1.1]`` (None: off).
        noise_std: std of additive Gaussian noise on [0, 1] pixels, before normalisation (0: off).
        cutout: side of the Cutout square in pixels (0: off).
        num_images: expected (train, test) counts; change only for a subset in the same format.
        batch_augment: hold the splits as uint8 tensors on the model's device and augment whole batches there
            (``datamodules._batched``) instead of image by image in DataLoader workers (``num_workers`` is then
            unused): the same transforms, distributions and batch order, several times the images/s for small nets,
            and the only way to feed a GPU. Mid-epoch resume stays exact; the random draws differ from the
            per-image path's, so the two paths train alike but not bit for bit.
    """

    licence = (  # of the default dataset; shown by `zoo info`
        "no licence stated by its authors (cs.toronto.edu/~kriz/cifar.html), who ask that you cite "
        'Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009'
    )

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: int = 128,
        eval_batch_size: int = 512,
        num_workers: int = 2,
        pin_memory: bool = False,
        download: bool = True,
        val_size: int = 5000,
        split_seed: int = 0,
        hflip: float = 0.5,
        vflip: float = 0.0,
        crop_padding: int = 4,
        padding_mode: str = "constant",
        rotation: float = 0.0,
        scale: tuple[float, float] | None = None,
        noise_std: float = 0.0,
        cutout: int = 0,
        num_images: tuple[int, int] = (50_000, 10_000),
        batch_augment: bool = False,
    ) -> None:
        super().__init__()
        check_augmentation(
            hflip=hflip,
            vflip=vflip,
            crop_padding=crop_padding,
            padding_mode=padding_mode,
            rotation=rotation,
            scale=scale,
            noise_std=noise_std,
            cutout=cutout,
            batch_size=batch_size,
            num_workers=num_workers,
            size=32,
        )
        if not 0 < val_size < num_images[0]:
            raise ValueError(f"val_size must be between 1 and {num_images[0] - 1}, got {val_size}")
        self.save_hyperparameters()
        self.data_dir = Path(data_dir).expanduser() if data_dir else default_data_dir()
        self.classes = list(CIFAR10_CLASSES)
        self.train_set = self.val_set = self.test_set = None

    # -- files ---------------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        if find_cifar10(self.data_dir) is None:
            if not self.hparams.download:
                raise DatasetError(
                    f"CIFAR-10 not found in {self.data_dir}: put {ARCHIVE} (or {FOLDER}/) into "
                    f"{self.data_dir / 'cifar10'}, or set --data.download true to fetch it from the Toronto site"
                )
            download_cifar10(self.data_dir)

    def _load(self) -> dict:
        path = find_cifar10(self.data_dir)
        if path is None:
            raise DatasetError(
                f"CIFAR-10 not found in {self.data_dir}: put {ARCHIVE} into {self.data_dir / 'cifar10'} "
                "(prepare_data downloads it when the network is reachable)"
            )
        data = load_cifar10(path, tuple(self.hparams.num_images))
        self._read_from(*data["files"])
        self.classes = data["classes"]
        return data

    # -- transforms ----------------------------------------------------------------------------------------
    def train_transform(self) -> v2.Compose:
        h = self.hparams
        return augmentation(**{k: h[k] for k in AUGMENT_ARGS}, size=32, mean=CIFAR10_MEAN, std=CIFAR10_STD)

    @staticmethod
    def eval_transform() -> v2.Compose:
        return normalisation(CIFAR10_MEAN, CIFAR10_STD)

    @property
    def preprocessing(self) -> dict:
        """``eval_transform`` as data, in the format of a published weights entry: a model that keeps it can read
        images it is given the way it read its test split."""
        return {"input_size": [3, 32, 32], "scale": "uint8 / 255", "mean": list(CIFAR10_MEAN), "std": list(CIFAR10_STD)}

    def _loader(self, split: str, train: bool):
        if not self.hparams.batch_augment:
            return super()._loader(split, train)
        h, ds, trainer = self.hparams, getattr(self, f"{split}_set"), self.trainer
        world, rank = self._processes()
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        if train:
            aug = {k: h[k] for k in AUGMENT_ARGS}
            transform, batch = BatchAugment(**aug, size=32, mean=CIFAR10_MEAN, std=CIFAR10_STD), h.batch_size
        else:
            transform, batch = BatchAugment(mean=CIFAR10_MEAN, std=CIFAR10_STD), h.eval_batch_size
        return ResidentBatches(
            ds.images,
            ds.labels,
            transform,
            batch,
            shuffle=train,
            device=device,
            seed=run_seed(),
            world=world,
            rank=rank,
        )

    # -- splits --------------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        h = self.hparams
        if stage in (None, "fit", "validate") and self.train_set is None:
            x, y = self._load()["train"]
            perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(h.split_seed))
            val_idx, train_idx = perm[: h.val_size], perm[h.val_size :]
            self.train_set = TensorImages(x[train_idx], y[train_idx], self.train_transform())
            self.val_set = TensorImages(x[val_idx], y[val_idx], self.eval_transform())
        if stage in (None, "test", "predict") and self.test_set is None:
            x, y = self._load()["test"]
            self.test_set = TensorImages(x, y, self.eval_transform())
