"""Tag schemes of chunking (BIO/IOB2, IOB1, BIOES, BILOU) as CRF transition constraints: which tag may follow
which, and which may start or end a sentence."""

from __future__ import annotations

import torch

__all__ = ["SCHEMES", "scheme_constraints"]

SCHEMES = ("BIO", "IOB1", "BIOES", "BILOU")


def _split(tag: str) -> tuple[str, str]:
    """``B-PER`` -> ``("B", "PER")``; ``O`` -> ``("O", "")``."""
    if tag == "O" or "-" not in tag:
        return tag, ""
    prefix, _, kind = tag.partition("-")
    return prefix, kind


def scheme_constraints(tags: list[str], scheme: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(allowed (K, K), allowed_start (K,), allowed_end (K,))`` booleans for a tag set in ``scheme``.

    BIO (IOB2): ``I-X`` only after ``B-X`` or ``I-X``. IOB1: ``B-X`` only after ``B-X`` or ``I-X`` (it separates two
    adjacent chunks of one type), ``I-X`` anywhere. BIOES / BILOU: ``I-X`` and ``E-X`` (``L-X``) only after
    ``B-X`` or ``I-X``; ``B-X``, ``S-X`` (``U-X``) and ``O`` only after ``E``, ``S`` or ``O``; a sentence starts
    with ``B``, ``S`` or ``O`` and ends with ``E``, ``S`` or ``O``."""
    scheme = scheme.upper()
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}; got {scheme!r}")
    inside, last, single = ("I", "E", "S") if scheme in ("BIO", "IOB1", "BIOES") else ("I", "L", "U")
    parts = [_split(t) for t in tags]
    valid = {"BIO": "BIO", "IOB1": "BIO", "BIOES": "BIOES", "BILOU": "BILOU"}[scheme]
    bad = [t for t, (p, _) in zip(tags, parts) if p not in valid]
    if bad:
        raise ValueError(f"tags {bad[:5]} are not {scheme} tags (prefixes {', '.join(valid)})")
    K = len(tags)
    allowed = torch.ones(K, K, dtype=torch.bool)
    start, end = torch.ones(K, dtype=torch.bool), torch.ones(K, dtype=torch.bool)
    for j, (pj, kj) in enumerate(parts):
        for i, (pi, ki) in enumerate(parts):
            continues = pi in ("B", inside) and ki == kj  # the previous tag is inside an open chunk of this type
            if scheme == "BIO":
                ok = pj != inside or continues
            elif scheme == "IOB1":
                ok = pj != "B" or continues
            else:
                open_before = pi in ("B", inside)
                ok = continues if pj in (inside, last) else not open_before
            allowed[i, j] = ok
        if scheme == "BIO":
            start[j] = pj != inside
        elif scheme == "IOB1":
            start[j] = pj != "B"
        else:
            start[j] = pj in ("B", single, "O")
            end[j] = pj in (last, single, "O")
    return allowed, start, end
