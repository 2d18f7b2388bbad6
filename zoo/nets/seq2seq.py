"""Encoder-decoder with attention (its decoding is ``zoo.nets.decoding``).

The encoder is :class:`~zoo.nets.recurrent.RecurrentEncoder` (any cell, bidirectional, packed input). Its final
states, one per layer, are joined across directions and mapped by ``tanh(Linear)`` to the decoder's initial
states (Bahdanau et al. 2015 initialise from the backward state; Luong et al. 2015 copy it; the bridge handles any
pair of widths). The decoder is a unidirectional stack of the same cell.

Attention (``attention=``) follows Luong et al. (2015): the decoder's top state ``h_t`` queries the encoder
outputs, the context ``c_t`` and ``h_t`` give the attentional state ``h~_t = tanh(W_c [c_t; h_t])``, and the
output layer reads ``h~_t``. Scores: ``dot`` (h_t . s), ``general`` (h_t . W s) or ``additive`` (Bahdanau's
``v . tanh(W_q h_t + W_k s)``). Source padding is masked: padded positions get exactly zero weight.
``attention="none"`` is the fixed-context model of Sutskever et al. (2014) / Cho et al. (2014): the encoder's
final top-layer state is the context of every step (fed to the decoder input and to ``h~_t``); nothing else
of the source reaches the decoder.

``input_feeding`` (Luong et al. 2015, section 3.3) concatenates ``h~_{t-1}`` to the input at step ``t``: the
decoder then runs one step at a time. Without it (the default) the whole target runs through the fused
recurrent kernels in one call during training. ``tie_embeddings`` shares the target embedding and the output
matrix (Press & Wolf 2017; needs ``embed_dim == hidden_size``).

Decoding (``greedy``, ``beam_search``: greedy and batched beam search) is in ``zoo.nets.decoding``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from zoo._registry import register_model
from zoo.nets import decoding
from zoo.nets.decoding import Hypothesis
from zoo.nets.recurrent import CELLS, RecurrentEncoder, _choice

__all__ = ["Attention", "Seq2SeqNet", "ATTENTIONS"]

ATTENTIONS = ("none", "dot", "general", "additive")


class Attention(nn.Module):
    """Scores of ``query`` (B, T, Q) against ``memory`` (B, S, K), masked softmax over S, weighted sum of memory.

    ``keys(memory)`` precomputes the part that depends on the source only (once per sentence, not per step)."""

    def __init__(self, kind: str, query_size: int, key_size: int, attn_size: int | None = None) -> None:
        super().__init__()
        _choice("attention", kind, ATTENTIONS[1:])
        if kind == "dot" and query_size != key_size:
            raise ValueError(
                f"dot attention needs the decoder width ({query_size}) to equal the encoder output width ({key_size}; "
                "twice hidden_size when bidirectional): use attention='general' or 'additive'"
            )
        self.kind = kind
        if kind == "general":
            self.w_k = nn.Linear(key_size, query_size, bias=False)
        elif kind == "additive":
            attn_size = attn_size or query_size
            self.w_k = nn.Linear(key_size, attn_size, bias=False)
            self.w_q = nn.Linear(query_size, attn_size)
            self.v = nn.Linear(attn_size, 1, bias=False)

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        return memory if self.kind == "dot" else self.w_k(memory)

    def forward(self, query: torch.Tensor, memory: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor):
        """``mask`` (B, S) is True at real source tokens. Returns ``(context (B, T, K), weights (B, T, S))``."""
        if self.kind == "additive":
            scores = self.v(torch.tanh(self.w_q(query)[:, :, None] + keys[:, None])).squeeze(-1)
        else:
            scores = query @ keys.transpose(1, 2)
        scores = scores.float().masked_fill(~mask[:, None], float("-inf"))
        weights = scores.softmax(-1)
        return weights.to(memory.dtype) @ memory, weights


@dataclass
class Memory:
    """What the decoder reads of the encoded source, batch-first; ``select`` reorders/repeats sentences."""

    outputs: torch.Tensor  # (B, S, K) encoder outputs
    keys: torch.Tensor | None  # the attention's precomputed keys
    mask: torch.Tensor  # (B, S) True at real tokens
    summary: torch.Tensor  # (B, K) final top-layer state, both directions

    def select(self, index: torch.Tensor) -> Memory:
        pick = lambda t: None if t is None else t.index_select(0, index)  # noqa: E731
        return Memory(pick(self.outputs), pick(self.keys), pick(self.mask), pick(self.summary))


class Seq2SeqNet(nn.Module):
    """Recurrent encoder-decoder (see the module docstring).

    Args:
        src_vocab_size, tgt_vocab_size: vocabularies; ``pad_id``, ``bos_id``, ``eos_id`` index the target one
            (``pad_id`` also the source's).
        cell: ``rnn``, ``lstm`` or ``gru``, for both sides.
        embed_dim, hidden_size, num_layers: both sides; the encoder's outputs are ``2 * hidden_size`` wide when
            ``bidirectional``.
        dropout: on embeddings, between layers and before the output layer.
        attention: ``none``, ``dot``, ``general`` or ``additive``.
        input_feeding, tie_embeddings: see the module docstring.
        share_embeddings: one embedding for source and target (same vocabulary, e.g. an autoencoder).
    """

    def __init__(
        self,
        *,
        src_vocab_size: int,
        tgt_vocab_size: int,
        cell: str = "gru",
        embed_dim: int = 256,
        hidden_size: int = 512,
        num_layers: int = 1,
        bidirectional: bool = True,
        dropout: float = 0.2,
        attention: str = "general",
        input_feeding: bool = False,
        tie_embeddings: bool = False,
        share_embeddings: bool = False,
        pad_id: int = 0,
        bos_id: int = 2,
        eos_id: int = 3,
        forget_bias: float = 1.0,
        recurrent_init: str = "orthogonal",
    ) -> None:
        super().__init__()
        _choice("cell", cell, CELLS)
        _choice("attention", attention, ATTENTIONS)
        if len({pad_id, bos_id, eos_id}) != 3 or max(pad_id, bos_id, eos_id) >= tgt_vocab_size:
            raise ValueError(f"pad, bos and eos must be distinct target ids; got {pad_id}, {bos_id}, {eos_id}")
        if share_embeddings and src_vocab_size != tgt_vocab_size:
            raise ValueError("share_embeddings needs one vocabulary: src_vocab_size == tgt_vocab_size")
        if tie_embeddings and embed_dim != hidden_size:
            raise ValueError(f"tie_embeddings needs embed_dim == hidden_size; got {embed_dim} and {hidden_size}")
        self.cell, self.attention_kind, self.input_feeding = cell, attention, input_feeding
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.hidden_size, self.num_layers, self.tgt_vocab_size = hidden_size, num_layers, tgt_vocab_size
        init = {"forget_bias": forget_bias, "recurrent_init": recurrent_init}
        self.encoder = RecurrentEncoder(
            cell=cell,
            vocab_size=src_vocab_size,
            embed_dim=embed_dim,
            hidden_size=hidden_size,
            num_layers=num_layers,
            bidirectional=bidirectional,
            dropout=dropout,
            padding_idx=pad_id,
            **init,
        )
        enc = self.encoder.output_size
        self.bridge = nn.Linear(enc, hidden_size)  # per layer: [final fwd; final bwd] -> decoder initial state
        self.bridge_cell = nn.Linear(enc, hidden_size) if cell == "lstm" else None
        self.tgt_embedding = (
            self.encoder.embedding if share_embeddings else nn.Embedding(tgt_vocab_size, embed_dim, padding_idx=pad_id)
        )
        dec_in = embed_dim + (hidden_size if input_feeding else 0) + (enc if attention == "none" else 0)
        self.decoder = RecurrentEncoder(
            cell=cell, input_size=dec_in, hidden_size=hidden_size, num_layers=num_layers, dropout=dropout, **init
        )
        self.attention = None if attention == "none" else Attention(attention, hidden_size, enc)
        self.combine = nn.Linear(enc + hidden_size, hidden_size, bias=False)  # h~ = tanh(W_c [c; h])
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, tgt_vocab_size)
        if tie_embeddings:
            self.out.weight = self.tgt_embedding.weight

    # -- encoder ----------------------------------------------------------------------------------------------
    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor):
        """``src`` (B, S) padded ids, ``src_lengths`` (B,). Returns ``(memory, decoder initial state)``."""
        outputs, state = self.encoder(src, src_lengths)
        L, D = self.num_layers, self.encoder.num_directions
        per_layer = lambda s: s.view(L, D, *s.shape[1:]).permute(0, 2, 1, 3).flatten(2)  # noqa: E731  (L, B, D*H)
        if self.cell == "lstm":
            h, c = per_layer(state[0]), per_layer(state[1])
            init = (torch.tanh(self.bridge(h)), torch.tanh(self.bridge_cell(c)))
        else:
            h = per_layer(state)
            init = torch.tanh(self.bridge(h))
        mask = torch.arange(src.shape[1], device=src.device)[None] < src_lengths.to(src.device)[:, None]
        keys = self.attention.keys(outputs) if self.attention is not None else None
        return Memory(outputs, keys, mask, h[-1]), init

    def features(self, src: torch.Tensor, src_lengths: torch.Tensor) -> torch.Tensor:
        """The fixed-size code of each source: the encoder's final top-layer state, both directions (B, K)."""
        return self.encode(src, src_lengths)[0].summary

    # -- decoder ----------------------------------------------------------------------------------------------
    def _attend(self, h: torch.Tensor, memory: Memory):
        """Decoder top states (B, T, H) -> attentional states h~ (B, T, H), weights (B, T, S) or None."""
        if self.attention is None:
            context, weights = memory.summary[:, None].expand(-1, h.shape[1], -1), None
        else:
            context, weights = self.attention(h, memory.outputs, memory.keys, memory.mask)
        return torch.tanh(self.combine(torch.cat([context, h], -1))), weights

    def _run(self, tokens: torch.Tensor, state, feed: torch.Tensor | None, memory: Memory):
        """Decode target ids (B, T) given as inputs. Returns ``(logits, state, feed, weights)``; one fused call
        over T unless input feeding needs a step at a time."""
        x = self.dropout(self.tgt_embedding(tokens))
        if self.attention is None:
            x = torch.cat([x, memory.summary[:, None].expand(-1, x.shape[1], -1)], -1)
        if not self.input_feeding:
            h, state = self.decoder(x, state=state)
            h_att, weights = self._attend(h, memory)
        else:
            steps, ws = [], []
            for t in range(x.shape[1]):
                h, state = self.decoder(torch.cat([x[:, t : t + 1], feed[:, None]], -1), state=state)
                a, w = self._attend(h, memory)
                feed = a[:, 0]
                steps.append(a)
                ws.append(w)
            h_att = torch.cat(steps, 1)
            weights = None if self.attention is None else torch.cat(ws, 1)
        return self.out(self.dropout(h_att)), state, feed, weights

    def step(self, tokens: torch.Tensor, state, feed: torch.Tensor | None, memory: Memory):
        """One decoder step for the previous tokens ``tokens`` (B,): ``(log_probs (B, V) fp32, state, feed,
        attention (B, S) or None)``. PAD and BOS get probability 0 (they are never output); what a search does
        with the rest (EOS at a length limit, beams) is its own (``zoo.nets.decoding``)."""
        logits, state, feed, w = self._run(tokens[:, None], state, feed, memory)
        never = torch.zeros(self.tgt_vocab_size, dtype=torch.bool, device=logits.device)
        never[[self.pad_id, self.bos_id]] = True
        log_probs = logits[:, 0].float().masked_fill(never, float("-inf")).log_softmax(-1)
        return log_probs, state, feed, None if w is None else w[:, 0]

    def _feed0(self, memory: Memory) -> torch.Tensor | None:
        return memory.outputs.new_zeros(memory.outputs.shape[0], self.hidden_size) if self.input_feeding else None

    def forward(
        self,
        src: torch.Tensor,
        src_lengths: torch.Tensor,
        tgt_in: torch.Tensor,
        teacher_forcing: float = 1.0,
        generator: torch.Generator | None = None,
    ):
        """Logits (B, T, V) for the target inputs ``tgt_in`` (BOS first), and attention weights (B, T, S) or None.

        ``teacher_forcing`` < 1 feeds, at each step and for each sentence with probability 1 - ratio, the model's
        own previous prediction instead of the reference token (Bengio et al. 2015); that runs step by step."""
        memory, state = self.encode(src, src_lengths)
        feed = self._feed0(memory)
        if teacher_forcing >= 1.0:
            logits, _, _, weights = self._run(tgt_in, state, feed, memory)
            return logits, weights
        logits, weights, prev = [], [], tgt_in[:, 0]
        for t in range(tgt_in.shape[1]):
            if t > 0:
                own = torch.rand(prev.shape, generator=generator, device=prev.device) >= teacher_forcing
                prev = torch.where(own, logits[-1][:, 0].argmax(-1), tgt_in[:, t])
            step, state, feed, w = self._run(prev[:, None], state, feed, memory)
            logits.append(step)
            weights.append(w)
        return torch.cat(logits, 1), None if self.attention is None else torch.cat(weights, 1)

    # -- decoding (zoo.nets.decoding) -------------------------------------------------------------------------
    def greedy(
        self, src: torch.Tensor, src_lengths: torch.Tensor, max_len_a: float = 1.5, max_len_b: int = 10, alpha=0.0
    ) -> list[Hypothesis]:
        """The most likely token at each step, for a batch of sources; stops each sentence at its EOS."""
        return decoding.greedy(self, src, src_lengths, max_len_a, max_len_b, alpha)

    def beam_search(
        self,
        src: torch.Tensor,
        src_lengths: torch.Tensor,
        beam: int = 5,
        alpha: float = 0.6,
        max_len_a: float = 1.5,
        max_len_b: int = 10,
        nbest: int = 1,
    ) -> list[list[Hypothesis]]:
        """The ``nbest`` best hypotheses of each source (best first), by a beam search of width ``beam`` run for
        the whole batch at once (see ``zoo.nets.decoding``)."""
        return decoding.beam_search(self, src, src_lengths, beam, alpha, max_len_a, max_len_b, nbest)


# -- registered models ------------------------------------------------------------------------------------------
@register_model(task="seq2seq")
def seq2seq_gru_attn(*, src_vocab_size: int, tgt_vocab_size: int, **kwargs) -> Seq2SeqNet:
    """GRU encoder-decoder with Luong attention (``general`` scores by default)."""
    return Seq2SeqNet(src_vocab_size=src_vocab_size, tgt_vocab_size=tgt_vocab_size, **{"cell": "gru", **kwargs})


@register_model(task="seq2seq")
def seq2seq_lstm_attn(*, src_vocab_size: int, tgt_vocab_size: int, **kwargs) -> Seq2SeqNet:
    """LSTM encoder-decoder with Luong attention (Luong et al. 2015; ``general`` scores by default)."""
    return Seq2SeqNet(src_vocab_size=src_vocab_size, tgt_vocab_size=tgt_vocab_size, **{"cell": "lstm", **kwargs})


@register_model(task="seq2seq")
def seq2seq_gru(*, src_vocab_size: int, tgt_vocab_size: int, **kwargs) -> Seq2SeqNet:
    """GRU encoder-decoder without attention: the source reaches the decoder as one vector (Cho et al. 2014)."""
    kwargs = {"cell": "gru", "attention": "none", **kwargs}
    return Seq2SeqNet(src_vocab_size=src_vocab_size, tgt_vocab_size=tgt_vocab_size, **kwargs)


@register_model(task="seq2seq")
def seq_autoencoder(*, src_vocab_size: int, tgt_vocab_size: int, **kwargs) -> Seq2SeqNet:
    """Sequence autoencoder (Dai & Le 2015): rebuilds its input from the encoder's final state alone (no
    attention), one embedding for both sides; ``features()`` gives that vector."""
    kwargs = {"cell": "gru", "attention": "none", "share_embeddings": True, **kwargs}
    return Seq2SeqNet(src_vocab_size=src_vocab_size, tgt_vocab_size=tgt_vocab_size, **kwargs)
