"""Text building blocks (no torchtext, which is unmaintained): ``Vocab``, padding collation with lengths, and a
length-bucketing batch sampler that also works under DDP. The tokenisers and special tokens are the contract's
(``datamodules.contract``: the tasks read raw text with them too), named here as well."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, Sampler, SequentialSampler

from datamodules._base import EpochShuffle, ResumableLoader, run_seed, unpadded_share
from datamodules.contract import PAD, TEXT_SPECIALS, TOKENIZERS, UNK, tokenizer

__all__ = ["Vocab", "TOKENIZERS", "tokenizer", "pad_collate", "BucketBatchSampler", "bucket_loader", "PAD", "UNK"]


class Vocab:
    """Token <-> id. The specials come first (``<pad>`` = 0, ``<unk>`` = 1); unknown tokens map to ``<unk>``."""

    def __init__(self, tokens: Sequence[str], specials: Sequence[str] = TEXT_SPECIALS) -> None:
        self.itos = list(specials) + [t for t in tokens if t not in specials]
        if len(set(self.itos)) != len(self.itos):
            raise ValueError("vocabulary tokens must be unique")
        self.stoi = {t: i for i, t in enumerate(self.itos)}
        self.specials = list(specials)
        self.unk_id = self.stoi.get(UNK)

    @classmethod
    def build(
        cls,
        sequences: Iterable[Sequence[str]],
        min_freq: int = 1,
        max_size: int | None = None,
        specials: Sequence[str] = TEXT_SPECIALS,
    ) -> Vocab:
        """Most frequent first (ties alphabetical, so the order is deterministic); tokens seen fewer than
        ``min_freq`` times are left out; ``max_size`` counts the specials."""
        counts = Counter(t for seq in sequences for t in seq)
        ranked = sorted((t for t, n in counts.items() if n >= min_freq), key=lambda t: (-counts[t], t))
        if max_size is not None:
            ranked = ranked[: max(max_size - len(specials), 0)]
        return cls(ranked, specials)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    def encode(self, tokens: Iterable[str]) -> list[int]:
        if self.unk_id is None:
            missing = [t for t in tokens if t not in self.stoi]
            if missing:
                raise KeyError(f"tokens not in the vocabulary (which has no {UNK}): {missing[:5]}")
        return [self.stoi.get(t, self.unk_id) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.itos[i] for i in ids]

    def to_dict(self) -> dict:
        """JSON-able (it goes into checkpoints' hyperparameters and the weights manifest)."""
        return {"itos": self.itos, "specials": self.specials}

    @classmethod
    def from_dict(cls, d: dict) -> Vocab:
        return cls(d["itos"], d["specials"])

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=0) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def pad_collate(batch: Sequence[tuple[torch.Tensor, int]], pad_id: int = 0):
    """``[(ids (T_i,), label), ...]`` to ``(ids (B, T_max), lengths (B,), labels (B,))``, padded with ``pad_id``."""
    seqs = [b[0] for b in batch]
    lengths = torch.tensor([len(s) for s in seqs])
    x = torch.full((len(seqs), int(lengths.max())), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = s
    return x, lengths, torch.tensor([b[1] for b in batch])


class BucketBatchSampler(BatchSampler):
    """Batches of similar lengths, so little of each batch is padding.

    Indices come from ``sampler`` (an epoch-seeded shuffle for training, sequential for evaluation, a
    ``DistributedSampler`` that Lightning injects under DDP: each rank then buckets its own shard, and every rank
    gets the same number of batches, as DDP requires). They are taken in pools of ``pool_factor`` batches, sorted
    by length inside the pool and cut into batches; for a shuffling sampler the batches of a pool are then yielded
    in an order seeded by ``seed`` and the sampler's epoch. ``skip`` batches are left out once, at the start of the
    next pass (a run resumed mid-epoch).

    For evaluation (``shuffle=False``) the ``DistributedSampler`` Lightning puts in under DDP is read without its
    padding (it repeats examples so that every rank has as many, and val/test metrics would count them twice):
    each example once over the ranks, as ``datamodules._base.EvalShard`` gives them.
    """

    def __init__(
        self,
        sampler: Sampler[int] | Iterable[int],
        batch_size: int,
        drop_last: bool,
        lengths: Sequence[int] = (),
        pool_factor: int = 50,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(sampler, batch_size, drop_last)
        self.lengths, self.pool_factor, self.shuffle, self.seed = lengths, pool_factor, shuffle, seed
        self.skip = 0

    def __iter__(self) -> Iterator[list[int]]:
        start, self.skip = self.skip, 0
        return itertools.islice(self._batches(), start, None)

    def __len__(self) -> int:
        n = len(self._indices()) if self._unpadded() else len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _unpadded(self) -> bool:
        s = self.sampler
        return not self.shuffle and isinstance(s, DistributedSampler) and not s.shuffle

    def _indices(self) -> list[int]:
        s = self.sampler
        return list(unpadded_share(len(s.dataset), s.num_replicas, s.rank) if self._unpadded() else s)

    def _batches(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed + getattr(self.sampler, "epoch", 0))
        indices = self._indices()
        pool = self.batch_size * self.pool_factor
        for start in range(0, len(indices), pool):
            chunk = sorted(indices[start : start + pool], key=lambda i: self.lengths[i])
            batches = [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
            if self.drop_last and len(batches[-1]) < self.batch_size:
                batches.pop()
            order = torch.randperm(len(batches), generator=g).tolist() if self.shuffle else range(len(batches))
            yield from (batches[i] for i in order)


def bucket_loader(
    data: Sequence, lengths: Sequence[int], batch_size: int, train: bool, seed: int, collate_fn, num_workers: int = 0
) -> DataLoader:
    """A loader of length-bucketed batches of ``data``; for training, shuffled per epoch and resumable mid-epoch."""
    sampler = EpochShuffle(data, run_seed()) if train else SequentialSampler(data)
    batches = BucketBatchSampler(sampler, batch_size, False, lengths, shuffle=train, seed=seed)
    return (ResumableLoader if train else DataLoader)(
        data, batch_sampler=batches, collate_fn=collate_fn, num_workers=num_workers, persistent_workers=num_workers > 0
    )
