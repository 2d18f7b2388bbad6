"""A user's own Lightning checkpoint (a ``.ckpt`` that ``train.py`` wrote) back as its LightningModule, for
inference or evaluation. Resuming a run is Lightning's (``train.py fit --ckpt_path``), not this."""

from __future__ import annotations

import inspect
from pathlib import Path

import lightning as L
import torch

import zoo
from zoo._publish import CheckpointError, read_checkpoint
from zoo._registry import UnknownModelError

__all__ = ["load_checkpoint"]

# Hyperparameters that only initialise weights which the checkpoint's state_dict then replaces: rebuilding with them
# would need the published weights file or the word-vector file on this machine, for nothing.
INIT_ONLY = ("pretrained", "word_vectors")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> L.LightningModule:
    """The model of a ``.ckpt`` written by ``train.py``, in eval mode on ``map_location``.

    The file is read with ``torch.load(weights_only=True)``: one that needs more is refused, never loaded unsafely.
    The task class comes from the checkpoint's ``arch``; it is rebuilt from the checkpoint's hyperparameters
    (vocabularies included) and must take its ``state_dict`` exactly.
    """
    ckpt = read_checkpoint(path)
    hp = ckpt["hyper_parameters"]
    try:
        cls = zoo.task_class(hp["arch"])
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
    return model.to(map_location).eval()
