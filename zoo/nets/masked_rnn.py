"""The masked path of the recurrent layers: what a fused ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` computes for a padded
batch packed by its lengths, without packing.

``torch.export`` cannot trace ``pack_padded_sequence`` (the packed sizes are data), and the fused layer run on the
padded batch would read the padding (the reverse direction would even start there). Here each step is the fused
kernel's cell, and a step at ``t >= length`` leaves the state as it was: outputs are zero after each sequence's
end, final states are those of its last step, and the reverse direction starts at that step, with no reordering of
the batch. The loop over time is :func:`~zoo.nets._scan.time_scan` (one ``scan`` node under export, so the length
stays dynamic; ONNX ``Scan``). It equals the packed path to float rounding (~1e-7, LSTM cell states included), and
is slower than the fused kernel in eager mode: training and inference keep packing; export takes this path.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo.nets._scan import time_scan

__all__ = ["masked_recurrence", "use_masked", "cell_step"]

_WEIGHTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")  # of each layer and direction, as nn.RNNBase names them


def cell_step(kind: str, gi: torch.Tensor, gh: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None):
    """One step of ``kind`` (``tanh`` / ``relu`` RNN, ``lstm``, ``gru``) from the input and hidden projections
    ``gi``, ``gh`` (B, G*H), as PyTorch's fused kernels compute it. Returns ``(h, c)`` (``c`` as given but for
    LSTM)."""
    if kind == "lstm":
        i, f, g, o = (gi + gh).chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
    if kind == "gru":
        ir, iz, in_ = gi.chunk(3, -1)
        hr, hz, hn = gh.chunk(3, -1)
        r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
        return (1 - z) * torch.tanh(in_ + r * hn) + z * h, c
    return (torch.relu if kind == "relu" else torch.tanh)(gi + gh), c


def masked_recurrence(layer: nn.RNNBase, x: torch.Tensor, lengths: torch.Tensor, hx=None):
    """What ``layer`` (an ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU``) gives for a padded batch packed by ``lengths``,
    computed without packing (see the module docstring).

    ``x`` is ``(B, T, F)`` (``(T, B, F)`` unless ``layer.batch_first``), ``hx`` as the layer takes it. Returns
    ``(outputs, h_n)`` as the layer does (``(h_n, c_n)`` for LSTM)."""
    if getattr(layer, "proj_size", 0):
        raise ValueError("masked_recurrence does not handle LSTMs with proj_size")
    kind = {nn.LSTM: "lstm", nn.GRU: "gru"}.get(type(layer), getattr(layer, "nonlinearity", "tanh"))
    x = x if layer.batch_first else x.transpose(0, 1)  # (B, T, F)
    B, T, _ = x.shape
    D, H = 2 if layer.bidirectional else 1, layer.hidden_size
    live = (torch.arange(T, device=x.device)[None] < lengths.to(x.device)[:, None]).transpose(0, 1)[..., None]
    h0, c0 = (hx if kind == "lstm" else (hx, None)) if hx is not None else (None, None)
    h0 = x.new_zeros(layer.num_layers * D, B, H) if h0 is None else h0
    c0 = x.new_zeros(layer.num_layers * D, B, H) if c0 is None and kind == "lstm" else c0
    hs, cs = [], []
    for layer_i in range(layer.num_layers):
        if layer_i > 0:
            x = F.dropout(x, layer.dropout, layer.training)
        weights, xs, init = [], [], []
        for d, sfx in enumerate(["", "_reverse"][:D]):
            w_ih, w_hh, b_ih, b_hh = (getattr(layer, f"{n}_l{layer_i}{sfx}", None) for n in _WEIGHTS)
            gi = F.linear(x, w_ih, b_ih).transpose(0, 1)  # (T, B, G*H): the input projections of all steps at once
            xs += [gi.flip(0), live.flip(0)] if d else [gi, live]  # the reverse direction reads from the end
            weights.append((w_hh, b_hh))
            k = layer_i * D + d
            # copies: the loop refuses initial states that share memory (views of one h0) once decomposed for ONNX
            init.append((h0[k].clone(),) if c0 is None else (h0[k].clone(), c0[k].clone()))
        carry, ys = time_scan(_step(kind, weights), tuple(init), tuple(xs))
        if ys is None:  # no time step at all
            ys = (x.new_zeros(0, B, H),) * D
        outs = [y.flip(0) if d else y for d, y in enumerate(ys)]  # (T, B, H) each, in time order
        x = torch.cat(outs, -1).transpose(0, 1)  # (B, T, D*H)
        hs += [c[0] for c in carry]
        cs += [c[-1] for c in carry]
    out = x if layer.batch_first else x.transpose(0, 1)
    h_n = torch.stack(hs)  # (L*D, B, H)
    return out, ((h_n, torch.stack(cs)) if kind == "lstm" else h_n)


def _step(kind: str, weights: list[tuple[torch.Tensor, torch.Tensor | None]]):
    """The loop body of one layer, both directions in one step (one loop per layer, not two: export traces each
    loop body apart, ~1 s each). ``carry`` holds ``(h,)`` or, for LSTM, ``(h, c)`` per direction; the inputs are
    each direction's input projections ``g`` (B, G*H) and its ``keep`` (B, 1): False after the sequence's end."""

    def step(carry, *xs):
        kept, outs = [], []
        for (w_hh, b_hh), state, g, keep in zip(weights, carry, xs[0::2], xs[1::2]):
            h, c = cell_step(kind, g, F.linear(state[0], w_hh, b_hh), state[0], state[-1])
            kept.append(tuple(torch.where(keep, new, old) for new, old in zip((h, c), state)))
            outs.append(torch.where(keep, h, 0.0))  # zeros after the end, as pad_packed_sequence gives
        return tuple(kept), tuple(outs)

    return step


def use_masked(net: nn.Module, masked: bool = True) -> nn.Module:
    """Run every padded batch of ``net`` (its recurrent encoders, a tagger's character encoder) through the masked
    path (``masked=False``: packed again). Returns ``net``."""
    for module in net.modules():
        if hasattr(type(module), "masked"):
            module.masked = masked
    return net
