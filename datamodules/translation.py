"""Parallel text for sequence-to-sequence models: Multi30k, or any corpus of your own.

Where the corpus comes from (``path``):
- a folder of split files ``train.<lang>``, ``val.<lang>`` (or ``valid`` / ``dev``), ``test*.<lang>``, plain or
  gzipped, line ``i`` of the source file aligned with line ``i`` of the target file. The default is
  ``<data_dir>/multi30k`` (Multi30k task 1: ``train``, ``val``, ``test_2016_flickr``; Elliott et al. 2016);
- a pair of line-aligned files (``source`` and ``target``), or one ``.tsv`` file with the source in column
  ``source_column`` and the target in ``target_column`` (the first and second by default; other columns ignored):
  split by ``split_seed`` into train / val / test (``val_fraction``, ``test_fraction``);
- ``source`` alone: each line is its own target (a sequence autoencoder's data).

Any readable path works, a pipe too (``--data.source <(cut -f2 corpus.tsv)``): each file is read once (by one
process: under DDP every process reads the files, so give them real files).

Tokenisation (``tokenizer``), learned on the train split only:
- ``word``: the regular expression ``datamodules.contract.WORD`` (runs of letters/digits, with inner apostrophes
  and hyphens kept, or any single other non-space character), a vocabulary of the tokens seen ``min_freq`` times (others
  become ``<unk>``); the model joins its output words by rule (``zoo.tasks.text_codec.detokenize``);
- ``bpe``: byte-pair encoding (Sennrich et al. 2016) with the ``tokenizers`` library, ``bpe_vocab_size`` symbols
  per language, spaces kept as the ``▁`` marker so decoding gives back the exact text.
``lowercase`` lowercases both sides first. Training pairs with a side longer than ``max_len`` tokens (counted after
tokenising, so BPE pieces for ``bpe``) or an empty side are left out, and the log says how many; validation and
test keep every pair that has both sides, so their BLEU is on the whole split.

Batches: ``(src (B, S), src_lengths (B,), tgt (B, T), index (B,))`` with ``tgt`` = ``<bos> ... <eos>``, padded
with 0, bucketed by source length; ``index`` points into ``references[split]`` (the raw target sentences, for
BLEU). ``src_spec`` / ``tgt_spec`` describe each side's tokeniser and vocabulary (JSON-able): the model keeps
them, so it translates raw strings alone.
"""

from __future__ import annotations

import gzip
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from datamodules import DatasetError, default_data_dir
from datamodules._base import SplitLoaders, init_arguments
from datamodules.contract import BOS, EOS, PAD_ID, UNK, WORD
from datamodules.contract import SEQ2SEQ_SPECIALS as SPECIALS  # ids 0-3 on both sides
from datamodules.text import Vocab, bucket_loader

__all__ = ["TranslationDataModule", "WORD", "word_tokenize", "SPECIALS", "read_lines"]

_WORD = re.compile(WORD)


def word_tokenize(text: str) -> list[str]:
    return _WORD.findall(text)


def _check_readable(path: Path) -> None:
    """Refuse a path that names nothing or a folder; anything else that can be opened (a file, a pipe such as
    ``<(cut -f2 corpus.tsv)``, a device) is read as text."""
    if path.is_dir():
        raise DatasetError(f"{path} is a folder: give a text file of one sentence per line")
    if not path.exists():
        raise DatasetError(f"no file at {path}")


def read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file, plain or gzipped, without their line ends."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8", newline="\n") as f:
            return [line.rstrip("\r\n") for line in f]
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path} is not UTF-8 text ({e}); convert it (iconv -t utf-8)") from e
    except (OSError, EOFError) as e:
        raise DatasetError(f"cannot read {path}: {e}") from e


class _Side:
    """One language's tokeniser and vocabulary, learned on the train split."""

    def __init__(self, kind: str, lowercase: bool, lines: list[str], min_freq: int, max_vocab, bpe_size: int) -> None:
        self.kind, self.lowercase = kind, lowercase
        if kind == "bpe":
            self.bpe = _train_bpe([self.prepare(s) for s in lines], bpe_size)
            self.vocab = Vocab(sorted(self.bpe.get_vocab(), key=self.bpe.get_vocab().get), specials=SPECIALS)
        else:
            self.vocab = Vocab.build((self.tokens(s) for s in lines), min_freq, max_vocab, specials=SPECIALS)

    def prepare(self, text: str) -> str:
        return text.lower() if self.lowercase else text

    def tokens(self, text: str) -> list[str]:
        return self.bpe.encode(self.prepare(text)).tokens if self.kind == "bpe" else word_tokenize(self.prepare(text))

    def spec(self) -> dict:
        spec = {"tokenizer": self.kind, "lowercase": self.lowercase, "vocab": self.vocab.itos}
        if self.kind == "bpe":
            spec["bpe"] = self.bpe.to_str()
        else:
            spec["pattern"] = WORD
        return spec


def _train_bpe(lines: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=UNK))
    # words, with punctuation apart; spaces become the marker, so decoding restores the text exactly
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False)
    tok.train_from_iterator(lines, trainer)
    return tok


class TranslationDataModule(SplitLoaders):
    """Parallel text in train / val / test splits (see the module docstring for the layouts and the tokenisers).

    Args:
        path: a folder of split files or a ``.tsv`` file (any readable path, a pipe too); default
            ``<data_dir>/multi30k``.
        source: a file of source lines instead of ``path`` (any readable path, e.g. ``<(cut -f2 corpus.tsv)``;
            read once); given alone, each line is also its own target (a sequence autoencoder's data).
        target: the file of target lines, line ``i`` the translation of source line ``i``.
        data_dir: the folder holding ``multi30k/`` when ``path`` is not given (default ``$ZOO_DATA_DIR``).
        src_lang: the source file suffix in a folder of splits (``train.de``).
        tgt_lang: the target file suffix in a folder of splits (``train.en``).
        source_column: the column of a ``.tsv`` file holding the source (0-based; negative counts from the end).
        target_column: the column of a ``.tsv`` file holding the target (0-based; negative counts from the end).
        tokenizer: ``word`` (a vocabulary of words) or ``bpe`` (byte-pair encoding, ``bpe_vocab_size`` symbols).
        lowercase: lowercase both sides before tokenising.
        min_freq: ``word``: tokens seen fewer times in train become ``<unk>``.
        max_vocab: ``word``: keep at most this many tokens per side (the most frequent).
        bpe_vocab_size: ``bpe``: symbols per language.
        max_len: the longest training pair kept, in tokens of either side (after tokenising, without ``<bos>`` /
            ``<eos>``); longer training pairs are left out, and the log says how many. Validation and test keep every
            pair, so their BLEU is on the whole split.
        val_fraction: share of a corpus without its own splits (a ``.tsv`` file, ``source``/``target``) held out
            for validation; a folder's own val split is used as it is.
        test_fraction: share of such a corpus held out for test.
        split_seed: seed of that split (and of the batch shuffling).
        batch_size: training pairs per batch (bucketed by source length).
        eval_batch_size: pairs per validation / test batch.
        num_workers: loader worker processes.
    """

    licence = (  # of the default dataset; shown by `zoo info`
        "Multi30k: no licence file; its README allows non-commercial research and educational use only "
        "(images: Flickr Terms of Use); cite Elliott et al. 2016. Your own files: their own terms"
    )

    def __init__(
        self,
        path: str | None = None,
        source: str | None = None,
        target: str | None = None,
        data_dir: str | None = None,
        src_lang: str = "de",
        tgt_lang: str = "en",
        source_column: int = 0,
        target_column: int = 1,
        tokenizer: str = "word",
        lowercase: bool = False,
        min_freq: int = 2,
        max_vocab: int | None = None,
        bpe_vocab_size: int = 8000,
        max_len: int = 64,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        split_seed: int = 0,
        batch_size: int = 64,
        eval_batch_size: int = 128,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if tokenizer not in ("word", "bpe"):
            raise ValueError(f"tokenizer must be 'word' or 'bpe'; got {tokenizer!r}")
        if target is not None and source is None:
            raise ValueError("--data.target needs --data.source (the line-aligned source file)")
        if path is not None and source is not None:
            raise ValueError("give either path (a folder of splits or a .tsv) or source/target files, not both")
        if source is not None and (source_column, target_column) != (0, 1):
            raise ValueError(
                "source_column / target_column pick the columns of a .tsv file given as --data.path; with "
                "--data.source (and --data.target) each file is one side: cut the columns out (cut -f2 file.tsv)"
            )
        if min(max_len, batch_size, eval_batch_size, min_freq, bpe_vocab_size) < 1:
            raise ValueError("max_len, batch_size, eval_batch_size, min_freq and bpe_vocab_size must be >= 1")
        if not (0 < val_fraction and 0 < test_fraction and val_fraction + test_fraction < 1):
            raise ValueError(f"need 0 < val_fraction, test_fraction and a sum < 1; got {val_fraction}, {test_fraction}")
        self.save_hyperparameters()
        self.datasets: dict[str, list] = {}
        self.references: dict[str, list[str]] = {}
        self.src_spec: dict | None = None
        self.tgt_spec: dict | None = None

    @classmethod
    def describe_splits(cls, args: Mapping[str, Any]) -> dict[str, str]:
        """A folder of splits (Multi30k by default) brings its own val and test files; a ``.tsv`` file or
        ``source``/``target`` files are split by ``val_fraction``, ``test_fraction`` and ``split_seed``."""
        a = init_arguments(cls, args)
        path = Path(a["path"]).expanduser() if a["path"] else None
        folder = path is None or path.is_dir() or (not path.exists() and not path.suffix)  # as where it was trained
        if a["source"] is not None or not folder:
            return super().describe_splits(args)
        src, tgt = a["src_lang"], a["tgt_lang"]
        if path is None:
            return {
                "val": f"Multi30k's own validation split (val.{src} / val.{tgt})",
                "test": f"Multi30k's own test split (test_2016_flickr.{src} / .{tgt})",
            }
        return {
            "val": f"the corpus folder's own validation split (its val / valid / dev .{src} and .{tgt} files)",
            "test": f"the corpus folder's own test split (its test .{src} and .{tgt} files)",
        }

    # -- reading ----------------------------------------------------------------------------------------------
    def corpus_path(self) -> Path:
        h = self.hparams
        if h.path:
            return Path(h.path).expanduser()
        return (Path(h.data_dir).expanduser() if h.data_dir else default_data_dir()) / "multi30k"

    def load_pairs(self) -> dict[str, list[tuple[str, str]]]:
        """``train`` / ``val`` / ``test`` lists of (source, target) sentences."""
        h = self.hparams
        if h.source is not None:
            src = Path(h.source).expanduser()
            return self._split(self._aligned(src, Path(h.target).expanduser() if h.target else None))
        path = self.corpus_path()
        if path.is_dir():
            if (h.source_column, h.target_column) != (0, 1):
                raise DatasetError(
                    f"{path} is a folder of split files: source_column / target_column pick the columns of a .tsv "
                    "file; leave them out, or give the .tsv file as --data.path"
                )
            return {s: self._aligned(*self._split_files(path, s)) for s in ("train", "val", "test")}
        if path.exists():  # a file, or a pipe (--data.path <(...)): read once
            return self._split(self._read_tsv(path, h.source_column, h.target_column))
        hint = " (Multi30k: put its task1/raw files there)" if not h.path else ""
        raise DatasetError(
            f"no corpus at {path}{hint}: give --data.path (a folder of train/val/test files or a .tsv file) or "
            "--data.source and --data.target"
        )

    def _split_files(self, folder: Path, split: str) -> tuple[Path, Path]:
        names = {"val": ("val", "valid", "dev"), "test": ("test", "test_2016_flickr")}.get(split, (split,))
        pair = []
        for lang in (self.hparams.src_lang, self.hparams.tgt_lang):
            candidates = [folder / f"{n}.{lang}{gz}" for n in names for gz in ("", ".gz")]
            found = [p for p in candidates if p.is_file()]
            if not found:
                raise DatasetError(
                    f"{folder} has no {split} file for {lang!r} (looked for {names[0]}.{lang}[.gz]); check "
                    "--data.src_lang / --data.tgt_lang or put the split there"
                )
            pair.append(found[0])
        return pair[0], pair[1]

    def _lines(self, path: Path) -> list[str]:
        """``read_lines``, recorded as read (``data_files``)."""
        lines = read_lines(path)
        self._read_from(path)
        return lines

    def _aligned(self, src: Path, tgt: Path | None) -> list[tuple[str, str]]:
        """Line ``i`` of ``src`` with line ``i`` of ``tgt`` (of ``src`` itself when None: each file is read once,
        since a pipe cannot be read twice)."""
        for p in (src, tgt):
            if p is not None:
                _check_readable(p)
        a = self._lines(src)
        b = a if tgt is None else self._lines(tgt)
        if len(a) != len(b):
            raise DatasetError(
                f"{src} has {len(a)} lines but {tgt} has {len(b)}: a parallel corpus needs one target line per "
                "source line"
            )
        return list(zip(a, b))

    def _read_tsv(self, path: Path, source_column: int = 0, target_column: int = 1) -> list[tuple[str, str]]:
        pairs = []
        for number, line in enumerate(self._lines(path), start=1):
            if not line.strip():
                continue
            cols = line.split("\t")
            missing = [
                f"{c} (--data.{side}_column)"
                for side, c in (("source", source_column), ("target", target_column))
                if not -len(cols) <= c < len(cols)
            ]
            if missing:
                raise DatasetError(
                    f"{path}, line {number}: {len(cols)} column{'s' if len(cols) > 1 else ''}, no column "
                    f"{' or '.join(missing)}, counted from 0; need source<TAB>target ({line[:60]!r})"
                )
            pairs.append((cols[source_column], cols[target_column]))
        if not pairs:
            raise DatasetError(f"{path} holds no source<TAB>target rows")
        return pairs

    def _split(self, pairs: list[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
        h = self.hparams
        order = list(range(len(pairs)))
        random.Random(h.split_seed).shuffle(order)
        n_val, n_test = max(1, round(len(pairs) * h.val_fraction)), max(1, round(len(pairs) * h.test_fraction))
        if len(pairs) - n_val - n_test < 1:
            raise DatasetError(f"{len(pairs)} sentence pairs are too few to split into train, val and test")
        pick = lambda idx: [pairs[i] for i in sorted(idx)]  # noqa: E731  (corpus order inside a split)
        return {
            "train": pick(order[n_test + n_val :]),
            "val": pick(order[n_test : n_test + n_val]),
            "test": pick(order[:n_test]),
        }

    # -- setup ------------------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        h = self.hparams
        pairs = self.load_pairs()
        empty = {s: sum(1 for a, b in p if not a.strip() or not b.strip()) for s, p in pairs.items()}
        pairs = {s: [(a, b) for a, b in p if a.strip() and b.strip()] for s, p in pairs.items()}
        if not pairs["train"]:
            raise DatasetError("the train split has no pair with both sides")
        sides = []
        for column in (0, 1):
            lines = [p[column] for p in pairs["train"]]
            sides.append(_Side(h.tokenizer, h.lowercase, lines, h.min_freq, h.max_vocab, h.bpe_vocab_size))
        src, tgt = sides
        self.src_spec, self.tgt_spec = src.spec(), tgt.spec()
        bos, eos = tgt.vocab.stoi[BOS], tgt.vocab.stoi[EOS]
        too_long = 0
        for split, ps in pairs.items():
            data, refs = [], []
            for a, b in ps:
                x, y = src.vocab.encode(src.tokens(a)), tgt.vocab.encode(tgt.tokens(b))
                if split == "train" and max(len(x), len(y)) > h.max_len:
                    too_long += 1
                    continue
                data.append((torch.tensor(x), torch.tensor([bos, *y, eos]), len(refs)))
                refs.append(b)
            self.datasets[split], self.references[split] = data, refs
        sizes = ", ".join(f"{s} {len(d):,}" for s, d in self.datasets.items())
        rank_zero_info(
            f"{h.src_lang}->{h.tgt_lang} ({h.tokenizer}): {sizes} pairs; vocabularies {len(src.vocab):,} / "
            f"{len(tgt.vocab):,}"
        )
        rank_zero_info(
            f"max_len={h.max_len} tokens (either side, training split only): left out {too_long:,} of "
            f"{len(pairs['train']):,} training pairs longer than that; val and test keep all theirs"
        )
        dropped = {s: n for s, n in empty.items() if n}
        if dropped:
            rank_zero_info(f"left out pairs with an empty side: {dropped}")

    # -- loaders ----------------------------------------------------------------------------------------------
    def _loader(self, split: str, train: bool) -> DataLoader:
        h, data = self.hparams, self.datasets[split]
        bs = h.batch_size if train else h.eval_batch_size
        lengths = [len(x) for x, _, _ in data]
        return bucket_loader(data, lengths, bs, train, h.split_seed, collate_pairs, h.num_workers)


def collate_pairs(batch, pad_id: int = PAD_ID):
    """``[(src ids, tgt ids, index), ...]`` to ``(src (B, S), src_lengths (B,), tgt (B, T), index (B,))``."""
    src = torch.nn.utils.rnn.pad_sequence([b[0] for b in batch], batch_first=True, padding_value=pad_id)
    tgt = torch.nn.utils.rnn.pad_sequence([b[1] for b in batch], batch_first=True, padding_value=pad_id)
    lengths = torch.tensor([len(b[0]) for b in batch])
    return src, lengths, tgt, torch.tensor([b[2] for b in batch])
