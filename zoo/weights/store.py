"""Where published weights files are, on this machine or at their url: the checkpoints folder, then the user
cache, then a download into the cache. Every file is checked against its sha256 before a byte is parsed.

A download goes to a temporary file beside its destination, is checked, then renamed, so that an interrupted or
wrong download never leaves a file that a later run would find.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tempfile
import urllib.request
from pathlib import Path

__all__ = [
    "PretrainedError",
    "CHECKPOINTS_ENV",
    "checkpoint_dir",
    "cache_dir",
    "local_places",
    "find_file",
    "sha256_of",
]

DOWNLOAD_TIMEOUT_S = 60  # per blocking socket operation (connect, each read), not for the whole file
PACKAGED = Path(__file__).resolve().parent / "published"  # the weights inside an installed wheel
REPOSITORY = Path(__file__).resolve().parents[2] / "checkpoints"  # a source checkout (editable install)
CHECKPOINTS_ENV = "ZOO_CHECKPOINTS"  # another weights folder: a manifest.json and the files it names


class PretrainedError(RuntimeError):
    """Published weights cannot be found, verified or loaded; the message says why and what to do."""


def checkpoint_dir() -> Path:
    """``$ZOO_CHECKPOINTS``, else the weights that an installed wheel carries, else the repository's
    ``checkpoints/``."""
    env = os.environ.get(CHECKPOINTS_ENV)
    if env:
        return Path(env).expanduser()
    return PACKAGED if PACKAGED.is_dir() else REPOSITORY


def cache_dir() -> Path:
    """``$ZOO_CACHE`` or ``~/.cache/zoo``: where downloaded weights are kept."""
    env = os.environ.get("ZOO_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "zoo"


def file_hash(path: str | Path, h=None):
    """``h`` (default: a new sha256) updated with the file at ``path``, read 1 MiB at a time."""
    h = hashlib.sha256() if h is None else h
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h


def sha256_of(path: str | Path) -> str:
    """The sha256 of the file at ``path``, as ``sha256sum`` prints it."""
    return file_hash(path).hexdigest()


def local_places(file: str) -> list[Path]:
    """Where a weights file is looked for on this machine, in order: the checkpoints folder, then the cache."""
    return [checkpoint_dir() / file, cache_dir() / file]


def find_file(name: str, spec: dict) -> Path:
    """The verified local path of a file of weights ``name``: ``spec`` holds its ``file``, ``sha256`` and optional
    ``url`` (downloaded into the cache if need be)."""
    places = local_places(spec["file"])
    for path in places:
        if path.is_file():  # a file that is there but wrong is refused, not skipped: it would hide the problem
            return _checked(path, spec["sha256"], fix=_repair(path, spec))
    if not spec.get("url"):
        raise PretrainedError(
            f"a file of the weights {name!r} is missing: looked for {places[0]} and {places[1]}, and the manifest "
            f"gives no url to download it from. Put {spec['file']} (sha256 {spec['sha256']}) in one of those folders."
        )
    return _download(name, spec["url"], places[1], spec["sha256"])


def _repair(path: Path, spec: dict) -> str:
    """What to do about a local file with the wrong sha256: put the published one back where it came from; deleting
    it helps only when the entry has a ``url`` to download it from again (without one, the weights are then gone)."""
    origin = {REPOSITORY: "restore it (git checkout in the repository)", PACKAGED: "reinstall lightning-zoo"}
    fix = origin.get(path.parent.resolve(), f"put the published file (sha256 {spec['sha256']}) in its place")
    return fix + (", or delete it to download it again" if spec.get("url") else "")


def _checked(path: Path, sha256: str, fix: str) -> Path:
    """``path``, after checking that it has the manifest's sha256."""
    digest = sha256_of(path)
    if digest != sha256:
        raise PretrainedError(
            f"{path} has sha256 {digest}, the manifest says {sha256}: the file is corrupt or was replaced. "
            f"Refusing to load it; {fix}."
        )
    return path


def _download(name: str, url: str, dest: Path, sha256: str) -> Path:
    """Download ``url`` to ``dest`` through a temporary file in the same folder, kept only when complete and with
    the manifest's sha256 (``os.replace`` is atomic there, so concurrent downloads, e.g. DDP ranks, are safe)."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    retry = f"Nothing was kept in {dest.parent}; run again to retry, or put the file there yourself (sha256 {sha256})"
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None else None
            columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
            progress = Progress(*columns, console=Console(stderr=True), disable=not sys.stderr.isatty())
            digest, received = hashlib.sha256(), 0
            with progress:
                task = progress.add_task(name, total=total)
                # http.client returns b"" (no error) when the connection drops before Content-Length bytes
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    progress.update(task, advance=len(chunk))
        if total is not None and received < total:
            raise PretrainedError(
                f"downloading {name!r} from {url} stopped after {received} of {total} bytes (connection dropped). "
                f"{retry}."
            )
        if digest.hexdigest() != sha256:
            raise PretrainedError(
                f"{url} sent a file with sha256 {digest.hexdigest()}, the manifest says {sha256}: the download is "
                f"corrupt or the server holds other weights. Refusing to load it. {retry}."
            )
        os.replace(tmp, dest)
    except (OSError, http.client.HTTPException, ValueError) as e:  # URLError, HTTPError, timeouts, bad URLs
        raise PretrainedError(f"downloading {name!r} from {url} failed ({type(e).__name__}: {e}). {retry}.") from e
    finally:
        tmp.unlink(missing_ok=True)  # gone after os.replace; removed on any failure
    return dest
