"""The README's generated blocks (model table, weights table), made from the registry and the manifest; tested to
be current, rewritten by ``zoo readme``."""

from __future__ import annotations

import zoo
from zoo.cli.card import count_flops, fine_tuned_from, lineage_seconds
from zoo.weights import read_manifest

__all__ = ["model_table", "weights_table", "time_to_accuracy_table", "PAPERS", "render_readme", "GENERATED"]

# The test accuracy the architecture's paper reports on CIFAR-10 with standard augmentation (quoted with source),
# against which the README gives the training minutes each published run took to reach it on validation.
PAPERS = {
    "resnet20": (0.9125, "He et al. 2016, table 6: 8.75% error"),
    "resnet56": (0.9303, "He et al. 2016, table 6: 6.97% error"),
    "densenet_bc_100_12": (0.9549, "Huang et al. 2017, table 2: 4.51% error (C10+)"),
}


def model_table() -> str:
    """The README's model table, in Markdown, from the registry and the manifest (tested to be current)."""
    manifest = read_manifest()
    rows = ["| model | params | MFLOPs (32x32) | published weights | test top-1 |", "|---|---:|---:|---|---:|"]
    for name in zoo.list_models(task="image"):
        model = zoo.create_model(name)
        net = model.net.eval()
        params = sum(p.numel() for p in net.parameters())
        mflops = count_flops(net, [3, 32, 32]) / 1e6
        weights = [w for w in manifest.values() if w.model == name]
        tags = ", ".join(f"`{w.name}`" for w in weights) or "-"
        acc = ", ".join(type(model).describe(w.metrics, "test") for w in weights) or "-"
        rows.append(f"| `{name}` | {params / 1e6:.3f}M | {mflops:.1f} | {tags} | {acc} |")
    return "\n".join(rows)


def weights_table() -> str:
    """The README's table of published weights, from the manifest."""
    rows = ["| weights | test | validation | recipe | training, up to this checkpoint |", "|---|---:|---:|---|---|"]
    for name, w in read_manifest().items():
        t, task = w.training, zoo.task_class(w.model)
        hw = "; ".join(sorted({f"{r['hardware']}, {r['precision']}" for r in t.get("runs", [])}))
        test = task.describe(w.metrics, "test")
        if seeds := w.evaluation.get("over_seeds"):  # the spread of the recipe, in the headline's points
            scale = task.points_per_unit
            test += f"; {len(seeds['values'])} seeds: {seeds['mean'] * scale:.2f} ± {seeds['std'] * scale:.2f}"
        cost = f"{t['wall_time_s'] / 60:.0f} min, {t['steps']} steps on {hw}{fine_tuned_from(t)}"
        rows.append(f"| `{name}` | {test} | {task.describe(w.metrics, 'val')} | [`{w.recipe}`]({w.recipe}) | {cost} |")
    return "\n".join(rows)


def lineage_curve(training: dict, val_split: str | None) -> dict | None:
    """The validation curve of a manifest ``training`` record on the clock of its whole lineage: the curve of the
    weights it started from first (when they were validated on the same split, ``val_split`` of the manifest's
    evaluation, to the same monitor), then its own, its epochs and seconds counted on from theirs. Where the
    weights beneath kept no comparable curve, only its own points, still on the lineage's clock, and ``partial``
    set: a figure first reached in them may have been reached earlier, beneath."""
    curve, base = training.get("curve"), training.get("starts_from")
    if not curve or not base:
        return curve and {**curve, "partial": False}
    seconds = lineage_seconds(base["training"])
    before = lineage_curve(base["training"], val_split) if base.get("val_split") == val_split else None
    if not before or before["monitor"] != curve["monitor"]:
        points = [[e, round(s + seconds, 2), v] for e, s, v in curve["points"]]
        return {"monitor": curve["monitor"], "points": points, "partial": True}
    epochs = before["points"][-1][0] + 1
    points = [[e + epochs, round(s + seconds, 2), v] for e, s, v in curve["points"]]
    return {"monitor": curve["monitor"], "points": before["points"] + points, "partial": before["partial"]}


def minutes_to(curve: dict, target: float) -> float | None:
    """The training minutes of the first validation at or above ``target`` on a manifest ``curve`` (an accuracy's);
    None if none reached it."""
    for _, seconds, value in curve["points"]:
        if value >= target:
            return seconds / 60
    return None


def time_to_accuracy_table() -> str:
    """Per CIFAR-10 checkpoint: the paper's accuracy, the minutes its training took to reach it on validation, and
    to its own best validation figure (from the curve ``zoo publish`` copies out of the checkpoint's record; for
    weights fine-tuned from others, counted from the start of the first)."""
    rows = [
        "| weights | paper's accuracy | training minutes to reach it on val | best val in training (minutes to it) |",
        "|---|---|---:|---:|",
    ]
    for name, w in read_manifest().items():
        if not name.endswith(".cifar10"):
            continue
        paper, source = PAPERS.get(w.model, (None, "no paper figure on CIFAR-10"))
        paper_cell = f"{paper:.2%} ({source})" if paper else source
        curve = lineage_curve(w.training, w.evaluation.get("val_split"))
        if not curve:
            rows.append(f"| `{name}` | {paper_cell} | not recorded (trained before runs kept their curve) | - |")
            continue
        at_most = "at most " if curve["partial"] else ""  # the weights beneath kept no curve: maybe earlier
        best = max(value for _, _, value in curve["points"])
        reached = minutes_to(curve, paper) if paper else None
        to_paper = "-" if not paper else f"{at_most}{reached:.0f}" if reached is not None else "not reached"
        rows.append(f"| `{name}` | {paper_cell} | {to_paper} | {best:.2%} ({at_most}{minutes_to(curve, best):.0f}) |")
    return "\n".join(rows)


GENERATED = {"model-table": model_table, "weights-table": weights_table, "time-to-accuracy": time_to_accuracy_table}


def render_readme(text: str) -> str:
    """``text`` with every generated block (between ``<!-- X:start -->`` and ``<!-- X:end -->``) made current."""
    for key, fn in GENERATED.items():
        start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
        if start in text:
            head, rest = text.split(start, 1)
            text = f"{head}{start}\n{fn()}\n{end}{rest.split(end, 1)[1]}"
    return text
