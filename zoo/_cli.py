"""The ``zoo`` console script: ``zoo list``, ``zoo publish``, ``zoo readme``."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.table import Table

import zoo
from zoo._pretrained import read_manifest
from zoo._publish import FP16_TOLERANCE, publish

__all__ = ["main", "model_table", "weights_table", "render_readme"]


def model_table() -> str:
    """The README's model table, in Markdown, from the registry and the manifest (tested to be current)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    manifest = read_manifest()
    rows = ["| model | params | MFLOPs (32x32) | published weights | test top-1 |", "|---|---:|---:|---|---:|"]
    for name in zoo.list_models(task="image"):
        net = zoo.create_model(name).net.eval()
        params = sum(p.numel() for p in net.parameters())
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            net(torch.zeros(1, 3, 32, 32))
        mflops = counter.get_total_flops() / 2e6  # multiply-adds, the papers' convention
        weights = [(k, v) for k, v in manifest.items() if v["model"] == name]
        tags = ", ".join(f"`{k}`" for k, _ in weights) or "-"
        acc = ", ".join(f"{100 * v['metrics']['test_acc']:.2f}%" for _, v in weights) or "-"
        rows.append(f"| `{name}` | {params / 1e6:.3f}M | {mflops:.1f} | {tags} | {acc} |")
    return "\n".join(rows)


def weights_table() -> str:
    """The README's table of published weights, from the manifest."""
    rows = ["| weights | test | validation | recipe | training, up to this checkpoint |", "|---|---:|---:|---|---|"]
    for name, e in read_manifest().items():
        t = e["training"]
        hw = "; ".join(sorted({f"{r['hardware']}, {r['precision']}" for r in t.get("runs", [])}))
        rows.append(
            f"| `{name}` | {_metric(e['metrics'], 'test')} | {_metric(e['metrics'], 'val')} "
            f"| [`{e['recipe']}`]({e['recipe']}) | {t['wall_time_s'] / 60:.0f} min, {t['steps']} steps on {hw} |"
        )
    return "\n".join(rows)


def _metric(m: dict, split: str) -> str:
    """The headline metric of a split: accuracy (and macro-F1 where measured), BLEU (beam search; greedy beside it
    where measured) for seq2seq, or nats per token for LMs."""
    if f"{split}_score" in m:  # taggers: span F1 for chunk tags, token accuracy for POS
        if f"{split}_f1" in m:
            return f"span F1 {100 * m[f'{split}_f1']:.2f}"
        return f"{100 * m[f'{split}_acc']:.2f}% token accuracy"
    if f"{split}_acc" in m:
        f1 = f", F1 {m[f'{split}_f1']:.3f}" if f"{split}_f1" in m else ""
        return f"{100 * m[f'{split}_acc']:.2f}%{f1}"
    if f"{split}_bleu" in m:
        greedy = f"{split}_bleu_greedy"
        return f"BLEU {m[f'{split}_bleu']:.1f}" + (f" (greedy {m[greedy]:.1f})" if greedy in m else " (greedy)")
    return f"{m[f'{split}_loss']:.3f} nats/token"


GENERATED = {"model-table": model_table, "weights-table": weights_table}


def render_readme(text: str) -> str:
    """``text`` with every generated block (between ``<!-- X:start -->`` and ``<!-- X:end -->``) made current."""
    for key, fn in GENERATED.items():
        start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
        if start in text:
            head, rest = text.split(start, 1)
            text = f"{head}{start}\n{fn()}\n{end}{rest.split(end, 1)[1]}"
    return text


def _list(args: argparse.Namespace) -> int:
    manifest = read_manifest()
    table = Table("model", "task", "published weights")
    from zoo._registry import get_entry

    for name in zoo.list_models(args.pattern, pretrained=args.pretrained):
        tags = ", ".join(k for k, v in manifest.items() if v["model"] == name)
        table.add_row(name, get_entry(name).task.rsplit(".", 1)[-1], tags or "-")
    Console().print(table)
    return 0


def _publish(args: argparse.Namespace) -> int:
    tolerance = None if args.float32 else args.fp16_tolerance
    entry = publish(args.checkpoint, args.tag, args.recipe, data_dir=args.data_dir, fp16_tolerance=tolerance)
    m = entry["metrics"]
    print(f"published {entry['model']}.{args.tag}: {entry['file']} ({entry['dtype']}) sha256 {entry['sha256'][:12]}…")
    print("  storage check: " + ", ".join(f"{k}={v}" for k, v in entry["dtype_check"].items()))
    print("  " + ", ".join(f"{k}={v:.4f}" for k, v in m.items()))
    return 0


def _readme(args: argparse.Namespace) -> int:
    from pathlib import Path

    path = Path(args.path)
    path.write_text(render_readme(path.read_text()))
    print(f"updated {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zoo", description="lightning-zoo: models, weights and tools")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="registered models (glob PATTERN), with their published weights")
    p.add_argument("pattern", nargs="?", default="*")
    p.add_argument("--pretrained", action="store_true", help="only models with published weights")
    p.set_defaults(fn=_list)
    p = sub.add_parser("publish", help="turn a train.py checkpoint into published weights (measures the test metric)")
    p.add_argument("checkpoint", help="a .ckpt written by train.py (e.g. runs/<name>/version_0/checkpoints/best.ckpt)")
    p.add_argument("--tag", required=True, help="weights are named <model>.<tag>, e.g. cifar10")
    p.add_argument("--recipe", required=True, help="the config that trained it, e.g. configs/resnet20.cifar10.yaml")
    p.add_argument("--data-dir", default=None, help="dataset root (default: the one recorded, or $ZOO_DATA_DIR)")
    p.add_argument(
        "--fp16-tolerance",
        type=float,
        default=FP16_TOLERANCE,
        help="store float16 when that moves test top-1 by at most this many points (default %(default)s)",
    )
    p.add_argument("--float32", action="store_true", help="always store float32")
    p.set_defaults(fn=_publish)
    p = sub.add_parser("readme", help="regenerate the README's model and weights tables from registry and manifest")
    p.add_argument("path", nargs="?", default="README.md")
    p.set_defaults(fn=_readme)
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except (zoo.PretrainedError, zoo.UnknownModelError, RuntimeError) as e:
        print(f"zoo: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
