"""Sequence-labelling data: CoNLL-2003 NER and any CoNLL-style column file, and Universal Dependencies CoNLL-U.

Sentences are blank-line separated; each token line holds whitespace-separated columns, the word in
``word_column`` and the tag in ``tag_column``. ``-DOCSTART-`` lines (document boundaries) are dropped. Every token
line of a file must have the same number of columns: a line that does not is an error naming the file and line.

CoNLL-2003 (``<data_dir>/conll2003``: ``eng.train``, ``eng.testa`` = validation, ``eng.testb`` = test) is in IOB1;
tags are converted on load to ``scheme`` (BIO or BIOES by default; the CRF constrains transitions for it). Spans
do not change under conversion, so span F1 is the same in any scheme (the task scores spans as conlleval does).

CoNLL-U (``<data_dir>/ud_en_ewt``): ten tab-separated columns; comment lines (``#``), multi-word token ranges
(ids ``1-2``: the surface form, not a syntactic word) and empty nodes (ids ``1.1``) are skipped, as the UD guidelines
say a tagger reads the syntactic words; the target is ``upos`` (column 4) or ``xpos`` (column 5).

Batches: ``(words (B, T), chars (B, T, C), lengths (B,), tags (B, T))``, padded with 0 (tags with -1). Words are
ids of their lowercased forms (``lowercase``; the tagger adds a casing feature from the characters), characters
ids of the original forms; vocabularies are built on the train split.
"""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from datamodules import DatasetError, default_data_dir
from datamodules._base import SplitLoaders
from datamodules.contract import MAX_WORD_LEN
from datamodules.text import Vocab, bucket_loader

__all__ = [
    "CoNLLDataModule",
    "CoNLLUDataModule",
    "TaggingDataModule",
    "read_columns",
    "read_conllu",
    "convert_scheme",
    "collate_tagged",
]

Sentence = tuple[list[str], list[str]]  # (words, tags)
SCHEMES = ("IOB1", "BIO", "BIOES", "BILOU")


def _read(path: Path) -> list[str]:
    if not path.is_file():
        raise DatasetError(f"no file at {path}")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path} is not UTF-8 text ({e}); convert it (iconv -t utf-8)") from e


def read_columns(path: Path, word_column: int = 0, tag_column: int = -1) -> list[Sentence]:
    """Sentences of a CoNLL-style column file (see the module docstring)."""
    sentences, words, tags, width = [], [], [], None
    for number, line in enumerate(_read(path), start=1):
        cols = line.split()
        if not cols:
            if words:
                sentences.append((words, tags))
            words, tags = [], []
            continue
        if cols[0] == "-DOCSTART-":
            continue
        width = width or len(cols)
        if len(cols) != width:
            raise DatasetError(f"{path}, line {number}: {len(cols)} columns where the file has {width} ({line!r})")
        try:
            words.append(cols[word_column])
            tags.append(cols[tag_column])
        except IndexError:
            raise DatasetError(
                f"{path}, line {number}: no column {word_column} or {tag_column} in {width} columns; check "
                "--data.word_column / --data.tag_column"
            ) from None
    if words:
        sentences.append((words, tags))
    if not sentences:
        raise DatasetError(f"{path} holds no sentences")
    return sentences


def read_conllu(path: Path, target: str = "upos") -> list[Sentence]:
    """Sentences of a CoNLL-U file with their UPOS or XPOS tags (see the module docstring)."""
    column = {"upos": 3, "xpos": 4}[target]
    sentences, words, tags = [], [], []
    for number, line in enumerate(_read(path), start=1):
        if not line.strip():
            if words:
                sentences.append((words, tags))
            words, tags = [], []
            continue
        if line.startswith("#"):
            continue
        cols = line.split("\t")
        if len(cols) != 10:
            raise DatasetError(f"{path}, line {number}: {len(cols)} tab-separated columns, CoNLL-U has 10")
        if "-" in cols[0] or "." in cols[0]:  # a multi-word token range or an empty node
            continue
        words.append(cols[1])
        tags.append(cols[column])
    if words:
        sentences.append((words, tags))
    if not sentences:
        raise DatasetError(f"{path} holds no sentences")
    return sentences


def convert_scheme(tags: list[str], source: str, target: str) -> list[str]:
    """Chunk tags from ``source`` to ``target`` scheme (IOB1, BIO, BIOES, BILOU); the chunks stay the same.

    A tag continues the open chunk when its prefix is a continuation in ``source`` (``I``; also ``E`` / ``L``)
    and the previous tag is ``B`` or ``I`` of the same type; any other chunk tag opens a new chunk."""
    continuation = {"IOB1": "I", "BIO": "I", "BIOES": "IE", "BILOU": "IL"}[source]
    chunks: list[list] = []  # [start, end (exclusive), type]
    prev_prefix, prev_kind = "O", ""
    for i, tag in enumerate(tags):
        prefix, _, kind = tag.partition("-")
        if kind and prefix in continuation and prev_kind == kind and prev_prefix in "BI" and chunks:
            chunks[-1][1] = i + 1
        elif kind:
            chunks.append([i, i + 1, kind])
        prev_prefix, prev_kind = (prefix, kind) if kind else ("O", "")
    out = ["O"] * len(tags)
    last, single = ("L", "U") if target == "BILOU" else ("E", "S")
    for n, (start, end, kind) in enumerate(chunks):
        out[start:end] = [f"I-{kind}"] * (end - start)
        if target == "IOB1":  # B only where a chunk of the same type ends right before
            if n and chunks[n - 1][1] == start and chunks[n - 1][2] == kind:
                out[start] = f"B-{kind}"
            continue
        out[start] = f"B-{kind}"
        if target in ("BIOES", "BILOU"):
            out[end - 1] = f"{last}-{kind}" if end - start > 1 else f"{single}-{kind}"
    return out


class TaggingDataModule(SplitLoaders):
    """Vocabularies and batches for ``train`` / ``val`` / ``test`` sentences from ``load_sentences``; subclasses
    read from ``folder()``: ``path``, else ``<data_dir>/<default_folder>``."""

    objective = "tag"
    default_folder = ""

    def __init__(self) -> None:
        super().__init__()
        self.datasets: dict[str, list] = {}

    def _check_sizes(self) -> None:
        h = self.hparams
        if min(h.batch_size, h.eval_batch_size, h.min_freq, h.max_word_len) < 1:
            raise ValueError("batch_size, eval_batch_size, min_freq and max_word_len must be >= 1")

    def folder(self) -> Path:
        h = self.hparams
        if h.path:
            return Path(h.path).expanduser()
        return (Path(h.data_dir).expanduser() if h.data_dir else default_data_dir()) / self.default_folder

    def load_sentences(self) -> dict[str, list[Sentence]]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        h = self.hparams
        splits = self.load_sentences()
        train = splits["train"]
        norm = (lambda w: w.lower()) if h.lowercase else (lambda w: w)  # noqa: E731
        self.words = Vocab.build(([norm(w) for w in ws] for ws, _ in train), min_freq=h.min_freq)
        self.chars = Vocab.build((c for ws, _ in train for w in ws for c in w), min_freq=1)
        self.tags = Vocab(sorted({t for _, ts in train for t in ts}, key=lambda t: (t != "O", t)), specials=())
        if len(self.tags) < 2:
            raise DatasetError(
                f"the train split has one tag ({self.tags.itos}): check the tag column (--data.tag_column)"
            )
        unseen = sorted({t for s in ("val", "test") for _, ts in splits[s] for t in ts} - set(self.tags.itos))
        if unseen:
            raise DatasetError(
                f"tags {unseen[:5]} appear in val/test but never in train: the model could not predict them. Check "
                "the tag column and scheme of those files"
            )
        for split, sentences in splits.items():
            self.datasets[split] = [self._encode(ws, ts, norm) for ws, ts in sentences]
        sizes = ", ".join(f"{s} {len(d):,}" for s, d in self.datasets.items())
        rank_zero_info(
            f"{type(self).__name__}: {sizes} sentences; {len(self.words):,} words, {len(self.chars)} characters, "
            f"{len(self.tags)} tags"
        )

    def _encode(self, words: list[str], tags: list[str], norm) -> tuple:
        chars = [torch.tensor(self.chars.encode(w[: self.hparams.max_word_len])) for w in words]
        return torch.tensor(self.words.encode([norm(w) for w in words])), chars, torch.tensor(self.tags.encode(tags))

    def _loader(self, split: str, train: bool) -> DataLoader:
        h, data = self.hparams, self.datasets[split]
        bs = h.batch_size if train else h.eval_batch_size
        return bucket_loader(data, [len(x[0]) for x in data], bs, train, h.seed, collate_tagged)


def collate_tagged(batch):
    """``[(words, chars, tags), ...]`` to padded ``(words (B, T), chars (B, T, C), lengths (B,), tags (B, T))``."""
    B, T = len(batch), max(len(b[0]) for b in batch)
    C = max(len(c) for b in batch for c in b[1])
    words, chars = torch.zeros(B, T, dtype=torch.long), torch.zeros(B, T, C, dtype=torch.long)
    tags = torch.full((B, T), -1, dtype=torch.long)
    for i, (w, cs, t) in enumerate(batch):
        words[i, : len(w)], tags[i, : len(w)] = w, t
        for j, c in enumerate(cs):
            chars[i, j, : len(c)] = c
    return words, chars, torch.tensor([len(b[0]) for b in batch]), tags


class CoNLLDataModule(TaggingDataModule):
    """Args:
    path: a folder with ``train`` / ``val`` / ``test`` column files (``eng.train`` / ``eng.testa`` / ``eng.testb``,
        or ``train.txt``, ``dev.txt`` / ``valid.txt`` / ``val.txt``, ``test.txt``, any of ``.txt .conll .tsv``);
        default ``<data_dir>/conll2003``.
    word_column, tag_column: columns of the word and the tag (CoNLL-2003: 0 and -1).
    source_scheme, scheme: the files' chunk scheme (CoNLL-2003: IOB1) and the one to train in (BIO or BIOES); a
        non-chunk tag set (POS) passes through with ``scheme`` equal to ``source_scheme``.
    lowercase, min_freq: the word vocabulary (lowercased words seen ``min_freq`` times; the rest ``<unk>``).
    max_word_len: characters read of each word (the tagger keeps the number, and reads raw text the same way).
    """

    licence = (  # of the default dataset; shown by `zoo info`
        "CoNLL-2003: annotations by Tjong Kim Sang & De Meulder 2003 over Reuters RCV1 text, which "
        "NIST/Reuters distribute under a research-use agreement: redistribution rights are unclear. Your own "
        "files: their own terms"
    )

    default_folder = "conll2003"

    def __init__(
        self,
        path: str | None = None,
        data_dir: str | None = None,
        word_column: int = 0,
        tag_column: int = -1,
        source_scheme: str = "IOB1",
        scheme: str = "BIOES",
        lowercase: bool = True,
        min_freq: int = 1,
        max_word_len: int = MAX_WORD_LEN,
        batch_size: int = 32,
        eval_batch_size: int = 128,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (("source_scheme", source_scheme), ("scheme", scheme)):
            if value.upper() not in SCHEMES:
                raise ValueError(f"{name} must be one of {', '.join(SCHEMES)}; got {value!r}")
        self.save_hyperparameters()
        self._check_sizes()

    def load_sentences(self) -> dict[str, list[Sentence]]:
        h, folder = self.hparams, self.folder()
        if not folder.is_dir():
            raise DatasetError(f"no folder at {folder}: give --data.path, a folder of train/val/test column files")
        names = {
            "train": ("eng.train", "train"),
            "val": ("eng.testa", "dev", "valid", "val"),
            "test": ("eng.testb", "test"),
        }
        out = {}
        for split, stems in names.items():
            files = [folder / f"{s}{ext}" for s in stems for ext in ("", ".txt", ".conll", ".tsv")]
            found = next((f for f in files if f.is_file()), None)
            if found is None:
                looked = ", ".join(f.name for f in files[:6])
                raise DatasetError(f"{folder} has no {split} file (looked for {looked}, ...)")
            sentences = read_columns(found, h.word_column, h.tag_column)
            self._read_from(found)
            src, dst = h.source_scheme.upper(), h.scheme.upper()
            if src != dst:
                sentences = [(ws, convert_scheme(ts, src, dst)) for ws, ts in sentences]
            out[split] = sentences
        return out


class CoNLLUDataModule(TaggingDataModule):
    """Universal Dependencies: ``*-ud-train/dev/test.conllu`` in ``path`` (default ``<data_dir>/ud_en_ewt``), with
    ``target`` ``upos`` or ``xpos`` tags. Other arguments as :class:`CoNLLDataModule`."""

    licence = (  # of the default dataset; shown by `zoo info`
        "Universal Dependencies English-EWT: CC BY-SA 4.0. Your own files: their own terms"
    )

    default_folder = "ud_en_ewt"

    def __init__(
        self,
        path: str | None = None,
        data_dir: str | None = None,
        target: str = "upos",
        lowercase: bool = True,
        min_freq: int = 1,
        max_word_len: int = MAX_WORD_LEN,
        batch_size: int = 32,
        eval_batch_size: int = 128,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if target not in ("upos", "xpos"):
            raise ValueError(f"target must be 'upos' or 'xpos'; got {target!r}")
        self.save_hyperparameters()
        self._check_sizes()

    def load_sentences(self) -> dict[str, list[Sentence]]:
        h, folder = self.hparams, self.folder()
        out = {}
        for split, name in (("train", "train"), ("val", "dev"), ("test", "test")):
            found = sorted(folder.glob(f"*-ud-{name}.conllu"))
            if not found:
                raise DatasetError(f"{folder} has no *-ud-{name}.conllu; give --data.path, a UD treebank folder")
            out[split] = read_conllu(found[0], h.target)
            self._read_from(found[0])
        return out
