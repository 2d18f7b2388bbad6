"""Augmented CIFAR-10 (Krizhevsky 2009) from the python-batch format.

Files: ``<data_dir>/cifar10/cifar-10-python.tar.gz`` or the extracted ``cifar-10-batches-py/`` folder (either
directly in ``data_dir`` or in its ``cifar10/`` subfolder). When neither exists, ``prepare_data`` downloads the
canonical archive from Toronto and checks its md5. Files already on disk are validated by *structure* (six
batches, 50,000/10,000 rows of 3,072 uint8, labels 0-9, ten class names), not by md5: a lossless re-packing such
as ``shared/data/cifar10`` has other md5s (its synthesized ``filenames``) and the same pixels. The batches are
pickles, and a pickle can name any Python function to call while it is read: they are read by an unpickler that
rebuilds only what the format holds (dicts, lists, strings, numbers, numpy arrays) and refuses any other global
before anything runs.

Splits: the 50,000 training images are split 45,000/5,000 into train/val by a seeded permutation (He et al.
2016 use the same 45k/5k split for selection); the 10,000 test images are loaded only for ``trainer.test``.
Augmentation (train split only) uses ``torchvision.transforms.v2`` on uint8 tensors, each transform switched
and sized by an argument; Cutout (DeVries & Taylor 2017) is applied after normalisation, so the patch is the
mean colour.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import pickle
import sys
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
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

__all__ = ["CIFAR10DataModule", "load_cifar10", "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR10_CLASSES", "Cutout"]

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE = "cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"  # the Toronto original
DOWNLOAD_CHUNK = 1 << 20  # bytes read (and progress shown) at a time
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
# Per-channel statistics of the 50,000 training images in [0, 1].
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def find_cifar10(data_dir: Path) -> Path | None:
    """The archive or extracted folder under ``data_dir`` (or ``data_dir/cifar10``), folder first."""
    for base in (data_dir / "cifar10", data_dir):
        for candidate in (base / FOLDER, base / ARCHIVE):
            if candidate.exists():
                return candidate
    return None


def download_cifar10(data_dir: Path, url: str | None = None, progress: bool = True) -> Path:
    """Download the archive into ``data_dir/cifar10`` (a progress display on stderr unless ``progress`` is False),
    check its md5, then move it into place atomically; on failure nothing is left behind."""
    url = url or URL
    dest = data_dir / "cifar10" / ARCHIVE
    tmp = dest.with_suffix(".part")
    put_it = (
        f"Put {ARCHIVE} (or the extracted {FOLDER}/ folder) into {data_dir / 'cifar10'}, "
        "or point --data.data_dir / ZOO_DATA_DIR at the folder that holds it."
    )
    md5 = hashlib.md5()
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=30) as r, open(tmp, "wb") as f:
            length = r.headers.get("Content-Length")
            shown = _DownloadProgress(ARCHIVE, int(length) if length else None, enabled=progress)
            # http.client returns b"" (no error) when the connection drops early: the md5 below catches it
            for chunk in iter(lambda: r.read(DOWNLOAD_CHUNK), b""):
                f.write(chunk)
                md5.update(chunk)
                shown.advance(len(chunk))
            shown.close()
    except (OSError, http.client.HTTPException, ValueError) as e:  # URLError, HTTPError, timeouts, bad URLs
        tmp.unlink(missing_ok=True)
        raise DatasetError(
            f"CIFAR-10 is not in {data_dir} and could not be downloaded from {url} ({type(e).__name__}: {e}). {put_it}"
        ) from e
    if md5.hexdigest() != ARCHIVE_MD5:
        tmp.unlink()
        raise DatasetError(
            f"downloaded {url} has md5 {md5.hexdigest()}, expected {ARCHIVE_MD5}; nothing was kept, try again. {put_it}"
        )
    tmp.replace(dest)
    return dest


class _DownloadProgress:
    """Bytes received so far, on stderr: a bar redrawn in place on a terminal, else a line every 10% (logs)."""

    def __init__(self, name: str, total: int | None, enabled: bool = True) -> None:
        self.name, self.total, self.done, self.enabled = name, total, 0, enabled
        self.tty, self.next_tenth = sys.stderr.isatty(), 1

    def advance(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        if self.tty:
            sys.stderr.write("\r" + self._line(bar=True))
            sys.stderr.flush()
        elif self.total and self.done * 10 >= self.next_tenth * self.total:
            print(self._line(), file=sys.stderr, flush=True)
            self.next_tenth = self.done * 10 // self.total + 1

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")
        elif self.enabled and not self.total:  # no Content-Length: no percentages, one line at the end
            print(self._line(), file=sys.stderr, flush=True)

    def _line(self, bar: bool = False) -> str:
        mb = f"{self.done / 1e6:.1f}"
        if not self.total:
            return f"downloading {self.name}: {mb} MB"
        frac = min(self.done / self.total, 1.0)
        shown = f"[{'#' * int(30 * frac):<30}] " if bar else ""
        return f"downloading {self.name}: {shown}{100 * frac:3.0f}% of {self.total / 1e6:.1f} MB ({mb} MB)"


def _read_members(path: Path) -> tuple[dict[str, bytes], list[Path]]:
    """The batches by name, and the files they were read from (the archive, or the folder's seven files)."""
    names = [*TRAIN_BATCHES, "test_batch", "batches.meta"]
    if path.is_dir():
        missing = [n for n in names if not (path / n).is_file()]
        if missing:
            raise DatasetError(f"{path} lacks {', '.join(missing)}; it should hold the six CIFAR-10 python batches")
        return {n: (path / n).read_bytes() for n in names}, [path / n for n in names]
    try:
        with tarfile.open(path, "r:gz") as tar:
            files = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            missing = [n for n in names if n not in files]
            if missing:
                raise DatasetError(f"{path} lacks {', '.join(missing)}; it is not a CIFAR-10 python archive")
            return {n: tar.extractfile(files[n]).read() for n in names}, [path]
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DatasetError(
            f"{path} is corrupt or truncated ({type(e).__name__}: {e}). Delete it and run again to download a fresh "
            f"copy, or replace it with a good {ARCHIVE}."
        ) from e


def _latin1_bytes(text: str, encoding: str) -> bytes:
    """``_codecs.encode`` as Python 3 writes bytes at pickle protocol 2, for the one encoding it uses there."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} (bytes are pickled as latin1)")
    return text.encode("latin1")


def _empty_bytes() -> bytes:  # how protocol 2 writes b"": builtins.bytes with no argument
    return b""


# Every global a CIFAR-10 batch may name, as any Python 2/3 and numpy 1/2 pickled it (numpy 2 renamed numpy.core to
# numpy._core): the functions themselves are taken from this numpy's own pickles, not imported by name.
_NUMPY = {  # (module under numpy.core / numpy._core, name) -> the function
    ("multiarray", "_reconstruct"): np.empty(0).__reduce__()[0],  # an array, protocols 0-4
    ("numeric", "_frombuffer"): np.empty(1, np.uint8).__reduce_ex__(5)[0],  # an array, protocol 5
    ("multiarray", "scalar"): np.int64(0).__reduce__()[0],  # a numpy number (labels written as numpy ints)
}
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    **{(f"numpy.{core}.{mod}", name): fn for core in ("core", "_core") for (mod, name), fn in _NUMPY.items()},
    ("_codecs", "encode"): _latin1_bytes,
    ("__builtin__", "bytes"): _empty_bytes,
    ("builtins", "bytes"): _empty_bytes,
}


class _BatchUnpickler(pickle.Unpickler):
    """Reads one python batch. ``find_class`` is where a pickle asks for the functions it calls (``REDUCE``): only
    the ones that rebuild the format's contents are handed out, anything else stops the read before it runs."""

    def __init__(self, raw: bytes, name: str, source: Path) -> None:
        super().__init__(io.BytesIO(raw), encoding="latin1")  # Python 2 str: latin1 keeps numpy's bytes intact
        self.name, self.source = name, source

    def find_class(self, module: str, name: str):
        found = _ALLOWED_GLOBALS.get((module, name))
        if found is None:
            raise DatasetError(
                f"{self.name} in {self.source} asks to call {module}.{name}, which no CIFAR-10 batch holds (only "
                "dicts, lists, strings, numbers and numpy arrays); refused, nothing was run. The file is not a "
                f"genuine CIFAR-10 batch and may be malicious: delete it and use the archive from {URL}"
            )
        return found


def _unpickle(raw: bytes, name: str, source: Path) -> dict:
    try:
        d = _BatchUnpickler(raw, name, source).load()
    except DatasetError:
        raise
    except Exception as e:  # a damaged pickle can raise almost anything
        raise DatasetError(f"{name} in {source} cannot be read ({type(e).__name__}: {e}); replace the dataset") from e
    if not isinstance(d, dict):
        raise DatasetError(f"{name} in {source} holds a {type(d).__name__}, not a CIFAR-10 batch (a dict)")
    return d


def load_cifar10(path: Path, num_images: tuple[int, int] = (50_000, 10_000)) -> dict:
    """Read and validate the python-batch format; returns uint8 images (N, 3, 32, 32), int64 labels, classes, and
    ``files``: the archive or the batch files read."""
    members, files = _read_members(path)
    meta = _unpickle(members["batches.meta"], "batches.meta", path)
    classes = list(meta.get("label_names", []))
    if len(classes) != 10:
        raise DatasetError(f"batches.meta in {path} lists {len(classes)} classes, CIFAR-10 has 10")
    out = {"classes": classes, "files": files}
    for split, batches, expected in (("train", TRAIN_BATCHES, num_images[0]), ("test", ["test_batch"], num_images[1])):
        xs, ys = [], []
        for name in batches:
            d = _unpickle(members[name], name, path)
            data, labels = d.get("data"), d.get("labels")
            if data is None or labels is None or getattr(data, "ndim", 0) != 2 or data.shape[1] != 3072:
                raise DatasetError(f"{name} in {path} is not a CIFAR-10 batch (need 'data' rows of 3,072 bytes)")
            if str(data.dtype) != "uint8" or len(labels) != data.shape[0]:
                raise DatasetError(f"{name} in {path}: {data.shape[0]} rows of {data.dtype}, {len(labels)} labels")
            y = torch.as_tensor(labels, dtype=torch.int64)
            if y.numel() and (y.min() < 0 or y.max() > 9):
                raise DatasetError(f"{name} in {path} has labels outside 0-9")
            xs.append(torch.from_numpy(data).view(-1, 3, 32, 32))
            ys.append(y)
        x, y = torch.cat(xs), torch.cat(ys)
        if len(x) != expected:
            raise DatasetError(f"{path} holds {len(x)} {split} images, expected {expected}; the dataset is incomplete")
        out[split] = (x, y)
    return out


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
