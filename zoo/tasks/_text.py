"""What the text tasks share: their vocabulary and tokeniser travel in the hyperparameters, so a model alone
reads raw strings (with the tokenisers of ``datamodules.contract``, the DataModules' own), and data encoded with
another vocabulary is refused."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

from datamodules.contract import TOKENIZERS, UNK, settings
from zoo.tasks._base import Task

__all__ = ["TextTask", "given_texts", "warn_unknown"]


def given_texts(texts: str | Sequence[str], what: str, *, blank_ok: bool = False) -> list[str]:
    """``texts`` (one string or several) as a list, refusing what a model could only guess at: no input at all, an
    item that is not a string, an empty one, and (unless ``blank_ok``) one of whitespace alone. ``what`` names an
    item in the message (``"source sentence"``: "source sentence 2 ('  ') is ...")."""
    items = [texts] if isinstance(texts, str) else list(texts)
    if not items:
        raise ValueError(f"no {what} given: pass a string or a list of strings")
    for i, text in enumerate(items):
        if not isinstance(text, str):
            raise ValueError(f"{what} {i} is of type {type(text).__name__}, not a string")
        if not (text if blank_ok else text.strip()):
            blank = "empty" if not text else "only whitespace"
            raise ValueError(
                f"{what} {i} ({text!r}) is {blank}: there is nothing to read; pass some text, or leave it out"
            )
    return items


def warn_unknown(what: str, i: int, ids: list[int], unk: int) -> None:
    """Warn when none of the tokens of item ``i`` is in the vocabulary (all ``unk``): the output is a guess."""
    if ids and all(t == unk for t in ids):
        warnings.warn(
            f"{what} {i}: none of its {len(ids)} tokens is in the model's vocabulary, so the output is a guess "
            "(another language or alphabet than the training data's?)",
            stacklevel=3,
        )


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
