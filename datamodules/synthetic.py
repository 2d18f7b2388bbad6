"""Synthetic long-memory tasks, the classic tests of whether a recurrent net can carry information over time.

``adding``: the adding problem (Hochreiter & Schmidhuber 1997, experiment 4; Le et al. 2015). Each step holds
two numbers: a value uniform in [0, 1] and a marker; exactly two steps are marked, one in the first half and one
in the second; the target is the sum of the two marked values. Regression; a prediction counts as correct when
its absolute error is below 0.04 (the 1997 paper's criterion), and predicting the mean 1.0 always gives an MSE of
about 0.167, the baseline to beat.

``copy``: the copy-memory task (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016). ``n_symbols`` random
symbols from an alphabet of ``alphabet`` tokens, then ``length`` blanks with a delimiter at the last ``n_symbols``
+1-th position, after which the net must output the symbols in order. Per-step classification: only the recall
positions count (target -100 elsewhere); guessing gives an accuracy of 1 / ``alphabet``.

Examples are generated from a seed (train, val and test from different seeds), so runs are reproducible and the
splits never share an example. No file is read (``data_files()`` is ``[]``): the settings (``seed``, sizes, task
arguments), logged with the run's config, are the data's identity.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

from datamodules._base import SplitLoaders
from datamodules.text import Vocab, bucket_loader

__all__ = ["AddingDataModule", "CopyMemoryDataModule", "adding_problem", "copy_memory"]

IGNORE = -100  # target of the positions that are not scored (torch's cross-entropy ignore_index)


def adding_problem(n: int, length: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` ``(n, length, 2)`` (value, marker), ``y`` ``(n,)`` the sum of the two marked values."""
    values = torch.rand(n, length, generator=generator)
    half = length // 2
    first = torch.randint(0, half, (n,), generator=generator)
    second = torch.randint(half, length, (n,), generator=generator)
    marks = torch.zeros(n, length)
    rows = torch.arange(n)
    marks[rows, first] = 1.0
    marks[rows, second] = 1.0
    return torch.stack([values, marks], -1), (values * marks).sum(1)


def copy_memory(
    n: int, length: int, n_symbols: int, alphabet: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids ``(n, n_symbols + length + n_symbols)``: symbols 1..alphabet, blank 0 (also the pad), delimiter
    alphabet + 1; targets the symbols at the last ``n_symbols`` steps and ``-100`` elsewhere."""
    symbols = torch.randint(1, alphabet + 1, (n, n_symbols), generator=generator)
    blank, delim = 0, alphabet + 1
    x = torch.full((n, n_symbols + length + n_symbols), blank, dtype=torch.long)
    x[:, :n_symbols] = symbols
    x[:, n_symbols + length - 1] = delim  # "now recall": the symbols are due on the following steps
    y = torch.full_like(x, IGNORE)
    y[:, -n_symbols:] = symbols
    return x, y


class _SyntheticDataModule(SplitLoaders):
    objective = "classify"
    vocab: Vocab | None = None
    input_size: int | None = None
    classes: list[str] = []

    def _make(self, n: int, seed: int):
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        h = self.hparams
        sizes = {"train": h.train_size, "val": h.eval_size, "test": h.eval_size}
        self.datasets = {}
        for offset, (split, n) in enumerate(sizes.items()):
            x, y = self._make(n, h.seed * 3 + offset)
            lengths = torch.full((n,), x.shape[1], dtype=torch.long)
            self.datasets[split] = TensorDataset(x, lengths, y)

    def _loader(self, split: str, train: bool) -> DataLoader:
        data, h = self.datasets[split], self.hparams
        return bucket_loader(data, data.tensors[1].tolist(), h.batch_size, train, h.seed, collate_fn=None)


class AddingDataModule(_SyntheticDataModule):
    """The adding problem over sequences of ``length`` steps (batches ``(x (B, T, 2), lengths, y (B,))``)."""

    objective = "regress"
    input_size = 2

    def __init__(
        self, length: int = 100, train_size: int = 20_000, eval_size: int = 2_000, batch_size: int = 64, seed: int = 0
    ) -> None:
        super().__init__()
        if length < 2 or train_size < 1 or eval_size < 1:
            raise ValueError(f"need length >= 2 and positive sizes; got {length}, {train_size}, {eval_size}")
        self.save_hyperparameters()

    def _make(self, n: int, seed: int):
        return adding_problem(n, self.hparams.length, torch.Generator().manual_seed(seed))


class CopyMemoryDataModule(_SyntheticDataModule):
    """The copy-memory task: recall ``n_symbols`` symbols after ``length`` blank steps (per-step targets)."""

    objective = "tag"

    def __init__(
        self,
        length: int = 50,
        n_symbols: int = 10,
        alphabet: int = 8,
        train_size: int = 20_000,
        eval_size: int = 2_000,
        batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if length < 1 or n_symbols < 1 or alphabet < 2:
            raise ValueError(f"need length >= 1, n_symbols >= 1, alphabet >= 2; got {length}, {n_symbols}, {alphabet}")
        self.save_hyperparameters()
        # token 0 is the blank (and the pad), then the symbols, then the delimiter
        self.vocab = Vocab([str(i) for i in range(1, alphabet + 1)] + ["<go>"], specials=("_",))
        self.classes = self.vocab.itos[: alphabet + 1]  # outputs: blank or a symbol

    def _make(self, n: int, seed: int):
        h = self.hparams
        return copy_memory(n, h.length, h.n_symbols, h.alphabet, torch.Generator().manual_seed(seed))
