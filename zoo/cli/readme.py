"""The README's generated blocks (model table, weights table), made from the registry and the manifest; tested to
be current, rewritten by ``zoo readme``."""

from __future__ import annotations

import zoo
from zoo.cli.card import count_flops
from zoo.weights import read_manifest

__all__ = ["model_table", "weights_table", "render_readme", "GENERATED"]


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
        rows.append(
            f"| `{name}` | {test} | {task.describe(w.metrics, 'val')} "
            f"| [`{w.recipe}`]({w.recipe}) | {t['wall_time_s'] / 60:.0f} min, {t['steps']} steps on {hw} |"
        )
    return "\n".join(rows)


GENERATED = {"model-table": model_table, "weights-table": weights_table}


def render_readme(text: str) -> str:
    """``text`` with every generated block (between ``<!-- X:start -->`` and ``<!-- X:end -->``) made current."""
    for key, fn in GENERATED.items():
        start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
        if start in text:
            head, rest = text.split(start, 1)
            text = f"{head}{start}\n{fn()}\n{end}{rest.split(end, 1)[1]}"
    return text
