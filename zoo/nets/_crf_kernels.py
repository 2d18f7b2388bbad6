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
``P(y_{t-1}, y_t) = a_{t-1} M w_t / (pre_t . w_t)``, the transitions' summed over batch and time in one matrix
product; ``nll`` subtracts the gold path's counts (scatter-adds) in the same backward. Padded steps run the
recursion on (finite) ones and each sequence's value is read at its own last step, so no step needs a ``where``.
Probabilities below fp32's range flush to 0; if a sequence's whole mass does (scores spread over more than ~80
nats), the result is not finite and the caller falls back to the log-space recursion; scaled betas beyond fp32's
range are recomputed with a per-step normalisation (exact, slower).

``viterbi``: the max-plus step as a broadcast add into a preallocated ``(K_prev, K_next, B)`` buffer and a max over
its first axis (the batch innermost: contiguous, vectorised; a max with indices costs ~4x a max of values at these
sizes), then the emissions: 3 ops per step, no pointers. The backtrace recomputes each step's argmax along the
chosen path only (the same fp32 sums as the forward max, so the same tags), in NumPy on the CPU (~1 us an op
against a torch op's ~2-3 us), in torch on other devices.
"""

from __future__ import annotations

import math

import torch

__all__ = ["log_partition", "nll", "viterbi"]

_NUMPY_BACKTRACE = True  # on the CPU (the torch loop below serves other devices; tests switch it off)
_SCALED_BETAS = True  # betas scaled by the forward's c_t (2 ops a step); tests switch it off to run the fallback


class _Chain(torch.autograd.Function):
    """log Z (B,) of emissions (B, T, K) with lengths (B,) under transitions (K, K), start (K,), end (K,); with
    ``tags`` (B, T) (0 after each sequence's end), log Z minus the score of the tags (the negative log-likelihood)."""

    @staticmethod
    def forward(ctx, e, lengths, tags, trans, start, end):
        with torch.autocast(e.device.type, enabled=False):
            B, T, K = e.shape
            valid = (torch.arange(T, device=e.device)[:, None] < lengths[None])[..., None]  # (T, B, 1)
            shift = e.amax(-1, keepdim=True).transpose(0, 1).masked_fill(~valid, 0)  # (T, B, 1)
            # u | 1 (T, B, K + 1): the emission probabilities, 1 on padded steps; the last column carries c_t
            u = torch.ones(T, B, K + 1, dtype=e.dtype, device=e.device)
            torch.sub(e.transpose(0, 1), shift, out=u[:, :, :K]).exp_().masked_fill_(~valid, 1.0)
            c_trans, c_start, c_end = trans.max(), start.max(), end.max()
            M, S, E = (trans - c_trans).exp(), (start - c_start).exp(), (end - c_end).exp()
            # (K + 1, K + 1): M with its row sums as a last column (-> c_t = sum(pre_t)), a zero last row
            M_aug = torch.zeros(K + 1, K + 1, dtype=M.dtype, device=M.device)
            M_aug[:K, :K], M_aug[:K, K] = M, M.sum(1)
            pre = torch.empty_like(u)  # pre_t | c_t
            pre[0, :, :K], pre[0, :, K] = S, 1.0
            p_steps, u_steps = pre.unbind(0), u.unbind(0)  # views: no select per step
            x, a = torch.empty(B, K + 1, dtype=u.dtype, device=u.device), torch.empty_like(u[0])  # a_t | 1
            torch.mul(pre[0], u[0], out=a)
            c_x = x[:, K:]
            for t in range(1, T):
                torch.mm(a, M_aug, out=p_steps[t])
                torch.mul(p_steps[t], u_steps[t], out=x)
                torch.div(x, c_x, out=a)
            p, c, u = pre[:, :, :K], pre[:, :, K:], u[:, :, :K]  # (T, B, K), (T, B, 1), (T, B, K)
            last = (lengths - 1).view(1, B, 1)
            logs = (c.log() + shift).cumsum(0).gather(0, last).view(B)  # (B,) through each sequence's end
            at_last = last.expand(1, B, K)
            a_last = p.gather(0, at_last)[0] * u.gather(0, at_last)[0] / c.gather(0, last)[0]  # (B, K)
            out = (a_last * E).sum(-1).log() + logs + c_start + (lengths - 1) * c_trans + c_end
            if tags is not None:
                out = out - _path_score(e, tags, valid[..., 0].t(), lengths, trans, start, end)
        ctx.save_for_backward(pre, u, valid, lengths, tags, M, E)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        pre, u, valid, lengths, tags, M, E = ctx.saved_tensors
        with torch.autocast(u.device.type, enabled=False):
            T, B, K = u.shape
            p, c = pre[:, :, :K], pre[:, :, K:]
            is_end = torch.arange(T, device=u.device)[:, None, None] == (lengths - 1).view(1, B, 1)  # (T, B, 1)
            w = _scaled_w(c, u, is_end, M, E) if _SCALED_BETAS else _normalised_w(u, is_end, M, E)
            pw = p * w
            norm = pw.sum(-1, keepdim=True)  # (T, B, 1): pre_t . w_t
            if _SCALED_BETAS and not math.isfinite(float(norm.sum())):  # scaled betas beyond fp32's range
                w = _normalised_w(u, is_end, M, E)
                pw = p * w
                norm = pw.sum(-1, keepdim=True)
            g = grad.to(pw.dtype).view(1, B, 1)
            weight = torch.where(valid, g / norm, 0.0)  # (T, B, 1)
            unary = pw.mul_(weight)  # (T, B, K): d log Z / d emissions
            # pairwise marginal t-1 -> t: a_{t-1}[i] M[i, j] w_t[j] / (pre_t . w_t), a_t = pre_t u_t / c_t
            left = (p[:-1] * u[:-1] * (weight[1:] / c[:-1])).reshape(-1, K)
            d_trans = M * (left.t() @ w[1:].reshape(-1, K))
            d_start = unary[0].sum(0)
            d_end = unary.gather(0, (lengths - 1).view(1, B, 1).expand(1, B, K))[0].sum(0)
            d_e = unary.transpose(0, 1)  # (B, T, K)
            if tags is not None:  # minus the gold path's counts
                gv = (g.view(B, 1) * valid[..., 0].t()).to(d_e.dtype)  # (B, T)
                d_e.scatter_add_(2, tags[..., None], -gv[..., None])
                d_trans.view(-1).index_add_(0, (tags[:, :-1] * K + tags[:, 1:]).flatten(), -gv[:, 1:].flatten())
                d_start.index_add_(0, tags[:, 0], -gv[:, 0])
                d_end.index_add_(0, tags.gather(1, (lengths - 1)[:, None])[:, 0], -gv[:, 0])
        return d_e, None, None, d_trans, d_start, d_end


def _scaled_w(c, u, is_end, M, E):
    """``w_t = u_t * beta_t`` (T, B, K) with betas scaled by the forward's ``c_{t+1}``: 2 ops a step."""
    T, B, K = u.shape
    coef = torch.cat([torch.where(is_end[:-1], 0.0, 1.0 / c[1:]), torch.zeros_like(c[:1])])  # 1 / c_{t+1}, t < L-1
    ue, uc = u * (E * is_end), u * coef  # (T, B, K)
    w = torch.empty_like(u)
    w[T - 1] = ue[T - 1]
    w_steps, ue_steps, uc_steps = w.unbind(0), ue.unbind(0), uc.unbind(0)
    tmp, Mt = torch.empty(B, K, dtype=u.dtype, device=u.device), M.t()
    for t in range(T - 2, -1, -1):
        torch.mm(w_steps[t + 1], Mt, out=tmp)
        torch.addcmul(ue_steps[t], tmp, uc_steps[t], out=w_steps[t])
    return w


def _normalised_w(u, is_end, M, E):
    """``w_t = u_t * beta_t`` with each beta rescaled to sum 1: always in range, 4 ops a step."""
    T, B, K = u.shape
    w, b, Mt = torch.empty_like(u), E.expand(B, K), M.t()
    for t in range(T - 1, -1, -1):
        if t < T - 1:
            b = torch.mm(w[t + 1], Mt)
            b = torch.where(is_end[t], E, b / b.sum(-1, keepdim=True))
        torch.mul(u[t], b, out=w[t])
    return w


def _path_score(e, tags, valid, lengths, trans, start, end) -> torch.Tensor:
    """The score (B,) of ``tags`` (B, T) (0 after each end) on emissions (B, T, K); ``valid`` (B, T) booleans."""
    B, T, K = e.shape
    emit = (e.gather(2, tags[..., None])[..., 0] * valid).sum(1)
    moves = (trans.view(-1)[tags[:, :-1] * K + tags[:, 1:]] * valid[:, 1:]).sum(1)
    return emit + moves + start[tags[:, 0]] + end[tags.gather(1, (lengths - 1)[:, None])[:, 0]]


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
    e_steps = e.permute(1, 2, 0).contiguous().unbind(0)  # (K, B) each: the batch innermost
    scores = torch.empty(T, K, B, dtype=dt, device=dev)
    s_steps, s_prev = scores.unbind(0), scores.unsqueeze(2).unbind(0)  # (K, B) and (K_prev, 1, B) views
    buf, tr = torch.empty(K, K, B, dtype=dt, device=dev), trans.unsqueeze(2)  # (K_prev, K_next, 1)
    torch.add(e_steps[0], start[:, None], out=s_steps[0])
    for t in range(1, T):
        torch.add(s_prev[t - 1], tr, out=buf)  # (K_prev, K_next, B)
        torch.amax(buf, 0, out=s_steps[t])
        s_steps[t].add_(e_steps[t])
    last_step = lengths - 1
    final = scores.gather(0, last_step.view(1, 1, B).expand(1, K, B))[0] + end[:, None]  # (K, B)
    final_state = final.argmax(0)  # (B,)
    scores_bk = scores.transpose(1, 2).contiguous()  # (T, B, K_prev): rows for the backtrace
    trans_t = trans.t().contiguous()  # (K_next, K_prev)
    if dev.type == "cpu" and _NUMPY_BACKTRACE:
        return torch.from_numpy(
            _backtrace_numpy(scores_bk.numpy(), trans_t.numpy(), final_state.numpy(), last_step.numpy())
        )
    is_end = torch.arange(T, device=dev)[:, None] == last_step[None]  # (T, B)
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
