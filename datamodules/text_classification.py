"""Text classification data: your own CSV/TSV file (``text`` and ``label`` columns), and the base class that the
surnames DataModule shares. Batches are ``(ids (B, T), lengths (B,), labels (B,))``, bucketed by length.

The vocabulary and the class names are built from the train split only; ``vocab`` and ``classes`` are public
so the task can build its embedding and classifier to fit (and store both with its weights)."""

from __future__ import annotations

import csv
import random
from collections import Counter, defaultdict
from functools import partial
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from datamodules import DatasetError
from datamodules._base import SplitLoaders
from datamodules.contract import PAD_ID
from datamodules.contract import tokenizer as get_tokenizer
from datamodules.text import Vocab, bucket_loader, pad_collate

__all__ = ["TextClassificationDataModule", "stratified_split"]

Example = tuple[str, str]  # (text, label)


def stratified_split(
    examples: list[Example], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[Example]]:
    """Per class, a seeded shuffle cut into train/val/test by the fractions (at least one train example each).
    Python's ``random`` draws it, not torch as ``image_folders.split_per_class``: each keeps the splits it has drawn
    (the published weights' test splits among them)."""
    by_label: dict[str, list[Example]] = defaultdict(list)
    for ex in examples:
        by_label[ex[1]].append(ex)
    rng = random.Random(seed)
    out: dict[str, list[Example]] = {"train": [], "val": [], "test": []}
    for label in sorted(by_label):
        items = sorted(by_label[label])  # independent of file order
        rng.shuffle(items)
        n_val, n_test = round(len(items) * val_fraction), round(len(items) * test_fraction)
        n_val, n_test = min(n_val, max(len(items) - 1, 0)), min(n_test, max(len(items) - 1 - n_val, 0))
        out["val"] += items[:n_val]
        out["test"] += items[n_val : n_val + n_test]
        out["train"] += items[n_val + n_test :]
    return out


class TextClassificationDataModule(SplitLoaders):
    """Your own labelled texts.

    Args:
        path: a ``.csv`` or ``.tsv`` file (split by ``split_seed``, stratified by label), or a folder holding
            ``train`` / ``val`` / ``test`` files of one of those kinds. A header row names the columns.
        text_column, label_column: column names.
        tokenizer: ``whitespace`` or ``char``; ``lowercase`` before tokenising.
        min_freq, max_vocab: vocabulary built on the train split; other tokens become ``<unk>``.
        max_length: longer sequences are cut to this many tokens (the count is printed).
        val_fraction, test_fraction, split_seed: the split of a single file.
    """

    default_tokenizer = "whitespace"

    def __init__(
        self,
        path: str | None = None,
        text_column: str = "text",
        label_column: str = "label",
        tokenizer: str | None = None,
        lowercase: bool = False,
        min_freq: int = 1,
        max_vocab: int | None = None,
        max_length: int | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self._tokenize = get_tokenizer(tokenizer or self.default_tokenizer)
        if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError(f"need val_fraction, test_fraction >= 0, sum < 1; got {val_fraction}, {test_fraction}")
        if batch_size < 1 or (max_length is not None and max_length < 1):
            raise ValueError(f"need batch_size >= 1 and max_length >= 1 (or None); got {batch_size}, {max_length}")
        if type(self) is TextClassificationDataModule:  # a subclass saves its own arguments (they rebuild it)
            self.save_hyperparameters()
        self.vocab: Vocab | None = None
        self.classes: list[str] = []
        self.class_weights: list[float] = []
        self.datasets: dict[str, list[tuple[torch.Tensor, int]]] = {}

    # -- reading ----------------------------------------------------------------------------------------------
    def load_examples(self) -> dict[str, list[Example]]:
        """The ``train`` / ``val`` / ``test`` examples; subclasses read other formats."""
        h = self.hparams
        if h.path is None:
            raise DatasetError("give the data: --data.path my_texts.csv (columns text,label) or a folder of splits")
        path = Path(h.path).expanduser()
        if path.is_dir():
            files = {s: _find_split(path, s) for s in ("train", "val", "test")}
            return {s: self._read_table(f) for s, f in files.items()}
        if not path.is_file():
            raise DatasetError(f"no file or folder at {path}; give a .csv/.tsv file or a folder of splits")
        return stratified_split(self._read_table(path), h.val_fraction, h.test_fraction, h.split_seed)

    def _read_table(self, path: Path) -> list[Example]:
        h = self.hparams
        delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
        try:
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f, delimiter=delimiter)
                columns = reader.fieldnames or []
                missing = [c for c in (h.text_column, h.label_column) if c not in columns]
                if missing:
                    raise DatasetError(
                        f"{path} has no column {missing[0]!r} (its header: {columns}); pass "
                        "--data.text_column / --data.label_column, or add a header row"
                    )
                rows = []
                for line, row in enumerate(reader, start=2):
                    text, label = row.get(h.text_column), row.get(h.label_column)
                    if not text or not label or not text.strip() or not label.strip():
                        raise DatasetError(f"{path}, line {line}: empty or missing text or label ({row})")
                    rows.append((text, label.strip()))
        except UnicodeDecodeError as e:
            raise DatasetError(f"{path} is not UTF-8 text ({e}); convert it (iconv -t utf-8)") from e
        if not rows:
            raise DatasetError(f"{path} holds no rows under its header")
        self._read_from(path)
        return rows

    # -- setup ------------------------------------------------------------------------------------------------
    def tokens(self, text: str) -> list[str]:
        return self._tokenize(text.lower() if self.hparams.lowercase else text)

    def encode(self, text: str | list[str]) -> torch.Tensor:
        """A text (or its tokens) to token ids (unknown tokens to ``<unk>``), cut to ``max_length``."""
        tokens = self.tokens(text) if isinstance(text, str) else text
        return torch.tensor(self.vocab.encode(tokens[: self.hparams.max_length]), dtype=torch.long)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        h = self.hparams
        splits = self.load_examples()
        if not splits["train"]:
            raise DatasetError("the train split is empty")
        self.classes = sorted({label for _, label in splits["train"]})
        unseen = sorted({label for s in ("val", "test") for _, label in splits[s]} - set(self.classes))
        if unseen:
            raise DatasetError(f"labels {unseen[:5]} appear in val/test but not in train; every class needs train data")
        tokenized = {split: [(self.tokens(t), t, label) for t, label in examples] for split, examples in splits.items()}
        self.vocab = Vocab.build(
            (tokens for tokens, _, _ in tokenized["train"]), min_freq=h.min_freq, max_size=h.get("max_vocab")
        )
        index = {c: i for i, c in enumerate(self.classes)}
        counts = Counter(label for _, label in splits["train"])
        n = sum(counts.values())
        self.class_weights = [n / (len(self.classes) * counts[c]) for c in self.classes]  # inverse frequency
        cut = 0
        for split, examples in tokenized.items():
            data = []
            for tokens, text, label in examples:
                if not tokens:
                    raise DatasetError(f"{split} example {text!r} has no tokens")
                cut += h.max_length is not None and len(tokens) > h.max_length
                data.append((self.encode(tokens), index[label]))
            self.datasets[split] = data
        sizes = ", ".join(f"{s} {len(d)}" for s, d in self.datasets.items())
        rank_zero_info(f"{type(self).__name__}: {sizes}; {len(self.classes)} classes, vocabulary {len(self.vocab)}")
        if cut:
            rank_zero_info(f"{cut} sequences were longer than max_length={h.max_length} and were cut")

    # -- loaders ----------------------------------------------------------------------------------------------
    def _loader(self, split: str, train: bool) -> DataLoader:
        h, data = self.hparams, self.datasets[split]
        return bucket_loader(
            data,
            [len(x) for x, _ in data],
            h.batch_size if train else h.eval_batch_size,
            train,
            h.split_seed,
            partial(pad_collate, pad_id=PAD_ID),
            h.num_workers,
        )


def _find_split(folder: Path, split: str) -> Path:
    names = {"val": ("val", "valid", "validation", "dev")}.get(split, (split,))
    for name in names:
        for ext in (".csv", ".tsv"):
            if (folder / f"{name}{ext}").is_file():
                return folder / f"{name}{ext}"
    raise DatasetError(f"{folder} has no {split}.csv or {split}.tsv; put the {split} split there")
