"""Published weights: the manifest, sha256 verification and safetensors loading.

``checkpoints/manifest.json`` maps ``model.tag`` to an entry: file, sha256, model name and kwargs, class names,
preprocessing, metrics with how they were measured, recipe, hardware and wall time. Weights are the plain net's
``state_dict`` in safetensors (nothing executes on load); the sha256 is checked before a byte is parsed.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
from pathlib import Path

import torch.nn as nn
from lightning.pytorch.utilities import rank_zero_info

__all__ = ["PretrainedError", "checkpoint_dir", "read_manifest", "get_pretrained", "pretrained_names", "load_into"]

HEAD_PREFIX = "head."  # every classifier net names its final layer ``head``


class PretrainedError(RuntimeError):
    """Published weights cannot be found, verified or loaded; the message says why and what to do."""


def checkpoint_dir() -> Path:
    """``$ZOO_CHECKPOINTS`` or the repository's ``checkpoints/``."""
    env = os.environ.get("ZOO_CHECKPOINTS")
    return Path(env).expanduser() if env else Path(__file__).resolve().parents[1] / "checkpoints"


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
        path = _checked(name, checkpoint_dir() / side["file"], side["sha256"])
        entry = {**entry, "model_kwargs": {**entry["model_kwargs"], **json.loads(path.read_text(encoding="utf-8"))}}
    return entry


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_path(name: str, entry: dict) -> Path:
    return _checked(name, checkpoint_dir() / entry["file"], entry["sha256"])


def _checked(name: str, path: Path, sha256: str) -> Path:
    """``path``, after checking that it exists and has the manifest's sha256."""
    if not path.is_file():
        raise PretrainedError(f"a file of the weights {name!r} is missing: looked for {path}")
    digest = sha256_of(path)
    if digest != sha256:
        raise PretrainedError(
            f"{path} has sha256 {digest}, the manifest says {sha256}: the file is corrupt or was replaced. "
            "Refusing to load it; restore it (git checkout / re-download) and try again."
        )
    return path


def load_into(net: nn.Module, name: str, *, arch: str) -> None:
    """Load published weights ``name`` into ``net`` (built as ``arch``). A classifier of another size is kept
    freshly initialised, and that is logged."""
    from safetensors.torch import load_file

    entry = get_pretrained(name)
    if entry["model"] != arch:
        raise PretrainedError(
            f"weights {name!r} are for model {entry['model']!r}, not {arch!r}; "
            f"use --model {entry['model']} or weights made for {arch} (zoo.list_pretrained('{arch}*'))"
        )
    state = load_file(weights_path(name, entry))
    own = net.state_dict()
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
    if reset:
        rank_zero_info(
            f"{name}: classifier reset: the weights have {entry['model_kwargs'].get('num_classes')} classes, "
            f"the model has {getattr(net, 'num_classes', '?')}; backbone loaded"
        )
