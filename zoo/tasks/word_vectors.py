"""Pretrained word vectors (GloVe / word2vec text files) copied into a tagger's word embedding: file reading,
apart from the task that asks for it. Read from disk only, never downloaded."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info

__all__ = ["load_word_vectors"]


def load_word_vectors(weight: torch.Tensor, words: list[str], path: str, lowercase: bool) -> int:
    """Copy the vectors of ``path`` (lines ``word v1 v2 ...``) into the rows of ``weight`` (num_words, dim) of the
    words they hold (looked up lowercased when the vocabulary is); says, and returns, how many were found."""
    found = 0
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"no word-vector file at {file} (GloVe / word2vec text format expected)")
    index = {w: i for i, w in enumerate(words)}
    with open(file, encoding="utf-8", errors="replace") as f, torch.no_grad():
        for line in f:
            parts = line.rstrip().split(" ")
            if len(parts) != weight.shape[1] + 1:
                continue  # a header line, or vectors of another width
            i = index.get(parts[0].lower() if lowercase else parts[0])
            if i is not None:
                weight[i] = torch.tensor([float(v) for v in parts[1:]])
                found += 1
    if not found:
        raise ValueError(f"{file} holds no {weight.shape[1]}-dimensional vector for any word of the vocabulary")
    rank_zero_info(f"word vectors: {found:,} of {len(index):,} words from {file}")
    return found
