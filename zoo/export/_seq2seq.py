"""Seq2seq for serving: the encoder and one decoder step as two graphs; the search loop (greedy or beam search)
stays in Python, on the server's side (a reference loop is in the README and ``greedy_loop`` below).

The encoder reads padded sources and their lengths and gives what the decoder reads of them (its outputs, the
attention's precomputed keys, the source mask, or, without attention, the one summary vector) and the decoder's
initial state. A step takes the previous tokens, the state (and input feed), and that memory; it gives
log-probabilities over the target vocabulary (PAD and BOS never output, as ``Seq2SeqNet.step``) and the next state.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn

from zoo.export._graph import PARITY_SHAPES, Graph, Port, pad_ids, ragged_ids
from zoo.nets.seq2seq import Memory

__all__ = ["seq2seq_graphs", "greedy_loop"]

F32, I64 = torch.float32, torch.long
SAMPLE_SOURCES = ("Ein Mann fährt Fahrrad .", "Zwei Hunde")  # example inputs only: any text


def _layout(net) -> dict:
    """Which tensors pass between the graphs for this net's configuration."""
    attention = net.attention_kind
    return {
        "cell": net.cell == "lstm",
        "feed": net.input_feeding,
        "memory": attention != "none",
        "keys": attention in ("general", "additive"),  # dot attention's keys are the outputs themselves
        "summary": attention == "none",
    }


class Seq2SeqEncoder(nn.Module):
    """``(src (B, S), src_lengths (B,))`` -> the memory tensors and the decoder's initial state (see ``_ports``)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.layout = net, _layout(net)

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor):
        memory, init = self.net.encode(src, src_lengths)
        h, c = init if self.layout["cell"] else (init, None)
        use = self.layout
        out = [memory.outputs] if use["memory"] else []
        out += [memory.keys] if use["keys"] else []
        out += [memory.mask] if use["memory"] else []
        out += [memory.summary] if use["summary"] else []
        out += [h] + ([c] if use["cell"] else [])
        out += [self.net._feed0(memory)] if use["feed"] else []
        return tuple(out)


class Seq2SeqStep(nn.Module):
    """One decoder step: ``(tokens (B,), state..., memory...)`` -> ``(log_probs (B, V), state..., attention)``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.layout = net, _layout(net)

    def forward(self, tokens: torch.Tensor, *rest: torch.Tensor):
        use, rest = self.layout, list(rest)
        h = rest.pop(0)
        state = (h, rest.pop(0)) if use["cell"] else h
        feed = rest.pop(0) if use["feed"] else None
        outputs = rest.pop(0) if use["memory"] else None
        keys = rest.pop(0) if use["keys"] else outputs
        mask = rest.pop(0) if use["memory"] else None
        summary = rest.pop(0) if use["summary"] else None
        log_probs, state, feed, weights = self.net.step(tokens, state, feed, Memory(outputs, keys, mask, summary))
        out = [log_probs] + (list(state) if use["cell"] else [state])
        out += [feed] if use["feed"] else []
        out += [weights] if use["memory"] else []
        return tuple(out)


def _ports(net) -> tuple[list[Port], list[Port], list[Port]]:
    """(memory ports, state ports, attention port) of the net's configuration."""
    use, enc = _layout(net), net.encoder.output_size
    L, H = net.num_layers, net.hidden_size
    memory = [Port("memory", F32, ("batch", "source_length", enc), "encoder outputs")] if use["memory"] else []
    if use["keys"]:
        width = net.attention.w_k.out_features
        memory.append(Port("memory_keys", F32, ("batch", "source_length", width), "attention keys, precomputed"))
    if use["memory"]:
        memory.append(Port("source_mask", torch.bool, ("batch", "source_length"), "True at real source tokens"))
    if use["summary"]:
        memory.append(Port("summary", F32, ("batch", enc), "the source as one vector (no attention)"))
    state = [Port("state", F32, (L, "batch", H), "decoder hidden state per layer")]
    state += [Port("cell", F32, (L, "batch", H), "decoder LSTM cell state")] if use["cell"] else []
    state += [Port("feed", F32, ("batch", H), "input feeding: the last attentional state")] if use["feed"] else []
    attention = [Port("attention", F32, ("batch", "source_length"), "attention over the source")]
    return memory, state, attention if use["memory"] else []


def seq2seq_graphs(task) -> tuple[list[Graph], dict]:
    net, h = task.net, task.hparams
    g = torch.Generator().manual_seed(0)
    memory, state, attention = _ports(net)
    V_src, V = len(h.src_spec["vocab"]), net.tgt_vocab_size
    encoder = Seq2SeqEncoder(net)
    src = pad_ids([task.src_codec.encode(s) or [1] for s in SAMPLE_SOURCES], net.pad_id)
    fresh_src = [ragged_ids(b, s, 4, V_src, g, net.pad_id) for b, s in PARITY_SHAPES]  # real tokens: past specials
    enc_graph = Graph(
        encoder,
        [
            Port("src", I64, ("batch", "source_length"), "source token ids, PAD after each sentence's end"),
            Port("src_lengths", I64, ("batch",), "source lengths (>= 1)"),
        ],
        memory + state,
        src,
        fresh_src,
        suffix="encoder",
        doc="run once per batch of sources",
    )

    def step_inputs(source: tuple[torch.Tensor, torch.Tensor], tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            encoded = encoder(*source)  # memory..., state...
        n = len(memory)
        return (tokens, *encoded[n:], *encoded[:n])  # the step takes its state before the memory

    B0 = src[0].shape[0]
    step_graph = Graph(
        Seq2SeqStep(net),
        [Port("tokens", I64, ("batch",), "the previous target token (BOS to start)"), *state, *memory],
        [
            Port("log_probs", F32, ("batch", V), "log-probabilities of the next token (PAD and BOS: -inf)"),
            *(Port(f"{p.name}_out", F32, p.shape, "feed back as " + p.name) for p in state),
            *attention,
        ],
        step_inputs(src, torch.full((B0,), net.bos_id)),
        [step_inputs(s, torch.randint(2, V, (s[0].shape[0],), generator=g)) for s in fresh_src],
        suffix="step",
        doc="one decoder step; the search loop (greedy or beam) runs in Python around it",
    )
    search = {
        "runs": "in Python, around the step graph: greedy or beam search are not part of the export",
        "start": "tokens = BOS for every sentence, the encoder's state as the first state",
        "stop": "at EOS, or at max_len_a * source_length + max_len_b tokens (EOS forced there)",
        "max_len_a": h.max_len_a,
        "max_len_b": h.max_len_b,
        "beam": h.beam,
        "length_penalty_alpha": h.alpha,
    }
    info = {
        "src_vocab": list(h.src_spec["vocab"]),
        "tgt_vocab": list(h.tgt_spec["vocab"]),
        "preprocessing": {side: _reading(h[f"{side}_spec"]) for side in ("src", "tgt")},
        "special_ids": {"pad": net.pad_id, "unk": 1, "bos": net.bos_id, "eos": net.eos_id},
        "search": search,
    }
    return [enc_graph, step_graph], info


def _reading(spec: dict) -> dict:
    """How one side's text becomes ids (its tokeniser: ``word`` with a regex, or ``bpe`` with the serialised
    ``tokenizers`` model), its vocabulary apart."""
    return {k: v for k, v in spec.items() if k != "vocab"}


def greedy_loop(
    run_encoder: Callable[[dict], dict],
    run_step: Callable[[dict], dict],
    src: np.ndarray,
    src_lengths: np.ndarray,
    special_ids: dict,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
) -> list[list[int]]:
    """The search loop a server runs around the two graphs, greedy (``Seq2SeqNet.greedy`` gives the same tokens).
    ``run_encoder`` and ``run_step`` map input names to numpy arrays and return output names to arrays (an
    onnxruntime session: ``lambda feeds: dict(zip(output_names, session.run(None, feeds)))``). Returns each
    sentence's target ids, EOS left out."""
    carried = run_encoder({"src": src, "src_lengths": src_lengths})  # memory and first state, named as the step
    B, eos = len(src_lengths), special_ids["eos"]
    limit = np.maximum((max_len_a * src_lengths.astype(np.float32) + max_len_b).astype(np.int64), 1)
    tokens = np.full(B, special_ids["bos"], dtype=np.int64)
    out: list[list[int]] = [[] for _ in range(B)]
    done = np.zeros(B, dtype=bool)
    for t in range(int(limit.max())):
        result = run_step({"tokens": tokens, **carried})
        log_probs = result["log_probs"]
        tokens = np.where(t + 1 >= limit, eos, log_probs.argmax(-1))  # EOS at the length limit
        for b in np.flatnonzero(~done & (tokens != eos)):
            out[b].append(int(tokens[b]))
        done |= tokens == eos
        if done.all():
            break
        carried |= {name[: -len("_out")]: v for name, v in result.items() if name.endswith("_out")}
    return out
