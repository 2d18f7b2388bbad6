"""The ``zoo`` console script: ``list``, ``info`` (model cards), ``predict``, ``evaluate``, ``verify``, ``publish``,
``export`` (``zoo.cli.export``), ``readme``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from PIL import UnidentifiedImageError
from rich.console import Console
from rich.table import Table

import zoo
from datamodules import DatasetError
from datamodules.contract import open_image
from zoo.checkpoint import CheckpointError, model_from_checkpoint, read_checkpoint
from zoo.cli.card import fine_tuned_from, model_card
from zoo.cli.export import add_parser as add_export_parser
from zoo.cli.readme import render_readme
from zoo.weights import PretrainedError, checkpoint_dir, find_weights, local_places, read_manifest, sha256_of
from zoo.weights.manifest import MANIFEST
from zoo.weights.measure import build_datamodule, evaluate
from zoo.weights.publish import FP16_TOLERANCE, publish
from zoo.weights.wandb_artifacts import artifact_checkpoint, is_artifact

__all__ = ["main", "EVALUATE_TOLERANCE"]

EVALUATE_TOLERANCE = 0.1  # points (see headline_metric) within which `zoo evaluate` calls a metric reproduced
DEBUG_ENV = "ZOO_DEBUG"  # set (to anything but 0) as --debug is: errors come with their traceback

# Errors in what the user passed (a name, a file, an option, the data): their message alone, exit 2. Any other
# exception is a fault of the zoo: one line with its type, exit 1; --debug shows the traceback of either.
USER_ERRORS = (PretrainedError, CheckpointError, DatasetError, zoo.UnknownModelError, ValueError, OSError)


def _list(args: argparse.Namespace) -> int:
    manifest = read_manifest()
    table = Table("model", "task", "published weights")
    for name in zoo.list_models(args.pattern, pretrained=args.pretrained):
        tags = ", ".join(w.name for w in manifest.values() if w.model == name)
        table.add_row(name, zoo.model_info(name).task.rsplit(".", 1)[-1], tags or "-")
    Console().print(table)
    return 0


def _info(args: argparse.Namespace) -> int:
    if "." in args.name:  # model.tag: an unknown tag is answered with the model's published ones, not model names
        find_weights(args.name)
    card = model_card(args.name)
    if args.json:
        print(json.dumps(card, indent=1, ensure_ascii=False))
        return 0
    console = Console()
    console.print(f"[bold]{card.get('weights') or card['model']}[/bold]: {card['architecture']}")
    rows = [("model", card["model"]), ("task", card["task"])]
    if "params" in card:
        rows.append(("parameters", f"{card['params']:,}"))
    if "mflops" in card:
        rows.append(("MFLOPs", f"{card['mflops']} (multiply-adds at {'x'.join(map(str, card['input_size']))})"))
    if "weights" in card:
        ev, tr = card["evaluation"], card["training"] or {}
        rows += [
            ("metrics", ", ".join(f"{k}={v:.4f}" for k, v in card["metrics"].items())),
            ("measured", "; ".join(f"{k}: {v}" for k, v in ev.items() if k in ("test_split", "val_split", "seeds"))),
            ("checkpoint", json.dumps(ev.get("checkpoint", {}))),
            ("data", f"{card['data']} {json.dumps(card['data_args'])}"),
            ("data licence", card["data_licence"]),
            ("recipe", card["recipe"]),
            ("training", f"{tr.get('wall_time_s', 0) / 60:.0f} min, {tr.get('steps')} steps{fine_tuned_from(tr)}"),
            ("file", f"{card['file']} ({card['dtype']}), sha256 {card['sha256']}"),
        ]
        if card.get("classes"):
            rows.append(("classes", ", ".join(map(str, card["classes"]))))
    else:
        rows.append(("published weights", ", ".join(card["published_weights"]) or "-"))
    table = Table(show_header=False)
    for k, v in rows:
        table.add_row(k, str(v))
    console.print(table)
    return 0


def _is_checkpoint(name: str) -> bool:
    """A train.py ``.ckpt`` (a path), not published weights (``model.tag``) or a model name."""
    return name.endswith(".ckpt") or "/" in name


def _model_for(name: str) -> tuple[str, Callable[[], object]]:
    """What ``name`` means: published weights ``model.tag``, a model with one set, or a train.py ``.ckpt``. Returns
    the registered model it is and a function that loads it, so that its inputs can be checked before the weights
    are hashed, downloaded or built."""
    if is_artifact(name):  # wandb:ENTITY/PROJECT/NAME:ALIAS: a checkpoint that train.py logged to W&B
        name = str(artifact_checkpoint(name))
    if _is_checkpoint(name):
        ckpt = read_checkpoint(name)
        return ckpt["hyper_parameters"]["arch"], lambda: model_from_checkpoint(ckpt, name).eval()
    if "." in name:  # model.tag: an unknown tag is answered with the available ones
        weights = find_weights(name)
        return weights.model, lambda: zoo.load_pretrained(weights)
    zoo.model_info(name)  # an unknown model: close names suggested
    return name, lambda: zoo.create_model(name, pretrained=True).eval()


def _check_images(paths: list[str]) -> None:
    """Every input of an image model decoded, as ``predict`` decodes it (JPEGs at their smallest scale: cheap),
    before the model is loaded: the unreadable ones are all named at once, and nothing has been run."""
    bad = {}
    for given in paths:
        path = Path(given)
        if not path.exists():
            bad[given] = "no such file"
        elif not path.is_file():
            bad[given] = "not a file"
        else:
            try:
                open_image(path, "RGB", 1)
            except UnidentifiedImageError:
                bad[given] = "not an image PIL can read"
            except Exception as e:  # noqa: BLE001 (truncated, too large, unreadable ...: decoding failed, say how)
                bad[given] = f"{type(e).__name__}: {_first_line(e)}"
    if len(bad) == 1 == len(paths):
        raise ValueError(f"{paths[0]} cannot be read as an image: {bad[paths[0]]}")
    if bad:
        listed = "; ".join(f"{given} ({why})" for given, why in bad.items())
        raise ValueError(f"{len(bad)} of the {len(paths)} inputs cannot be read as images, none was run: {listed}")


def _predict(args: argparse.Namespace) -> int:
    import inspect

    arch, load = _model_for(args.name)
    image = arch in zoo.list_models() and zoo.model_info(arch).kind == "image"
    if args.explain and not image:
        raise ValueError(f"--explain (Grad-CAM) is for image models; {args.name} is not one")
    if image:  # else load() says the arch is unknown
        _check_images(args.inputs)
    model = load()
    options = {"top_k": args.top_k, "beam": args.beam, "length": args.length, "temperature": args.temperature}
    options |= {"seed": args.seed, "tta": args.tta}
    _check_tta(model, args.tta, args.name)
    accepted = inspect.signature(model.predict).parameters
    results = model.predict(list(args.inputs), **{k: v for k, v in options.items() if k in accepted and v is not None})
    explained = []
    if args.explain:
        from zoo.tasks.explain import explain_images

        explained = [str(path) for path, *_ in explain_images(model, args.inputs, args.out)]
    if args.json:
        rows = [{"input": i, "output": r} for i, r in zip(args.inputs, results)]
        for row, path in zip(rows, explained):
            row["explanation"] = path
        print(json.dumps(rows, ensure_ascii=False))
        return 0
    table = Table("input", "output")
    for given, result in zip(args.inputs, results):
        table.add_row(given, render_result(result))
    Console().print(table)
    for path in explained:
        print(f"Grad-CAM: {path}")
    return 0


def _check_tta(model, tta: str | None, name: str) -> None:
    """Refuse a test-time augmentation the task does not have (``tta_modes``: images have ``flip``)."""
    if tta and tta not in getattr(model, "tta_modes", ()):
        raise ValueError(f"{name} ({type(model).__name__}) has no test-time augmentation {tta!r}")


def render_result(result) -> str:
    if isinstance(result, str):
        return result
    if isinstance(result, dict):  # a tagged sentence
        tags = " ".join(f"{w}/{t}" for w, t in zip(result["tokens"], result["tags"]))
        spans = "; ".join(f"{text} [{kind}]" for text, kind, *_ in result["spans"])
        return tags + (f"\nspans: {spans}" if spans else "")
    return ", ".join(f"{label} {p:.3f}" for label, p in result)  # (label, probability) pairs


def _evaluate(args: argparse.Namespace) -> int:
    if _is_checkpoint(args.name):  # else it would be looked up as a weights name, and reported as unknown
        raise ValueError(
            f"{args.name} is a checkpoint: zoo evaluate re-measures published weights against their manifest entry; "
            f"test a checkpoint with `python train.py test --model <model> --data <data> --ckpt_path {args.name}`, or "
            "publish it (zoo publish), which measures it"
        )
    weights = zoo.get_weights(args.name)
    name, published_metrics = weights.name, weights.metrics
    if not weights.data:
        raise PretrainedError(f"the manifest entry of {name} does not say which data measured it: cannot evaluate")
    model = zoo.load_pretrained(weights)
    dm = build_datamodule(weights.data, args.data_dir)
    key, scale = type(model).headline_metric()
    suffix = ""
    if args.tta:  # compared with the TTA figures published beside the plain ones, never with those
        _check_tta(model, args.tta, name)
        model.tta, suffix = args.tta, f"_tta_{args.tta}"
    measured = {k + suffix: v for k, v in evaluate(model, dm, "test").items()}
    key += suffix
    table = Table("metric", "manifest", "measured", "difference (points)")
    for k, value in measured.items():
        published = published_metrics.get(k)
        diff = f"{(value - published) * scale:+.3f}" if published is not None else "-"
        table.add_row(k, f"{published:.4f}" if published is not None else "not published", f"{value:.4f}", diff)
    Console().print(table)
    if key not in published_metrics:
        print(f"{name}: {key} {measured[key]:.4f} measured; the manifest has no such figure to compare with")
        return 0
    diff = abs(measured[key] - published_metrics[key]) * scale
    ok = diff <= EVALUATE_TOLERANCE
    print(
        f"{name}: {key} {'reproduced' if ok else 'NOT reproduced'}: {measured[key]:.4f} measured vs "
        f"{published_metrics[key]:.4f} in the manifest ({diff:.3f} points; tolerance {EVALUATE_TOLERANCE})"
    )
    return 0 if ok else 1


def _verify(args: argparse.Namespace) -> int:
    """Every file of every manifest entry, where it is on this machine, against its sha256."""
    manifest, path = read_manifest(), checkpoint_dir() / MANIFEST  # no manifest there: an error that says where
    if not manifest:
        print(f"{path} lists no weights: nothing to verify")
        return 1
    table = Table("weights", "file", "where", "status")
    bad = 0
    for name, w in manifest.items():
        for spec in w.file_specs:
            found = [place for place in local_places(spec["file"]) if place.is_file()]
            if not found:
                status = "missing" + (" (downloaded on first use)" if spec.get("url") else "")
                bad += not spec.get("url")
                table.add_row(name, spec["file"], "-", status)
            for place in found:
                ok = sha256_of(place) == spec["sha256"]
                bad += not ok
                table.add_row(name, spec["file"], str(place.parent), "ok" if ok else "SHA256 MISMATCH: do not use")
    Console().print(table)
    print(
        f"{bad} problem(s)"
        if bad
        else f"every local weights file matches the manifest ({len(manifest)} entries, {path})"
    )
    return 1 if bad else 0


def _publish(args: argparse.Namespace) -> int:
    tolerance = None if args.float32 else args.fp16_tolerance
    wandb = is_artifact(args.checkpoint)  # its local copy, found or downloaded and verified
    entry = publish(
        artifact_checkpoint(args.checkpoint) if wandb else args.checkpoint,
        args.tag,
        args.recipe,
        data_dir=args.data_dir,
        fp16_tolerance=tolerance,
        other_seeds=tuple(args.other_seeds),
        source=args.checkpoint if wandb else None,
    )
    m = entry.metrics
    print(f"published {entry.name}: {entry.file} ({entry.dtype}) sha256 {entry.sha256[:12]}…")
    print("  storage check: " + ", ".join(f"{k}={v}" for k, v in entry.dtype_check.items()))
    print("  " + ", ".join(f"{k}={v:.4f}" for k, v in m.items()))
    if seeds := entry.evaluation.get("over_seeds"):
        print(f"  {seeds['metric']} over {len(seeds['values'])} seeds: {seeds['mean']:.4f} +- {seeds['std']:.4f}")
    return 0


def _readme(args: argparse.Namespace) -> int:
    path = Path(args.path)
    path.write_text(render_readme(path.read_text()))
    print(f"updated {path}")
    return 0


def _first_line(e: BaseException) -> str:
    return next((line.strip() for line in str(e).splitlines() if line.strip()), "no message")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zoo", description="lightning-zoo: models, weights and tools")
    debug = "show the full traceback of an error (also: ZOO_DEBUG=1)"
    parser.add_argument("--debug", action="store_true", help=debug)
    common = argparse.ArgumentParser(add_help=False)  # --debug after the command too; SUPPRESS keeps the one before
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", parents=[common], help="registered models (glob PATTERN), with their published weights")
    p.add_argument("pattern", nargs="?", default="*")
    p.add_argument("--pretrained", action="store_true", help="only models with published weights")
    p.set_defaults(fn=_list)
    p = sub.add_parser("info", parents=[common], help="the model card of a model or of published weights (model.tag)")
    p.add_argument("name", help="a registered model (zoo list) or published weights, e.g. resnet20.cifar10")
    p.add_argument("--json", action="store_true", help="print the card as JSON")
    p.set_defaults(fn=_info)
    p = sub.add_parser(
        "predict", parents=[common], help="run published weights or a train.py checkpoint on your inputs"
    )
    p.add_argument("name", help="published weights (resnet20.cifar10), a model with one set, or a .ckpt path")
    p.add_argument("inputs", nargs="+", help="image files for CNNs; strings for text models (quote them)")
    p.add_argument("--top-k", type=int, default=None, help="classes shown per input (classifiers)")
    p.add_argument("--beam", type=int, default=None, help="beam width (translators; 1 = greedy)")
    p.add_argument("--length", type=int, default=None, help="tokens generated (language models)")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (language models)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (language models)")
    p.add_argument("--tta", choices=["flip"], default=None, help="test-time augmentation (images; off by default)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    explain = "images: write a PNG per input, the image beside the Grad-CAM of its predicted class (needs captum)"
    p.add_argument("--explain", action="store_true", help=explain)
    p.add_argument("--out", default=".", help="folder of the --explain PNGs (default: the current one)")
    p.set_defaults(fn=_predict)
    p = sub.add_parser("evaluate", parents=[common], help="re-measure published weights' test metric on the real data")
    p.add_argument("name", help="published weights, e.g. resnet20.cifar10 (or a model with one set)")
    p.add_argument("--data-dir", default=None, help="dataset root (default: $ZOO_DATA_DIR)")
    p.add_argument("--tta", choices=["flip"], default=None, help="test-time augmentation (images; off by default)")
    p.set_defaults(fn=_evaluate)
    p = sub.add_parser("verify", parents=[common], help="check every local weights file against the manifest's sha256")
    p.set_defaults(fn=_verify)
    p = sub.add_parser(
        "publish", parents=[common], help="turn a train.py checkpoint into published weights (measures the test metric)"
    )
    p.add_argument(
        "checkpoint",
        help="a .ckpt written by train.py (e.g. runs/<name>/version_0/checkpoints/best.ckpt), or one it logged to W&B "
        "with --wandb.log_model: wandb:ENTITY/PROJECT/model-<run id>:best",
    )
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
    p.add_argument(
        "--other-seeds",
        nargs="+",
        default=[],
        metavar="CKPT",
        help="checkpoints of the same recipe with other seeds: their test metric is recorded beside (mean, std)",
    )
    p.set_defaults(fn=_publish)
    add_export_parser(sub, common, _model_for)
    p = sub.add_parser(
        "readme", parents=[common], help="regenerate the README's model and weights tables from registry and manifest"
    )
    p.add_argument("path", nargs="?", default="README.md")
    p.set_defaults(fn=_readme)
    p = sub.add_parser(
        "sweep", add_help=False, prefix_chars="+", help="run a W&B sweep file here, no server: zoo sweep --help"
    )  # no options of its own ("+"): everything after "sweep", --help included, is zoo.cli.sweep's to parse
    p.add_argument("argv", nargs=argparse.REMAINDER)

    def _sweep(args: argparse.Namespace) -> int:
        from zoo.cli.sweep import main as sweep

        return sweep(args.argv)

    p.set_defaults(fn=_sweep)
    args = parser.parse_args(argv)
    if args.debug or os.environ.get(DEBUG_ENV, "0") not in ("", "0"):
        return args.fn(args)  # any error propagates, with its traceback
    try:
        return args.fn(args)
    except USER_ERRORS as e:
        print(f"zoo: error: {str(e).strip() or type(e).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("zoo: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 (a fault of the zoo, not of the input: one line, the traceback on demand)
        print(f"zoo: error: {type(e).__name__}: {_first_line(e)} (run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
