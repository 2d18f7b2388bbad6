"""W&B pictures per task family, logged at validation end (``--wandb.media false`` turns them off): one module
per family (``image``, ``language_model``, ``translation``, ``tagging``, ``sequence``), each with a
``callbacks(model, every_n_epochs, samples)`` that returns the family's media callbacks; :func:`media_callbacks`
picks the module by the task's class."""

from __future__ import annotations

import importlib

import lightning as L

from zoo.callbacks.media._base import ValidationMedia

__all__ = ["ValidationMedia", "media_callbacks"]

FAMILIES = {  # task class name -> module of zoo.callbacks.media
    "ImageClassifier": "image",
    "LanguageModel": "language_model",
    "Seq2Seq": "translation",
    "Tagger": "tagging",
    "SequenceClassifier": "sequence",
}


def media_callbacks(model: L.LightningModule, every_n_epochs: int = 1, samples: int = 8) -> list[L.Callback]:
    """The media callbacks for ``model``'s family (none for a task the zoo has no pictures for)."""
    family = next((FAMILIES[c.__name__] for c in type(model).__mro__ if c.__name__ in FAMILIES), None)
    if family is None:
        return []
    module = importlib.import_module(f"zoo.callbacks.media.{family}")
    return module.callbacks(model, every_n_epochs, samples)
