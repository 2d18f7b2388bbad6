"""Linear-chain conditional random field (Lafferty et al. 2001), batched, in log space, on any device and dtype.

Scores: ``score(y) = start[y_1] + sum_t emissions[t, y_t] + sum_t transitions[y_{t-1}, y_t] + end[y_n]`` over the
positions the mask keeps. A mask may skip positions anywhere (a ``[CLS]``-like first token, sub-word
continuations): the kept positions are scored as one chain, in order. Emissions of any float dtype are accepted;
the recursions run in fp32.

Transition constraints (``allowed``, ``allowed_start``, ``allowed_end``; see ``zoo.nets.tag_schemes`` for
BIO / IOB1 / BIOES / BILOU) remove impossible paths everywhere: from the partition function in training, and from
Viterbi, top-k and marginals. A constraint set under which some sequence length has no valid path is refused at
construction.

Besides the negative log-likelihood (:meth:`CRF.nll`, a loss to minimise), the same Viterbi gives the structured
perceptron loss (Collins 2002) and the structured hinge loss with a Hamming cost (Taskar et al. 2004; Tsochantaridis
et al. 2005): :meth:`CRF.perceptron_loss`, :meth:`CRF.hinge_loss`.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from zoo.nets import _crf_kernels
from zoo.nets._scan import time_scan
from zoo.nets.tag_schemes import SCHEMES, scheme_constraints

__all__ = ["CRF", "register_constraints", "scheme_constraints", "viterbi", "SCHEMES"]

NEG = -1e4  # the score of an impossible transition: finite (no inf - inf), far below any real path


def register_constraints(
    module: nn.Module,
    num_tags: int,
    allowed: torch.Tensor | None,
    allowed_start: torch.Tensor | None,
    allowed_end: torch.Tensor | None,
) -> None:
    """Give ``module`` the boolean buffers ``allowed`` (K, K) [from, to], ``allowed_start`` and ``allowed_end`` (K,):
    everything allowed where None, checked for shape and for a valid path of every length (the CRF's and the HMM's
    transition constraints)."""
    K, ones = num_tags, torch.ones(num_tags, dtype=torch.bool)
    # copies: buffers that share memory cannot be saved as safetensors
    allowed = torch.ones(K, K, dtype=torch.bool) if allowed is None else allowed.bool().clone()
    allowed_start = (ones if allowed_start is None else allowed_start).bool().clone()
    allowed_end = (ones if allowed_end is None else allowed_end).bool().clone()
    if allowed.shape != (K, K) or allowed_start.shape != (K,) or allowed_end.shape != (K,):
        raise ValueError(f"constraints must be ({K}, {K}) and ({K},) booleans")
    _check_feasible(allowed, allowed_start, allowed_end)
    module.register_buffer("allowed", allowed)
    module.register_buffer("allowed_start", allowed_start)
    module.register_buffer("allowed_end", allowed_end)


class CRF(nn.Module):
    """A linear-chain CRF over ``num_tags`` tags (see the module docstring)."""

    def __init__(
        self,
        num_tags: int,
        allowed: torch.Tensor | None = None,
        allowed_start: torch.Tensor | None = None,
        allowed_end: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if num_tags < 1:
            raise ValueError(f"num_tags must be >= 1; got {num_tags}")
        self.num_tags = num_tags
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags).uniform_(-0.1, 0.1))
        self.start = nn.Parameter(torch.empty(num_tags).uniform_(-0.1, 0.1))
        self.end = nn.Parameter(torch.empty(num_tags).uniform_(-0.1, 0.1))
        register_constraints(self, num_tags, allowed, allowed_start, allowed_end)

    # -- scores with the constraints applied ------------------------------------------------------------------
    def _potentials(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        trans = torch.where(self.allowed, self.transitions.float(), NEG)
        start = torch.where(self.allowed_start, self.start.float(), NEG)
        end = torch.where(self.allowed_end, self.end.float(), NEG)
        return trans, start, end

    def _compact(self, emissions: torch.Tensor, mask: torch.Tensor | None, tags: torch.Tensor | None = None):
        """Move the kept positions of each sequence to its front, in order: ``(emissions, tags, lengths, order)``
        with fp32 emissions (B, T, K); ``order`` maps compacted positions back (None without a mask)."""
        if emissions.dim() != 3 or emissions.shape[-1] != self.num_tags:
            raise ValueError(f"emissions must be (batch, time, {self.num_tags}); got {tuple(emissions.shape)}")
        B, T, _ = emissions.shape
        emissions = emissions.float()
        if mask is None:
            lengths = torch.full((B,), T, dtype=torch.long, device=emissions.device)
            return emissions, tags, lengths, None
        mask = mask.bool()
        if mask.shape != (B, T):
            raise ValueError(f"mask must be (batch, time) = {(B, T)}; got {tuple(mask.shape)}")
        lengths = mask.sum(1)
        if not torch.compiler.is_compiling():
            if not bool(lengths.all()):
                raise ValueError("a sequence has no position left by its mask: every sequence needs one token or more")
            if torch.equal(mask, torch.arange(T, device=mask.device)[None] < lengths[:, None]):
                return emissions, tags, lengths, None  # a mask of lengths: nothing to move
        # kept positions first, in order (the identity for a mask of lengths); no data-dependent branch: exportable
        order = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)
        emissions = emissions.gather(1, order[..., None].expand(-1, -1, self.num_tags))
        tags = None if tags is None else tags.gather(1, order)
        return emissions, tags, lengths, order

    def _log_z(self, emissions: torch.Tensor, lengths: torch.Tensor, trans, start, end) -> torch.Tensor:
        """log Z (B,): the exp-space kernel with its hand-written backward in eager mode, the
        log-space recursion under compile/export or when the kernel's fp32 range is exceeded."""
        if not torch.compiler.is_compiling():
            log_z = _crf_kernels.log_partition(emissions, lengths, trans, start, end)
            if bool(torch.isfinite(log_z).all()):
                return log_z
        return torch.logsumexp(self._forward_alpha(emissions, lengths, trans, start)[-1] + end, dim=-1)

    def _forward_alpha(self, emissions: torch.Tensor, lengths: torch.Tensor, trans, start) -> list[torch.Tensor]:
        """Forward variables alpha_t (B, K) for t < T (frozen after each sequence's end)."""
        alpha = start + emissions[:, 0]
        alphas = [alpha]
        for t in range(1, emissions.shape[1]):
            nxt = torch.logsumexp(alpha[:, :, None] + trans[None], dim=1) + emissions[:, t]
            alpha = torch.where((t < lengths)[:, None], nxt, alpha)
            alphas.append(alpha)
        return alphas

    # -- likelihood -------------------------------------------------------------------------------------------
    def log_partition(self, emissions: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """log Z (B,) over the paths the constraints allow."""
        trans, start, end = self._potentials()
        e, _, lengths, _ = self._compact(emissions, mask)
        return self._log_z(e, lengths, trans, start, end)

    def score(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The score (B,) of the tag sequences ``tags`` (B, T)."""
        trans, start, end = self._potentials()
        e, y, lengths, _ = self._compact(emissions, mask, tags.long())
        return self._path_score(e, y, lengths, trans, start, end)

    @staticmethod
    def _path_score(e, y, lengths, trans, start, end) -> torch.Tensor:
        B, T, _ = e.shape
        valid = torch.arange(T, device=e.device)[None] < lengths[:, None]
        y = y.masked_fill(~valid, 0)
        emit = (e.gather(2, y[..., None]).squeeze(-1) * valid).sum(1)
        moves = (trans[y[:, :-1], y[:, 1:]] * valid[:, 1:]).sum(1)
        last = y.gather(1, (lengths - 1)[:, None]).squeeze(1)
        return start[y[:, 0]] + emit + moves + end[last]

    def nll(
        self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor | None = None, reduction: str = "mean"
    ) -> torch.Tensor:
        """Negative log-likelihood ``log Z - score(tags)`` (>= 0): a loss to minimise. ``reduction``: ``mean``
        (over sequences), ``sum``, ``token_mean`` (over kept positions) or ``none`` (B,)."""
        trans, start, end = self._potentials()
        e, y, lengths, order = self._compact(emissions, mask, tags.long())
        y = y.masked_fill(~_kept(mask, order, lengths, y.shape[1]), 0)  # 0 after each end
        low, high = torch.aminmax(y)
        if int(low) < 0 or int(high) >= self.num_tags:
            raise ValueError(f"tags must be in [0, {self.num_tags}) at every position the mask keeps")
        nll = None
        if not torch.compiler.is_compiling():  # eager: log Z and the gold score in one kernel with its own backward
            nll = _crf_kernels.nll(e, y, lengths, trans, start, end)
            if not math.isfinite(float(nll.detach().sum())):
                nll = None
        if nll is None:  # the log-space recursion (compile / export, or beyond the kernel's fp32 range)
            log_z = torch.logsumexp(self._forward_alpha(e, lengths, trans, start)[-1] + end, dim=-1)
            nll = log_z - self._path_score(e, y, lengths, trans, start, end)
        if reduction == "none":
            return nll
        if reduction == "sum":
            return nll.sum()
        if reduction == "token_mean":
            return nll.sum() / lengths.sum()
        if reduction == "mean":
            return nll.mean()
        raise ValueError(f"reduction must be mean, sum, token_mean or none; got {reduction!r}")

    def marginals(self, emissions: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """P(y_t = k | x) (B, T, K) by forward-backward, at the original positions (0 where the mask skips)."""
        trans, start, end = self._potentials()
        e, _, lengths, order = self._compact(emissions, mask)
        B, T, K = e.shape
        alphas = self._forward_alpha(e, lengths, trans, start)
        log_z = torch.logsumexp(alphas[-1] + end, dim=-1)
        b, betas = end.expand(B, K), [None] * T
        for t in range(T - 1, -1, -1):  # beta_t = end at a sequence's last position
            if t < T - 1:
                nxt = torch.logsumexp(trans[None] + (e[:, t + 1] + b)[:, None, :], dim=2)
                b = torch.where((t < lengths - 1)[:, None], nxt, end.expand(B, K))
            betas[t] = b
        probs = torch.stack([(a + bt - log_z[:, None]).exp() for a, bt in zip(alphas, betas)], 1)
        probs = probs * (torch.arange(T, device=e.device)[None] < lengths[:, None])[..., None]
        return _restore(probs, order, 1, 0.0)

    # -- decoding ---------------------------------------------------------------------------------------------
    def decode(self, emissions: torch.Tensor, mask: torch.Tensor | None = None, pad: int = -1) -> torch.Tensor:
        """The best tag sequence (B, T) by Viterbi; ``pad`` where the mask skips or after a sequence's end."""
        trans, start, end = self._potentials()
        e, _, lengths, order = self._compact(emissions, mask)
        B, T, K = e.shape
        valid = _kept(mask, order, lengths, T)
        if not torch.compiler.is_compiling():  # eager: the values-only kernel, no per-step masking
            paths = _crf_kernels.viterbi(e.detach(), lengths, trans.detach(), start.detach(), end.detach())
            return _restore(paths.to(e.device).masked_fill(~valid, pad), order, 1, pad)
        score, pointers = start + e[:, 0], []
        stay = torch.arange(K, device=e.device).expand(B, K)
        for t in range(1, T):
            best, idx = (score[:, :, None] + trans[None]).max(1)  # (B, K): the best previous tag of each tag
            live = (t < lengths)[:, None]
            score = torch.where(live, best + e[:, t], score)
            pointers.append(torch.where(live, idx, stay))  # a finished sequence keeps its last tag
        state = (score + end).argmax(1)
        path = [state]
        for ptr in reversed(pointers):
            state = ptr.gather(1, state[:, None]).squeeze(1)
            path.append(state)
        paths = torch.stack(path[::-1], 1)
        return _restore(paths.masked_fill(~valid, pad), order, 1, pad)

    def viterbi(self, emissions: torch.Tensor, lengths: torch.Tensor, pad: int = -1) -> torch.Tensor:
        """:meth:`decode` for a mask of lengths (each sequence's first ``lengths[b]`` positions): the same paths
        without the compaction's sort, which ONNX cannot export (``Sort`` with an out parameter). Both recursions
        are :func:`~zoo.nets._scan.time_scan` loops, so ``torch.export`` keeps the length dynamic."""
        if emissions.dim() != 3 or emissions.shape[-1] != self.num_tags:
            raise ValueError(f"emissions must be (batch, time, {self.num_tags}); got {tuple(emissions.shape)}")
        return viterbi(emissions, lengths, *self._potentials(), pad=pad)

    def topk(
        self, emissions: torch.Tensor, mask: torch.Tensor | None = None, k: int = 1, pad: int = -1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` best tag sequences (B, k, T) and their scores (B, k), best first (list Viterbi). Fewer valid
        paths than ``k`` leave the rest with score ``-inf``-like (below -1e3) and arbitrary tags."""
        if k < 1:
            raise ValueError(f"k must be >= 1; got {k}")
        trans, start, end = self._potentials()
        e, _, lengths, order = self._compact(emissions, mask)
        B, T, K = e.shape
        # score[b, j, r]: the r-th best score of a path ending in tag j at step t
        score = torch.full((B, K, k), float("-inf"), device=e.device)
        score[:, :, 0] = start + e[:, 0]
        pointers = []
        for t in range(1, T):
            cand = score[:, :, None, :] + trans[None, :, :, None]  # (B, K_prev, K, k)
            cand = cand.permute(0, 2, 1, 3).reshape(B, K, K * k)
            best, idx = cand.topk(k, dim=2)  # (B, K, k)
            best = best + e[:, t, :, None]
            live = (t < lengths)[:, None, None]
            score = torch.where(live, best, score)
            pointers.append(torch.where(live, idx, -1))  # -1: the sequence has ended, the path stays
        final = (score + end[None, :, None]).reshape(B, K * k)
        top_scores, top = final.topk(k, dim=1)  # (B, k): state * k + rank
        paths = torch.zeros(B, k, T, dtype=torch.long, device=e.device)
        state, rank = top // k, top % k
        for t in range(T - 1, 0, -1):
            paths[:, :, t] = state
            ptr = pointers[t - 1].gather(1, state[..., None].expand(-1, -1, k)).gather(2, rank[..., None]).squeeze(-1)
            moved = ptr >= 0
            state, rank = torch.where(moved, ptr // k, state), torch.where(moved, ptr % k, rank)
        paths[:, :, 0] = state
        valid = torch.arange(T, device=e.device)[None, None] < lengths[:, None, None]
        return _restore(paths.masked_fill(~valid, pad), order, 2, pad), top_scores

    # -- margin losses on the same Viterbi --------------------------------------------------------------------
    def perceptron_loss(self, emissions, tags, mask=None, reduction: str = "mean") -> torch.Tensor:
        """Structured perceptron: ``score(viterbi) - score(gold)`` (>= 0, 0 when the gold path is the best)."""
        return self._margin(emissions, tags, mask, 0.0, reduction)

    def hinge_loss(self, emissions, tags, mask=None, cost: float = 1.0, reduction: str = "mean") -> torch.Tensor:
        """Structured hinge with a Hamming cost: ``max_y [score(y) + cost * hamming(y, gold)] - score(gold)``."""
        return self._margin(emissions, tags, mask, cost, reduction)

    def _margin(self, emissions, tags, mask, cost: float, reduction: str) -> torch.Tensor:
        tags = tags.long()
        augmented = emissions.float()
        if cost:  # cost-augmented decoding: every wrong tag earns ``cost``
            augmented = augmented + cost * (1 - nn.functional.one_hot(tags.clamp(min=0), self.num_tags).float())
        with torch.no_grad():
            best = self.decode(augmented, mask, pad=0)
        keep = mask.bool() if mask is not None else torch.ones_like(tags, dtype=torch.bool)
        hamming = ((best != tags) & keep).sum(1).float() * cost
        loss = self.score(emissions, best, mask) + hamming - self.score(emissions, tags.clamp(min=0), mask)
        loss = loss.clamp(min=0)
        return {"mean": loss.mean(), "sum": loss.sum(), "none": loss}[reduction]


def viterbi(
    emissions: torch.Tensor,
    lengths: torch.Tensor,
    trans: torch.Tensor,
    start: torch.Tensor,
    end: torch.Tensor,
    pad: int = -1,
) -> torch.Tensor:
    """The best tag sequence (B, T) under given log-potentials: ``emissions`` (B, T, K) per position, ``trans`` (K, K)
    from the previous tag to the next, ``start`` and ``end`` (K,); each sequence's first ``lengths[b]`` positions,
    ``pad`` after its end. :meth:`CRF.viterbi` is this over its own potentials; ``zoo.nets.hmm`` calls it with
    scaled log-likelihoods and log-probabilities."""
    lengths = lengths.to(emissions.device)
    if not torch.compiler.is_compiling() and bool((lengths < 1).any()):
        raise ValueError("a sequence has length 0: every sequence needs one token or more")
    # Tags have no gradient, and a scan with gradients would need one for its integer outputs (torch fails)
    trans, start, end = trans.detach().float(), start.detach().float(), end.detach().float()
    e = emissions.detach().float().transpose(0, 1)  # (T, B, K)
    T, B, K = e.shape
    steps = torch.arange(T, device=e.device)[:, None]
    valid, first = steps < lengths[None], (steps == 0)[..., None]  # (T, B), (T, 1, 1)
    stay = torch.arange(K, device=e.device).expand(B, K)

    # Every step is one loop body, the first too (start scores, no previous tag): a loop from step 1 would slice
    # the length, and export then guards it to >= 3.
    def forward(score, e_t, live_t, first_t):
        best, idx = (score[:, :, None] + trans[None]).max(1)  # (B, K): the best previous tag of each tag
        score = torch.where(live_t, torch.where(first_t, start + e_t, best + e_t), score)
        return score, torch.where(live_t & ~first_t, idx, stay)  # a finished sequence keeps its last tag

    score, (pointers,) = time_scan(forward, torch.zeros_like(e[0]), (e, valid[..., None], first))
    last = (score + end).argmax(1)  # (B,) the best final tag

    def back(state, ptr):  # the tag at step t, and from its pointers the tag at t - 1
        return ptr.gather(1, state[:, None]).squeeze(1), state.clone()

    _, (paths,) = time_scan(back, last, (pointers,), reverse=True)  # (T, B)
    return paths.masked_fill(~valid, pad).transpose(0, 1)


def _kept(mask: torch.Tensor | None, order: torch.Tensor | None, lengths: torch.Tensor, T: int) -> torch.Tensor:
    """(B, T) booleans, the positions that :meth:`CRF._compact` kept (each sequence's first ``lengths[b]``): the
    mask itself when the compaction left it in place."""
    if order is None and mask is not None:
        return mask.bool()
    return torch.arange(T, device=lengths.device) < lengths[:, None]


def _restore(x: torch.Tensor, order: torch.Tensor | None, dim: int, fill) -> torch.Tensor:
    """Undo :meth:`CRF._compact`'s reordering of the time axis ``dim`` of ``x``; the positions that the compaction
    moved out (skipped by the mask) must already hold ``fill``."""
    if order is None:
        return x
    index = order.view(order.shape[0], *([1] * (dim - 1)), order.shape[1], *([1] * (x.dim() - dim - 1)))
    return torch.full_like(x, fill).scatter(dim, index.expand_as(x), x)


def _check_feasible(allowed: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> None:
    """Refuse constraints under which some sequence length has no valid path (the reachable sets of tags repeat
    within 2^K steps; checking up to K * K + 1 covers every practical tag set)."""
    K = allowed.shape[0]
    reach = start.clone()
    for n in range(1, K * K + 2):
        if not bool((reach & end).any()):
            raise ValueError(
                f"the transition constraints leave no valid tag sequence of length {n}: check the start/end sets and "
                "the allowed transitions (tags of another scheme?)"
            )
        reach = (reach[:, None] & allowed).any(0)
