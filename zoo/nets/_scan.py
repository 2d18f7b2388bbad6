"""A loop over time that ``torch.export`` traces with a dynamic length.

A Python ``for t in range(T)`` is unrolled by ``torch.export``, which then fixes ``T`` at the example's length. Under
export, :func:`time_scan` hands the step to torch's ``scan`` operator instead: one loop node in the graph (ONNX
``Scan``) whose trip count is the input's length. In eager mode a plain loop runs the same step: torch's eager
``scan`` costs ~2.5x the loop (CRF Viterbi at B=32, T=40, K=17: 4.5 ms against 1.7 ms, one thread).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["time_scan"]


def time_scan(
    step: Callable, init, xs: tuple[torch.Tensor, ...], reverse: bool = False
) -> tuple[object, tuple[torch.Tensor, ...] | None]:
    """``carry, y_t = step(carry, *x_t)`` over ``t`` (the first dimension of every tensor in ``xs``), backwards
    when ``reverse``. Returns the final carry and the outputs ``ys`` stacked along dim 0 at their own positions (a
    tuple, as ``step`` returns them). The step must not return a carry tensor as an output too (clone it).

    With no step to run (length 0), eager mode returns ``(init, None)``; under export the outputs are empty."""
    if torch.compiler.is_exporting():
        from torch._higher_order_ops.scan import scan  # prototype operator: what torch.export lowers loops with

        return scan(lambda c, x: _as_tuple(step(c, *x)), init, tuple(xs), reverse=reverse)
    T = xs[0].shape[0]
    if T == 0:
        return init, None
    carry, outs = init, [None] * T
    for t in range(T - 1, -1, -1) if reverse else range(T):
        carry, y = step(carry, *(x[t] for x in xs))
        outs[t] = y if isinstance(y, tuple) else (y,)
    return carry, tuple(torch.stack(ys) for ys in zip(*outs))


def _as_tuple(out):
    carry, y = out
    return carry, y if isinstance(y, tuple) else (y,)
