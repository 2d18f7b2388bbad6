"""Fast eager kernels for :class:`zoo.nets.crf.CRF`: log Z with a hand-written backward, and Viterbi without a
per-step mask.

``log_partition``: the forward recursion runs in exp space, one ``(B, K) @ (K, K)`` product per step, each step
rescaled to sum 1 (its log scale summed apart), instead of a logsumexp over a ``(B, K, K)`` tensor; the backward is
not autograd through the T steps but one backward recursion: the gradient of log Z is the marginals (unary for the
emissions, start and end; pairwise for the transitions), summed over the batch in one matrix product. Padded steps
run the recursion on (finite) ones and each sequence's value is read at its own last step, so no step needs a
``where``. Probabilities below fp32's range flush to 0; if a sequence's whole mass does (scores spread over more
than ~80 nats), the result is not finite and the caller falls back to the log-space recursion.

``viterbi``: the max-plus recursion over the transposed transitions (the max over the contiguous last axis), the
scores of every step kept so each sequence's best final tag is read at its own end; the backtrace runs in NumPy on
the CPU (a few microseconds less per step than a torch op).
"""

from __future__ import annotations

import torch

__all__ = ["log_partition", "viterbi"]

_NUMPY_BACKTRACE = True  # on the CPU (the torch loop below serves other devices; tests switch it off)
_POINTERS_UP_TO = 24  # tags; above, the max with indices costs ~2x the max alone (one thread)


class _LogPartition(torch.autograd.Function):
    """log Z (B,) from emissions (B, T, K), lengths (B,), transitions (K, K), start (K,), end (K,)."""

    @staticmethod
    def forward(ctx, e, lengths, trans, start, end):
        with torch.autocast(e.device.type, enabled=False):
            B, T, K = e.shape
            valid = (torch.arange(T, device=e.device)[:, None] < lengths[None])[..., None]  # (T, B, 1)
            shift = e.amax(-1, keepdim=True).transpose(0, 1).masked_fill(~valid, 0)  # (T, B, 1)
            u = torch.where(valid, (e.transpose(0, 1) - shift).exp(), 1.0)  # (T, B, K): 1 on padded steps
            c_trans, c_start, c_end = trans.max(), start.max(), end.max()
            M, S, E = (trans - c_trans).exp(), (start - c_start).exp(), (end - c_end).exp()
            alphas, scale = torch.empty_like(u), torch.empty(T, B, 1, dtype=u.dtype, device=u.device)
            a_steps, s_steps, u_steps = alphas.unbind(0), scale.unbind(0), u.unbind(0)  # views: no select per step
            x = S * u_steps[0]
            for t in range(T):
                if t:
                    x = torch.mm(a_steps[t - 1], M).mul_(u_steps[t])
                torch.sum(x, -1, keepdim=True, out=s_steps[t])
                torch.div(x, s_steps[t], out=a_steps[t])
            last = (lengths - 1).view(1, B, 1)
            logs = (scale.log() + shift).cumsum(0).gather(0, last).view(B)  # (B,) through each sequence's end
            a_last = alphas.gather(0, last.expand(1, B, K))[0]  # (B, K)
            log_z = (a_last * E).sum(-1).log() + logs + c_start + (lengths - 1) * c_trans + c_end
        ctx.save_for_backward(alphas, scale, u, valid, lengths, M, E)
        return log_z

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        alphas, scale, u, valid, lengths, M, E = ctx.saved_tensors
        with torch.autocast(alphas.device.type, enabled=False):
            T, B, K = alphas.shape
            is_end = (torch.arange(T, device=u.device)[:, None] >= (lengths - 1)[None])[..., None]  # (T, B, 1)
            betas, w = torch.empty_like(alphas), torch.empty_like(alphas)  # w_t = u_t * beta_t
            b = E.expand(B, K)
            Mt = M.t()
            b_steps, w_steps, u_steps, end_steps = betas.unbind(0), w.unbind(0), u.unbind(0), is_end.unbind(0)
            for t in range(T - 1, -1, -1):
                if t < T - 1:
                    b = torch.mm(w_steps[t + 1], Mt)
                    b = torch.where(end_steps[t], E, b / b.sum(-1, keepdim=True))
                b_steps[t].copy_(b)
                torch.mul(u_steps[t], b, out=w_steps[t])
            ab = alphas * betas
            norm = ab.sum(-1, keepdim=True)  # (T, B, 1)
            g = grad.to(ab.dtype).view(1, B, 1)
            unary = torch.where(valid, ab * (g / norm), 0.0)  # (T, B, K): d log Z / d emissions
            # pairwise marginal t-1 -> t: alpha_{t-1}[i] M[i, j] u_t[j] beta_t[j] / (scale_t * norm_t)
            weight = torch.where(valid[1:], g / (scale[1:] * norm[1:]), 0.0)  # (T-1, B, 1)
            left = (alphas[:-1] * weight).reshape(-1, K)
            d_trans = M * (left.t() @ w[1:].reshape(-1, K))
            d_start = unary[0].sum(0)
            d_end = unary.gather(0, (lengths - 1).view(1, B, 1).expand(1, B, K))[0].sum(0)
        return unary.transpose(0, 1), None, d_trans, d_start, d_end


def log_partition(e: torch.Tensor, lengths: torch.Tensor, trans, start, end) -> torch.Tensor:
    """log Z (B,) of the chains ``e`` (B, T, K) (fp32 or fp64) of ``lengths`` (B,) >= 1, in the dtype of ``e``."""
    dt = e.dtype
    return _LogPartition.apply(e, lengths, trans.to(dt), start.to(dt), end.to(dt))


@torch.no_grad()
def viterbi(e: torch.Tensor, lengths: torch.Tensor, trans, start, end) -> torch.Tensor:
    """The best paths (B, T) (long) of chains ``e`` (B, T, K) of ``lengths`` (B,) >= 1; arbitrary tags after each
    sequence's end."""
    B, T, K = e.shape
    scores = torch.empty(T, B, K, dtype=e.dtype, device=e.device)
    s_steps, e_steps = scores.unbind(0), e.transpose(0, 1).unbind(0)
    torch.add(start, e_steps[0], out=s_steps[0])
    last_step = lengths - 1
    if K <= _POINTERS_UP_TO:  # max with indices over the previous tag (dim 1: torch's fastest layout here)
        pointers = torch.zeros(T, B, K, dtype=torch.long, device=e.device)
        best, p_steps = torch.empty(B, K, dtype=e.dtype, device=e.device), pointers.unbind(0)
        for t in range(1, T):
            torch.max(s_steps[t - 1][:, :, None] + trans, 1, out=(best, p_steps[t]))
            torch.add(best, e_steps[t], out=s_steps[t])
    else:  # values only (amax over a contiguous axis); each pointer is recomputed on the one tag the path takes
        pointers, trans_t = None, trans.t().contiguous()  # (K_next, K_prev)
        for t in range(1, T):
            torch.add(torch.amax(s_steps[t - 1][:, None, :] + trans_t, -1), e_steps[t], out=s_steps[t])
    final = scores.gather(0, last_step.view(1, B, 1).expand(1, B, K))[0] + end
    state = final_state = final.argmax(-1)  # (B,)
    if pointers is not None and e.device.type == "cpu" and _NUMPY_BACKTRACE:
        return torch.from_numpy(_backtrace_numpy(pointers.numpy(), state.numpy(), last_step.numpy()))
    path = torch.empty(T, B, dtype=torch.long, device=e.device)
    p_steps = path.unbind(0)
    rows = torch.arange(B, device=e.device)
    for t in range(T - 1, -1, -1):
        if t < T - 1:
            if pointers is None:  # the same sums as the forward max: the same argmax
                prev = (s_steps[t] + trans_t[state]).argmax(-1)
            else:
                prev = pointers[t + 1][rows, state]
            state = torch.where(last_step == t, final_state, prev)
        p_steps[t].copy_(state)
    return path.t()


def _backtrace_numpy(pointers, final, last_step):
    import numpy as np

    T, B, _ = pointers.shape
    path = np.empty((B, T), dtype=np.int64)
    rows = np.arange(B)
    state = final.copy()
    for t in range(T - 1, -1, -1):
        if t < T - 1:
            state = np.where(last_step == t, final, pointers[t + 1, rows, state])
        path[:, t] = state
    return path
