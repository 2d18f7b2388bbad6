"""Bring-your-own images: fine-tune any zoo CNN on a folder of class folders (``--data images --data.root PATH``).

Layouts (class names are the sorted folder names of the train split; at least two):

- ``root/<class>/*.jpg`` (also .jpeg .png .bmp .webp, in subfolders too): one pool, split per class into
  train/val/test by a seeded permutation (stratified, so every split keeps the class balance, and the same
  ``split_seed`` gives the same split on every run and every DDP rank);
- ``root/train/<class>/``, optionally ``root/val/`` (or ``valid/``) and ``root/test/``: the user's own splits;
  a missing val or test split is carved out of train the same way.

Files are only listed and checked at ``setup`` (``datamodules.image_folders``); pixels are decoded in
``__getitem__`` (in the loader workers), so a folder larger than memory works. Hidden files and folders
(``.DS_Store``, ``.ipynb_checkpoints``, ``__MACOSX``) and other extensions (``notes.txt``) are ignored silently.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from datamodules import DatasetError
from datamodules._augment import AUGMENT_ARGS, augmentation, check_augmentation, normalisation, sample_key, seeded
from datamodules._base import SplitDataModule, init_arguments
from datamodules.contract import IMAGE_MODES, open_image
from datamodules.image_folders import (
    IMAGE_EXTENSIONS,
    SHOW_FILES,
    check_classes,
    check_image,
    find_splits,
    scan_classes,
    split_per_class,
    subdirs,
)

__all__ = ["ImageFolderDataModule", "ImageFiles", "IMAGE_EXTENSIONS", "find_splits", "scan_classes", "split_per_class"]

STATS_IMAGES = 2000  # enough for mean/std to ~3 decimals; bounded so setup stays quick on a large folder
BAD_FILES = ("skip", "error")


class ImageFiles(Dataset):
    """(path, label) pairs decoded on access (``datamodules.contract.open_image``: EXIF orientation applied,
    converted to ``mode``), uint8 (C, H, W).

    ``Image.verify`` at setup does not decode pixels, so a truncated JPEG can still fail here; with ``skip_bad``
    it is replaced by the next image (with a warning) rather than ending the run.
    """

    def __init__(
        self, samples: list[tuple[Path, int]], mode: str, size: int, transform: Callable, skip_bad: bool = False
    ) -> None:
        self.samples, self.mode, self.size, self.transform, self.skip_bad = samples, mode, size, transform, skip_bad

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, i: int) -> torch.Tensor:
        path = self.samples[i][0]
        try:
            im = open_image(path, self.mode, self.size)  # as a task's predict() reads a file
        except Exception as e:  # noqa: BLE001
            raise DatasetError(
                f"{path} passed the check at setup but cannot be decoded ({type(e).__name__}: {e})"
            ) from e
        return F.pil_to_tensor(im)  # (C, H, W) uint8

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        i, seed = sample_key(key)
        for j in range(len(self)):
            k = (i + j) % len(self)
            try:
                return seeded(self.transform, self.load(k), seed), self.samples[k][1]
            except DatasetError as e:
                if not self.skip_bad:
                    raise DatasetError(f"{e}; delete or replace it, or pass --data.bad_files skip") from e
                warnings.warn(f"{e}; using the next image in its place", stacklevel=2)
        raise DatasetError(f"none of the {len(self)} images of this split can be decoded")


class ImageFolderDataModule(SplitDataModule):
    """The user's own labelled images, resized to ``image_size`` squares, with the CIFAR-10 DataModule's augmentation.

    Every image is resized (shorter side to ``image_size``) and centre-cropped to ``image_size`` x ``image_size``;
    train images then go through the augmentation. Images are converted to RGB when ``channels=3`` and to
    grayscale (L) when ``channels=1``, so grayscale files work with a 3-channel model and colour files with a
    1-channel one; transparency is dropped.

    Every file is checked with PIL at ``setup`` (``Image.verify``: the structure, without decoding pixels) because a
    broken file met in a loader worker would kill a long run hours in, or the final test. ``bad_files="skip"`` drops
    them with one warning that counts them (and replaces a file that still fails to decode, e.g. a truncated JPEG,
    by the next one, with a warning); ``"error"`` stops instead. A class too small for every split keeps at least
    one image in train and is missing from val and/or test, with a warning.

    Args:
        root: the folder of class folders (see the module docstring for both layouts).
        image_size: side of the square images fed to the model (>= 8).
        channels: 3 (RGB) or 1 (grayscale); must match the model's ``in_chans``.
        val_fraction, test_fraction: share of each class held out for validation / test when the folder has no
            such split; each in [0, 1), together < 1. 0 leaves that split empty.
        split_seed: seed of the per-class permutation (fixed so val and test stay unseen across runs) and of the
            images drawn for the statistics.
        pin_memory: batches in page-locked memory, so that the copy to a CUDA device overlaps the step (CUDA
            only; nothing on a CPU).
        hflip, vflip, crop_padding, padding_mode, rotation, scale, noise_std, cutout: as in CIFAR10DataModule
            (``cutout`` at most ``image_size``).
        mean, std: per-channel normalisation; None computes them on up to 2,000 train images at ``setup``, logs
            them and stores them in the hyperparameters (so a checkpoint replays them exactly). Pass a pretrained
            model's values to keep its input distribution when fine-tuning.
        bad_files: ``"skip"`` (drop unreadable files with a warning) or ``"error"``.
    """

    def __init__(
        self,
        root: str,
        image_size: int = 32,
        channels: int = 3,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        num_workers: int = 2,
        pin_memory: bool = False,
        hflip: float = 0.5,
        vflip: float = 0.0,
        crop_padding: int = 4,
        padding_mode: str = "constant",
        rotation: float = 0.0,
        scale: tuple[float, float] | None = None,
        noise_std: float = 0.0,
        cutout: int = 0,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        bad_files: str = "skip",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()  # first, so the shared check reads the augmentation flags by name
        check_augmentation(
            **{k: self.hparams[k] for k in (*AUGMENT_ARGS, "batch_size", "num_workers")}, size=image_size
        )
        for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 <= f < 1.0:
                raise ValueError(f"{name} is a share of each class in [0, 1), got {f}")
        if val_fraction + test_fraction >= 1.0:
            raise ValueError(
                f"val_fraction + test_fraction must be < 1 to leave train images, got {val_fraction} + {test_fraction}"
            )
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8 pixels, got {image_size}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
        if bad_files not in BAD_FILES:
            raise ValueError(f"bad_files must be 'skip' or 'error', got {bad_files!r}")
        if eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1, got {eval_batch_size}")
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither (None: computed from the train split)")
        for name, v in (("mean", mean), ("std", std)):
            if v is not None and len(v) != channels:
                raise ValueError(f"{name} needs one value per channel ({channels}), got {list(v)}")
        if std is not None and min(std) <= 0:
            raise ValueError(f"std values must be > 0, got {list(std)}")
        self.root = Path(root).expanduser()
        self.mode = IMAGE_MODES[channels]
        self._classes: list[str] | None = None
        self._splits: dict[str, list[tuple[Path, int]]] | None = None
        self.train_set = self.val_set = self.test_set = None

    @classmethod
    def describe_splits(cls, args: Mapping[str, Any]) -> dict[str, str]:
        """The folder's own ``val/`` and ``test/`` where it has them (looked up on this machine), else the share of
        each class held out by ``split_seed``."""
        a = init_arguments(cls, args)
        root = Path(a["root"]).expanduser()
        try:
            folders = find_splits(root)
        except DatasetError:  # not on this machine: say the rule
            folders = None
        out = {}
        for split in ("val", "test"):
            share = a[f"{split}_fraction"]
            held = f"{share:.0%} of each class held out of train by {cls.__name__} (split_seed={a['split_seed']})"
            held = held if share else f"none ({split}_fraction=0)"
            own = f"the folder's own {split} split ({folders[split]})" if folders and split in folders else held
            out[split] = f"{root}/{split}/ if the folder has one, else {held}" if folders is None else own
        return out

    # -- classes and files ---------------------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        """Sorted class folder names of the train split; only lists folders, so it is cheap before ``setup``."""
        if self._classes is None:
            folders = find_splits(self.root)
            main = folders.get("train", folders.get("pool"))
            self._classes = check_classes(main, [p.name for p in subdirs(main)])
        return self._classes

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _index(self) -> dict[str, list[tuple[Path, int]]]:
        """List, check and split every file once (all splits: a bad test file would otherwise end a run late)."""
        if self._splits is not None:
            return self._splits
        folders = find_splits(self.root)
        scanned = {split: scan_classes(folder) for split, folder in folders.items()}
        main = "pool" if "pool" in scanned else "train"
        classes = check_classes(folders[main], sorted(scanned[main]))
        for split, per_class in scanned.items():
            extra, missing = sorted(set(per_class) - set(classes)), sorted(set(classes) - set(per_class))
            if extra or missing:
                raise DatasetError(
                    f"{folders[split]} has other class folders than {folders[main]}: "
                    f"extra {extra or 'none'}, missing {missing or 'none'}; every split needs the same classes"
                )
        scanned = self._drop_bad(scanned)
        h = self.hparams
        carve = {s: f for s, f in (("val", h.val_fraction), ("test", h.test_fraction)) if s not in scanned}
        splits = split_per_class([scanned[main][c] for c in classes], carve, h.split_seed)
        for split in ("val", "test"):
            if split in scanned:
                splits[split] = [(p, y) for y, c in enumerate(classes) for p in scanned[split][c]]
        lacking = {s: set(range(len(classes))) - {y for _, y in splits[s]} for s, f in carve.items() if f > 0}
        if any(lacking.values()):
            rank_zero_warn(
                "some classes have too few images for every held-out split (train keeps at least one of each): "
                + "; ".join(
                    f"not in {s}: {', '.join(classes[y] for y in sorted(ys))}" for s, ys in lacking.items() if ys
                )
            )
        self._read_from(*(p for split in splits.values() for p, _ in split))  # what the loaders decode
        self._classes, self._splits = classes, splits
        return splits

    def _drop_bad(self, scanned: dict[str, dict[str, list[Path]]]) -> dict[str, dict[str, list[Path]]]:
        files = [p for per_class in scanned.values() for ps in per_class.values() for p in ps]
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # mostly I/O: threads overlap it
            bad = {p: why for p, why in zip(files, pool.map(check_image, files)) if why is not None}
        if not bad:
            return scanned
        named = "; ".join(f"{p.relative_to(self.root)} ({why})" for p, why in list(bad.items())[:SHOW_FILES])
        more = f" and {len(bad) - SHOW_FILES} more" if len(bad) > SHOW_FILES else ""
        if self.hparams.bad_files == "error":
            raise DatasetError(
                f"{len(bad)} of {len(files)} files under {self.root} are not readable images: {named}{more}. "
                "Delete or replace them, or pass --data.bad_files skip to leave them out with a warning"
            )
        rank_zero_warn(
            f"skipped {len(bad)} of {len(files)} image files under {self.root} that PIL cannot read: {named}{more}"
        )
        out = {s: {c: [p for p in ps if p not in bad] for c, ps in pc.items()} for s, pc in scanned.items()}
        empty = [f"{s}/{c}" for s, pc in out.items() for c, ps in pc.items() if not ps]
        if empty:
            raise DatasetError(f"no readable images left in {', '.join(empty)} under {self.root}")
        return out

    # -- transforms ----------------------------------------------------------------------------------------
    def _resize(self) -> list:
        size = self.hparams.image_size
        return [v2.Resize(size, antialias=True), v2.CenterCrop(size)]  # shorter side to size, then the centre

    def mean_std(self) -> tuple[list[float], list[float]]:
        """(mean, std) given, or computed once from up to ``STATS_IMAGES`` train images and kept in the hparams."""
        h = self.hparams
        if h.mean is None:
            h.mean, h.std = self._compute_stats()
            rank_zero_info(
                f"{type(self).__name__}: mean {h.mean}, std {h.std} from the train split of {self.root} "
                "(pass --data.mean and --data.std to set them)"
            )
        return list(h.mean), list(h.std)

    def _compute_stats(self) -> tuple[list[float], list[float]]:
        h = self.hparams
        train = self._index()["train"]
        g = torch.Generator().manual_seed(h.split_seed)
        pick = torch.randperm(len(train), generator=g)[:STATS_IMAGES].tolist()
        ds = self._dataset([train[i] for i in pick], v2.Compose(self._resize()))
        total = torch.zeros(h.channels, dtype=torch.float64)
        squares, pixels = total.clone(), 0
        for x, _ in DataLoader(ds, batch_size=h.eval_batch_size, num_workers=h.num_workers):
            x = x.double().div(255)  # (B, C, S, S)
            total += x.sum((0, 2, 3))
            squares += x.square().sum((0, 2, 3))
            pixels += x[:, 0].numel()
        mean = total / pixels
        std = (squares / pixels - mean.square()).clamp_min(1e-6).sqrt()  # a flat channel would divide by zero
        return [round(v, 4) for v in mean.tolist()], [round(max(v, 1e-3), 4) for v in std.tolist()]

    def train_transform(self) -> v2.Compose:
        h = self.hparams
        mean, std = self.mean_std()
        aug = augmentation(**{k: h[k] for k in AUGMENT_ARGS}, size=h.image_size, mean=mean, std=std)
        return v2.Compose([*self._resize(), *aug.transforms])

    def eval_transform(self) -> v2.Compose:
        return v2.Compose([*self._resize(), *normalisation(*self.mean_std()).transforms])

    @property
    def preprocessing(self) -> dict:
        """``eval_transform`` as data, in the format of a published weights entry (images converted to RGB or L,
        shorter side resized to the size, centre-cropped, scaled, normalised); computes mean/std if not yet known."""
        h = self.hparams
        mean, std = self.mean_std()
        return {
            "input_size": [h.channels, h.image_size, h.image_size],
            "scale": "uint8 / 255",
            "mean": mean,
            "std": std,
        }

    # -- splits and loaders --------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        splits = self._index()
        if stage in (None, "fit", "validate") and self.train_set is None:
            self.train_set = self._dataset(splits["train"], self.train_transform())
            self.val_set = self._dataset(splits["val"], self.eval_transform())
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = self._dataset(splits["test"], self.eval_transform())

    def _dataset(self, samples: list[tuple[Path, int]], transform: v2.Compose) -> ImageFiles:
        h = self.hparams
        return ImageFiles(samples, self.mode, h.image_size, transform, skip_bad=h.bad_files == "skip")
