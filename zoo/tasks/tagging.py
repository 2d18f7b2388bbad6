"""Sequence labelling (NER, chunking, POS) with the taggers of ``zoo.nets.tagger``, and span-level scoring that
agrees with conlleval."""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn as nn
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy

from zoo._registry import get_entry
from zoo.tasks._base import Task

__all__ = ["Tagger", "SpanF1", "chunks"]

TOKEN = re.compile(r"\w+(?:['’.-]\w+)*|[^\w\s]")  # splits raw text for tag(): words, inner ' . -, punctuation
UNK_ID = 1  # the DataModule's vocabularies: <pad> 0, <unk> 1
MAX_WORD_LEN = 30  # characters read of a word (the DataModule's default)
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


def _parts(tag: str) -> tuple[str, str]:
    """``B-PER`` -> ("B", "PER"); BILOU's L and U read as E and S; a tag without a type is its own prefix."""
    prefix, _, kind = tag.partition("-")
    return {"L": "E", "U": "S"}.get(prefix, prefix), kind


def chunks(tags: list[str]) -> list[tuple[str, int, int]]:
    """Chunks ``(type, start, end exclusive)`` of a tag sequence in any scheme, by conlleval's rules (a chunk
    ends before B/S/O, after E/S, or where the type changes; one starts at B/S, at I/E after O/E/S, or where the
    type changes), so that an ill-formed sequence is scored as conlleval and seqeval score it."""
    out, start, prev, prev_kind = [], None, "O", ""
    for i, tag in enumerate([*tags, "O"]):
        prefix, kind = _parts(tag)
        ends = prev in ("E", "S") or (prev in ("B", "I") and prefix in ("B", "S", "O"))
        ends = ends or (prev != "O" and prev_kind != kind)
        begins = prefix in ("B", "S") or (prev in ("E", "S", "O") and prefix in ("E", "I"))
        begins = begins or (prefix != "O" and prev_kind != kind)
        if start is not None and ends:
            out.append((prev_kind, start, i))
            start = None
        if begins:
            start = i
        prev, prev_kind = prefix, kind
    return out


def is_chunk_tagset(tags: list[str]) -> bool:
    """Whether the tags are chunk tags (``O`` and ``X-TYPE`` with B/I/E/S/L/U prefixes) rather than POS tags."""
    return all(t == "O" or (t[:2] in {f"{p}-" for p in "BIESLU"} and len(t) > 2) for t in tags) and len(tags) > 1


class SpanF1(Metric):
    """Micro precision/recall/F1 over exact chunks, and F1 per type; counts are summed across DDP ranks."""

    full_state_update = False

    def __init__(self, tag_names: list[str]) -> None:
        super().__init__()
        self.tag_names = list(tag_names)
        self.types = sorted({_parts(t)[1] for t in tag_names if t != "O"})
        for name in ("tp", "pred", "gold"):
            self.add_state(name, torch.zeros(len(self.types)), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor, lengths: torch.Tensor) -> None:
        index = {t: i for i, t in enumerate(self.types)}
        for p, g, n in zip(preds.tolist(), target.tolist(), lengths.tolist()):
            pc = set(chunks([self.tag_names[i] for i in p[:n]]))
            gc = set(chunks([self.tag_names[i] for i in g[:n]]))
            for kind, *_ in pc:
                self.pred[index[kind]] += 1
            for kind, *_ in gc:
                self.gold[index[kind]] += 1
            for kind, *_ in pc & gc:
                self.tp[index[kind]] += 1

    def compute(self) -> dict[str, torch.Tensor]:
        def f1(tp, pred, gold):
            p, r = tp / pred.clamp(min=1), tp / gold.clamp(min=1)
            return p, r, 2 * p * r / (p + r).clamp(min=1e-12)

        p, r, f = f1(self.tp.sum(), self.pred.sum(), self.gold.sum())
        out = {"precision": p, "recall": r, "f1": f}
        per_type = f1(self.tp, self.pred, self.gold)[2]
        out.update({f"f1_{t}": per_type[i] for i, t in enumerate(self.types)})
        return out


class Tagger(Task):
    """One tag per token: NER with span F1 (chunk tag sets), POS with token accuracy.

    Words, characters and tags come from the DataModule at the first fit (``conll2003``, ``conllu``, your own
    column files) and travel in the hyperparameters, so ``load_pretrained(...).tag("EU rejects German call")``
    works alone. ``val_score`` (selects checkpoints) is the span F1 for chunk tags, the token accuracy otherwise;
    both ``*_f1`` (with precision, recall and F1 per type) and ``*_acc`` are logged where they apply.

    Args:
        arch: ``bilstm_crf``, ``bigru_crf`` or ``bilstm_softmax``.
        words, chars, tags, tag_scheme, lowercase_words: filled from the DataModule (its ``scheme`` and
            ``lowercase``; named apart so that Lightning's merge of the two sets of hyperparameters never clashes).
        word_dim, char_encoder, hidden_size, num_layers, dropout: the net; ``net_kwargs`` for the rest
            (``output="perceptron"`` or ``"hinge"``, ``casing_dim``, ``char_dim``, ``char_hidden`` ...).
        word_vectors: a text file of pretrained word vectors (GloVe / word2vec text: ``word v1 v2 ...``) to
            initialise the embeddings of the words it holds; read from disk, never downloaded.
        pretrained: published weights ``name.tag`` to start from; their vocabularies come with them (data with
            others: known words, characters and tags keep their rows, the rest start fresh).
        freeze, unfreeze_epoch, backbone_lr_mult: fine-tuning, the same in every task (see :class:`Task`).
    """

    monitor = ("val_score", "max")  # span F1 for chunk tags (BIO ...), token accuracy for POS

    @classmethod
    def describe(cls, metrics: dict, split: str) -> str:
        if f"{split}_f1" in metrics:
            return f"span F1 {100 * metrics[f'{split}_f1']:.2f}"
        return f"{100 * metrics[f'{split}_acc']:.2f}% token accuracy"

    head_prefixes = ("emissions.", "crf.")
    remappable = ("words", "chars", "tags")
    indexed_params = {
        "words.weight": ("words", (0,)),
        "chars.embedding.weight": ("chars", (0,)),
        "emissions.weight": ("tags", (0,)),
        "emissions.bias": ("tags", (0,)),
        "crf.transitions": ("tags", (0, 1)),
        "crf.start": ("tags", (0,)),
        "crf.end": ("tags", (0,)),
        "crf.allowed": ("tags", ()),  # the scheme's constraints: rebuilt from the tags
        "crf.allowed_start": ("tags", ()),
        "crf.allowed_end": ("tags", ()),
    }

    @staticmethod
    def vocabularies(h) -> dict[str, list | None]:
        return {k: h.get(k) for k in ("words", "chars", "tags")}

    weights_kwargs = (
        "words",
        "chars",
        "tags",
        "tag_scheme",
        "lowercase_words",
        "word_dim",
        "char_encoder",
        "hidden_size",
        "num_layers",
        "dropout",
        "net_kwargs",
    )

    def __init__(
        self,
        arch: str = "bilstm_crf",
        words: list[str] | None = None,
        chars: list[str] | None = None,
        tags: list[str] | None = None,
        tag_scheme: str | None = None,
        lowercase_words: bool = True,
        word_dim: int = 100,
        char_encoder: str = "lstm",
        hidden_size: int = 200,
        num_layers: int = 1,
        dropout: float = 0.5,
        net_kwargs: dict | None = None,
        pretrained: str | None = None,
        freeze: str | None = None,
        unfreeze_epoch: int | None = None,
        backbone_lr_mult: float = 1.0,
        word_vectors: str | None = None,
        optimizer: str = "adamw",
        lr: float = 2e-3,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        schedule: str = "cosine",
        warmup_epochs: float = 0.0,
        grad_clip: float | None = 5.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.check_training_args()
        self.net: nn.Module | None = None
        if pretrained:  # the weights bring their architecture and vocabularies
            self.take_weights_kwargs()
        if self.hparams.words is not None:
            self._build()

    def _build(self) -> None:
        h = self.hparams
        kwargs = {
            "word_dim": h.word_dim,
            "char_encoder": h.char_encoder,
            "hidden_size": h.hidden_size,
            "num_layers": h.num_layers,
            "dropout": h.dropout,
            "tag_names": list(h.tags),
            "scheme": h.tag_scheme,
            **(h.net_kwargs or {}),
        }
        self.net = get_entry(h.arch).builder(
            num_words=len(h.words), num_chars=len(h.chars), num_tags=len(h.tags), **kwargs
        )
        if h.pretrained:
            self.load_weights()
        elif h.word_vectors:
            self._load_vectors(h.word_vectors)
        self.register_buffer("char_classes", char_classes(list(h.chars)), persistent=False)
        self.word_index = {w: i for i, w in enumerate(h.words)}
        self.char_index = {c: i for i, c in enumerate(h.chars)}
        self.chunked = is_chunk_tagset(list(h.tags))
        for stage in ("val", "test"):
            setattr(self, f"{stage}_acc", MulticlassAccuracy(len(h.tags), average="micro", ignore_index=-1))
            if self.chunked:
                setattr(self, f"{stage}_spans", SpanF1(list(h.tags)))

    def _load_vectors(self, path: str) -> None:
        """Copy pretrained vectors into the embedding rows of the words they hold (lowercased lookup as the
        vocabulary is); says how many were found."""
        emb = self.net.words.weight
        found = 0
        file = Path(path).expanduser()
        if not file.is_file():
            raise FileNotFoundError(f"no word-vector file at {file} (GloVe / word2vec text format expected)")
        index = {w: i for i, w in enumerate(self.hparams.words)}
        with open(file, encoding="utf-8", errors="replace") as f, torch.no_grad():
            for line in f:
                parts = line.rstrip().split(" ")
                if len(parts) != emb.shape[1] + 1:
                    continue  # a header line, or vectors of another width
                i = index.get(parts[0].lower() if self.hparams.lowercase_words else parts[0])
                if i is not None:
                    emb[i] = torch.tensor([float(v) for v in parts[1:]])
                    found += 1
        if not found:
            raise ValueError(f"{file} holds no {emb.shape[1]}-dimensional vector for any word of the vocabulary")
        rank_zero_info(f"word vectors: {found:,} of {len(index):,} words from {file}")

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        vocab = {k: getattr(getattr(dm, k, None), "itos", None) for k in ("words", "chars", "tags")}
        if self.net is None:
            if None in vocab.values():
                raise ValueError(
                    "the tagger needs vocabularies: give a DataModule with words, chars, tags (--data conll)"
                )
            h = self.hparams
            h.words, h.chars, h.tags = (list(vocab[k]) for k in ("words", "chars", "tags"))
            dm_h = getattr(dm, "hparams", {})
            h.tag_scheme = dm_h.get("scheme") if is_chunk_tagset(h.tags) else None
            h.lowercase_words = dm_h.get("lowercase", h.lowercase_words)
            self._build()
        elif self.differs_from_data(vocab):
            theirs = getattr(dm, "hparams", {}).get("lowercase")
            if theirs is not None and theirs != self.hparams.lowercase_words:
                raise ValueError(
                    f"the data is read with lowercase={theirs} but the model with {self.hparams.lowercase_words}: "
                    f"pass --data.lowercase {self.hparams.lowercase_words} so that its words map onto the model's"
                )
            for k, entries in vocab.items():
                self.hparams[k] = list(entries) if entries is not None else self.hparams[k]
            if is_chunk_tagset(self.hparams.tags):
                self.hparams.tag_scheme = getattr(dm, "hparams", {}).get("scheme", self.hparams.tag_scheme)
            self._build()

    # -- steps ------------------------------------------------------------------------------------------------
    def forward(self, words, chars, lengths) -> torch.Tensor:
        """Emission scores (B, T, K); the casing feature is computed here from the characters."""
        return self.net(words, chars, casing(chars, self.char_classes), lengths)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        words, chars, lengths, tags = batch
        loss = self.net.loss(self(words, chars, lengths), tags, lengths)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(words))
        return loss

    def _eval_step(self, batch, stage: str) -> None:
        words, chars, lengths, tags = batch
        emissions = self(words, chars, lengths)
        loss = self.net.loss(emissions, tags, lengths)
        pred = self.net.decode(emissions, lengths)
        getattr(self, f"{stage}_acc").update(pred.flatten(), tags.flatten())
        if self.chunked:
            getattr(self, f"{stage}_spans").update(pred.clamp(min=0), tags.clamp(min=0), lengths)
        self.log(f"{stage}_loss", loss, sync_dist=True, batch_size=len(words))

    def _eval_epoch_end(self, stage: str) -> None:
        acc = getattr(self, f"{stage}_acc").compute()
        self.log(f"{stage}_acc", acc)
        score = acc
        if self.chunked:
            spans = getattr(self, f"{stage}_spans")
            values = spans.compute()
            for k, v in values.items():
                self.log(f"{stage}_{k}", v, prog_bar=k == "f1")
            score = values["f1"]
            spans.reset()
        self.log(f"{stage}_score", score, prog_bar=not self.chunked)
        getattr(self, f"{stage}_acc").reset()

    # -- raw text ---------------------------------------------------------------------------------------------
    def _encode(self, tokens: list[list[str]]):
        h = self.hparams
        B, T = len(tokens), max(len(t) for t in tokens)
        C = max(min(len(w), MAX_WORD_LEN) for t in tokens for w in t)
        words, chars = torch.zeros(B, T, dtype=torch.long), torch.zeros(B, T, C, dtype=torch.long)
        for i, sentence in enumerate(tokens):
            for j, w in enumerate(sentence):
                words[i, j] = self.word_index.get(w.lower() if h.lowercase_words else w, UNK_ID)
                ids = [self.char_index.get(c, UNK_ID) for c in w[:MAX_WORD_LEN]]
                chars[i, j, : len(ids)] = torch.tensor(ids)
        return words.to(self.device), chars.to(self.device), torch.tensor([len(t) for t in tokens])

    @torch.no_grad()
    def tag(self, sentences: str | list[str] | list[list[str]]) -> dict | list[dict]:
        """Tag raw sentences (split into words by ``TOKEN``) or pre-split ones (lists of words). Returns, per
        sentence, ``{"tokens", "tags", "spans"}``, spans ``(text, type, start, end)`` over tokens (chunk tag sets;
        tags in the training scheme)."""
        if self.net is None:
            raise RuntimeError("the tagger has no vocabularies yet: train it, or load a checkpoint / published weights")
        single = isinstance(sentences, str)
        batch = [sentences] if single else list(sentences)
        tokens = [TOKEN.findall(s) if isinstance(s, str) else list(s) for s in batch]
        if not tokens or any(not t for t in tokens):
            raise ValueError("an empty sentence: give at least one word per sentence")
        words, chars, lengths = self._encode(tokens)
        with self.evaluating():
            pred = self.net.decode(self(words, chars, lengths), lengths).cpu()
        out = []
        for toks, row in zip(tokens, pred.tolist()):
            tags = [self.hparams.tags[i] for i in row[: len(toks)]]
            spans = [(" ".join(toks[a:b]), kind, a, b) for kind, a, b in chunks(tags)] if self.chunked else []
            out.append({"tokens": toks, "tags": tags, "spans": spans})
        return out[0] if single else out

    def predict(self, sentences: str | list[str] | list[list[str]]) -> list[dict]:
        """``tag`` that always returns a list: one ``{"tokens", "tags", "spans"}`` per sentence (a single string
        gives a list of one)."""
        return [self.tag(sentences)] if isinstance(sentences, str) else self.tag(sentences)
