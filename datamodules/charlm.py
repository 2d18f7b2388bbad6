"""Language-modelling data: any UTF-8 text file as one token stream, cut into contiguous batches for stateful
truncated BPTT.

The stream is split by position: train is the first ``train_end`` of the text, validation up to ``val_end``,
test the rest. For Tiny Shakespeare (the default file, ``<data_dir>/tinyshakespeare/input.txt``) that is
0.85 / 0.90: the test split is the last 10%, the split nanoGPT validates on, and model selection uses 85-90%.

Batches: each split is cut into ``batch_size`` contiguous streams side by side (the classic "batchify"); batch
``i`` holds the ``i``-th window of ``seq_len`` tokens of every stream, with the targets one token later, so a
hidden state carried from batch ``i`` to ``i + 1`` continues the same text. Under DDP every rank trains on its own
``batch_size`` streams (the text is cut into ``world_size * batch_size`` of them), so every rank has the same
number of batches; validation and test cut their text into ``eval_batch_size`` streams whatever the number of
processes and share them out, so that their metric is the one a single process measures. The loader counts the
batches it has yielded and is saved in checkpoints, so a run stopped mid-epoch resumes at the next batch.
"""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, IterableDataset

from datamodules import DatasetError, default_data_dir
from datamodules._base import SplitLoaders
from datamodules.contract import UNK
from datamodules.contract import tokenizer as get_tokenizer
from datamodules.text import Vocab

__all__ = ["CharLMDataModule", "StreamBatches", "StreamLoader"]


class StreamBatches(IterableDataset):
    """``(x, y)`` windows of ``(B, T)`` over ``B`` contiguous streams of this rank; ``skip`` batches are left out
    of the next pass (resuming mid-epoch). ``batch_size`` streams per rank, or with ``shared`` (evaluation)
    ``batch_size`` streams in all, shared out among the ranks (the same cut of the text for any number of them)."""

    def __init__(
        self, ids: torch.Tensor, batch_size: int, seq_len: int, rank: int = 0, world_size: int = 1, shared: bool = False
    ) -> None:
        streams = batch_size if shared else batch_size * world_size
        if streams < world_size:
            raise DatasetError(
                f"eval_batch_size={batch_size} streams for {world_size} processes: each process needs one; raise "
                f"--data.eval_batch_size to {world_size} or more"
            )
        per_stream = (len(ids) - 1) // streams
        if per_stream < 2:
            raise DatasetError(
                f"the split has {len(ids)} tokens: too few for {streams} streams; lower batch_size (or use more text)"
            )
        self.seq_len = min(seq_len, per_stream)
        cut = ids[: streams * per_stream + 1]
        x, y = cut[:-1].view(streams, per_stream), cut[1:].view(streams, per_stream)
        rows = torch.arange(streams)
        per_rank = torch.tensor_split(rows, world_size) if shared else rows.split(batch_size)
        mine = per_rank[rank]
        self.x, self.y = x[mine], y[mine]
        self.position = 0  # batches yielded in the current pass
        self.skip = 0

    def __len__(self) -> int:
        return -(-self.x.shape[1] // self.seq_len)

    def __iter__(self):
        start, self.skip = self.skip, 0
        for i in range(start, len(self)):
            self.position = i + 1
            window = slice(i * self.seq_len, (i + 1) * self.seq_len)
            yield self.x[:, window], self.y[:, window]
        self.position = 0


class StreamLoader(DataLoader):
    """A loader of :class:`StreamBatches` that Lightning saves in checkpoints and restores (it has
    ``state_dict``): a run resumed mid-epoch continues at the next batch instead of replaying the epoch.

    Not ``datamodules._base.ResumableLoader``, which counts the batches it hands out and replays an epoch-seeded
    sampler's order: a stream has no order to replay, it knows its own position (the state checkpoints keep)."""

    def state_dict(self) -> dict:
        return {"position": self.dataset.position}

    def load_state_dict(self, state: dict) -> None:
        self.dataset.skip = int(state["position"])


class CharLMDataModule(SplitLoaders):
    """Args:
    path: a UTF-8 text file (default ``<data_dir>/tinyshakespeare/input.txt``).
    tokenizer: ``char`` or ``whitespace`` (word level); the vocabulary is built on the train split, tokens
        seen fewer than ``min_freq`` times (and unseen ones) become ``<unk>``.
    train_end, val_end: the split points, as fractions of the text.
    batch_size, seq_len: streams per batch and tokens per window (one optimiser step per ``bptt`` of them);
        ``batch_size`` is per process under DDP.
    eval_batch_size: streams the val and test text is cut into, shared out among the processes under DDP (so that
        the metric does not depend on their number).
    """

    licence = (  # of the default dataset; shown by `zoo info`
        "Tiny Shakespeare (karpathy/char-rnn, MIT repository): Shakespeare's text is in the public domain; "
        "your own text file: its own terms"
    )

    def __init__(
        self,
        path: str | None = None,
        data_dir: str | None = None,
        tokenizer: str = "char",
        min_freq: int = 1,
        train_end: float = 0.85,
        val_end: float = 0.9,
        batch_size: int = 64,
        seq_len: int = 128,
        eval_batch_size: int = 16,
    ) -> None:
        super().__init__()
        get_tokenizer(tokenizer)
        if not 0 < train_end < val_end < 1:
            raise ValueError(f"need 0 < train_end < val_end < 1; got {train_end}, {val_end}")
        if batch_size < 1 or seq_len < 1 or eval_batch_size < 1:
            raise ValueError("batch_size, seq_len and eval_batch_size must be >= 1")
        self.save_hyperparameters()
        self.vocab: Vocab | None = None
        self.splits: dict[str, torch.Tensor] = {}

    def file(self) -> Path:
        h = self.hparams
        if h.path:
            return Path(h.path).expanduser()
        root = Path(h.data_dir).expanduser() if h.data_dir else default_data_dir()
        return root / "tinyshakespeare" / "input.txt"

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        h = self.hparams
        path = self.file()
        if not path.is_file():
            raise DatasetError(
                f"no text file at {path}: pass --data.path your.txt, or put Tiny Shakespeare there "
                "(input.txt of karpathy/char-rnn, data/tinyshakespeare)"
            )
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DatasetError(f"{path} is not UTF-8 text ({e}); convert it (iconv -t utf-8)") from e
        self._read_from(path)
        tokens = get_tokenizer(h.tokenizer)(text)
        if len(tokens) < 100:
            raise DatasetError(f"{path} holds {len(tokens)} tokens: too little text for a language model")
        a, b = int(len(tokens) * h.train_end), int(len(tokens) * h.val_end)
        self.vocab = Vocab.build([tokens[:a]], min_freq=h.min_freq, specials=(UNK,))
        ids = torch.tensor(self.vocab.encode(tokens), dtype=torch.long)
        self.splits = {"train": ids[:a], "val": ids[a:b], "test": ids[b:]}
        sizes = ", ".join(f"{k} {len(v):,}" for k, v in self.splits.items())
        rank_zero_info(f"{path.name}: {len(tokens):,} {h.tokenizer} tokens ({sizes}); vocabulary {len(self.vocab)}")

    def _loader(self, split: str, train: bool) -> DataLoader:
        world, rank = self._processes()
        batch_size = self.hparams.batch_size if train else self.hparams.eval_batch_size
        ds = StreamBatches(self.splits[split], batch_size, self.hparams.seq_len, rank, world, shared=not train)
        return StreamLoader(ds, batch_size=None)  # the dataset yields whole batches, in order
