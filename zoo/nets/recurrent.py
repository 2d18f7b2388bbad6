"""Recurrent encoder: stacked RNN (tanh or relu), LSTM (Hochreiter & Schmidhuber 1997) or GRU (Cho et al. 2014).

Each layer is PyTorch's fused ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` (cuDNN on GPUs, oneDNN on CPUs): the time
loop never runs in Python on the default path. Layers are kept as separate modules so that dropout and optional
residual connections (Wu et al. 2016, GNMT) can sit between them. Variable-length batches are packed, so a padded
sequence gives the same outputs and final state as the same sequence alone. ``torch.export`` cannot trace packing
(its sizes are data): there, padded batches take ``zoo.nets.masked_rnn.masked_recurrence``, the same function
without packing.

Regularisation for small corpora (AWD-LSTM, Merity et al. 2018), both off by default: ``weight_drop`` drops
hidden-to-hidden weights (DropConnect, Wan et al. 2013), one mask per batch shared by every time step, so the fused
kernel still runs; ``variational`` makes the embedding and between-layer dropout one mask per sequence, shared by
its time steps (Gal & Ghahramani 2016), instead of a fresh mask at every step.

Initialisation, each configurable (the defaults are the literature's, not PyTorch's uniform init):
- recurrent weights orthogonal per gate block (Saxe et al. 2014), or the identity for relu RNNs (IRNN,
  Le et al. 2015: identity recurrence, zero bias, small input weights);
- biases zero, and the LSTM forget-gate bias 1.0 (Gers et al. 2000; Jozefowicz et al. 2015).

``unrolled_states`` recomputes the same forward pass step by step in Python from the fused modules' weights, so
that the hidden state h_t of every step is a tensor whose gradient can be read: a diagnostic (vanishing
gradients), never the training path.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from zoo._registry import register_model
from zoo.nets.dropout import sequence_dropout
from zoo.nets.masked_rnn import cell_step, masked_recurrence

__all__ = ["RecurrentEncoder", "RecurrentClassifier", "RecurrentLM", "CELLS", "RECURRENT_INITS", "POOLINGS"]

CELLS = ("rnn", "lstm", "gru")
RECURRENT_INITS = ("orthogonal", "identity", "default")
_GATES = {"rnn": 1, "lstm": 4, "gru": 3}  # gate blocks stacked in weight_hh (PyTorch order: LSTM i,f,g,o; GRU r,z,n)


def _choice(name: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(options)}; got {value!r}")


class RecurrentEncoder(nn.Module):
    """Embedding (or one-hot, or float features) followed by ``num_layers`` recurrent layers.

    Args:
        cell: ``rnn``, ``lstm`` or ``gru``.
        vocab_size: token ids in, embedded with ``embed_dim`` (or one-hot when ``one_hot``); ``None`` means float
            features of size ``input_size`` in.
        hidden_size, num_layers, bidirectional: as ``nn.LSTM``.
        dropout: between stacked layers (and on the embeddings).
        residual: add each layer's input to its output from the second layer on (same width).
        nonlinearity: ``tanh`` or ``relu``, for ``cell="rnn"``.
        batch_first: ``(B, T, ...)`` inputs and outputs, else ``(T, B, ...)``.
        forget_bias: initial LSTM forget-gate bias.
        recurrent_init: ``orthogonal``, ``identity`` (relu RNNs: IRNN) or ``default`` (PyTorch's uniform).
        weight_drop: DropConnect probability on the hidden-to-hidden weights in training (one mask per batch).
        variational: ``dropout`` with one mask per sequence, shared by its time steps.

    ``masked`` (an attribute, off): padded batches run through ``masked_recurrence`` instead of packing, the
    path ``torch.export`` traces (it is taken there whatever the attribute); ``zoo.nets.masked_rnn.use_masked`` sets
    it on a net.
    """

    masked = False

    def __init__(
        self,
        *,
        cell: str = "lstm",
        vocab_size: int | None = None,
        embed_dim: int = 128,
        one_hot: bool = False,
        input_size: int | None = None,
        hidden_size: int = 256,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        residual: bool = False,
        nonlinearity: str = "tanh",
        batch_first: bool = True,
        padding_idx: int | None = 0,
        forget_bias: float = 1.0,
        recurrent_init: str = "orthogonal",
        weight_drop: float = 0.0,
        variational: bool = False,
    ) -> None:
        super().__init__()
        _choice("cell", cell, CELLS)
        _choice("recurrent_init", recurrent_init, RECURRENT_INITS)
        _choice("nonlinearity", nonlinearity, ("tanh", "relu"))
        if recurrent_init == "identity" and cell != "rnn":
            raise ValueError("recurrent_init='identity' (IRNN) is for cell='rnn'; use 'orthogonal' for LSTM/GRU")
        if (vocab_size is None) == (input_size is None):
            raise ValueError("give exactly one of vocab_size (token ids in) or input_size (float features in)")
        if hidden_size < 1 or num_layers < 1 or not 0 <= dropout < 1:
            raise ValueError(
                f"need hidden_size >= 1, num_layers >= 1, 0 <= dropout < 1; got {hidden_size}, {num_layers}, {dropout}"
            )
        if not 0 <= weight_drop < 1:
            raise ValueError(f"weight_drop is a probability in [0, 1); got {weight_drop}")
        self.weight_drop = weight_drop
        self.cell, self.nonlinearity, self.batch_first = cell, nonlinearity, batch_first
        self.hidden_size, self.num_layers = hidden_size, num_layers
        self.num_directions = 2 if bidirectional else 1
        self.output_size = hidden_size * self.num_directions
        self.residual, self.one_hot, self.vocab_size = residual, one_hot, vocab_size
        if vocab_size is not None and not one_hot:
            self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=padding_idx)
            in_size = embed_dim
        else:
            self.embedding = None
            in_size = vocab_size if one_hot else input_size
        self.input_size = in_size
        self.variational = variational
        self.dropout = sequence_dropout(dropout, variational, batch_first)
        kw = {"nonlinearity": nonlinearity} if cell == "rnn" else {}
        rnn_cls = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.layers = nn.ModuleList(
            rnn_cls(
                in_size if i == 0 else self.output_size,
                hidden_size,
                batch_first=batch_first,
                bidirectional=bidirectional,
                **kw,
            )
            for i in range(num_layers)
        )
        self.reset_parameters(forget_bias=forget_bias, recurrent_init=recurrent_init)

    @torch.no_grad()
    def reset_parameters(self, forget_bias: float = 1.0, recurrent_init: str = "orthogonal") -> None:
        if recurrent_init == "default":
            return
        gates, h = _GATES[self.cell], self.hidden_size
        for layer in self.layers:
            for name, p in layer.named_parameters():
                if name.startswith("weight_hh"):
                    for g in range(gates):
                        block = p[g * h : (g + 1) * h]
                        nn.init.eye_(block) if recurrent_init == "identity" else nn.init.orthogonal_(block)
                elif name.startswith("weight_ih") and recurrent_init == "identity":
                    nn.init.normal_(p, std=1e-3)  # Le et al. 2015: small input weights with an identity recurrence
                elif name.startswith("bias"):
                    p.zero_()
                    if self.cell == "lstm" and name.startswith("bias_ih"):
                        p[h : 2 * h] = forget_bias  # the forget gate is the second block; bias_hh stays 0

    # -- helpers ----------------------------------------------------------------------------------------------
    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids ``(B, T)`` (or float features ``(B, T, F)``) to the first layer's input ``(B, T, E)``."""
        if self.embedding is not None:
            return self.dropout(self.embedding(tokens))
        if self.one_hot:
            return F.one_hot(tokens, self.vocab_size).float()
        return tokens

    def _split_state(self, state):
        """``nn.LSTM``'s ``(L*D, B, H)`` layout (tuples for LSTM) to one state per layer."""
        if state is None:
            return [None] * self.num_layers
        if self.cell == "lstm":
            return list(zip(state[0].chunk(self.num_layers), state[1].chunk(self.num_layers)))
        return list(state.chunk(self.num_layers))

    def _join_state(self, states):
        if self.cell == "lstm":
            return torch.cat([h for h, _ in states]), torch.cat([c for _, c in states])
        return torch.cat(states)

    # -- forward ----------------------------------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor | None = None, state=None):
        """``tokens`` ``(B, T)`` ids or ``(B, T, F)`` features (time first when not ``batch_first``); ``lengths``
        ``(B,)`` of the unpadded sequences (packed; padded steps give zeros); ``state`` as ``nn.LSTM``'s
        ``(h, c)`` or ``h`` of shape ``(L*D, B, H)``. Returns ``(outputs (B, T, D*H), state)``."""
        x = self.embed(tokens)
        total = x.shape[1 if self.batch_first else 0]
        cpu_autocast = x.device.type == "cpu" and torch.is_autocast_enabled("cpu")  # GPU autocast is left alone
        states = []
        for i, (layer, hx) in enumerate(zip(self.layers, self._split_state(state))):
            if i > 0:
                x = self.dropout(x)
            if cpu_autocast:  # oneDNN's bf16 LSTM needs AVX-512 and fails elsewhere (pytorch #88136): fp32 here
                if hx is not None:  # a state computed under autocast (a seq2seq bridge) is bf16 too
                    hx = tuple(h.float() for h in hx) if isinstance(hx, tuple) else hx.float()
                with torch.autocast("cpu", enabled=False):
                    out, hn = self._layer(layer, x.float(), lengths, hx, total)
            else:
                out, hn = self._layer(layer, x, lengths, hx, total)
            x = out + x if self.residual and i > 0 else out
            states.append(hn)
        return x, self._join_state(states)

    def _layer(self, layer: nn.RNNBase, x: torch.Tensor, lengths: torch.Tensor | None, hx, total: int):
        """One fused layer over a padded batch: packed (training and inference), or masked when ``masked`` is set
        or ``torch.export`` traces (it cannot trace packing; inference only). In training with ``weight_drop`` the
        fused layer runs with dropped hidden-to-hidden weights; its parameters are left as they are."""
        call = layer
        if self.training and self.weight_drop > 0:
            dropped = {n: F.dropout(w, self.weight_drop) for n, w in layer.named_parameters() if "weight_hh" in n}

            def call(*args):
                return torch.func.functional_call(layer, dropped, args)

        if lengths is None:
            return call(x, hx)
        if self.masked or torch.compiler.is_exporting():
            return masked_recurrence(layer, x, lengths, hx)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=self.batch_first, enforce_sorted=False)
        out, hn = call(packed, hx)
        return pad_packed_sequence(out, batch_first=self.batch_first, total_length=total)[0], hn

    def unrolled_states(self, tokens: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The forward pass in a Python time loop, from the fused layers' weights (eval-mode: no dropout), for
        equal-length batch-first or time-first input. Returns ``(outputs, hs)`` where ``hs[t]`` ``(B, H)`` is
        the top layer's forward-direction hidden state at step ``t``, part of the graph: ``hs[t].retain_grad()``
        then ``backward`` gives dL/dh_t."""
        x = self.embed(tokens)
        if not self.batch_first:
            x = x.transpose(0, 1)
        hs: list[torch.Tensor] = []
        for i, layer in enumerate(self.layers):
            outs = []
            for d, sfx in enumerate(["_l0", "_l0_reverse"][: self.num_directions]):
                seq = x.flip(1) if d else x
                w = {n: getattr(layer, f"{n}{sfx}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
                steps = self._unroll(seq, w)
                if d == 0 and i == self.num_layers - 1:
                    hs = steps
                out = torch.stack(steps, 1)
                outs.append(out.flip(1) if d else out)
            out = torch.cat(outs, -1)
            x = out + x if self.residual and i > 0 else out
        return (x if self.batch_first else x.transpose(0, 1)), hs

    def _unroll(self, x: torch.Tensor, w: dict) -> list[torch.Tensor]:
        B, T, _ = x.shape
        h = x.new_zeros(B, self.hidden_size)
        c = torch.zeros_like(h)
        gi_all = F.linear(x, w["weight_ih"], w["bias_ih"])  # (B, T, G*H), input projections for every step
        kind = self.nonlinearity if self.cell == "rnn" else self.cell
        steps = []
        for t in range(T):
            h, c = cell_step(kind, gi_all[:, t], F.linear(h, w["weight_hh"], w["bias_hh"]), h, c)
            steps.append(h)
        return steps


# -- heads: sequence classifier and language model ---------------------------------------------------------------
POOLINGS = ("last", "mean", "max", "attention", "none")


class RecurrentClassifier(nn.Module):
    """A :class:`RecurrentEncoder` read out into class logits.

    ``pooling``: ``last`` (the final state; both directions' when bidirectional), ``mean`` / ``max`` over the
    unpadded steps, ``attention`` (a learned weighted mean, Yang et al. 2016), or ``none``: logits at every step
    ``(B, T, C)`` (sequence labelling, e.g. the copy-memory task). Logits are ``(B, C)`` otherwise."""

    def __init__(self, *, num_classes: int, pooling: str = "last", head_dropout: float = 0.0, **encoder) -> None:
        super().__init__()
        _choice("pooling", pooling, POOLINGS)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1; got {num_classes}")
        self.encoder = RecurrentEncoder(**encoder)
        self.pooling, self.num_classes = pooling, num_classes
        width = self.encoder.output_size
        if pooling == "attention":
            self.attention = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 1, bias=False))
        self.dropout = nn.Dropout(head_dropout)
        self.head = nn.Linear(width, num_classes)

    def forward_features(self, tokens: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """The pooled sequence representation ``(B, D*H)`` (``(B, T, D*H)`` for ``pooling="none"``)."""
        out, state = self.encoder(tokens, lengths)
        if not self.encoder.batch_first:
            out = out.transpose(0, 1)  # (B, T, D*H)
        h = state[0] if isinstance(state, tuple) else state  # (L*D, B, H)
        return self.pool(out, lengths, h[-self.encoder.num_directions :])

    def pool(self, out: torch.Tensor, lengths: torch.Tensor | None = None, final: torch.Tensor | None = None):
        """Read out batch-first encoder outputs ``(B, T, D*H)``. ``final``: the top layer's final states
        ``(D, B, H)`` for ``last`` pooling; without them, the outputs of full-length sequences are read."""
        B, T, _ = out.shape
        if self.pooling == "none":
            return out
        if self.pooling == "last":
            if final is not None:
                return final.transpose(0, 1).reshape(B, -1)  # every direction's final state
            h = self.encoder.hidden_size  # forward direction ends at T-1, the backward one at 0
            return torch.cat([out[:, -1, :h], out[:, 0, h:]], -1)
        valid = torch.ones(B, T, dtype=torch.bool, device=out.device)
        if lengths is not None:
            valid = torch.arange(T, device=out.device) < lengths.to(out.device)[:, None]  # (B, T)
        if self.pooling == "mean":
            return (out * valid[..., None]).sum(1) / valid.sum(1, keepdim=True).clamp(min=1)
        if self.pooling == "max":
            return out.masked_fill(~valid[..., None], float("-inf")).amax(1)
        scores = self.attention(out).squeeze(-1).masked_fill(~valid, float("-inf"))  # (B, T)
        return (scores.softmax(1)[..., None] * out).sum(1)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.dropout(self.forward_features(tokens, lengths)))

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.head.in_features, num_classes)


class RecurrentLM(nn.Module):
    """Next-token language model: embedding, unidirectional recurrent layers, dropout, a linear decoder over the
    vocabulary. ``tie_weights`` shares the embedding and decoder matrices (Press & Wolf 2017; Inan et al. 2017);
    it needs ``embed_dim == hidden_size``."""

    def __init__(self, *, vocab_size: int, tie_weights: bool = False, output_dropout: float = 0.0, **encoder) -> None:
        super().__init__()
        if encoder.get("bidirectional"):
            raise ValueError("a language model reads left to right: bidirectional must be False")
        self.encoder = RecurrentEncoder(vocab_size=vocab_size, **encoder)
        self.dropout = sequence_dropout(output_dropout, self.encoder.variational, self.encoder.batch_first)
        self.head = nn.Linear(self.encoder.hidden_size, vocab_size)
        if tie_weights:
            if self.encoder.embedding is None or self.encoder.embedding.embedding_dim != self.encoder.hidden_size:
                raise ValueError("tie_weights needs an embedding with embed_dim == hidden_size")
            self.head.weight = self.encoder.embedding.weight

    def forward(self, tokens: torch.Tensor, state=None):
        """``tokens`` ``(B, T)`` -> ``(logits (B, T, V), state)``; pass ``state`` back in to continue the text."""
        out, state = self.encoder(tokens, state=state)
        return self.head(self.dropout(out)), state


def _classifier(cell: str, vocab_size: int, num_classes: int, **kwargs) -> RecurrentClassifier:
    return RecurrentClassifier(cell=cell, vocab_size=vocab_size, num_classes=num_classes, **kwargs)


@register_model(task="sequence")
def rnn_classifier(*, vocab_size: int, num_classes: int, **kwargs) -> RecurrentClassifier:
    """Elman RNN (tanh; ``nonlinearity="relu"`` with ``recurrent_init="identity"`` for an IRNN)."""
    return _classifier("rnn", vocab_size, num_classes, **kwargs)


@register_model(task="sequence")
def lstm_classifier(*, vocab_size: int, num_classes: int, **kwargs) -> RecurrentClassifier:
    """LSTM sequence classifier: embeddings, a (bi)LSTM, pooled states, a linear head (Hochreiter & Schmidhuber
    1997)."""
    return _classifier("lstm", vocab_size, num_classes, **kwargs)


@register_model(task="sequence")
def gru_classifier(*, vocab_size: int, num_classes: int, **kwargs) -> RecurrentClassifier:
    """GRU sequence classifier: embeddings, a (bi)GRU, pooled states, a linear head (Cho et al. 2014)."""
    return _classifier("gru", vocab_size, num_classes, **kwargs)


def _lm(cell: str, vocab_size: int, **kwargs) -> RecurrentLM:
    return RecurrentLM(cell=cell, vocab_size=vocab_size, **kwargs)


@register_model(task="language_model")
def rnn_lm(*, vocab_size: int, **kwargs) -> RecurrentLM:
    """Elman RNN language model: embeddings, a tanh RNN, a softmax over the next token."""
    return _lm("rnn", vocab_size, **kwargs)


@register_model(task="language_model")
def lstm_lm(*, vocab_size: int, **kwargs) -> RecurrentLM:
    """LSTM language model: embeddings, an LSTM, a softmax over the next token (as Zaremba et al. 2014)."""
    return _lm("lstm", vocab_size, **kwargs)


@register_model(task="language_model")
def gru_lm(*, vocab_size: int, **kwargs) -> RecurrentLM:
    """GRU language model: embeddings, a GRU, a softmax over the next token."""
    return _lm("gru", vocab_size, **kwargs)
