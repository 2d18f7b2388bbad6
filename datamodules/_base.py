"""What the DataModules share: the four loader hooks over named splits, and (for the image DataModules) loaders
over the ``train_set`` / ``val_set`` / ``test_set`` that ``setup`` builds, sized by the ``batch_size``,
``eval_batch_size`` and ``num_workers`` hyperparameters, with a training loader that resumes mid-epoch exactly."""

from __future__ import annotations

import inspect
import itertools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

__all__ = [
    "EpochSampler",
    "EvalShard",
    "EpochShuffle",
    "ResumableLoader",
    "SplitLoaders",
    "SplitDataModule",
    "init_arguments",
    "run_seed",
]


def run_seed() -> int:
    """The run's seed, as ``seed_everything`` (the CLI's ``--seed_everything``) set it; 0 without one."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def init_arguments(cls: type, args: Mapping[str, Any]) -> dict[str, Any]:
    """``args`` (a DataModule's saved init arguments, perhaps only some) completed with the defaults of ``cls``."""
    empty = inspect.Parameter.empty
    defaults = {k: p.default for k, p in inspect.signature(cls).parameters.items() if p.default is not empty}
    return {**defaults, **args}


class EpochSampler(DistributedSampler):
    """This process's share of a permutation seeded by ``(seed, epoch)``, as ``(index, augmentation seed)`` keys.

    The second item seeds the random augmentation of that sample (``datamodules._augment.seeded``), so an image
    is augmented the same way whichever loader worker reads it and whatever was drawn before. A
    ``DistributedSampler``, so Lightning keeps it under DDP (``num_replicas`` and ``rank`` come from the trainer)
    and calls ``set_epoch`` each epoch; ``skip`` samples are left out once, at the start of the next pass.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.skip = 0

    def __iter__(self):
        start, self.skip = self.skip, 0
        base = (self.seed * 1_000_003 + self.epoch) * len(self.dataset)
        for i in itertools.islice(super().__iter__(), start, None):
            yield i, (base + i) % 2**63


class EvalShard(DistributedSampler):
    """This process's share of an evaluation split under DDP: every ``num_replicas``-th index from ``rank``, so the
    ranks read each example exactly once between them. Lightning's own ``DistributedSampler`` repeats examples until
    every rank has as many (41 are read as 42 on 2 ranks), and val/test metrics, summed over the ranks, then count
    some twice. A ``DistributedSampler``, so Lightning keeps it. A rank may get one batch fewer, which evaluation
    allows: its only collectives are at the epoch end (metric syncs)."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.indices = unpadded_share(len(dataset), num_replicas, rank)
        self.num_samples = self.total_size = len(self.indices)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def unpadded_share(n: int, num_replicas: int, rank: int) -> range:
    """The indices of ``n`` examples that rank ``rank`` of ``num_replicas`` evaluates (every ``num_replicas``-th);
    an empty share is refused: that rank would skip the evaluation loop, and the others would wait for it."""
    if n < num_replicas:
        raise ValueError(
            f"an evaluation split of {n} examples for {num_replicas} processes: each process needs at least one; "
            "use fewer processes (--trainer.devices) or a larger split"
        )
    return range(rank, n, num_replicas)


class EpochShuffle(RandomSampler):
    """A shuffle seeded by ``seed + epoch``, the rule of ``DistributedSampler``; Lightning calls ``set_epoch`` each
    epoch. A ``RandomSampler``, so that under DDP Lightning puts a shuffling ``DistributedSampler`` in its place (in
    a batch sampler, where a sampler of the DataModule's own cannot be kept)."""

    def __init__(self, data_source, seed: int = 0) -> None:
        super().__init__(data_source)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(len(self.data_source), generator=g).tolist())


class ResumableLoader(DataLoader):
    """A training loader that Lightning saves in checkpoints (it has ``state_dict``): it counts the batches handed
    out this epoch, and a run resumed mid-epoch goes on at the next batch, with the order (and augmentation) of an
    unbroken run, instead of replaying the epoch from its first batch.

    Its sampler is an :class:`EpochSampler` (then ``skip`` counts samples), or its batch sampler (with ``skip``
    counted in batches) reads an epoch-seeded sampler: :class:`EpochShuffle` or Lightning's ``DistributedSampler``.
    """

    _resume: dict | None = None
    _handed_out = 0

    @property
    def _epoch(self) -> int:
        return (self.sampler if self.batch_size else self.batch_sampler.sampler).epoch

    def __iter__(self):
        # A generator, so nothing is drawn before the first batch is asked for: a resuming Lightning calls iter()
        # before it calls set_epoch.
        resume, self._resume = self._resume, None
        self._handed_out = 0
        if resume and resume["epoch"] == self._epoch and 0 < resume["batches"] < len(self):
            self._handed_out = resume["batches"]
            if self.batch_size:
                self.sampler.skip = self._handed_out * self.batch_size
            else:
                self.batch_sampler.skip = self._handed_out
        for batch in super().__iter__():
            self._handed_out += 1
            yield batch

    def state_dict(self) -> dict:
        return {"epoch": self._epoch, "batches": self._handed_out}

    def load_state_dict(self, state: dict) -> None:
        self._resume = dict(state)


class SplitLoaders(L.LightningDataModule):
    """``train_dataloader`` ... ``predict_dataloader`` from one ``_loader(split, train)`` (predict reads test); and
    ``data_files()`` (``datamodules.contract.DataFiles``), the files that ``_read_from`` recorded."""

    def __init__(self) -> None:
        super().__init__()
        self._data_files: dict[Path, None] = {}  # an ordered set: a file read again (setup per stage) counts once

    def data_files(self) -> list[Path]:
        """The files ``setup`` read, absolute, in reading order; ``[]`` before ``setup`` and for generated data."""
        return list(self._data_files)

    def _read_from(self, *paths: Path) -> None:
        """Record ``paths`` as read. Each DataModule calls it where it opens its files, so the list is what was read
        and not a second derivation of the paths that could drift from it. ``absolute``, not ``resolve``: a pipe
        (``/dev/fd/63``) keeps its name and a symlinked data folder the name the user gave."""
        for p in paths:
            self._data_files[Path(p).absolute()] = None

    @classmethod
    def describe_splits(cls, args: Mapping[str, Any]) -> dict[str, str]:
        """Where the ``val`` and ``test`` splits of this DataModule, built with init arguments ``args``, come from,
        in words (what a model card says of the data its figures were measured on); from the arguments alone, so it
        can be said where the data is not.

        This default reads the split arguments the DataModules share: ``val_size``, or ``val_fraction`` and
        ``test_fraction`` (held out by ``split_seed``); ``train_end`` and ``val_end`` (one text cut by position);
        none of them: the dataset's own splits. A DataModule whose splits depend on its files says so itself."""
        a, name = init_arguments(cls, args), cls.__name__
        seed = f", split_seed={a['split_seed']}" if "split_seed" in a else ""
        if "train_end" in a and "val_end" in a:
            cut = f"train_end={a['train_end']}, val_end={a['val_end']}"
            return {
                "val": f"the text from {a['train_end']:.0%} to {a['val_end']:.0%} of its length ({name}: {cut})",
                "test": f"the last {1 - a['val_end']:.0%} of the text ({name}: {cut})",
            }
        if "val_size" in a:
            val = f"{a['val_size']:,} examples held out of train by {name} (val_size={a['val_size']}{seed})"
        elif "val_fraction" in a:
            val = f"held out of the data by {name} (val_fraction={a['val_fraction']}{seed})"
        else:
            val = "the dataset's own validation split"
        if "test_fraction" in a:
            test = f"held out of the data by {name} (test_fraction={a['test_fraction']}{seed})"
        else:
            test = "the dataset's own test split"
        return {"val": val, "test": test}

    def _processes(self) -> tuple[int, int]:
        """(world size, this process's rank) of the trainer's run; (1, 0) without a trainer."""
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _loader(self, split: str, train: bool) -> DataLoader:
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", False)


class SplitDataModule(SplitLoaders):
    train_set: Dataset | None = None
    val_set: Dataset | None = None
    test_set: Dataset | None = None

    def _loader(self, split: str, train: bool) -> DataLoader:
        h = self.hparams
        ds = getattr(self, f"{split}_set")
        workers = {"num_workers": h.num_workers, "persistent_workers": h.num_workers > 0}
        workers["pin_memory"] = h.get("pin_memory", False)
        world, rank = self._processes()
        if not train:
            shard = EvalShard(ds, world, rank) if world > 1 else None
            return DataLoader(ds, batch_size=h.eval_batch_size, sampler=shard, **workers)
        sampler = EpochSampler(ds, num_replicas=world, rank=rank, seed=run_seed())
        # a ragged last batch of 1 breaks BatchNorm; but a split smaller than a batch must still train
        drop_last = sampler.num_samples > h.batch_size
        return ResumableLoader(ds, batch_size=h.batch_size, sampler=sampler, drop_last=drop_last, **workers)
