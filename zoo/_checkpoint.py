"""A user's own Lightning checkpoint (a ``.ckpt`` that ``train.py`` wrote) back as its LightningModule, for
inference or evaluation. Resuming a run is Lightning's (``train.py fit --ckpt_path``), not this."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from zoo._publish import model_from_checkpoint, read_checkpoint

__all__ = ["load_checkpoint"]


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> L.LightningModule:
    """The model of a ``.ckpt`` written by ``train.py``, in eval mode on ``map_location``.

    The file is read with ``torch.load(weights_only=True)``: one that needs more is refused, never loaded unsafely.
    The task class comes from the checkpoint's ``arch``; it is rebuilt from the checkpoint's hyperparameters
    (vocabularies included) and must take its ``state_dict`` exactly.
    """
    return model_from_checkpoint(read_checkpoint(path), path).to(map_location).eval()
