"""Neural sequence taggers: word (+ character, + casing) features, a bidirectional recurrent encoder, and a CRF,
softmax, structured-perceptron, structured-hinge or hybrid-HMM output layer (Huang et al. 2015; Lample et al. 2016;
Ma & Hovy 2016; the hybrid: Bourlard & Morgan 1994, ``zoo.nets.hmm``).

Characters of each word are read by a BiLSTM (Lample et al.: the final states of both directions) or a CNN with
max-pooling over the word (Ma & Hovy); ``char_encoder="none"`` leaves them out. The transitions of the CRF (and of
the HMM) are constrained by the tag scheme when ``tag_names`` and ``scheme`` are given
(``zoo.nets.tag_schemes.scheme_constraints``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence

from zoo._registry import register_model
from zoo.nets.casing import CASES
from zoo.nets.crf import CRF
from zoo.nets.hmm import HMM
from zoo.nets.masked_rnn import masked_recurrence
from zoo.nets.recurrent import CELLS, RecurrentEncoder, _choice
from zoo.nets.tag_schemes import scheme_constraints

__all__ = ["SequenceTagger", "OUTPUTS", "CHAR_ENCODERS"]

OUTPUTS = ("crf", "softmax", "perceptron", "hinge", "hmm")
ON_CRF = ("crf", "perceptron", "hinge")  # the outputs whose loss and decoding are a CRF's
CHAR_ENCODERS = ("lstm", "cnn", "none")


class CharEncoder(nn.Module):
    """One vector per word from its characters ``(B, T, C)`` (0 = padding, after each word's characters).

    The default path reads only the words that have characters (boolean indexing, packed). ``masked`` (set by
    ``zoo.nets.masked_rnn.use_masked``, and taken whenever ``torch.export`` traces, which cannot trace either) reads
    every position with masked steps instead: the same vectors, zeros where a word has no character."""

    masked = False

    def __init__(self, num_chars: int, kind: str, char_dim: int, hidden: int) -> None:
        super().__init__()
        self.kind = kind
        self.embedding = nn.Embedding(num_chars, char_dim, padding_idx=0)
        if kind == "lstm":
            self.rnn = nn.LSTM(char_dim, hidden, batch_first=True, bidirectional=True)
            self.output_size = 2 * hidden
        else:
            self.conv = nn.Conv1d(char_dim, hidden, kernel_size=3, padding=1)
            self.output_size = hidden

    def forward(self, chars: torch.Tensor) -> torch.Tensor:
        B, T, C = chars.shape
        flat = chars.reshape(B * T, C)
        lengths = (flat != 0).sum(1)
        if self.masked or torch.compiler.is_exporting():
            return self._masked(flat, lengths).view(B, T, -1)
        out = flat.new_zeros(B * T, self.output_size, dtype=self.embedding.weight.dtype)
        words = lengths > 0  # padding positions have no characters
        if not bool(words.any()):
            return out.view(B, T, -1)
        x = self.embedding(flat[words])
        if self.kind == "lstm":
            packed = pack_padded_sequence(x, lengths[words].cpu(), batch_first=True, enforce_sorted=False)
            _, (h, _) = self.rnn(packed)  # (2, N, H): final state of each direction
            feats = torch.cat([h[0], h[1]], -1)
        else:
            conv = self.conv(x.transpose(1, 2))  # (N, H, C)
            pad = (flat[words] == 0)[:, None]
            feats = conv.masked_fill(pad, float("-inf")).amax(-1)
        out = out.to(feats.dtype)
        out[words] = feats
        return out.view(B, T, -1)

    def _masked(self, flat: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``(N, C)`` character ids -> ``(N, output_size)``, every word read, no data-dependent shape."""
        x = self.embedding(flat)  # (N, C, E)
        if self.kind == "lstm":
            _, (h, _) = masked_recurrence(self.rnn, x, lengths)  # a word without characters keeps the zero state
            return torch.cat([h[0], h[1]], -1)
        conv = self.conv(x.transpose(1, 2)).masked_fill((flat == 0)[:, None], float("-inf"))  # (N, H, C)
        return torch.where((lengths > 0)[:, None], conv.amax(-1), 0.0)


class SequenceTagger(nn.Module):
    """Args:
    num_words, num_chars, num_tags: vocabulary and tag-set sizes (0 = padding in words and chars).
    cell: ``lstm``, ``gru`` or ``rnn`` for the bidirectional encoder; ``hidden_size`` per direction.
    word_dim, char_dim, char_hidden, char_encoder, casing_dim (0: no casing feature; ``num_casings`` values, the
        ``CASES`` of ``zoo.nets.casing`` that the ``casing`` input indexes).
    dropout: on the word representation and on the encoder output (Lample et al. use 0.5).
    word_dropout: in training, the share of words replaced by ``<unk>`` (id 1), so that the ``<unk>`` embedding
        learns what rare words look like and the characters carry them (Lample et al. 2016, section 4).
    output: ``crf`` (NLL), ``softmax`` (per-token cross-entropy), ``perceptron`` or ``hinge`` (margin losses
        on the CRF's Viterbi), ``hmm`` (per-token cross-entropy; decoding by Viterbi over the posteriors divided by
        the tag priors and the HMM's counted transition probabilities: ``zoo.nets.hmm``, whose counts the tagging
        task fills from the training split).
    hmm_smoothing: with ``output="hmm"``, added to every count of the HMM (1 = Laplace; > 0).
    tag_names, scheme: constrain the transitions of the CRF or HMM (BIO, IOB1, BIOES, BILOU).
    """

    def __init__(
        self,
        *,
        num_words: int,
        num_chars: int,
        num_tags: int,
        cell: str = "lstm",
        word_dim: int = 100,
        char_dim: int = 25,
        char_hidden: int = 25,
        char_encoder: str = "lstm",
        casing_dim: int = 8,
        num_casings: int = len(CASES),
        hidden_size: int = 200,
        num_layers: int = 1,
        dropout: float = 0.5,
        word_dropout: float = 0.0,
        output: str = "crf",
        hmm_smoothing: float = 1.0,
        tag_names: list[str] | None = None,
        scheme: str | None = None,
    ) -> None:
        super().__init__()
        _choice("cell", cell, CELLS)
        _choice("output", output, OUTPUTS)
        _choice("char_encoder", char_encoder, CHAR_ENCODERS)
        if not 0 <= word_dropout < 1:
            raise ValueError(f"word_dropout must be in [0, 1); got {word_dropout}")
        self.output, self.num_tags, self.word_dropout = output, num_tags, word_dropout
        self.words = nn.Embedding(num_words, word_dim, padding_idx=0)
        self.chars = None if char_encoder == "none" else CharEncoder(num_chars, char_encoder, char_dim, char_hidden)
        self.casing = nn.Embedding(num_casings, casing_dim, padding_idx=0) if casing_dim else None
        in_size = word_dim + (self.chars.output_size if self.chars else 0) + casing_dim
        self.dropout = nn.Dropout(dropout)
        self.encoder = RecurrentEncoder(
            cell=cell,
            input_size=in_size,
            hidden_size=hidden_size,
            num_layers=num_layers,
            bidirectional=True,
            dropout=dropout,
        )
        self.emissions = nn.Linear(self.encoder.output_size, num_tags)
        constraints = ()
        if scheme and tag_names and output != "softmax":
            if len(tag_names) != num_tags:
                raise ValueError(f"{len(tag_names)} tag names for num_tags={num_tags}")
            constraints = scheme_constraints(list(tag_names), scheme)
        self.crf = CRF(num_tags, *constraints) if output in ON_CRF else None
        self.hmm = HMM(num_tags, *constraints, smoothing=hmm_smoothing) if output == "hmm" else None

    def forward(self, words, chars, casing, lengths) -> torch.Tensor:
        """Emission scores ``(B, T, K)`` (for ``softmax`` and ``hmm``: the logits of the per-token posteriors)."""
        if self.training and self.word_dropout:
            drop = (torch.rand(words.shape, device=words.device) < self.word_dropout) & (words > 1)
            words = words.masked_fill(drop, 1)
        parts = [self.words(words)]
        if self.chars is not None:
            parts.append(self.chars(chars))
        if self.casing is not None:
            parts.append(self.casing(casing))
        x = self.dropout(torch.cat([p.to(parts[0].dtype) for p in parts], -1))
        out, _ = self.encoder(x, lengths)
        return self.emissions(self.dropout(out))

    def loss(self, emissions: torch.Tensor, tags: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The training loss per sentence, averaged over the batch (tags padded with -1)."""
        mask = _mask(lengths, tags)
        if self.output in ("softmax", "hmm"):  # the hybrid's net is trained for posteriors (Bourlard & Morgan)
            return F.cross_entropy(emissions.float().flatten(0, 1), tags.flatten(), ignore_index=-1)
        if self.output == "crf":
            return self.crf.nll(emissions, tags.clamp(min=0), mask, reduction="mean")
        if self.output == "perceptron":
            return self.crf.perceptron_loss(emissions, tags.clamp(min=0), mask)
        return self.crf.hinge_loss(emissions, tags.clamp(min=0), mask)

    def decode(self, emissions: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Best tags ``(B, T)``, -1 after each sentence's end."""
        if self.hmm is not None:
            return self.hmm.viterbi(emissions, lengths)
        if self.crf is None:
            return emissions.argmax(-1).masked_fill(~_mask(lengths, emissions), -1)
        return self.crf.viterbi(emissions, lengths)  # lengths mask a prefix: no compaction (exportable)


def _mask(lengths: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B, T) True before each sentence's end, for ``like`` of shape (B, T, ...)."""
    return torch.arange(like.shape[1], device=like.device)[None] < lengths.to(like.device)[:, None]


def _tagger(defaults: dict, num_words: int, num_chars: int, num_tags: int, kwargs: dict) -> SequenceTagger:
    """A tagger with these defaults; ``kwargs`` may override them (``output="hinge"``)."""
    return SequenceTagger(num_words=num_words, num_chars=num_chars, num_tags=num_tags, **{**defaults, **kwargs})


@register_model(task="tagging")
def bilstm_crf(*, num_words: int, num_chars: int, num_tags: int, **kwargs) -> SequenceTagger:
    """BiLSTM-CRF with character BiLSTM features (Lample et al. 2016)."""
    return _tagger({"cell": "lstm", "output": "crf"}, num_words, num_chars, num_tags, kwargs)


@register_model(task="tagging")
def bigru_crf(*, num_words: int, num_chars: int, num_tags: int, **kwargs) -> SequenceTagger:
    """BiGRU-CRF: the BiLSTM-CRF with a bidirectional GRU over the words (characters: an LSTM by default)."""
    return _tagger({"cell": "gru", "output": "crf"}, num_words, num_chars, num_tags, kwargs)


@register_model(task="tagging")
def bilstm_softmax(*, num_words: int, num_chars: int, num_tags: int, **kwargs) -> SequenceTagger:
    """The same BiLSTM with an independent softmax per token (the baseline the CRF improves on)."""
    return _tagger({"cell": "lstm", "output": "softmax"}, num_words, num_chars, num_tags, kwargs)
