"""Fast eager kernels for :class:`zoo.nets.crf.CRF`: log Z and the negative log-likelihood with a hand-written
backward, and Viterbi with values-only steps. At the sizes of a tagger (B=32, T=40, K=17) each step costs a few
microseconds of dispatch per op, more than its arithmetic, so the loops are written for the fewest ops per step.

``log_partition`` / ``nll``: the forward recursion runs in exp space. With ``pre_t = a_{t-1} M`` (``pre_0`` the start
probabilities) and ``u_t`` the emission probabilities (each step shifted to max 1), ``a_t = pre_t * u_t / c_t`` where
``c_t = sum(pre_t)`` comes out of the same matrix product as an extra column of ``M`` (its row sums): 3 ops per step
(product, multiply, divide), ``log Z = sum_t log c_t + log(a_{L-1} . end)`` plus the shifts. The backward is one
backward recursion, not autograd through the T steps: with ``w_t = u_t * beta_t`` and betas scaled by the forward's
``c_{t+1}`` (Rabiner 1989, Sec. V.A: ``a_t . beta_t`` then stays constant), ``w_t = u_t * end * [t = L-1] +
(w_{t+1} M^T) * u_t * [t < L-1] / c_{t+1}`` is a product and one ``addcmul`` per step (their coefficients computed
for all steps at once). The gradient of log Z is the marginals, ``P(y_t) = pre_t * w_t / (pre_t . w_t)`` and
``P(y_{t-1}, y_t) = a_{t-1} M w_t / (pre_t . w_t)``, the transitions' one batched product over the steps summed
over time (a cascade sum: 1e-8 of float64 where one product over all T * B rows drifted to 3e-6); ``nll`` subtracts
the gold path's counts (scatter-adds) in the same backward, so autograd sees one node. Padded steps run the
recursion on (finite) ones and each sequence's value is read at its own last step, so no step needs a ``where``.
Probabilities below fp32's range flush to 0; if a sequence's whole mass does (scores spread over more than ~80
nats), the result is not finite and the caller falls back to the log-space recursion; scaled betas beyond fp32's
range are recomputed with a per-step normalisation (exact, slower).

``viterbi``: the max-plus step as a broadcast add into a preallocated ``(K_prev, K_next, B)`` buffer and a max over
its first axis (the batch innermost: contiguous, vectorised; a max with indices costs ~4x a max of values at
B=32 K=17), then the emissions: 3 ops per step, no pointers. The backtrace recomputes each step's argmax along the
chosen path only (the same fp32 sums as the forward max, so the same tags), in NumPy on the CPU (~1 us an op
against a torch op's ~2-3 us), in torch on other devices.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn as nn

__all__ = ["log_partition", "nll", "viterbi"]

_NUMPY_BACKTRACE = True  # on the CPU (the torch loop below serves other devices; tests switch it off)
_SCALED_BETAS = True  # betas scaled by the forward's c_t (2 ops a step); tests switch it off to run the fallback


def _no_autocast(device_type: str):
    """Autocast off (the recursions stay in the emissions' dtype); a no-op context when it is already off."""
    return torch.autocast(device_type, enabled=False) if torch.is_autocast_enabled(device_type) else nullcontext()


class _Chain(torch.autograd.Function):
    """log Z (B,) of emissions (B, T, K) with lengths (B,) under transitions (K, K), start (K,), end (K,); with
    ``tags`` (B, T) (in [0, K) everywhere), log Z minus the score of the tags (the negative log-likelihood)."""

    @staticmethod
    def forward(ctx, e, lengths, tags, trans, start, end):
        with _no_autocast(e.device.type):
            B, T, K = e.shape
            valid = torch.arange(T, device=e.device) < lengths.unsqueeze(1)  # (B, T)
            shift = e.amax(-1, keepdim=True)  # (B, T, 1)
            # u | 1 (B, T, K + 1): the emission probabilities (max 1 a step), 1 on padded steps; the last column
            # carries c_t through the multiply
            u = nn.functional.pad(e - shift, (0, 1)).exp_().masked_fill_(~valid.unsqueeze(2), 1.0)
            c_trans, c_start, c_end = trans.max(), start.max(), end.max()
            MS = torch.cat([trans - c_trans, (start - c_start).unsqueeze(0)]).exp_()  # (K + 1, K): M, then S
            MS = torch.cat([MS, MS.sum(1, keepdim=True)], 1)  # (K + 1, K + 1): row sums last (-> c_t = sum pre_t)
            M_aug, E = MS[:K], (end - c_end).exp()
            pre = torch.empty(T, B, K + 1, dtype=e.dtype, device=e.device)  # pre_t | c_t
            p_steps, u_steps = pre.unbind(0), u.unbind(1)  # views: no select per step
            p_steps[0].copy_(MS[K])  # pre_0 = S, c_0 = sum(S)
            x, a = torch.empty(B, K + 1, dtype=e.dtype, device=e.device), torch.empty_like(p_steps[0])
            a_k, c_x = a[:, :K], x[:, K:]
            for t in range(T):
                if t:
                    torch.mm(a_k, M_aug, out=p_steps[t])
                torch.mul(p_steps[t], u_steps[t], out=x)
                torch.div(x, c_x, out=a)
            p, c = pre[:, :, :K], pre[:, :, K:]  # (T, B, K), (T, B, 1)
            alphas = p * u[:, :, :K].transpose(0, 1) / c  # (T, B, K): a_t, each summing to <= 1
            # log Z_t = sum_{s <= t} (log c_s + shift_s) + log(a_t . E), read at each sequence's end, plus the constants
            log_zt = (c.log() + shift.transpose(0, 1)).squeeze(2).cumsum(0) + (alphas @ E).log()  # (T, B)
            out = log_zt.gather(0, (lengths - 1).unsqueeze(0)).squeeze(0) + (lengths - 1) * c_trans + c_start + c_end
            if tags is None:
                flat = last_tag = None
            else:
                flat = (tags[:, :-1] * K + tags[:, 1:]).flatten()  # transitions as indices into trans.flatten()
                last_tag = tags.gather(1, (lengths - 1).unsqueeze(1)).squeeze(1)
                emit = (e.gather(2, tags.unsqueeze(2)).squeeze(2) * valid).sum(1)
                moves = (trans.view(-1).index_select(0, flat).view(B, T - 1) * valid[:, 1:]).sum(1)
                out = out - (emit + moves + start.index_select(0, tags[:, 0]) + end.index_select(0, last_tag))
        ctx.save_for_backward(pre, u, alphas, valid, tags, flat, last_tag, M_aug, E)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        pre, u, alphas, valid, tags, flat, last_tag, M_aug, E = ctx.saved_tensors
        with _no_autocast(pre.device.type):
            T, B, K = alphas.shape
            M, p, c = M_aug[:, :K], pre[:, :, :K], pre[:, :, K:]
            vf = valid.to(pre.dtype)  # (B, T)
            ends = vf - nn.functional.pad(vf[:, 1:], (0, 1))  # (B, T): 1 at each sequence's last step
            u = u[:, :, :K].transpose(0, 1)  # (T, B, K)
            w = _scaled_w(u, ends, vf, c, M, E) if _SCALED_BETAS else None
            if w is not None:
                pw = p * w
                norm = pw.sum(-1, keepdim=True)  # (T, B, 1): pre_t . w_t
            if w is None or not math.isfinite(float(norm.sum())):  # scaled betas beyond fp32's range
                w = _normalised_w(u, ends, M, E)
                pw = p * w
                norm = pw.sum(-1, keepdim=True)
            weight = torch.where(valid.t().unsqueeze(2), grad.to(pw.dtype).view(1, B, 1) / norm, 0.0)  # (T, B, 1)
            d_e = torch.empty(B, T, K, dtype=pw.dtype, device=pw.device)
            torch.mul(pw, weight, out=d_e.transpose(0, 1))  # d log Z / d emissions: the unary marginals
            # pairwise marginal t-1 -> t: a_{t-1}[i] M[i, j] w_t[j] / (pre_t . w_t)
            d_trans = M * torch.bmm((alphas[:-1] * weight[1:]).transpose(1, 2), w[1:]).sum(0)
            d_start = d_e[:, 0].sum(0)
            d_end = ends.view(1, B * T) @ d_e.view(B * T, K)  # (1, K)
            d_end = d_end.view(K)
            if tags is not None:  # minus the gold path's counts
                gv = vf * -grad.to(vf.dtype).unsqueeze(1)  # (B, T)
                d_e.scatter_add_(2, tags.unsqueeze(2), gv.unsqueeze(2))
                d_trans.view(-1).index_add_(0, flat, gv[:, 1:].flatten())
                d_start.index_add_(0, tags[:, 0], gv[:, 0])
                d_end.index_add_(0, last_tag, gv[:, 0])
        return d_e, None, None, d_trans, d_start, d_end


def _scaled_w(u, ends, vf, c, M, E):
    """``w_t = u_t * beta_t`` (T, B, K) with betas scaled by the forward's ``c_{t+1}``: 2 ops a step,
    ``w_t = u_t * end * [t = L-1] + (w_{t+1} M^T) * u_t * [t < L-1] / c_{t+1}`` (0 after each end)."""
    T, B, K = u.shape
    ue = u * (ends.t().unsqueeze(2) * E)  # (T, B, K)
    uc = u[:-1] * (vf[:, 1:].t().unsqueeze(2) / c[1:])  # (T - 1, B, K): [t + 1 <= L - 1] / c_{t+1}
    w = torch.empty_like(ue)
    w[T - 1] = ue[T - 1]
    w_steps, ue_steps, uc_steps = w.unbind(0), ue.unbind(0), uc.unbind(0)
    tmp, Mt = torch.empty(B, K, dtype=u.dtype, device=u.device), M.t()
    for t in range(T - 2, -1, -1):
        torch.mm(w_steps[t + 1], Mt, out=tmp)
        torch.addcmul(ue_steps[t], tmp, uc_steps[t], out=w_steps[t])
    return w


def _normalised_w(u, ends, M, E):
    """``w_t = u_t * beta_t`` with each beta rescaled to sum 1: always in range, 4 ops a step."""
    T, B, K = u.shape
    w, b, Mt, is_end = torch.empty_like(u), E.expand(B, K), M.t(), ends.t().unsqueeze(2).bool()
    for t in range(T - 1, -1, -1):
        if t < T - 1:
            b = torch.mm(w[t + 1], Mt)
            b = torch.where(is_end[t], E, b / b.sum(-1, keepdim=True))
        torch.mul(u[t], b, out=w[t])
    return w


def log_partition(e: torch.Tensor, lengths: torch.Tensor, trans, start, end) -> torch.Tensor:
    """log Z (B,) of the chains ``e`` (B, T, K) (fp32 or fp64) of ``lengths`` (B,) >= 1, in the dtype of ``e``."""
    dt = e.dtype
    return _Chain.apply(e, lengths, None, trans.to(dt), start.to(dt), end.to(dt))


def nll(e: torch.Tensor, tags: torch.Tensor, lengths: torch.Tensor, trans, start, end) -> torch.Tensor:
    """log Z - score(tags) (B,) for ``tags`` (B, T) in [0, K) (any such tag after each sequence's end)."""
    dt = e.dtype
    return _Chain.apply(e, lengths, tags, trans.to(dt), start.to(dt), end.to(dt))


@torch.no_grad()
def viterbi(e: torch.Tensor, lengths: torch.Tensor, trans, start, end) -> torch.Tensor:
    """The best paths (B, T) (long) of chains ``e`` (B, T, K) of ``lengths`` (B,) >= 1; arbitrary tags after each
    sequence's end."""
    B, T, K = e.shape
    dt, dev = e.dtype, e.device
    trans, start, end = trans.to(dt), start.to(dt), end.to(dt)
    # (T, K, B): the emissions, then the best scores, the batch innermost; a copy (for B = 1 the permuted view is
    # already contiguous, and .contiguous() would let the loop write into the caller's emissions)
    scores = e.permute(1, 2, 0).clone(memory_format=torch.contiguous_format)
    s_steps = scores.unsqueeze(2).unbind(0)  # (K, 1, B) views
    buf, best, tr = (
        torch.empty(K, K, B, dtype=dt, device=dev),
        torch.empty(K, B, dtype=dt, device=dev),
        trans[..., None],
    )
    best_v = best.view(K, 1, B)
    s_steps[0].add_(start.view(K, 1, 1))
    for t in range(1, T):
        torch.add(s_steps[t - 1], tr, out=buf)  # (K_prev, K_next, B)
        torch.amax(buf, 0, out=best)
        s_steps[t].add_(best_v)
    last_step = lengths - 1
    final = scores.gather(0, last_step.view(1, 1, B).expand(1, K, B)).squeeze(0) + end.unsqueeze(1)  # (K, B)
    final_state = final.argmax(0)  # (B,)
    scores_bk = scores.transpose(1, 2).contiguous()  # (T, B, K_prev): rows for the backtrace
    trans_t = trans.t().contiguous()  # (K_next, K_prev)
    if dev.type == "cpu" and _NUMPY_BACKTRACE:
        return torch.from_numpy(
            _backtrace_numpy(scores_bk.numpy(), trans_t.numpy(), final_state.numpy(), last_step.numpy())
        )
    is_end = torch.arange(T, device=dev).unsqueeze(1) == last_step  # (T, B)
    path = torch.empty(T, B, dtype=torch.long, device=dev)
    state = final_state
    path[T - 1] = state
    for t in range(T - 2, -1, -1):
        prev = (scores_bk[t] + trans_t[state]).argmax(-1)  # the same sums as the forward max: the same argmax
        state = torch.where(is_end[t], final_state, prev)
        path[t] = state
    return path.t()


def _backtrace_numpy(scores, trans_t, final, last_step):
    import numpy as np

    T, B, _ = scores.shape
    path = np.empty((T, B), dtype=np.int64)
    ends = np.zeros((T, B), dtype=bool)
    ends[last_step, np.arange(B)] = True
    has_end = ends.any(1).tolist()
    state = final
    path[T - 1] = state
    for t in range(T - 2, -1, -1):
        state = (scores[t] + np.take(trans_t, state, 0)).argmax(1)
        if has_end[t]:
            state = np.where(ends[t], final, state)
        path[t] = state
    return path.T
