"""Raw text <-> token ids for one side of a translation model, from the spec its DataModule wrote
(``datamodules.contract.TranslationData``): kept apart from the task so that the codec, which a model needs
to read and write strings alone, is read (and tested) on its own."""

from __future__ import annotations

import re

from datamodules.contract import UNK_ID, WORD

__all__ = ["TextCodec", "detokenize"]

_CLOSING = frozenset(".,!?;:%)]}")


def detokenize(tokens: list[str]) -> str:
    """Words joined by spaces, without the space before closing punctuation or after an opening bracket, and
    straight double quotes taken as alternately opening and closing."""
    out, glue, quote_open = [], True, False
    for t in tokens:
        closing = t in _CLOSING or (t == '"' and quote_open)
        out.append(t if glue or closing else " " + t)
        glue = t in "([{" or (t == '"' and not quote_open)
        quote_open ^= t == '"'
    return "".join(out)


class TextCodec:
    """Raw text <-> ids for one side, from the DataModule's spec (``tokenizer`` ``word`` with its ``pattern``,
    or ``bpe`` with the serialised ``tokenizers`` model; ``lowercase``; ``vocab``)."""

    def __init__(self, spec: dict) -> None:
        self.spec, self.itos = spec, list(spec["vocab"])
        self.stoi = {t: i for i, t in enumerate(self.itos)}
        if spec["tokenizer"] == "bpe":
            from tokenizers import Tokenizer

            self.bpe, self.pattern = Tokenizer.from_str(spec["bpe"]), re.compile(WORD)
        else:
            self.bpe, self.pattern = None, re.compile(spec["pattern"])

    def tokens(self, text: str) -> list[str]:
        text = text.lower() if self.spec.get("lowercase") else text
        return self.bpe.encode(text).tokens if self.bpe else self.pattern.findall(text)

    def words(self, text: str) -> list[str]:
        """The words of a raw string: the ``word`` tokeniser's own, or ``WORD``'s for ``bpe`` (whose pieces are
        no words), so that word-level BLEU means the same for either."""
        return self.pattern.findall(text)

    def output_words(self, ids: list[int]) -> list[str]:
        """The words of an output: its own tokens for ``word`` (``<unk>`` one of them), the words of its
        decoded text for ``bpe``."""
        return self.words(self.decode(ids)) if self.bpe else [self.itos[i] for i in ids]

    def encode(self, text: str) -> list[int]:
        return [self.stoi.get(t, UNK_ID) for t in self.tokens(text)]

    def decode(self, ids: list[int]) -> str:
        if self.bpe:
            return self.bpe.decode(ids)
        return detokenize([self.itos[i] for i in ids])
