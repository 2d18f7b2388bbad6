"""The export table: one published entry of every family x format (ONNX, torch.export), each exported as `zoo export`
does and checked against PyTorch on fresh inputs (onnxruntime for ONNX). Prints a markdown table: pass, the largest
absolute difference over all outputs and inputs, export time (one CPU thread) and file size.

    python benchmarks/export_parity.py [--out DIR] [NAME ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import zoo
from zoo.export import FORMATS, ParityError, export_model

ENTRIES = {
    "image": "resnet20.cifar10",
    "sequence classifier": "gru_classifier.names",
    "language model": "lstm_lm.tinyshakespeare",
    "tagger (NER)": "bilstm_crf.conll2003",
    "tagger (POS)": "bilstm_crf.ud_en_ewt_upos",
    "seq2seq": "seq2seq_gru_attn.multi30k_de_en",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="published weights (default: one entry per family)")
    parser.add_argument("--out", default=None, help="keep the exports here (default: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    entries = {n: n for n in args.names} if args.names else ENTRIES
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        for family, name in entries.items():
            for fmt in FORMATS:
                start = time.perf_counter()
                try:
                    sidecar = export_model(zoo.load_pretrained(name), fmt, root / fmt / name, name)
                    files = sidecar["files"]
                    size = sum((root / fmt / name / f["file"]).stat().st_size for f in files) / 2**20
                    result = f"pass | {sidecar['parity']['max_abs_diff']:.1e} | {', '.join(f['graph'] for f in files)}"
                except ParityError as e:
                    result, size = f"FAIL: {e} | - | -", 0.0
                took = time.perf_counter() - start
                rows.append(f"| {family} | {name} | {fmt} | {result} | {took:.0f} s | {size:.1f} MiB |")
                print(rows[-1], flush=True)
    print()
    print("| family | weights | format | parity | max abs diff | graphs | export + check | size |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
