"""Sequence labelling (NER, chunking, POS) with the taggers of ``zoo.nets.tagger``: training on a tagging DataModule
(``datamodules.contract.TaggingData``), span F1 for chunk tags (``zoo.tasks.spans``), and tagging raw text."""

from __future__ import annotations

import re
from collections.abc import Sized
from typing import Any

import torch
import torch.nn as nn
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import IterableDataset
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from datamodules.contract import MAX_WORD_LEN, UNK_ID, TaggingData, settings
from zoo._registry import get_entry
from zoo.nets.casing import casing, char_classes
from zoo.tasks._base import Task
from zoo.tasks.spans import SpanF1, chunks, is_chunk_tagset
from zoo.tasks.word_vectors import load_word_vectors

__all__ = ["Tagger"]

TOKEN = re.compile(r"\w+(?:['’.-]\w+)*|[^\w\s]")  # splits raw text for tag(): words, inner ' . -, punctuation


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
        max_word_len: characters of a word that ``tag`` reads (default: the contract's ``MAX_WORD_LEN``); taken
            from the DataModule's ``max_word_len`` at every setup where it has one, since its batches cut words
            there (one name, and one value on both sides, so the merge never clashes).
        word_dim, char_encoder, hidden_size, num_layers, dropout: the net; ``net_kwargs`` for the rest
            (``output="perceptron"``, ``"hinge"`` or ``"hmm"``, ``casing_dim``, ``char_dim``, ``char_hidden`` ...).
            With ``output="hmm"`` the HMM's statistics are counted from the training split when a fit starts
            (:meth:`count_hmm_statistics`).
        word_vectors: a text file of pretrained word vectors (GloVe / word2vec text: ``word v1 v2 ...``) to
            initialise the embeddings of the words it holds; read from disk, never downloaded.
        pretrained: published weights ``name.tag`` to start from; their vocabularies come with them (data with
            others: known words, characters and tags keep their rows, the rest start fresh).
        freeze, unfreeze_epoch, backbone_lr_mult: fine-tuning, the same in every task (see :class:`Task`).
        compile: ``torch.compile`` the net while fitting (True / False; None: the family's default, off).
    """

    monitor = ("val_score", "max")  # span F1 for chunk tags (BIO ...), token accuracy for POS

    @classmethod
    def describe(cls, metrics: dict, split: str) -> str:
        if f"{split}_f1" in metrics:
            return f"span F1 {100 * metrics[f'{split}_f1']:.2f}"
        return f"{100 * metrics[f'{split}_acc']:.2f}% token accuracy"

    head_prefixes = ("emissions.", "crf.", "hmm.")
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
        "hmm.tag_counts": ("tags", (0,)),  # counted again from the data at each fit (count_hmm_statistics)
        "hmm.start_counts": ("tags", (0,)),
        "hmm.transition_counts": ("tags", (0, 1)),
        "hmm.end_counts": ("tags", (0,)),
        "hmm.allowed": ("tags", ()),
        "hmm.allowed_start": ("tags", ()),
        "hmm.allowed_end": ("tags", ()),
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
        "max_word_len",
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
        max_word_len: int = MAX_WORD_LEN,
        word_dim: int = 100,
        char_encoder: str = "lstm",
        hidden_size: int = 200,
        num_layers: int = 1,
        dropout: float = 0.5,
        net_kwargs: dict[str, Any] | None = None,
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
        compile: bool | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.check_training_args()
        if max_word_len < 1:
            raise ValueError(f"max_word_len must be >= 1; got {max_word_len}")
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
            load_word_vectors(self.net.words.weight, list(h.words), h.word_vectors, h.lowercase_words)
        self.register_buffer("char_classes", char_classes(list(h.chars)), persistent=False)
        self.word_index = {w: i for i, w in enumerate(h.words)}
        self.char_index = {c: i for i, c in enumerate(h.chars)}
        self.chunked = is_chunk_tagset(list(h.tags))
        for stage in ("val", "test"):
            setattr(self, f"{stage}_acc", MulticlassAccuracy(len(h.tags), average="micro", ignore_index=-1))
            setattr(self, f"{stage}_mean_loss", MeanMetric())
            if self.chunked:
                setattr(self, f"{stage}_spans", SpanF1(list(h.tags)))

    def fit_to_data(self, stage: str) -> None:
        dm = self.datamodule
        names = ("words", "chars", "tags")
        vocab = {k: getattr(dm, k).itos for k in names} if isinstance(dm, TaggingData) else dict.fromkeys(names)
        dm_h = settings(dm)
        if dm_h.get("max_word_len") is not None:  # how the data cuts words, whatever the stage: tag() reads so too
            self.adopt(max_word_len=dm_h["max_word_len"])
        if self.net is None:
            if None in vocab.values():
                raise ValueError(
                    "the tagger needs vocabularies: give a DataModule with words, chars, tags (--data conll)"
                )
            h = self.hparams
            h.words, h.chars, h.tags = (list(vocab[k]) for k in names)
            h.tag_scheme = dm_h.get("scheme") if is_chunk_tagset(h.tags) else None
            h.lowercase_words = dm_h.get("lowercase", h.lowercase_words)
            self._build()
        elif self.differs_from_data(vocab):
            theirs = dm_h.get("lowercase")
            if theirs is not None and theirs != self.hparams.lowercase_words:
                raise ValueError(
                    f"the data is read with lowercase={theirs} but the model with {self.hparams.lowercase_words}: "
                    f"pass --data.lowercase {self.hparams.lowercase_words} so that its words map onto the model's"
                )
            for k, entries in vocab.items():
                self.hparams[k] = list(entries) if entries is not None else self.hparams[k]
            if is_chunk_tagset(self.hparams.tags):
                self.hparams.tag_scheme = dm_h.get("scheme", self.hparams.tag_scheme)
            self._build()

    # -- the HMM's statistics (output="hmm") ---------------------------------------------------------------------
    def on_train_start(self) -> None:
        super().on_train_start()
        if getattr(self.net, "hmm", None) is not None:
            self.count_hmm_statistics()

    @torch.no_grad()
    def count_hmm_statistics(self, chunk: int = 512) -> None:
        """Fill the counts of the hybrid's HMM (``zoo.nets.hmm``: tag priors, start, transition and end
        probabilities) from every sentence of the trainer's training set, replacing what they held.

        Why here and so: the estimates are closed-form maximum-likelihood counts, so they are counted exactly rather
        than learnt by gradient (which would only approach them). They are counted when a fit starts, from the
        training loader's dataset itself, item by item in order through the loader's own ``collate_fn`` (the batch
        format the task trains on; no sampler, no random draw, so the run's randomness is untouched): the whole
        split, whatever ``limit_train_batches`` reads, with a DataModule or with loaders given to ``fit`` alike.
        Not during the first epoch's batches: under DDP a ``DistributedSampler`` pads the last shard with repeated
        sentences, ``limit_train_batches`` would count a part, and a resume mid-epoch could count batches twice.
        The counts are buffers, so checkpoints, published weights and exports carry them; a resumed run counts
        again after its checkpoint is restored and gets the same numbers (the same data), and fine-tuning on other
        data counts that data. Under DDP every process counts its own full copy of the split (the samplers shard
        batches, not the dataset), and the processes' counts are checked equal. The sanity-check validation of a
        first fit runs before this: on zero counts, i.e. uniform priors and transitions."""
        loaders = self.trainer.train_dataloader
        loader = loaders[0] if isinstance(loaders, (list, tuple)) and len(loaders) == 1 else loaders
        data, collate = getattr(loader, "dataset", None), getattr(loader, "collate_fn", None)
        if isinstance(data, IterableDataset) or not (isinstance(data, Sized) and hasattr(data, "__getitem__")):
            raise ValueError(
                "output='hmm' counts its tag statistics from the whole training set: give one training DataLoader "
                f"over a map-style dataset (with len and indexing), as the tagging DataModules do; got {type(loader)}"
            )
        if len(data) == 0:
            raise ValueError("output='hmm' found an empty training set: there is nothing to count its statistics from")
        hmm = self.net.hmm
        for i in range(0, len(data), chunk):
            _, _, lengths, tags = collate([data[j] for j in range(i, min(i + chunk, len(data)))])
            hmm.count(tags, lengths, reset=i == 0)
        if self.trainer.world_size > 1:
            mine = torch.cat([c.flatten() for c in hmm._counts()])
            every = self.all_gather(mine)  # (world, n)
            if not bool((every == mine).all()):
                raise ValueError(
                    "output='hmm': the DDP processes hold different training sets, so their tag counts differ; each "
                    "process must see the whole training split (shard batches with a sampler, not the dataset)"
                )
        n = int(hmm.tag_counts.sum())
        rank_zero_info(f"HMM statistics counted from the training set: {len(data):,} sentences, {n:,} tags")

    # -- steps ------------------------------------------------------------------------------------------------
    def forward(self, words, chars, lengths) -> torch.Tensor:
        """Emission scores (B, T, K); the casing feature is computed here from the characters."""
        return self.net(words, chars, casing(chars, self.char_classes), lengths)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        words, chars, lengths, tags = batch
        loss = self.net.loss(self(words, chars, lengths), tags, lengths)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(words))
        return loss

    def _eval_step(self, batch, stage: str) -> torch.Tensor:
        words, chars, lengths, tags = batch
        emissions = self(words, chars, lengths)
        loss = self.net.loss(emissions, tags, lengths)
        pred = self.net.decode(emissions, lengths)
        getattr(self, f"{stage}_acc").update(pred.flatten(), tags.flatten())
        if self.chunked:
            getattr(self, f"{stage}_spans").update(pred.clamp(min=0), tags.clamp(min=0), lengths)
        # a torchmetrics mean, whose sums are added over the DDP ranks: Lightning's sync_dist averages its integer
        # count of examples across ranks with truncation (41 on 2 ranks counts as 40) when the ranks hold unequal
        # shares, as evaluation shards do (datamodules._base.EvalShard)
        mean_loss = getattr(self, f"{stage}_mean_loss")
        mean_loss.update(loss.detach(), len(words))
        self.log(f"{stage}_loss", mean_loss, batch_size=len(words))
        return pred

    def validation_step(self, batch, batch_idx: int) -> torch.Tensor:
        """The predicted tags (B, T): the batch-end hooks of callbacks get them (the W&B media score them per type
        over the whole split without decoding again)."""
        return self._eval_step(batch, "val")

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
        cut = h.max_word_len  # as the data cut words (checkpoints from before it was kept: the default)
        B, T = len(tokens), max(len(t) for t in tokens)
        C = max(min(len(w), cut) for t in tokens for w in t)
        words, chars = torch.zeros(B, T, dtype=torch.long), torch.zeros(B, T, C, dtype=torch.long)
        for i, sentence in enumerate(tokens):
            for j, w in enumerate(sentence):
                words[i, j] = self.word_index.get(w.lower() if h.lowercase_words else w, UNK_ID)
                ids = [self.char_index.get(c, UNK_ID) for c in w[:cut]]
                chars[i, j, : len(ids)] = torch.tensor(ids)
        return words.to(self.device), chars.to(self.device), torch.tensor([len(t) for t in tokens])

    @torch.no_grad()
    def tag(self, sentences: str | list[str] | list[list[str]]) -> dict | list[dict]:
        """Tag raw sentences (split into words by ``TOKEN``) or pre-split ones (lists of words). Returns, per
        sentence, ``{"tokens", "tags", "spans"}``, spans ``(text, type, start, end)`` over tokens (chunk tag sets;
        tags in the training scheme). An empty or whitespace-only sentence, or word of a pre-split one, is refused
        with a ValueError naming it."""
        if self.net is None:
            raise RuntimeError("the tagger has no vocabularies yet: train it, or load a checkpoint / published weights")
        single = isinstance(sentences, str)
        tokens = _sentence_tokens([sentences] if single else list(sentences))
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


def _sentence_tokens(batch: list) -> list[list[str]]:
    """The words of each sentence (raw strings split by ``TOKEN``, lists of words kept), refusing no sentence at all,
    an empty or whitespace-only sentence and, in a pre-split one, an empty word: the tagger would tag nothing, or
    guess at a word with no character."""
    if not batch:
        raise ValueError("no sentence given: pass a string, a list of strings or a list of word lists")
    out = []
    for i, s in enumerate(batch):
        if isinstance(s, str):
            words = TOKEN.findall(s)
        elif isinstance(s, (list, tuple)) and all(isinstance(w, str) for w in s):
            words = list(s)
            blank = [j for j, w in enumerate(words) if not w.strip()]
            if blank:
                raise ValueError(
                    f"sentence {i}, word {blank[0]} ({words[blank[0]]!r}) is empty or only whitespace: "
                    "give pre-split sentences as lists of words"
                )
        else:
            raise ValueError(f"sentence {i} is of type {type(s).__name__}: give a string or a list of words")
        if not words:
            raise ValueError(f"sentence {i} ({s!r}) is empty or only whitespace: give at least one word per sentence")
        out.append(words)
    return out
