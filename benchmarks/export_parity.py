"""The export table: one published entry of every family x format (ONNX, torch.export), each exported as `zoo export`
does and checked against PyTorch on fresh inputs (onnxruntime for ONNX). Prints a markdown table: pass, the largest
absolute difference over all outputs and inputs, export time (one CPU thread), file size, and the time of one call
of the exported graphs against the eager PyTorch model (the packed recurrences), over the parity inputs
(batches of 1 to 5, lengths of 1 to 23): the median of ``--repeats`` passes, in the same process.

    python benchmarks/export_parity.py [--out DIR] [--repeats N] [NAME ...]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import zoo
from zoo._registry import get_entry
from zoo.export import FORMATS, ParityError, export_model
from zoo.export._families import family_graphs
from zoo.export._run import load

ENTRIES = {
    "image": "resnet20.cifar10",
    "sequence classifier": "gru_classifier.names",
    "language model": "lstm_lm.tinyshakespeare",
    "tagger (NER)": "bilstm_crf.conll2003",
    "tagger (POS)": "bilstm_crf.ud_en_ewt_upos",
    "seq2seq": "seq2seq_gru_attn.multi30k_de_en",
}


def call_ms(graphs: list, files: list[dict], fmt: str, folder: Path, repeats: int) -> tuple[float, float]:
    """Milliseconds per call, exported and eager, of each graph on each of its parity inputs (summed over the
    graphs: seq2seq's encoder + one step), the median of ``repeats`` passes after one of warm-up."""
    runs = [(g, load(g, fmt, folder / f["file"])) for g, f in zip(graphs, files)]

    def per_call(call) -> float:
        times = []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            for graph, run in runs:
                for inputs in graph.fresh:
                    call(graph, run, inputs)
            times.append((time.perf_counter() - start) / len(runs[0][0].fresh) * 1e3)
        return statistics.median(times[1:])

    with torch.no_grad():
        return per_call(lambda g, run, x: run(*x)), per_call(lambda g, run, x: g.module(*x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="published weights (default: one entry per family)")
    parser.add_argument("--out", default=None, help="keep the exports here (default: a temporary folder)")
    parser.add_argument("--repeats", type=int, default=20, help="timed passes over the parity inputs (default 20)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    entries = {n: n for n in args.names} if args.names else ENTRIES
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        for family, name in entries.items():
            for fmt in FORMATS:
                start = time.perf_counter()
                model, folder = zoo.load_pretrained(name), root / fmt / name
                try:
                    sidecar = export_model(model, fmt, folder, name)
                    took = time.perf_counter() - start
                    files = sidecar["files"]
                    size = sum((folder / f["file"]).stat().st_size for f in files) / 2**20
                    result = f"pass | {sidecar['parity']['max_abs_diff']:.1e} | {', '.join(f['graph'] for f in files)}"
                    graphs, _ = family_graphs(model.cpu().eval(), get_entry(sidecar["arch"]).kind)
                    exported, eager = call_ms(graphs, files, fmt, folder, args.repeats)
                    speed = f"{exported:.2f} ms | {eager:.2f} ms"
                except ParityError as e:
                    took, result, size, speed = time.perf_counter() - start, f"FAIL: {e} | - | -", 0.0, "- | -"
                rows.append(f"| {family} | {name} | {fmt} | {result} | {took:.0f} s | {size:.1f} MiB | {speed} |")
                print(rows[-1], flush=True)
    print()
    print("| family | weights | format | parity | max abs diff | graphs | export + check | size | call | eager |")
    print("|---|---|---|---|---|---|---|---|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
