"""What the text tasks share: their vocabulary and tokeniser travel in the hyperparameters, so a model alone
reads raw strings, and data encoded with another vocabulary is refused."""

from __future__ import annotations

import torch

from zoo.tasks._base import Task

__all__ = ["TextTask", "TOKENIZE"]

# The DataModules' tokenisers (datamodules.text), repeated here so that a model alone can read raw strings.
TOKENIZE = {"char": list, "whitespace": str.split}


class TextTask(Task):
    """A task with ``vocab`` (a token list, ids by position), ``tokenizer`` and optionally ``lowercase`` in its
    hyperparameters; ``stoi`` is set when the net is built."""

    stoi: dict[str, int]

    def encode(self, text: str) -> torch.Tensor:
        """Token ids of a raw string with the model's own tokeniser and vocabulary (unknown tokens -> ``<unk>``)."""
        h = self.hparams
        unk = self.stoi.get("<unk>", 0)
        tokens = TOKENIZE[h.tokenizer](text.lower() if h.get("lowercase") else text)
        return torch.tensor([self.stoi.get(t, unk) for t in tokens] or [unk], dtype=torch.long)

    def check_vocab(self, itos: list[str] | None) -> None:
        """Refuse data whose token ids mean other tokens than the model's."""
        mine = list(self.hparams.vocab or [])
        if itos is not None and list(itos) != mine:
            raise ValueError(
                f"the data's vocabulary ({len(itos)} tokens) differs from the model's ({len(mine)}): token ids would "
                "mean other tokens. Use the data the model was trained on."
            )
