"""``zoo sweep`` / ``python -m zoo.cli.sweep``: run a W&B sweep file locally, without the W&B server.

The files in ``configs/sweeps/`` are standard W&B sweep configurations: ``wandb sweep configs/sweeps/X.yaml`` then
``wandb agent <id>`` runs them with W&B's own scheduler (the only way to run ``method: bayes``). Offline, or to
keep a sweep on one machine, this runner expands the same file itself:

- ``grid``: every combination, in file order; ``random``: ``--max_runs`` draws, seeded (``--seed``); ``bayes``
  and ``early_terminate`` need W&B's server (the first is refused here, the second ignored);
- each combination is one ``train.py`` subprocess, one after the other, built from the file's ``command:`` section
  as the W&B agent builds it (``${interpreter} ${program} ... ${args}``), plus the user's extra ``train.py`` args,
  with ``--wandb.group <sweep name>`` and a run name per combination, in ``<run_root>/<sweep name>/<combination>``;
- a finished combination is skipped on the next call, an interrupted one resumes from its last checkpoint, so an
  interrupted sweep is continued by running the same command again;
- ``results.csv`` and ``results.json`` in the sweep folder: the parameters, the best and final value of the
  metric, epochs, steps, final training loss and wall time of each run (``--plot`` draws a metric against one
  parameter, one line per value of another).

The metrics come from ``zoo.callbacks.sweep_record.SweepRecord``, a callback the runner adds to each run: one
JSON line per epoch in the combination's folder, whatever the logger (W&B offline runs keep no summary file one
could read back).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import random
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

__all__ = ["Sweep", "SweepError", "load_sweep", "main", "run_sweep"]

METHODS = ("grid", "random", "bayes")
GOALS = {"maximize": max, "minimize": min}
RECORD = "sweep_metrics.jsonl"  # per combination folder: one line per epoch, written by SweepRecord
RECORDER = "zoo.callbacks.sweep_record.SweepRecord"  # added to each run (this module stays free of Lightning)
DONE = "result.json"  # per combination folder: written once its run has finished; its presence skips it
MACROS = ("${env}", "${interpreter}", "${program}", "${args}", "${args_no_hyphens}")
DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]  # W&B's default


class SweepError(ValueError):
    """A sweep file that cannot be run: its message names the file and what is wrong with it."""


class Sweep:
    """A checked sweep file: name, method, metric, parameters (W&B's specs) and the command template."""

    def __init__(self, path: Path, spec: dict) -> None:
        self.path, self.spec = path, spec
        self.name: str = spec.get("name") or path.stem
        self.method: str = spec["method"]
        self.metric: str = spec["metric"]["name"]
        self.goal: str = spec["metric"].get("goal", "minimize")
        self.parameters: dict[str, dict] = spec["parameters"]
        self.program: str = spec["program"]
        self.command: list[str] = [str(c) for c in spec.get("command") or DEFAULT_COMMAND]

    def combinations(self, max_runs: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
        """Grid: the cartesian product of every ``values`` list (``value``: a constant), in file order; random:
        ``max_runs`` seeded draws. ``bayes`` picks each next point from the results: only W&B's server does it."""
        if self.method == "bayes":
            raise SweepError(
                f"{self.path}: method bayes needs the W&B sweep server (wandb sweep {self.path}; wandb agent <id>); "
                "run it locally as grid or random"
            )
        if self.method == "grid":
            keys = list(self.parameters)
            choices = [_grid_values(self.path, k, self.parameters[k]) for k in keys]
            combos = [dict(zip(keys, values)) for values in itertools.product(*choices)]
            return combos[:max_runs] if max_runs else combos
        if not max_runs:
            raise SweepError(f"{self.path}: method random never ends on its own: pass --max_runs N")
        rng = random.Random(seed)
        draws = [{k: _draw(self.path, k, p, rng) for k, p in self.parameters.items()} for _ in range(max_runs)]
        return [{k: float(_format(v)) if isinstance(v, float) else v for k, v in d.items()} for d in draws]  # as run

    def argv(self, combo: dict[str, Any], extra: list[str]) -> list[str]:
        """The command of one combination, as the W&B agent builds it from ``command:``, then ``extra``."""
        args = [f"--{k}={_format(v)}" for k, v in combo.items()]
        out: list[str] = []
        for part in self.command:
            if part == "${env}":
                continue  # W&B's /usr/bin/env: the subprocess inherits our environment anyway
            out += {
                "${interpreter}": [sys.executable],
                "${program}": [self.program],
                "${args}": args,
                "${args_no_hyphens}": [a[2:] for a in args],
            }.get(part, [part])
        return out + extra


def _fail(path: Path, why: str) -> SweepError:
    return SweepError(f"{path}: {why}")


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file; every problem is one line naming the file and the key."""
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text())
    except OSError as e:
        raise _fail(path, f"cannot read it ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise _fail(path, f"not YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(spec, dict):
        raise _fail(path, "a sweep file is a mapping with program, method, metric, parameters")
    missing = [k for k in ("program", "method", "metric", "parameters") if k not in spec]
    if missing:
        raise _fail(path, f"no {', '.join(missing)} (a W&B sweep needs program, method, metric and parameters)")
    if spec["method"] not in METHODS:
        raise _fail(path, f"method {spec['method']!r} is not one of {', '.join(METHODS)}")
    metric = spec["metric"]
    if not isinstance(metric, dict) or not metric.get("name"):
        raise _fail(path, "metric needs a name (and a goal: maximize or minimize)")
    if metric.get("goal", "minimize") not in GOALS:
        raise _fail(path, f"metric goal {metric.get('goal')!r} is not maximize or minimize")
    params = spec["parameters"]
    if not isinstance(params, dict) or not params:
        raise _fail(path, "parameters is empty: nothing to sweep")
    for key, p in params.items():
        if not isinstance(p, dict) or not ({"value", "values", "distribution", "min", "max"} & p.keys()):
            raise _fail(path, f"parameter {key}: give value, values, or a distribution with min and max")
        if "values" in p and (not isinstance(p["values"], list) or not p["values"]):
            raise _fail(path, f"parameter {key}: values must be a non-empty list")
        if "min" in p and "max" in p and not p["min"] <= p["max"]:
            raise _fail(path, f"parameter {key}: min {p['min']} is above max {p['max']}")
    command = [str(c) for c in spec.get("command") or DEFAULT_COMMAND]
    if not any(m in command for m in ("${args}", "${args_no_hyphens}")):
        raise _fail(path, "command has no ${args}: the swept parameters would never reach the program")
    unknown = [c for c in command if c.startswith("${") and c not in MACROS]
    if unknown:
        raise _fail(path, f"command uses {', '.join(unknown)}, which this runner does not know ({', '.join(MACROS)})")
    sweep = Sweep(path, spec)
    if sweep.method == "grid":
        for key, p in params.items():
            _grid_values(path, key, p)
    return sweep


def _grid_values(path: Path, key: str, p: dict) -> list:
    if "values" in p:
        return list(p["values"])
    if "value" in p:
        return [p["value"]]
    raise _fail(path, f"parameter {key}: a grid needs values (or a value), not a distribution")


def _draw(path: Path, key: str, p: dict, rng: random.Random) -> Any:
    """One value of a W&B parameter spec (the distributions a sweep file here uses)."""
    if "value" in p:
        return p["value"]
    if "values" in p:
        return rng.choices(p["values"], weights=p.get("probabilities"))[0]
    lo, hi = p["min"], p["max"]
    kind = p.get("distribution") or ("int_uniform" if isinstance(lo, int) and isinstance(hi, int) else "uniform")
    if kind == "int_uniform":
        return rng.randint(lo, hi)
    if kind == "uniform":
        return rng.uniform(lo, hi)
    if kind == "log_uniform_values":  # min and max are the values themselves (log_uniform takes their logs)
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))
    if kind == "q_uniform":
        q = p.get("q", 1)
        return round(rng.uniform(lo, hi) / q) * q
    raise _fail(
        path,
        f"parameter {key}: distribution {kind!r} is not run locally (uniform, int_uniform, "
        "log_uniform_values, q_uniform); use the W&B agent",
    )


def _format(value: Any) -> str:
    """A value as the W&B agent writes it in ``--key=value`` (floats short but exact enough to read back)."""
    if isinstance(value, float):
        return f"{value:.6g}"
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def run_name(combo: dict[str, Any]) -> str:
    """A folder-safe name per combination: the last part of each option and its value, ``batch_size32-lr0.1``."""
    parts = [f"{k.rsplit('.', 1)[-1]}{_format(v)}" for k, v in combo.items()]
    return re.sub(r"[^A-Za-z0-9_.=+-]", "_", "-".join(parts))


def _epochs(folder: Path) -> list[dict]:
    """The per-epoch rows SweepRecord wrote (a resumed run may repeat an epoch: the later row counts)."""
    rows: dict[int, dict] = {}
    if (folder / RECORD).is_file():
        for line in (folder / RECORD).read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[row["epoch"]] = row
    return [rows[e] for e in sorted(rows)]


def _resume_args(folder: Path) -> list[str]:
    """``--ckpt_path last`` when an earlier call of this combination left a resume point, else nothing."""
    points = [p for name in ("last.ckpt", "interrupted.ckpt") for p in folder.glob(f"version_*/checkpoints/{name}")]
    return ["--ckpt_path", "last"] if points else []


def _result(sweep: Sweep, combo: dict, name: str, folder: Path, status: str, wall: float) -> dict:
    rows = _epochs(folder)
    values = [r[sweep.metric] for r in rows if sweep.metric in r]
    best = GOALS[sweep.goal](values) if values else None
    last = rows[-1] if rows else {}
    return {
        "run": name,
        **combo,
        "status": status,
        f"best_{sweep.metric}": best,
        "best_epoch": next((r["epoch"] for r in rows if r.get(sweep.metric) == best), None),
        f"final_{sweep.metric}": values[-1] if values else None,
        "final_train_loss": last.get("train_loss_epoch_mean", last.get("train_loss")),
        "epochs": last.get("epoch", 0),
        "steps": last.get("step", 0),
        "wall_time_s": round(wall, 1),
    }


def run_sweep(
    sweep: Sweep,
    run_root: Path,
    extra: list[str] = (),
    max_runs: int | None = None,
    seed: int = 0,
    dry_run: bool = False,
) -> list[dict]:
    """Run every combination not yet finished, one train.py after the other; returns (and writes) the table."""
    root = run_root / sweep.name
    combos = sweep.combinations(max_runs, seed)
    results = []
    for i, combo in enumerate(combos, start=1):
        name = run_name(combo)
        folder = root / name
        own = [
            "--run_root", str(root), "--run_name", name,
            "--wandb.group", sweep.name, "--wandb.name", f"{sweep.name}/{name}",
            "--trainer.callbacks+", json.dumps({"class_path": RECORDER,
                                                "init_args": {"path": str(folder / RECORD)}}),
        ]  # fmt: skip
        cmd = sweep.argv(combo, [*own, *extra])
        if dry_run:
            print(shlex.join(cmd))
            continue
        if (folder / DONE).is_file():
            print(f"[{i}/{len(combos)}] {name}: finished before, skipped", file=sys.stderr)
            results.append(json.loads((folder / DONE).read_text()))
            continue
        cmd += _resume_args(folder)
        print(f"[{i}/{len(combos)}] {name}: {shlex.join(cmd)}", file=sys.stderr, flush=True)
        folder.mkdir(parents=True, exist_ok=True)
        start, spent = time.monotonic(), folder / "wall_s"  # summed over the calls that ran this combination
        with (folder / "train.log").open("a") as log:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
        wall = time.monotonic() - start + (float(spent.read_text()) if spent.is_file() else 0.0)
        spent.write_text(f"{wall:.1f}")
        if rc in (130, 143):  # Ctrl-C / SIGTERM: the run saved a resume point; stop the sweep there
            print(f"{name} interrupted: run the same command again to continue the sweep", file=sys.stderr)
            break
        result = _result(sweep, combo, name, folder, "ok" if rc == 0 else f"failed (exit {rc})", wall)
        results.append(result)
        write_table(results, root)  # after every run: an interrupted sweep has its table so far
        if rc == 0 and result[f"best_{sweep.metric}"] is None:
            print(f"{name}: the run logged no {sweep.metric}: is the sweep's metric name right?", file=sys.stderr)
        if rc == 0:
            (folder / DONE).write_text(json.dumps(result, indent=1))
        else:
            print(f"{name} failed (exit {rc}): see {folder / 'train.log'}", file=sys.stderr)
        shown = result[f"best_{sweep.metric}"]
        print(f"[{i}/{len(combos)}] {name}: best {sweep.metric} {shown}, {wall:.0f} s", file=sys.stderr, flush=True)
    if not dry_run:
        write_table(results, root, quiet=False)
    return results


def write_table(results: list[dict], folder: Path, quiet: bool = True) -> None:
    """``results.json`` and ``results.csv`` (columns: the union of the rows' keys, in first-seen order)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results, indent=1))
    columns = list(dict.fromkeys(k for r in results for k in r))
    with (folder / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(results)
    if not quiet:
        print(f"results: {folder / 'results.csv'} ({len(results)} runs)", file=sys.stderr)


def plot(results_json: Path, x: str, line: str, ys: list[str], out: Path, title: str | None = None) -> None:
    """Each of ``ys`` (one panel each) against ``x`` (log scale), one line per value of ``line``, from a results
    table; a small PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in json.loads(Path(results_json).read_text()) if r.get("status") == "ok"]
    fig, axes = plt.subplots(1, len(ys), figsize=(4.2 * len(ys), 3.4), dpi=100, squeeze=False)
    for ax, y in zip(axes[0], ys):
        for value in sorted({r[line] for r in rows}):
            pts = sorted((r[x], r[y]) for r in rows if r[line] == value and r.get(y) is not None)
            label = f"{line.rsplit('.', 1)[-1]} {value}"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        ax.set_xscale("log", base=2)
        ticks = sorted({r[x] for r in rows})
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    print(f"plot: {out}", file=sys.stderr)


def build_parser(prog: str = "zoo sweep") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="run a W&B sweep file locally (no W&B server)")
    p.add_argument("sweep", help="a sweep file, e.g. configs/sweeps/resnet20.batch_lr.yaml")
    p.add_argument("--max_runs", type=int, default=None, help="at most this many runs (random: required)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random draws (method random)")
    p.add_argument("--run_root", default="runs/sweeps", help="the sweep folder is <run_root>/<sweep name>")
    p.add_argument("--dry_run", action="store_true", help="print the train.py commands, run nothing")
    p.add_argument("--plot", nargs="+", metavar="X LINE Y", default=None,
                   help="run nothing: draw each Y (a panel each) against X, one line per value of LINE, from the "
                   "sweep's results.json, e.g. --plot model.lr data.batch_size final_val_acc")  # fmt: skip
    p.add_argument("--title", default=None, help="title of --plot (default: the sweep's name)")
    p.add_argument("--out", default=None, help="PNG of --plot (default: <sweep folder>/<first Y>.png)")
    return p


def main(argv: list[str] | None = None, prog: str = "zoo sweep") -> int:
    """Options of the runner, then any ``train.py`` options (passed to every run, after the swept ones)."""
    args, extra = build_parser(prog).parse_known_args(argv)
    try:
        sweep = load_sweep(args.sweep)
        root = Path(args.run_root).expanduser()
        if args.plot:
            if len(args.plot) < 3:
                raise SweepError("--plot takes X LINE Y [Y ...]: a parameter, another, then result columns")
            x, line, *ys = args.plot
            out = Path(args.out) if args.out else root / sweep.name / f"{ys[0]}.png"
            plot(root / sweep.name / "results.json", x, line, ys, out, title=args.title or sweep.name)
            return 0
        results = run_sweep(sweep, root, extra, args.max_runs, args.seed, args.dry_run)
    except (SweepError, OSError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the run in progress got the Ctrl-C too, and saved its resume point
        print(f"{prog}: interrupted: run the same command again to continue the sweep", file=sys.stderr)
        return 130
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(prog="python -m zoo.cli.sweep"))
