"""The part of each family that a server runs, as graphs of tensors (``zoo.export._graph.Graph``), with what the
sidecar says about reading inputs into them.

- image: ``images (batch, C, H, W)`` -> ``logits``.
- sequence classifier: ``tokens (batch, length)``, ``lengths`` -> ``logits`` (masked, not packed, in the graph).
- language model: one step, ``tokens (batch, 1)`` and the state -> ``logits (batch, V)`` and the next state.
- tagger: ``words``, ``chars``, ``lengths`` -> ``emissions`` and the decoded ``tags`` (CRF Viterbi without the
  skip-mask sort, or the HMM hybrid's Viterbi over its counted probabilities; the casing feature is computed in the
  graph from ``chars``).
- seq2seq: an ``encoder`` graph and one decoder ``step`` graph; the search loop (greedy or beam) stays in Python.

Example inputs come from the model's own preprocessing (its tokeniser and vocabulary, its image transform) on a
batch of two; the parity check's inputs are random, of other sizes, with ragged lengths.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from datamodules.contract import UNK, image_mode
from zoo.export._graph import PARITY_SHAPES, Graph, Port, pad_ids, ragged_ids
from zoo.export._seq2seq import seq2seq_graphs
from zoo.nets.casing import CASES, casing, char_classes

__all__ = ["FAMILIES", "family_graphs"]

FAMILIES = ("image", "sequence", "language_model", "tagging", "seq2seq")
F32, I64 = torch.float32, torch.long


class _Tuple(nn.Module):
    """``net(*inputs)`` as a tuple of outputs (the same interface for every graph)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, *inputs):
        out = self.net(*inputs)
        return out if isinstance(out, tuple) else (out,)


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)  # the same fresh inputs on every run


# -- image ------------------------------------------------------------------------------------------------------
def image_graphs(task) -> tuple[list[Graph], dict]:
    prep = task.hparams.preprocessing
    if not prep:
        raise ValueError(
            f"{task.hparams.arch} has no preprocessing (input size, mean, std), so its input cannot be described: "
            "export published weights or a checkpoint trained on a DataModule with preprocessing"
        )
    C, H, W = prep["input_size"]
    ramp = np.linspace(0, 255, H * W * C).reshape(H, W, C).astype(np.uint8)
    pictures = [Image.fromarray(a.squeeze(-1) if C == 1 else a).convert(image_mode(C)) for a in (ramp, ramp[::-1])]
    example = (task.preprocess(pictures),)  # (2, C, H, W): the task's own transform
    g = _generator()
    n = task.hparams.num_classes
    graph = Graph(
        _Tuple(task.net),
        [Port("images", F32, ("batch", C, H, W), "preprocessed images (see preprocessing)")],
        [Port("logits", F32, ("batch", n), "class scores; softmax for probabilities")],
        example,
        [(torch.randn(b, C, H, W, generator=g),) for b, _ in PARITY_SHAPES],
    )
    how = "RGB (or L), shorter side resized to the size, centre crop, uint8 / 255, (x - mean) / std, NCHW float32"
    return [graph], {"classes": task.hparams.classes, "preprocessing": {**prep, "steps": how}}


# -- sequence classifier ----------------------------------------------------------------------------------------
SAMPLE_TEXTS = ("Nakamura", "Li")  # example inputs only: any text, read by the model's own tokeniser


def sequence_graphs(task) -> tuple[list[Graph], dict]:
    h, g = task.hparams, _generator()
    out = {"classify": ("logits", ("batch", len(h.classes or []))), "regress": ("values", ("batch", 1))}
    out["tag"] = ("logits", ("batch", "length", len(h.classes or [])))
    out_name, out_shape = out[h.objective]
    lengths_port = Port("lengths", I64, ("batch",), "unpadded length of each sequence (>= 1)")
    if h.vocab is not None:
        example = pad_ids([task.encode(t).tolist() for t in SAMPLE_TEXTS])
        first = Port("tokens", I64, ("batch", "length"), "token ids, 0 after each sequence's end")
        fresh = [ragged_ids(b, t, 1, len(h.vocab), g) for b, t in PARITY_SHAPES]
    else:  # float features (the synthetic tasks)
        F = h.input_size
        example = (torch.randn(2, 7, F, generator=g), torch.tensor([7, 4]))
        first = Port("features", F32, ("batch", "length", F), "float features, 0 after each sequence's end")
        fresh = [(torch.randn(b, t, F, generator=g), ragged_ids(b, t, 1, 2, g)[1]) for b, t in PARITY_SHAPES]
    graph = Graph(_Tuple(task.net), [first, lengths_port], [Port(out_name, F32, out_shape)], example, fresh)
    unk = task.stoi.get(UNK, 0) if h.vocab is not None else None
    info = {
        "vocab": h.vocab,
        "classes": h.classes,
        "objective": h.objective,
        "preprocessing": {"tokenizer": h.tokenizer, "lowercase": bool(h.get("lowercase"))},
        "special_ids": {"pad": 0, "unk": unk},
    }
    return [graph], info


# -- language model: one step -----------------------------------------------------------------------------------
class _LMStep(nn.Module):
    """``(tokens (B, 1), state...) -> (logits (B, V), state...)``, the state as separate tensors."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.lstm = net, net.encoder.cell == "lstm"

    def forward(self, tokens: torch.Tensor, *state: torch.Tensor):
        logits, new = self.net(tokens, state if self.lstm else state[0])
        return (logits[:, -1], *(new if self.lstm else (new,)))


def language_model_graphs(task) -> tuple[list[Graph], dict]:
    h, g, net = task.hparams, _generator(), task.net
    enc = net.encoder
    L, H, V = enc.num_layers, enc.hidden_size, len(h.vocab)
    names = ["state", "cell"] if enc.cell == "lstm" else ["state"]
    doc = {"state": "hidden state per layer (zeros to start)", "cell": "LSTM cell state per layer (zeros to start)"}
    states = [Port(n, F32, (L, "batch", H), doc[n]) for n in names]
    tokens = torch.stack([task.encode(t)[:1] for t in SAMPLE_TEXTS])  # (2, 1): the first token of each text

    def case(b: int):
        return (torch.randint(1, V, (b, 1), generator=g), *(0.5 * torch.randn(L, b, H, generator=g) for _ in names))

    graph = Graph(
        _LMStep(net),
        [Port("tokens", I64, ("batch", 1), "the current token of each stream"), *states],
        [
            Port("logits", F32, ("batch", V), "next-token scores; sample softmax(logits / temperature)"),
            *(Port(f"{p.name}_out", F32, p.shape, "feed back as " + p.name) for p in states),
        ],
        (tokens, *(torch.zeros(L, 2, H) for _ in names)),
        [case(b) for b, _ in PARITY_SHAPES],
        doc="one generation step: feed a prompt token by token, then the sampled tokens",
    )
    info = {"vocab": h.vocab, "preprocessing": {"tokenizer": h.tokenizer}, "special_ids": {"unk": task.stoi.get(UNK)}}
    return [graph], info


# -- tagger -----------------------------------------------------------------------------------------------------
class _Tagger(nn.Module):
    """Words, characters, lengths -> emissions and the best tags (-1 after each sentence's end)."""

    def __init__(self, net: nn.Module, chars: list[str]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("char_classes", char_classes(chars), persistent=False)

    def forward(self, words: torch.Tensor, chars: torch.Tensor, lengths: torch.Tensor):
        case = casing(chars, self.char_classes) if self.net.casing is not None else words
        emissions = self.net(words, chars, case, lengths)
        return emissions, self.net.decode(emissions, lengths)


def _chars_for(words: torch.Tensor, lengths: torch.Tensor, width: int, num_chars: int, g: torch.Generator):
    """Random character ids (B, T, width) for the real words of ``words``: 1 to ``width`` characters each."""
    B, T = words.shape
    n = torch.randint(1, width + 1, (B, T), generator=g).masked_fill(torch.arange(T)[None] >= lengths[:, None], 0)
    chars = torch.randint(1, num_chars, (B, T, width), generator=g)
    return chars.masked_fill(torch.arange(width) >= n[..., None], 0)


def tagging_graphs(task) -> tuple[list[Graph], dict]:
    from zoo.tasks.tagging import TOKEN

    h, g, net = task.hparams, _generator(), task.net
    example = task._encode([["EU", "rejects", "German", "call"], ["Peter", "Blackburn"]])  # the task's tag() reading
    fresh = []
    for (b, t), width in zip(PARITY_SHAPES, (7, 1, 3, 12)):
        words, lengths = ragged_ids(b, t, 1, len(h.words), g)
        fresh.append((words, _chars_for(words, lengths, width, len(h.chars), g), lengths))
    K = len(h.tags)
    decoded = {"softmax": "argmax per token", "hmm": "Viterbi of posteriors / tag priors and the HMM's transitions"}
    decoded = decoded.get(getattr(net, "output", "crf"), "CRF Viterbi")
    graph = Graph(
        _Tagger(net, list(h.chars)),
        [
            Port("words", I64, ("batch", "length"), "word ids (see preprocessing), 0 after each sentence's end"),
            Port("chars", I64, ("batch", "length", "word_length"), "character ids of each word, 0-padded"),
            Port("lengths", I64, ("batch",), "words in each sentence (>= 1)"),
        ],
        [
            Port("emissions", F32, ("batch", "length", K), "per-token tag scores"),
            Port("tags", I64, ("batch", "length"), f"best tags ({decoded}), -1 after"),
        ],
        (example[0].cpu(), example[1].cpu(), example[2]),
        fresh,
    )
    info = {
        "words": h.words,
        "chars": h.chars,
        "tags": h.tags,
        "tag_scheme": h.tag_scheme,
        "preprocessing": {
            "split": TOKEN.pattern,
            "words": ("lowercased, then " if h.lowercase_words else "") + "looked up in words (unknown: 1)",
            "lowercase_words": h.lowercase_words,
            "chars": f"the first {h.max_word_len} characters of each word, as written, looked up in chars (unknown: 1)",
            "max_word_len": h.max_word_len,
            "casing": {
                "computed": "in the graph, from chars",
                "values": list(CASES),
                "rule": "all digits: numeric; some digit: has_digit; else lower / upper as str.islower / isupper; "
                "a capital first: title; else other; padding: pad",
            },
        },
        "special_ids": {"pad": 0, "unk": 1},
    }
    return [graph], info


def family_graphs(task, kind: str) -> tuple[list[Graph], dict]:
    """The graphs of ``task`` (a task of kind ``kind``, in eval mode) and what its sidecar says about them."""
    builders = {
        "image": image_graphs,
        "sequence": sequence_graphs,
        "language_model": language_model_graphs,
        "tagging": tagging_graphs,
        "seq2seq": seq2seq_graphs,
    }
    if kind not in builders:
        raise ValueError(
            f"{task.hparams.arch} is a {kind!r} model, which zoo export does not cover (it exports "
            f"{', '.join(FAMILIES)})"
        )
    return builders[kind](task)
