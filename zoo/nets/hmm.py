"""The hybrid of a neural network and a hidden Markov model (Bourlard & Morgan 1994, *Connectionist Speech
Recognition: A Hybrid Approach*): a tagger's per-token posteriors ``p(y_t | x)`` divided by the tag priors ``p(y)``
are scaled likelihoods ``p(x_t | y) / p(x_t)`` (Bayes' rule; ``p(x_t)`` is the same for every tag sequence, so it
leaves the argmax alone), and Viterbi over them and the HMM's transition probabilities finds

    argmax_y  log p(y_1) + sum_t [log p(y_t | x) - log p(y_t)] + sum_{t>1} log p(y_t | y_{t-1}) + log p(end | y_n)

What differs from the speech systems of the book: the "frames" are words, the states are tags (one state per tag,
no multi-state phone models), the posteriors come from a BiLSTM that reads the whole sentence instead of an MLP over
a window of frames, and the HMM has an end transition (``p(end | y_n)``, the STOP symbol of a tagging HMM): with it
the model is a distribution over sentences of every length, and the last tag of a sentence is scored as a last tag
(under BIOES a sentence cannot end inside a chunk; the data says how often it ends after ``O``).

**Training**, as in the hybrid literature: the network alone, by per-token cross-entropy (so that its outputs
estimate posteriors); the HMM is not trained by gradient but counted: the priors are the relative tag frequencies
of the training set, the start, transition and end probabilities the maximum-likelihood estimates from the training
tag sequences, each smoothed by adding ``smoothing`` to every count it normalises (Lidstone; 1 = Laplace), over the
entries the constraints allow only, so that each distribution sums to one over what can happen.

The counts are integer buffers (``tag_counts``, ``start_counts``, ``transition_counts``, ``end_counts``): exact at
any corpus size, kept as they are by float16 publishing, saved in every state dict (checkpoints, published weights,
exports) and turned into log-probabilities at each decoding (K x K work). :meth:`HMM.count` fills them from tag
sequences; the tagging task (``zoo.tasks.tagging``) counts the whole training split when a fit starts (see there for
why then). Transition constraints (``allowed``, ``allowed_start``, ``allowed_end`` as in ``zoo.nets.crf``) give a
forbidden move the CRF's score ``NEG``: Viterbi never takes one while a valid path exists.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from zoo.nets.crf import NEG, register_constraints, viterbi

__all__ = ["HMM"]


class HMM(nn.Module):
    """The HMM of the hybrid over ``num_tags`` tags (see the module docstring)."""

    def __init__(
        self,
        num_tags: int,
        allowed: torch.Tensor | None = None,
        allowed_start: torch.Tensor | None = None,
        allowed_end: torch.Tensor | None = None,
        *,
        smoothing: float = 1.0,
    ) -> None:
        super().__init__()
        if num_tags < 1:
            raise ValueError(f"num_tags must be >= 1; got {num_tags}")
        if not smoothing > 0:
            raise ValueError(
                f"smoothing must be > 0 (added to every count; 1 = Laplace); got {smoothing}: with 0 a tag or a "
                "transition the training set never has would get probability 0 and log-probability -inf"
            )
        self.num_tags, self.smoothing = num_tags, float(smoothing)
        register_constraints(self, num_tags, allowed, allowed_start, allowed_end)
        K = num_tags
        for name, shape in (("tag", (K,)), ("start", (K,)), ("transition", (K, K)), ("end", (K,))):
            self.register_buffer(f"{name}_counts", torch.zeros(shape, dtype=torch.long))

    # -- statistics -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def count(self, tags: torch.Tensor, lengths: torch.Tensor, reset: bool = False) -> None:
        """Add the counts of the tag sequences ``tags`` (B, T), each ``lengths[b]`` long (anything after its end,
        -1 padding included, is ignored); ``reset`` zeroes the counts first."""
        K = self.num_tags
        tags, lengths = tags.long().to(self.tag_counts.device), lengths.long().to(self.tag_counts.device)
        if tags.dim() != 2 or lengths.shape != tags.shape[:1]:
            raise ValueError(
                f"tags must be (batch, time) and lengths (batch,); got {tuple(tags.shape)}, {tuple(lengths.shape)}"
            )
        if bool(((lengths < 1) | (lengths > tags.shape[1])).any()):
            raise ValueError(f"lengths must be in [1, {tags.shape[1]}] (every sentence has a tag or more)")
        valid = torch.arange(tags.shape[1], device=tags.device)[None] < lengths[:, None]
        if bool(((tags < 0) | (tags >= K))[valid].any()):
            raise ValueError(f"tags must be in [0, {K}) before each sentence's end")
        if reset:
            for buf in (self.tag_counts, self.start_counts, self.transition_counts, self.end_counts):
                buf.zero_()
        self.tag_counts += torch.bincount(tags[valid], minlength=K)
        self.start_counts += torch.bincount(tags[:, 0], minlength=K)
        self.end_counts += torch.bincount(tags.gather(1, (lengths - 1)[:, None]).squeeze(1), minlength=K)
        moves = valid[:, 1:]  # a transition into every position after the first
        pairs = tags[:, :-1][moves] * K + tags[:, 1:][moves]
        self.transition_counts += torch.bincount(pairs, minlength=K * K).view(K, K)

    def log_probs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(log prior (K,), log transition (K, K) [from, to], log start (K,), log end (K,))`` in fp32 from the
        smoothed counts; a move the constraints forbid scores ``NEG``. Row ``i`` of the transitions and ``end[i]``
        share one normalisation: from tag ``i`` the next event is another tag or the sentence's end."""
        a = self.smoothing
        tag, start, trans, end = (c.float() + a for c in self._counts())
        prior = (tag / tag.sum()).log()
        start = torch.where(self.allowed_start, start, 0.0)
        trans = torch.where(self.allowed, trans, 0.0)
        end = torch.where(self.allowed_end, end, 0.0)
        out_of = (trans.sum(1) + end).clamp(min=a)  # (K,) every event after tag i
        neg = torch.tensor(NEG, device=tag.device)
        # clamped: a forbidden entry is 0 here and NEG below (no log 0 evaluated, in an export's constant folding too)
        log_start = torch.where(self.allowed_start, (start / start.sum()).clamp(min=1e-30).log(), neg)
        log_trans = torch.where(self.allowed, (trans / out_of[:, None]).clamp(min=1e-30).log(), neg)
        log_end = torch.where(self.allowed_end, (end / out_of).clamp(min=1e-30).log(), neg)
        return prior, log_trans, log_start, log_end

    def _counts(self) -> tuple[torch.Tensor, ...]:
        return self.tag_counts, self.start_counts, self.transition_counts, self.end_counts

    # -- decoding ---------------------------------------------------------------------------------------------
    def scaled_log_likelihoods(self, logits: torch.Tensor, log_prior: torch.Tensor | None = None) -> torch.Tensor:
        """``log p(y_t | x) - log p(y)`` (B, T, K) in fp32: the network's log-posteriors (a log-softmax of its
        scores ``logits``) minus the log-priors (``log_prior``, or this HMM's), i.e. ``log p(x_t | y) - log p(x_t)``."""
        if logits.dim() != 3 or logits.shape[-1] != self.num_tags:
            raise ValueError(f"logits must be (batch, time, {self.num_tags}); got {tuple(logits.shape)}")
        prior = self.log_probs()[0] if log_prior is None else log_prior
        return torch.log_softmax(logits.float(), dim=-1) - prior

    def path_score(self, logits: torch.Tensor, tags: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The decoding score (B,) of the tag sequences ``tags`` (B, T): what :meth:`viterbi` maximises."""
        prior, trans, start, end = self.log_probs()
        e = self.scaled_log_likelihoods(logits, prior)
        B, T, _ = e.shape
        lengths = lengths.to(e.device)
        valid = torch.arange(T, device=e.device)[None] < lengths[:, None]
        y = tags.long().to(e.device).masked_fill(~valid, 0)
        emit = (e.gather(2, y[..., None]).squeeze(-1) * valid).sum(1)
        moves = (trans[y[:, :-1], y[:, 1:]] * valid[:, 1:]).sum(1)
        last = y.gather(1, (lengths - 1)[:, None]).squeeze(1)
        return start[y[:, 0]] + emit + moves + end[last]

    def viterbi(self, logits: torch.Tensor, lengths: torch.Tensor, pad: int = -1) -> torch.Tensor:
        """The best tag sequence (B, T) of each sentence's first ``lengths[b]`` positions, ``pad`` after its end
        (``zoo.nets.crf.viterbi``: exportable, the length dynamic)."""
        prior, trans, start, end = self.log_probs()
        return viterbi(self.scaled_log_likelihoods(logits, prior), lengths, trans, start, end, pad=pad)
