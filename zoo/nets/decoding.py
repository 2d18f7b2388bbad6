"""Decoding of the encoder-decoders of ``zoo.nets.seq2seq``: greedy and batched beam search, and GNMT's length
penalty. Apart from the architecture because a search is a procedure over any net that can encode a source and
run decoder steps (``Decodable``); ``Seq2SeqNet.greedy`` and ``Seq2SeqNet.beam_search`` call these functions.

Decoding is batched over sentences and runs on the model's device. The beam search keeps ``beam`` hypotheses per
sentence; a hypothesis that emits EOS is finished and keeps its place (its score frozen) until ``beam`` better
ones push it out; a sentence is done when all its hypotheses are finished, or at its length limit
``max_len_a * source_length + max_len_b`` (EOS is forced there). Hypotheses are ranked by ``log p(y|x) / lp(y)``
with GNMT's length penalty ``lp(y) = ((5 + |y|) / 6) ** alpha`` (Wu et al. 2016; ``|y|`` counts the EOS),
``alpha = 0`` being plain log-probability. PAD and BOS are never output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn as nn

__all__ = ["Decodable", "Hypothesis", "length_penalty", "greedy", "beam_search"]


class Decodable(Protocol):
    """What a search needs of an encoder-decoder (``zoo.nets.seq2seq.Seq2SeqNet`` has it): the source encoded once
    (``encode`` -> memory with ``select``, initial decoder state), one decoder step on the previous tokens (``step``
    -> log-probabilities (B, V) without PAD and BOS, state, input feed, attention (B, S) or None), and its special
    ids."""

    pad_id: int
    bos_id: int
    eos_id: int
    tgt_vocab_size: int
    attention: nn.Module | None
    out: nn.Linear

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> tuple[Any, Any]: ...

    def step(self, tokens: torch.Tensor, state, feed: torch.Tensor | None, memory) -> tuple: ...

    def _feed0(self, memory) -> torch.Tensor | None: ...


@dataclass
class Hypothesis:
    """One output sentence: token ids (EOS left out), ``score`` = log-probability / length penalty (the ranking
    score), ``log_prob`` the raw sum, ``attention`` (len(tokens) + 1, source length) including the EOS step
    (``None`` without attention)."""

    tokens: list[int]
    score: float
    log_prob: float
    attention: torch.Tensor | None


def length_penalty(length: torch.Tensor, alpha: float) -> torch.Tensor:
    """GNMT's ``((5 + |y|) / 6) ** alpha`` (Wu et al. 2016, eq. 14)."""
    return ((5.0 + length.float()) / 6.0) ** alpha


def _select_state(state, index: torch.Tensor, dim: int = 1):
    if isinstance(state, tuple):
        return tuple(s.index_select(dim, index) for s in state)
    return state.index_select(dim, index)


def _limits(net: Decodable, src_lengths: torch.Tensor, max_len_a: float, max_len_b: int) -> torch.Tensor:
    return (max_len_a * src_lengths.float() + max_len_b).long().clamp(min=1).to(net.out.weight.device)


def _step_log_probs(net: Decodable, tokens, state, feed, memory, at_limit: torch.Tensor):
    """One decoder step for ``tokens`` (N,): log-probabilities (N, V) in fp32, with only EOS left where the
    sentence is ``at_limit`` (N,). PAD and BOS are never output."""
    lp, state, feed, w = net.step(tokens, state, feed, memory)
    eos_only = torch.full_like(lp[0], float("-inf"))
    eos_only[net.eos_id] = 0.0
    lp = torch.where(at_limit[:, None], eos_only, lp)
    return lp, state, feed, w


@torch.no_grad()
def greedy(
    net: Decodable,
    src: torch.Tensor,
    src_lengths: torch.Tensor,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    alpha: float = 0.0,
) -> list[Hypothesis]:
    """The most likely token at each step, for a batch of sources; stops each sentence at its EOS."""
    memory, state = net.encode(src, src_lengths)
    B, limit = src.shape[0], _limits(net, src_lengths, max_len_a, max_len_b)
    feed, tokens = net._feed0(memory), torch.full((B,), net.bos_id, device=src.device)
    done = torch.zeros(B, dtype=torch.bool, device=src.device)
    log_prob, length = torch.zeros(B, device=src.device), torch.zeros(B, dtype=torch.long, device=src.device)
    out, attn = [], []
    for t in range(int(limit.max())):
        lp, state, feed, w = _step_log_probs(net, tokens, state, feed, memory, t + 1 >= limit)
        best, tokens = lp.max(-1)
        log_prob += torch.where(done, 0.0, best)
        length += (~done).long()
        out.append(tokens)
        attn.append(w)
        done |= tokens == net.eos_id
        if done.all():
            break
    seqs = torch.stack(out, 1)
    weights = torch.stack(attn, 1) if net.attention is not None else None
    scores = log_prob / length_penalty(length, alpha)
    return [_hypothesis(net, seqs[i], float(scores[i]), float(log_prob[i]), weights, i, src_lengths) for i in range(B)]


@torch.no_grad()
def beam_search(
    net: Decodable,
    src: torch.Tensor,
    src_lengths: torch.Tensor,
    beam: int = 5,
    alpha: float = 0.6,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    nbest: int = 1,
) -> list[list[Hypothesis]]:
    """The ``nbest`` best hypotheses of each source (best first), by a beam search of width ``beam`` run for the
    whole batch at once (see the module docstring)."""
    if beam < 1 or not 1 <= nbest <= beam or alpha < 0:
        raise ValueError(f"need beam >= 1, 1 <= nbest <= beam, alpha >= 0; got {beam}, {nbest}, {alpha}")
    B, K, V, dev = src.shape[0], beam, net.tgt_vocab_size, src.device
    memory, state = net.encode(src, src_lengths)
    rows = torch.arange(B, device=dev).repeat_interleave(K)  # hypothesis b*K+k belongs to sentence b
    memory, state = memory.select(rows), _select_state(state, rows)
    limit = _limits(net, src_lengths, max_len_a, max_len_b)
    feed, tokens = net._feed0(memory), torch.full((B * K,), net.bos_id, device=dev)
    log_prob = torch.full((B, K), float("-inf"), device=dev)
    log_prob[:, 0] = 0.0  # one live hypothesis to start with
    finished = torch.zeros(B, K, dtype=torch.bool, device=dev)
    length = torch.zeros(B, K, dtype=torch.long, device=dev)
    frozen = torch.full((V,), float("-inf"), device=dev)
    frozen[net.pad_id] = 0.0  # a finished hypothesis extends only by padding, at no cost
    steps = []  # per step: (token, origin slot, attention row) of each new hypothesis slot; traced back at the end
    for t in range(int(limit.max())):
        at_limit = (t + 1 >= limit).repeat_interleave(K)
        lp, state, feed, w = _step_log_probs(net, tokens, state, feed, memory, at_limit)
        lp = torch.where(finished.view(-1, 1), frozen, lp).view(B, K, V)
        cand = log_prob[..., None] + lp  # (B, K, V)
        new_len = torch.where(finished, length, t + 1)
        ranked = (cand / length_penalty(new_len, alpha)[..., None]).view(B, K * V)
        _, idx = ranked.topk(K, dim=1)  # (B, K): the best K continuations of each sentence
        origin, token = idx // V, idx % V
        log_prob = cand.view(B, K * V).gather(1, idx)
        length = new_len.gather(1, origin)
        finished = finished.gather(1, origin) | (token == net.eos_id)
        flat = (origin + torch.arange(B, device=dev)[:, None] * K).view(-1)
        state = _select_state(state, flat)
        feed = None if feed is None else feed.index_select(0, flat)
        if w is not None:  # the attention that produced each new token is its parent's
            w = w.view(B, K, -1)
            w = w.gather(1, origin[..., None].expand_as(w))
        steps.append((token, origin, w))
        tokens = token.view(-1)
        if finished.all():
            break
    history, attn = _trace(steps, B, K)
    scores = log_prob / length_penalty(length, alpha)
    order = scores.argsort(dim=1, descending=True, stable=True)
    results = []
    for b in range(B):
        hyps = []
        for k in order[b, :nbest].tolist():
            a = attn[b] if attn is not None else None
            hyps.append(
                _hypothesis(net, history[b, k], float(scores[b, k]), float(log_prob[b, k]), a, k, src_lengths[b])
            )
        results.append(hyps)
    return results


def _trace(steps: list, B: int, K: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Follow the back-pointers from the final slots: tokens (B, K, T) and attention (B, K, T, S) or None."""
    slot = torch.arange(K, device=steps[0][0].device).expand(B, K)
    tokens, weights = [], []
    for token, origin, w in reversed(steps):
        tokens.append(token.gather(1, slot))
        if w is not None:
            weights.append(w.gather(1, slot[..., None].expand(-1, -1, w.shape[-1])))
        slot = origin.gather(1, slot)
    attn = torch.stack(weights[::-1], 2) if weights else None
    return torch.stack(tokens[::-1], 2), attn


def _hypothesis(net: Decodable, seq, score, log_prob, weights, i, src_length) -> Hypothesis:
    """Cut ``seq`` at its EOS; the attention rows of its steps (EOS included), columns of its real source."""
    seq = seq.tolist()
    n = seq.index(net.eos_id) if net.eos_id in seq else len(seq)
    a = None
    if weights is not None:
        s = int(src_length[i] if src_length.dim() else src_length)
        a = weights[i, : min(n + 1, len(seq)), :s].float().cpu()
    return Hypothesis(seq[:n], score, log_prob, a)
