"""What one exported graph is: a module of tensors in and tensors out, its named inputs and outputs with their
dynamic axes, the example it is traced with, and the fresh inputs its parity check runs on."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.export import Dim

__all__ = ["Port", "Graph", "dynamic_shapes", "ragged_ids", "PARITY_SHAPES"]

# (batch, length) of the parity check's fresh inputs: other sizes than any example (which has batch 2), a batch of
# one, a length of one, and ragged lengths within each batch (the first sequence is full length, others shorter)
PARITY_SHAPES = ((3, 11), (1, 1), (5, 2), (4, 23))


@dataclass(frozen=True)
class Port:
    """A named input or output. ``shape`` holds ints (fixed) and axis names (dynamic: ``batch``, ``length``...)."""

    name: str
    dtype: torch.dtype
    shape: tuple[int | str, ...]
    doc: str = ""

    def describe(self) -> dict:
        return {
            "name": self.name,
            "dtype": str(self.dtype).removeprefix("torch."),
            "shape": list(self.shape),
            "dynamic_axes": {i: a for i, a in enumerate(self.shape) if isinstance(a, str)},
            **({"doc": self.doc} if self.doc else {}),
        }


@dataclass
class Graph:
    """One file of an export. ``module(*inputs)`` returns a tuple in the order of ``outputs``; ``fresh`` are the
    parity check's inputs; ``suffix`` names the file (``<name>.<suffix>.onnx``; empty: ``<name>.onnx``)."""

    module: nn.Module
    inputs: list[Port]
    outputs: list[Port]
    example: tuple[torch.Tensor, ...]
    fresh: list[tuple[torch.Tensor, ...]] = field(default_factory=list)
    suffix: str = ""
    doc: str = ""

    def describe(self) -> dict:
        return {
            **({"doc": self.doc} if self.doc else {}),
            "inputs": [p.describe() for p in self.inputs],
            "outputs": [p.describe() for p in self.outputs],
        }


def dynamic_shapes(ports: list[Port], module: nn.Module) -> tuple:
    """``torch.export``'s ``dynamic_shapes`` for inputs ``ports`` of ``module``: one ``Dim`` per axis name, shared
    by every input that has that axis (so that the batch of the tokens and of their lengths is one symbol), laid out
    as the signature of ``module.forward`` takes them (a ``*rest`` parameter takes the remaining inputs as one)."""
    dims: dict[str, Dim] = {}
    axes = [
        {i: dims.setdefault(a, Dim(a, min=1)) for i, a in enumerate(port.shape) if isinstance(a, str)} for port in ports
    ]
    out = []
    for param in inspect.signature(module.forward).parameters.values():
        if param.kind is param.VAR_POSITIONAL:
            out.append(tuple(axes[len(out) :]))
            break
        out.append(axes[len(out)])
    return tuple(out)


def ragged_ids(
    batch: int, length: int, low: int, high: int, generator: torch.Generator, pad: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token ids in ``[low, high)`` ``(batch, length)`` padded with ``pad`` after ragged lengths ``(batch,)``
    (the first one ``length``, so that the batch is as long as asked)."""
    lengths = torch.randint(1, length + 1, (batch,), generator=generator)
    lengths[0] = length
    ids = torch.randint(low, high, (batch, length), generator=generator)
    ids = ids.masked_fill(torch.arange(length)[None] >= lengths[:, None], pad)
    return ids, lengths


def pad_ids(rows: list[list[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded ``(B, T)`` ids and their lengths ``(B,)``."""
    lengths = torch.tensor([len(r) for r in rows])
    ids = torch.full((len(rows), int(lengths.max())), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return ids, lengths
