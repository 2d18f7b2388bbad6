"""``zoo export NAME.TAG|CKPT --format onnx|torch [--out DIR]``: the part of a model a server runs, written with a
JSON sidecar and checked against PyTorch on fresh inputs (``zoo.export``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["add_parser", "run"]

FORMATS = ("onnx", "torch")  # as zoo.export.FORMATS; zoo.export is imported when the command runs, not before


def add_parser(sub, common: argparse.ArgumentParser, resolve: Callable[[str], tuple[str, Callable]]) -> None:
    """The ``export`` subcommand of the ``zoo`` console script; ``resolve`` reads NAME as ``zoo predict`` does
    (weights, a model with one set, a ``.ckpt``, ``wandb:``) into its model and a function that loads it."""
    p = sub.add_parser(
        "export",
        parents=[common],
        help="write a model for serving (ONNX or torch.export) with a JSON sidecar, checked against PyTorch",
    )
    p.add_argument("name", help="published weights (resnet20.cifar10), a model with one set, or a train.py .ckpt")
    p.add_argument("--format", required=True, choices=FORMATS, help="onnx (onnxruntime-checked) or torch (.pt2)")
    p.add_argument("--out", default=None, help="folder of the files (default: exports/<name>/)")
    p.set_defaults(fn=run, resolve=resolve)


def _export_name(given: str, arch: str) -> str:
    """Files are named after the weights (``resnet20.cifar10``), or ``<model>.<checkpoint file stem>``."""
    if given.endswith(".ckpt") or "/" in given or given.startswith("wandb:"):
        return f"{arch}.{Path(given.split(':')[-1]).stem.replace('.', '_')}"
    if "." in given:
        return given
    import zoo

    return zoo.get_weights(given).name  # a model with one set of weights: that set's name


def run(args: argparse.Namespace) -> int:
    from zoo.export import ParityError, export_model

    arch, load = args.resolve(args.name)
    name = _export_name(args.name, arch)
    out = Path(args.out) if args.out else Path("exports") / name
    try:
        sidecar = export_model(load(), args.format, out, name, source=args.name)
    except ParityError as e:  # a fault of the export, not of the input: exit 1, one line
        print(f"zoo: error: export parity check failed: {e}", file=sys.stderr)
        return 1
    for f in sidecar["files"]:
        worst = max(f["parity"]["max_abs_diff"].values())
        print(f"wrote {out / f['file']} (sha256 {f['sha256'][:12]}…): parity passed, max |difference| {worst:.2g}")
    print(f"wrote {out / (name + '.json')}")
    if sidecar["task"] == "seq2seq":
        print("seq2seq: the encoder and one decoder step are exported; the search loop (greedy, beam) stays in Python")
    return 0
