"""Dropout for sequences: a fresh mask at every time step (``nn.Dropout``), or one mask per sequence shared by
its time steps (variational dropout, Gal & Ghahramani 2016; AWD-LSTM's locked dropout, Merity et al. 2018)."""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["LockedDropout", "sequence_dropout"]


class LockedDropout(nn.Dropout):
    """Dropout with one mask per sequence, the same at each of its time steps (variational dropout): inputs
    ``(B, T, F)`` when ``batch_first``, else ``(T, B, F)``."""

    def __init__(self, p: float = 0.0, batch_first: bool = True) -> None:
        super().__init__(p)
        self.time_dim = 1 if batch_first else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        shape = list(x.shape)
        shape[self.time_dim] = 1
        return x * x.new_empty(shape).bernoulli_(1 - self.p).div_(1 - self.p)


def sequence_dropout(p: float, variational: bool, batch_first: bool = True) -> nn.Dropout:
    """``LockedDropout`` when ``variational``, else ``nn.Dropout``."""
    return LockedDropout(p, batch_first) if variational else nn.Dropout(p)
