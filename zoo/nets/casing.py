"""The casing feature of the taggers (``zoo.nets.tagger``): one of ``CASES`` per word, computed from its
character ids, so that words lowercased for the word vocabulary keep what their case said. Plain torch, beside
the net that embeds it (its ``num_casings`` is ``len(CASES)``); the tagging task computes it for each batch."""

from __future__ import annotations

import torch

__all__ = ["CASES", "casing", "char_classes"]

CASES = ("pad", "lower", "upper", "title", "numeric", "has_digit", "other")


def char_classes(chars: list[str]) -> torch.Tensor:
    """(num_chars, 3) booleans: upper, lower, digit, per character of the vocabulary (specials: none)."""
    rows = [[len(c) == 1 and c.isupper(), len(c) == 1 and c.islower(), len(c) == 1 and c.isdigit()] for c in chars]
    return torch.tensor(rows, dtype=torch.bool)


def casing(chars: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """The casing feature (an index into ``CASES``) of each word (B, T) from its character ids (B, T, C):
    all digits -> numeric, some digit -> has_digit, else lower / upper as ``str.islower`` / ``isupper``, a
    capital first -> title, else other; padding -> 0."""
    f = classes[chars]  # (B, T, C, 3)
    n, upper, lower, digit = (chars != 0).sum(-1), f[..., 0].sum(-1), f[..., 1].sum(-1), f[..., 2].sum(-1)
    case = torch.full_like(n, 6)
    case = torch.where(f[..., 0, 0], 3, case)
    case = torch.where((upper > 0) & (lower == 0), 2, case)
    case = torch.where((lower > 0) & (upper == 0), 1, case)
    case = torch.where(digit > 0, 5, case)
    case = torch.where((digit == n) & (n > 0), 4, case)
    return torch.where(n > 0, case, 0)
