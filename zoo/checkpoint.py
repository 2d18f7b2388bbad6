"""A user's own Lightning checkpoint (a ``.ckpt`` that ``train.py`` wrote): read safely (``weights_only``) and
rebuilt as its task, for inference, evaluation or publishing. Resuming a run is Lightning's
(``train.py fit --ckpt_path``), not this."""

from __future__ import annotations

import inspect
import zipfile
from pathlib import Path

import lightning as L
import torch

from zoo._registry import UnknownModelError, task_class

__all__ = ["CheckpointError", "read_checkpoint", "model_from_checkpoint", "load_checkpoint"]


class CheckpointError(RuntimeError):
    """A ``.ckpt`` file is missing, corrupt, unsafe to load, or not from ``train.py``."""


def read_checkpoint(path: str | Path) -> dict:
    """``torch.load(weights_only=True)``: nothing in the file is executed; a file that needs more is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 (truncated zip, pickle refused by weights_only, ...)
        raise CheckpointError(_unreadable(path, e)) from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "arch" not in ckpt.get("hyper_parameters", {}):
        raise CheckpointError(f"{path} is not a lightning-zoo training checkpoint (no state_dict / model arch)")
    return ckpt


ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive, whose directory is at its end


def _unreadable(path: Path, error: Exception) -> str:
    """Why ``torch.load`` failed on ``path``: from the file itself where it shows (empty, or a zip archive cut short:
    a save or a copy that did not finish), else from the error."""
    unfinished = "a save or copy that did not finish; save or copy it again"
    size = path.stat().st_size
    if size == 0:
        return f"{path} cannot be read: it is empty (0 bytes: {unfinished})"
    with open(path, "rb") as f:
        zip_start = f.read(len(ZIP_MAGIC)) == ZIP_MAGIC
    if zip_start and not zipfile.is_zipfile(path):
        cut = f"truncated at {size:,} bytes (a zip archive without its end: {unfinished})"
        return f"{path} cannot be read: it is corrupt, {cut}"
    text = str(error)
    if "WeightsUnpickler error:" in text:  # what torch advises before it (weights_only=False) is what we refuse
        text = text.split("WeightsUnpickler error:", 1)[1]
    first = next((line.strip() for line in text.splitlines() if line.strip()), "no message")
    return (
        f"{path} cannot be read ({type(error).__name__}: {first}): it is corrupt, truncated, or holds Python objects "
        "that weights_only=True refuses; it is not loaded unsafely"
    )


# Hyperparameters that only initialise weights which the checkpoint's state_dict then replaces: rebuilding with them
# would need the published weights file or the word-vector file on this machine, for nothing.
INIT_ONLY = ("pretrained", "word_vectors")


def model_from_checkpoint(ckpt: dict, path: str | Path) -> L.LightningModule:
    """The task of a checkpoint read by :func:`read_checkpoint` (``path`` names it in errors): its class from
    ``arch``, rebuilt from its hyperparameters, its ``state_dict`` loaded strictly."""
    hp = ckpt["hyper_parameters"]
    try:
        cls = task_class(hp["arch"])
    except UnknownModelError as e:
        raise CheckpointError(f"{path} holds model {hp['arch']!r}, which is not registered here: {e}") from e
    accepted = inspect.signature(cls).parameters
    kwargs = {k: v for k, v in hp.items() if not k.startswith("_")}  # LightningCLI's _class_path, _instantiator
    model = cls(**{**kwargs, **{k: None for k in INIT_ONLY if k in accepted}})
    state, own = ckpt["state_dict"], model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"the state_dict of {path} does not fit {cls.__name__}({hp['arch']!r}) rebuilt from its hyperparameters: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, shape (checkpoint vs model) {shapes[:5]}"
        )
    model.load_state_dict(state)
    return model


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> L.LightningModule:
    """The model of a ``.ckpt`` written by ``train.py``, in eval mode on ``map_location``.

    The file is read with ``torch.load(weights_only=True)``: one that needs more is refused, never loaded unsafely.
    The task class comes from the checkpoint's ``arch``; it is rebuilt from the checkpoint's hyperparameters
    (vocabularies included) and must take its ``state_dict`` exactly.
    """
    return model_from_checkpoint(read_checkpoint(path), path).to(map_location).eval()
