"""Sequence to sequence: translation with the encoder-decoders of ``zoo.nets.seq2seq``, and the sequence
autoencoder. Raw text reaches the net through each side's codec (``zoo.tasks.text_codec``)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics import MeanMetric
from torchmetrics.text import SacreBLEUScore

from datamodules.contract import EOS_ID, PAD_ID, UNK_ID, TranslationData
from zoo._registry import get_entry
from zoo.nets.decoding import Hypothesis
from zoo.tasks._base import Task
from zoo.tasks._text import given_texts, warn_unknown
from zoo.tasks.text_codec import TextCodec

__all__ = ["Seq2Seq"]


class Seq2Seq(Task):
    """Encoder-decoder trained with teacher forcing (cross-entropy with label smoothing), or with a share of its
    own predictions fed back (``teacher_forcing`` < 1).

    Metrics: ``val_loss`` / ``test_loss`` are the teacher-forced NLL per target token (no smoothing) and
    ``*_ppl_tf`` its exponential, the teacher-forced perplexity. ``val_bleu`` is corpus sacreBLEU (13a
    tokenisation, cased) of greedy translations of the detokenised outputs against the raw references;
    ``test_bleu`` the same with beam search (``beam``, ``alpha``), ``test_bleu_greedy`` with greedy decoding, and
    ``test_bleu_tok`` lowercased BLEU over words (a ``word`` model's own tokens, those of the contract's ``WORD``
    pattern for a ``bpe`` one; what tutorials that lowercase and tokenise Multi30k report). With W&B, ``train.py``
    logs a few validation translations (greedy and beam) and their attention at each validation end
    (``zoo.callbacks.media.translation``).

    Args:
        arch: ``seq2seq_gru_attn``, ``seq2seq_lstm_attn``, ``seq2seq_gru`` or ``seq_autoencoder``.
        src_spec, tgt_spec: each side's tokeniser and vocabulary, filled from the DataModule at the first fit.
        embed_dim, hidden_size, num_layers, bidirectional, dropout: the net; ``net_kwargs`` for the rest
            (``attention``, ``input_feeding``, ``tie_embeddings``, ``cell`` ...).
        pretrained: published weights ``name.tag`` to start from; their tokenisers and vocabularies come with
            them (data with other vocabularies: known tokens keep their vectors, the rest start fresh).
        freeze, unfreeze_epoch, backbone_lr_mult: fine-tuning, the same in every task (see :class:`Task`).
        teacher_forcing: the share of steps fed the reference token in training (1.0: always).
        label_smoothing: of the training loss (Szegedy et al. 2016).
        beam, alpha, max_len_a, max_len_b: test-time beam search and its length limit ``a * |src| + b``.
        max_source_len: longer sources are refused by ``translate`` (split them into sentences).
        compile: ``torch.compile`` the net while fitting (True / False; None: the family's default, off).
    """

    monitor = ("val_bleu", "max")
    points_per_unit = 1.0  # BLEU is already in points

    @classmethod
    def describe(cls, metrics: dict, split: str) -> str:
        greedy = metrics.get(f"{split}_bleu_greedy")
        return f"BLEU {metrics[f'{split}_bleu']:.1f}" + (
            f" (greedy {greedy:.1f})" if greedy is not None else " (greedy)"
        )

    head_prefixes = ("out.",)
    remappable = ("src_spec", "tgt_spec")
    indexed_params = {
        "encoder.embedding.weight": ("src", (0,)),
        "tgt_embedding.weight": ("tgt", (0,)),
        "out.weight": ("tgt", (0,)),
        "out.bias": ("tgt", (0,)),
    }

    @staticmethod
    def vocabularies(h) -> dict[str, list | None]:
        return {side: (h.get(f"{side}_spec") or {}).get("vocab") for side in ("src", "tgt")}

    weights_kwargs = (
        "src_spec",
        "tgt_spec",
        "embed_dim",
        "hidden_size",
        "num_layers",
        "bidirectional",
        "dropout",
        "net_kwargs",
    )

    def __init__(
        self,
        arch: str = "seq2seq_gru_attn",
        src_spec: dict | None = None,
        tgt_spec: dict | None = None,
        embed_dim: int = 256,
        hidden_size: int = 512,
        num_layers: int = 1,
        bidirectional: bool = True,
        dropout: float = 0.3,
        net_kwargs: dict[str, Any] | None = None,
        pretrained: str | None = None,
        freeze: str | None = None,
        unfreeze_epoch: int | None = None,
        backbone_lr_mult: float = 1.0,
        optimizer: str = "adamw",
        lr: float = 1e-3,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        schedule: str = "cosine",
        warmup_epochs: float = 0.0,
        teacher_forcing: float = 1.0,
        label_smoothing: float = 0.1,
        grad_clip: float | None = 1.0,
        beam: int = 5,
        alpha: float = 0.6,
        max_len_a: float = 1.5,
        max_len_b: int = 10,
        max_source_len: int = 256,
        compile: bool | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.check_training_args()
        if not 0 <= teacher_forcing <= 1 or beam < 1 or alpha < 0:
            raise ValueError(
                f"need 0 <= teacher_forcing <= 1, beam >= 1, alpha >= 0; got {teacher_forcing}, {beam}, {alpha}"
            )
        self.net: nn.Module | None = None
        if pretrained:  # the weights bring their architecture, tokenisers and vocabularies
            self.take_weights_kwargs()
        if self.hparams.src_spec is not None and self.hparams.tgt_spec is not None:
            self._build()

    def _build(self) -> None:
        h = self.hparams
        if h.arch == "seq_autoencoder" and h.src_spec["vocab"] != h.tgt_spec["vocab"]:
            raise ValueError(
                "seq_autoencoder reads and writes the same text, but the data's two sides have other vocabularies: "
                "give --data.source alone (one text file), or one language on both sides (--data.src_lang en "
                "--data.tgt_lang en)"
            )
        self.src_codec, self.tgt_codec = TextCodec(h.src_spec), TextCodec(h.tgt_spec)
        kwargs = {
            "embed_dim": h.embed_dim,
            "hidden_size": h.hidden_size,
            "num_layers": h.num_layers,
            "bidirectional": h.bidirectional,
            "dropout": h.dropout,
            **(h.net_kwargs or {}),
        }
        self.net = get_entry(h.arch).builder(
            src_vocab_size=len(h.src_spec["vocab"]), tgt_vocab_size=len(h.tgt_spec["vocab"]), **kwargs
        )
        if h.pretrained:
            self.load_weights()
        self.val_nll, self.test_nll = MeanMetric(), MeanMetric()
        self.val_bleu = SacreBLEUScore(tokenize="13a")
        self.test_bleu, self.test_bleu_greedy = SacreBLEUScore(tokenize="13a"), SacreBLEUScore(tokenize="13a")
        self.test_bleu_tok = SacreBLEUScore(tokenize="none", lowercase=True)

    def fit_to_data(self, stage: str) -> None:
        dm = self.datamodule
        specs = (dm.src_spec, dm.tgt_spec) if isinstance(dm, TranslationData) else (None, None)
        if self.net is None:
            if None in specs:
                raise ValueError(
                    "the model needs vocabularies: give a DataModule with src_spec/tgt_spec (--data translation)"
                )
            self.hparams.src_spec, self.hparams.tgt_spec = specs
            self._build()
        elif None not in specs and self.differs_from_data({"src": specs[0]["vocab"], "tgt": specs[1]["vocab"]}):
            self.hparams.src_spec, self.hparams.tgt_spec = specs  # the data's tokenisers, known tokens mapped
            self._build()

    # -- steps ------------------------------------------------------------------------------------------------
    def forward(self, src, src_lengths, tgt_in, teacher_forcing: float = 1.0):
        return self.net(src, src_lengths, tgt_in, teacher_forcing=teacher_forcing)

    def _nll(self, logits, tgt_out, smoothing: float = 0.0) -> torch.Tensor:
        return F.cross_entropy(
            logits.float().flatten(0, 1), tgt_out.flatten(), ignore_index=PAD_ID, label_smoothing=smoothing
        )

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        src, lengths, tgt, _ = batch
        logits, _ = self(src, lengths, tgt[:, :-1], self.hparams.teacher_forcing)
        loss = self._nll(logits, tgt[:, 1:], self.hparams.label_smoothing)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(src))
        return loss

    def references(self, stage: str, tgt: torch.Tensor, index: torch.Tensor) -> list[str]:
        """The raw reference sentences of a ``stage`` batch (its targets and indices), from the DataModule (else
        decoded from the target ids): what BLEU is scored against, and what the W&B media show."""
        refs = getattr(self.datamodule, "references", {}).get(stage)  # optional in the contract
        if refs is not None:
            return [refs[i] for i in index.tolist()]
        return [self.tgt_codec.decode([t for t in row.tolist()[1:] if t > EOS_ID]) for row in tgt]

    def _eval_step(self, batch, stage: str) -> None:
        src, lengths, tgt, index = batch
        logits, _ = self(src, lengths, tgt[:, :-1])
        n = int((tgt[:, 1:] != PAD_ID).sum())
        getattr(self, f"{stage}_nll").update(self._nll(logits, tgt[:, 1:]), n)
        refs = [[r] for r in self.references(stage, tgt, index)]
        h = self.hparams
        greedy = self.net.greedy(src, lengths, max_len_a=h.max_len_a, max_len_b=h.max_len_b)
        if stage == "val":
            hyps = [self.tgt_codec.decode(g.tokens) for g in greedy]
            self.val_bleu.update(hyps, refs)
            return
        self.test_bleu_greedy.update([self.tgt_codec.decode(g.tokens) for g in greedy], refs)
        beams = self.net.beam_search(src, lengths, h.beam, h.alpha, h.max_len_a, h.max_len_b)
        self.test_bleu.update([self.tgt_codec.decode(b[0].tokens) for b in beams], refs)
        words = [" ".join(self.tgt_codec.output_words(b[0].tokens)) for b in beams]
        self.test_bleu_tok.update(words, [[" ".join(self.tgt_codec.words(r[0]))] for r in refs])

    def _eval_epoch_end(self, stage: str) -> None:
        nll = getattr(self, f"{stage}_nll").compute()
        self.log(f"{stage}_loss", nll, prog_bar=True)
        self.log(f"{stage}_ppl_tf", nll.exp())
        names = ("bleu",) if stage == "val" else ("bleu", "bleu_greedy", "bleu_tok")
        for name in names:
            metric = getattr(self, f"{stage}_{name}")
            self.log(f"{stage}_{name}", metric.compute() * 100, prog_bar=name == "bleu")
            metric.reset()
        getattr(self, f"{stage}_nll").reset()

    # -- raw strings ------------------------------------------------------------------------------------------
    def _batch(self, sentences: str | list[str], what: str = "source sentence") -> tuple[torch.Tensor, torch.Tensor]:
        """Padded source ids (B, S) and lengths (B,) of raw sentences; empty or whitespace-only ones are refused
        (the decoder would still write a fluent-looking guess; any other text has a token for either tokeniser),
        and ones of unknown tokens only are warned about."""
        if self.net is None:
            raise RuntimeError("the model has no vocabularies yet: train it, or load a checkpoint / published weights")
        sentences = given_texts(sentences, what)
        ids = [self.src_codec.encode(s) for s in sentences]
        for i, x in enumerate(ids):
            warn_unknown(what, i, x, UNK_ID)
            if len(x) > self.hparams.max_source_len:
                raise ValueError(
                    f"sentence {i} has {len(x)} tokens, more than max_source_len={self.hparams.max_source_len}: split "
                    "it into sentences (or raise --model.max_source_len)"
                )
        lengths = torch.tensor([len(x) for x in ids])
        src = nn.utils.rnn.pad_sequence([torch.tensor(x) for x in ids], batch_first=True, padding_value=PAD_ID)
        return src.to(self.device), lengths

    @torch.no_grad()
    def translate(
        self,
        sentences: str | list[str],
        beam: int = 5,
        alpha: float | None = None,
        nbest: int = 1,
        return_attention: bool = False,
    ):
        """Translate raw sentences (beam 1: greedy). Returns one string per sentence; with ``nbest`` > 1 a list of
        ``(translation, score)`` per sentence; with ``return_attention`` a dict per sentence (per hypothesis with
        ``nbest`` > 1) holding ``translation``, ``score``, ``source_tokens``, ``target_tokens`` and ``attention``
        (target steps x source tokens, the last row being the EOS step), ready for a heatmap. An empty or
        whitespace-only sentence is refused with a ValueError naming it."""
        single = isinstance(sentences, str)
        sentences = given_texts(sentences, "source sentence")
        h = self.hparams
        src, lengths = self._batch(sentences)
        with self.evaluating():
            if beam == 1:
                hyps = [[g] for g in self.net.greedy(src, lengths, h.max_len_a, h.max_len_b, alpha or 0.0)]
            else:
                a = h.alpha if alpha is None else alpha
                hyps = self.net.beam_search(src, lengths, beam, a, h.max_len_a, h.max_len_b, nbest=nbest)
        out = [[self._render(s, hyp, nbest, return_attention) for hyp in hs] for s, hs in zip(sentences, hyps)]
        out = [o if nbest > 1 else o[0] for o in out]
        return out[0] if single else out

    def predict(self, sources: str | list[str], beam: int = 5, alpha: float | None = None) -> list[str]:
        """``translate`` that always returns a list: one translation per source sentence (a single string gives a
        list of one); ``beam`` 1 is greedy."""
        return self.translate([sources] if isinstance(sources, str) else list(sources), beam=beam, alpha=alpha)

    def _render(self, sentence: str, hyp: Hypothesis, nbest: int, attention: bool):
        text = self.tgt_codec.decode(hyp.tokens)
        if not attention:
            return (text, hyp.score) if nbest > 1 else text
        return {
            "translation": text,
            "score": hyp.score,
            "source_tokens": self.src_codec.tokens(sentence),
            "target_tokens": [self.tgt_codec.itos[i] for i in hyp.tokens] + ["<eos>"],
            "attention": hyp.attention,
        }

    @torch.no_grad()
    def encode(self, sequences: str | list[str]) -> torch.Tensor:
        """The fixed-size code of each raw sequence (N, K): the encoder's final state (for ``seq_autoencoder``,
        the vector the decoder rebuilds the sequence from)."""
        src, lengths = self._batch(sequences, "sequence")
        with self.evaluating():
            return self.net.features(src, lengths).float().cpu()
