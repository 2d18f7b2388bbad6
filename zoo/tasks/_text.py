"""What the text tasks share: their vocabulary and tokeniser travel in the hyperparameters, so a model alone
reads raw strings (with the tokenisers of ``datamodules.contract``, the DataModules' own), and data encoded with
another vocabulary is refused."""

from __future__ import annotations

import torch

from datamodules.contract import TOKENIZERS, UNK, settings
from zoo.tasks._base import Task

__all__ = ["TextTask"]


class TextTask(Task):
    """A task with ``vocab`` (a token list, ids by position), ``tokenizer`` and optionally ``lowercase`` in its
    hyperparameters; ``stoi`` is set when the net is built."""

    stoi: dict[str, int]

    def encode(self, text: str) -> torch.Tensor:
        """Token ids of a raw string with the model's own tokeniser and vocabulary (unknown tokens -> ``<unk>``)."""
        h = self.hparams
        unk = self.stoi.get(UNK, 0)
        tokens = TOKENIZERS[h.tokenizer](text.lower() if h.get("lowercase") else text)
        return torch.tensor([self.stoi.get(t, unk) for t in tokens] or [unk], dtype=torch.long)

    @staticmethod
    def vocabularies(h) -> dict[str, list | None]:
        return {"vocab": h.get("vocab"), "classes": h.get("classes")}

    def check_text_settings(self, dm) -> None:
        """Refuse data read with another tokeniser or case than the model's: its tokens would not be the
        model's (and fine-tuning could not map them onto the weights' vocabulary)."""
        theirs = settings(dm)
        for key in ("tokenizer", "lowercase"):
            if theirs.get(key) is not None and key in self.hparams and theirs[key] != self.hparams[key]:
                raise ValueError(
                    f"the data is read with {key}={theirs[key]!r} but the model with {key}={self.hparams[key]!r}: "
                    f"pass --data.{key} {self.hparams[key]} so that tokens mean what the model learnt"
                )
