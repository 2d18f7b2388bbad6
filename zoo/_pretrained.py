"""Published weights: the manifest, sha256 verification and safetensors loading.

``checkpoints/manifest.json`` maps ``model.tag`` to an entry: file, sha256, model name and kwargs, class names,
preprocessing, metrics with how they were measured, recipe, hardware and wall time. Weights are the plain net's
``state_dict`` in safetensors (nothing executes on load); the sha256 is checked before a byte is parsed.

A file (the weights, or the kwargs side file) is looked for in ``checkpoint_dir()``, then in ``cache_dir()``, then
downloaded once from the entry's ``url`` into the cache: to a temporary file beside it, checked, then renamed, so
that an interrupted or wrong download never leaves a file that a later run would find.
"""

from __future__ import annotations

import fnmatch
import hashlib
import http.client
import json
import os
import sys
import tempfile
import urllib.request
from pathlib import Path

import torch
import torch.nn as nn
from lightning.pytorch.utilities import rank_zero_info

__all__ = [
    "PretrainedError",
    "checkpoint_dir",
    "cache_dir",
    "read_manifest",
    "get_pretrained",
    "pretrained_names",
    "load_into",
]

HEAD_PREFIX = "head."  # every classifier net names its final layer ``head``
DOWNLOAD_TIMEOUT_S = 60  # per blocking socket operation (connect, each read), not for the whole file


class PretrainedError(RuntimeError):
    """Published weights cannot be found, verified or loaded; the message says why and what to do."""


def checkpoint_dir() -> Path:
    """``$ZOO_CHECKPOINTS`` or the repository's ``checkpoints/``."""
    env = os.environ.get("ZOO_CHECKPOINTS")
    return Path(env).expanduser() if env else Path(__file__).resolve().parents[1] / "checkpoints"


def cache_dir() -> Path:
    """``$ZOO_CACHE`` or ``~/.cache/zoo``: where downloaded weights are kept."""
    env = os.environ.get("ZOO_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "zoo"


def read_manifest(directory: Path | None = None) -> dict[str, dict]:
    path = (directory or checkpoint_dir()) / "manifest.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise PretrainedError(f"{path} is not valid JSON ({e}); restore it from git") from e


def pretrained_names(pattern: str = "*") -> list[str]:
    return sorted(n for n in read_manifest() if fnmatch.fnmatchcase(n, pattern))


def get_pretrained(name: str) -> dict:
    manifest = read_manifest()
    if name not in manifest:
        model = name.split(".")[0]
        same = [n for n in manifest if n.split(".")[0] == model]
        hint = (
            f"available for {model}: {', '.join(sorted(same))}" if same else f"available: {', '.join(sorted(manifest))}"
        )
        raise PretrainedError(f"no published weights named {name!r} in {checkpoint_dir() / 'manifest.json'}; {hint}")
    entry = manifest[name]
    side = entry.get("model_kwargs_file")
    if side:  # large kwargs (vocabularies, tokenisers) stored beside the weights
        path = _resolve(name, side)
        entry = {**entry, "model_kwargs": {**entry["model_kwargs"], **json.loads(path.read_text(encoding="utf-8"))}}
    return entry


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_path(name: str, entry: dict) -> Path:
    return _resolve(name, entry)


def local_places(file: str) -> list[Path]:
    """Where a weights file is looked for on this machine, in order: the checkpoints folder, then the cache."""
    return [checkpoint_dir() / file, cache_dir() / file]


def _resolve(name: str, spec: dict) -> Path:
    """The verified local path of ``spec`` (``file``, ``sha256``, optional ``url``), downloaded if need be."""
    places = local_places(spec["file"])
    for path in places:
        if path.is_file():  # a file that is there but wrong is refused, not skipped: it would hide the problem
            return _checked(path, spec["sha256"], fix="restore it (git checkout) or delete it to download it again")
    if not spec.get("url"):
        raise PretrainedError(
            f"a file of the weights {name!r} is missing: looked for {places[0]} and {places[1]}, and the manifest "
            f"gives no url to download it from. Put {spec['file']} (sha256 {spec['sha256']}) in one of those folders."
        )
    return _download(name, spec["url"], places[1], spec["sha256"])


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


def load_into(net: nn.Module, name: str, *, arch: str, remap: dict[str, tuple] | None = None) -> None:
    """Load published weights ``name`` into ``net`` (built as ``arch``).

    ``remap`` is for a model whose vocabularies differ from the weights' (fine-tuning on other data):
    ``{state key: (vocabulary name, weights' entries, model's entries, dims)}``. Along ``dims`` (the axes that
    the vocabulary indexes), the rows of entries both hold are copied and the model's other rows keep their fresh
    initialisation; ``dims=()`` keeps the model's tensor (buffers rebuilt from the vocabulary). What was mapped
    is logged. A classifier ``head`` of another size, with no vocabulary to map it, is kept freshly initialised,
    and that is logged too."""
    from safetensors.torch import load_file

    entry = get_pretrained(name)
    if entry["model"] != arch:
        raise PretrainedError(
            f"weights {name!r} are for model {entry['model']!r}, not {arch!r}; "
            f"use --model {entry['model']} or weights made for {arch} (zoo.list_pretrained('{arch}*'))"
        )
    state = load_file(weights_path(name, entry))
    own = net.state_dict()
    mapped: dict[str, tuple[int, int]] = {}
    for key, (vocab, old, new, dims) in (remap or {}).items():
        if key in state and key in own:
            state[key], found = _remapped(state[key], own[key], old, new, dims)
            mapped[vocab] = (found, len(new))
    head = [k for k in state if k.startswith(HEAD_PREFIX)]
    reset = any(k in own and own[k].shape != state[k].shape for k in head)
    if reset:
        for k in head:
            del state[k]
    unexpected = [k for k in state if k not in own]
    missing = [k for k in own if k not in state and not (reset and k.startswith(HEAD_PREFIX))]
    bad = [k for k in state if k in own and own[k].shape != state[k].shape]
    if missing or unexpected or bad:
        raise PretrainedError(
            f"weights {name!r} do not fit this {arch}: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"shape mismatch {bad[:5]}; were they built with other model kwargs ({entry['model_kwargs']})?"
        )
    net.load_state_dict(state, strict=not reset)
    for vocab, (found, total) in mapped.items():
        rank_zero_info(
            f"{name}: {vocab}: {found:,} of the data's {total:,} entries are known to the weights and keep their "
            f"learnt rows; {total - found:,} start fresh"
        )
    if reset:
        rank_zero_info(
            f"{name}: classifier reset: the weights have {entry['model_kwargs'].get('num_classes')} classes, "
            f"the model has {getattr(net, 'num_classes', '?')}; backbone loaded"
        )


def _remapped(saved: torch.Tensor, fresh: torch.Tensor, old: list, new: list, dims: tuple[int, ...]):
    """``fresh`` with the rows (along ``dims``) of the entries of ``new`` that ``old`` holds taken from ``saved``;
    and how many entries were found."""
    index = {t: i for i, t in enumerate(old)}
    pairs = [(j, index[t]) for j, t in enumerate(new) if t in index]
    out = fresh.detach().clone()
    if pairs and dims:
        to, src = (torch.tensor(c) for c in zip(*pairs))
        if dims == (0,):
            out[to] = saved[src].to(out.dtype)
        elif dims == (0, 1):
            out[to[:, None], to[None, :]] = saved[src[:, None], src[None, :]].to(out.dtype)
        else:
            raise ValueError(f"cannot map a vocabulary along dims {dims}")
    return out, len(pairs)
