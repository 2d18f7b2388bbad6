"""Chunks of a tag sequence by conlleval's rules, and span-level precision / recall / F1 over them: what the
tagger scores NER and chunking by (and reads spans out of its predictions with). Apart from the task because
the scoring is a definition of its own, tested against seqeval."""

from __future__ import annotations

import torch
from torchmetrics import Metric

__all__ = ["SpanF1", "chunks", "is_chunk_tagset"]


def _parts(tag: str) -> tuple[str, str]:
    """``B-PER`` -> ("B", "PER"); BILOU's L and U read as E and S; a tag without a type is its own prefix."""
    prefix, _, kind = tag.partition("-")
    return {"L": "E", "U": "S"}.get(prefix, prefix), kind


def chunks(tags: list[str]) -> list[tuple[str, int, int]]:
    """Chunks ``(type, start, end exclusive)`` of a tag sequence in any scheme, by conlleval's rules (a chunk
    ends before B/S/O, after E/S, or where the type changes; one starts at B/S, at I/E after O/E/S, or where the
    type changes), so that an ill-formed sequence is scored as conlleval and seqeval score it."""
    out, start, prev, prev_kind = [], None, "O", ""
    for i, tag in enumerate([*tags, "O"]):
        prefix, kind = _parts(tag)
        ends = prev in ("E", "S") or (prev in ("B", "I") and prefix in ("B", "S", "O"))
        ends = ends or (prev != "O" and prev_kind != kind)
        begins = prefix in ("B", "S") or (prev in ("E", "S", "O") and prefix in ("E", "I"))
        begins = begins or (prefix != "O" and prev_kind != kind)
        if start is not None and ends:
            out.append((prev_kind, start, i))
            start = None
        if begins:
            start = i
        prev, prev_kind = prefix, kind
    return out


def is_chunk_tagset(tags: list[str]) -> bool:
    """Whether the tags are chunk tags (``O`` and ``X-TYPE`` with B/I/E/S/L/U prefixes) rather than POS tags."""
    return all(t == "O" or (t[:2] in {f"{p}-" for p in "BIESLU"} and len(t) > 2) for t in tags) and len(tags) > 1


class SpanF1(Metric):
    """Micro precision/recall/F1 over exact chunks, and F1 per type; counts are summed across DDP ranks (unless
    ``sync_on_compute=False``: ``kwargs`` go to torchmetrics' ``Metric``)."""

    full_state_update = False

    def __init__(self, tag_names: list[str], **kwargs) -> None:
        super().__init__(**kwargs)
        self.tag_names = list(tag_names)
        self.types = sorted({_parts(t)[1] for t in tag_names if t != "O"})
        for name in ("tp", "pred", "gold"):
            self.add_state(name, torch.zeros(len(self.types)), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor, lengths: torch.Tensor) -> None:
        index = {t: i for i, t in enumerate(self.types)}
        for p, g, n in zip(preds.tolist(), target.tolist(), lengths.tolist()):
            pc = set(chunks([self.tag_names[i] for i in p[:n]]))
            gc = set(chunks([self.tag_names[i] for i in g[:n]]))
            for kind, *_ in pc:
                self.pred[index[kind]] += 1
            for kind, *_ in gc:
                self.gold[index[kind]] += 1
            for kind, *_ in pc & gc:
                self.tp[index[kind]] += 1

    def compute(self) -> dict[str, torch.Tensor]:
        def f1(tp, pred, gold):
            p, r = tp / pred.clamp(min=1), tp / gold.clamp(min=1)
            return p, r, 2 * p * r / (p + r).clamp(min=1e-12)

        p, r, f = f1(self.tp.sum(), self.pred.sum(), self.gold.sum())
        out = {"precision": p, "recall": r, "f1": f}
        per_type = f1(self.tp, self.pred, self.gold)[2]
        out.update({f"f1_{t}": per_type[i] for i, t in enumerate(self.types)})
        return out
