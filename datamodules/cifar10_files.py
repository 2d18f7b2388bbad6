"""The CIFAR-10 python-batch files (Krizhevsky 2009): found on disk, downloaded, read and validated.

Files: ``<data_dir>/cifar10/cifar-10-python.tar.gz`` or the extracted ``cifar-10-batches-py/`` folder (either
directly in ``data_dir`` or in its ``cifar10/`` subfolder). ``download_cifar10`` fetches the canonical archive from
Toronto and checks its md5. Files already on disk are validated by *structure* (six batches, 50,000/10,000 rows of
3,072 uint8, labels 0-9, ten class names), not by md5: a lossless re-packing such as ``shared/data/cifar10`` has
other md5s (its synthesized ``filenames``) and the same pixels. The batches are pickles, and a pickle can name any
Python function to call while it is read: they are read by an unpickler that rebuilds only what the format holds
(dicts, lists, strings, numbers, numpy arrays) and refuses any other global before anything runs.
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

from datamodules import DatasetError

__all__ = ["find_cifar10", "download_cifar10", "load_cifar10", "ARCHIVE", "FOLDER", "URL"]

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE = "cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"  # the Toronto original
DOWNLOAD_CHUNK = 1 << 20  # bytes read (and progress shown) at a time
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]


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
    made = [d for d in (dest.parent, *dest.parent.parents) if not d.exists()]  # folders this call creates

    def forget() -> None:  # the partial file, and the folders made for it: an empty cifar10/ would look like data
        tmp.unlink(missing_ok=True)
        for d in made:
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()

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
        forget()
        raise DatasetError(
            f"CIFAR-10 is not in {data_dir} and could not be downloaded from {url} ({type(e).__name__}: {e}). {put_it}"
        ) from e
    if md5.hexdigest() != ARCHIVE_MD5:
        forget()
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
