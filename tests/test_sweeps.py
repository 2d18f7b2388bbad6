"""The sweep files in configs/sweeps are W&B sweep configurations whose every parameter is a train.py option of
their recipe; the local runner (zoo sweep) runs a grid, tabulates it, resumes, groups the W&B runs, and refuses a
bad file in one line."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, lenet_args
from wandb_records import WandbRun

from zoo.cli.sweep import SweepError, load_sweep
from zoo.cli.train import main as train_main

SWEEPS = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))
MONITORS = {  # the selection metric of each recipe's task (its class attribute ``monitor``)
    "resnet20": ("val_acc", "maximize"),
    "gru_classifier": ("val_acc", "maximize"),
    "lstm_lm": ("val_loss", "minimize"),
    "seq2seq_gru_attn": ("val_bleu", "maximize"),
    "bilstm_crf": ("val_score", "maximize"),
}


def _recipe(sweep) -> str:
    command = sweep.command
    return command[command.index("--config") + 1]


def _parse(argv: list[str], monkeypatch) -> tuple[int, str, str]:
    """train.py's own parser (in this process: fast) on ``argv``: exit status, stdout, stderr."""
    monkeypatch.setattr(sys, "argv", ["train.py"])  # LightningCLI warns when both args and sys.argv are given
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = train_main(argv)
        except SystemExit as e:  # --print_config exits once printed
            status = e.code or 0
    return status, out.getvalue(), err.getvalue()


def _printed_config(argv: list[str], monkeypatch) -> dict:
    status, out, err = _parse(argv, monkeypatch)
    assert status == 0, err[-2000:]
    return yaml.safe_load(out)


def _lookup(config: dict, key: str):
    node = config
    for part in key.split("."):
        node = node[part]
        if isinstance(node, dict) and "init_args" in node and part in ("model", "data"):
            node = node["init_args"]
    return node


def test_one_sweep_per_family():
    assert {p.name.split(".")[0] for p in SWEEPS} == set(MONITORS)


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_every_combination_parses_as_train_py_options(path, monkeypatch):
    """A renamed or mistyped option fails here: each combination (grid: all; random/bayes: draws) goes through
    train.py's own parser after the file's fixed arguments, and the printed config holds the swept values."""
    sweep = load_sweep(path)
    assert sweep.program == "train.py" and "${args}" in sweep.command
    recipe = _recipe(sweep)
    assert (ROOT / recipe).is_file(), recipe
    arch = yaml.safe_load((ROOT / recipe).read_text())["model"]["init_args"]["arch"]
    assert (sweep.metric, sweep.goal) == MONITORS[arch], "the metric is the one the task selects on"
    if sweep.method == "grid":
        combos = sweep.combinations()
    else:
        combos = [c for seed in (0, 1) for c in Sweep_draws(sweep, seed)]
    for combo in combos:
        argv = sweep.argv(combo, ["--print_config"])
        config = _printed_config(argv[argv.index(sweep.program) + 1 :], monkeypatch)
        assert config["trainer"]["enable_progress_bar"] is False
        for key, value in combo.items():
            assert _lookup(config, key) == pytest.approx(value, rel=1e-5), key


def test_the_parser_check_catches_a_renamed_option(monkeypatch):
    status, _, err = _parse(["fit", "--config", "configs/resnet20.cifar10.yaml", "--model.lrr=0.1"], monkeypatch)
    assert status == 2 and "lrr" in err


def Sweep_draws(sweep, seed: int) -> list[dict]:  # noqa: N802
    """Random draws of a random or bayes sweep (bayes is the W&B server's; its space is checked the same way)."""
    sweep.method, method = "random", sweep.method
    try:
        return sweep.combinations(max_runs=2, seed=seed)
    finally:
        sweep.method = method


def _tiny_sweep(tmp_path: Path, cifar_dir: Path, **overrides) -> Path:
    spec = {
        "name": "tiny",
        "program": str(ROOT / "train.py"),
        "method": "grid",
        "metric": {"name": "val_acc", "goal": "maximize"},
        "parameters": {"model.lr": {"values": [0.01, 0.05]}, "data.batch_size": {"values": [8, 16]}},
        "command": ["${env}", "${interpreter}", "${program}", "fit", *lenet_args(cifar_dir), "${args}"],
        **overrides,
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _sweep(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    cmd = [sys.executable, "-m", "zoo.cli.sweep", *args]
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_grid_runs_tabulates_groups_and_is_skipped_when_finished(cifar_dir, tmp_path):
    sweep = _tiny_sweep(tmp_path, cifar_dir)
    limits = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--wandb.media", "false"]
    res = _sweep([str(sweep), "--run_root", "out", *limits], tmp_path, {"WANDB_MODE": "offline"})
    assert res.returncode == 0, res.stderr[-4000:]
    rows = json.loads((tmp_path / "out" / "tiny" / "results.json").read_text())
    assert [(r["model.lr"], r["data.batch_size"]) for r in rows] == [(0.01, 8), (0.01, 16), (0.05, 8), (0.05, 16)]
    for r in rows:
        assert r["status"] == "ok" and r["epochs"] == 1 and r["steps"] == 2 and r["wall_time_s"] > 0
        assert 0 <= r["best_val_acc"] <= 1 and r["final_val_acc"] == r["best_val_acc"]
        assert r["final_train_loss"] > 0
    header = (tmp_path / "out" / "tiny" / "results.csv").read_text().splitlines()[0]
    assert header.startswith("run,model.lr,data.batch_size,status,best_val_acc")
    for r in rows:  # each run in its own folder, in W&B under the sweep's group, with the swept values
        (folder,) = (tmp_path / "out" / "tiny" / r["run"] / "version_0" / "wandb").glob("offline-run-*")
        run = WandbRun(folder)
        assert run.run["group"] == "tiny" and run.run["name"] == f"tiny/{r['run']}"
        init = run.config["cli"]
        assert init["model"]["init_args"]["lr"] == r["model.lr"]
        assert init["data"]["init_args"]["batch_size"] == r["data.batch_size"]
    again = _sweep([str(sweep), "--run_root", "out", *limits], tmp_path, {"WANDB_MODE": "offline"})
    assert again.returncode == 0, again.stderr[-4000:]
    assert again.stderr.count("finished before, skipped") == 4
    assert json.loads((tmp_path / "out" / "tiny" / "results.json").read_text()) == rows


def test_a_dry_run_prints_the_commands_and_runs_nothing(cifar_dir, tmp_path):
    res = _sweep([str(_tiny_sweep(tmp_path, cifar_dir)), "--dry_run", "--max_runs", "3"], tmp_path)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 3 and all("--wandb.group tiny" in line for line in lines)
    assert "--model.lr=0.01 --data.batch_size=16" in lines[1] and "--run_name lr0.01-batch_size16" in lines[1]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ({"method": "hyperopt"}, "method 'hyperopt' is not one of grid, random, bayes"),
        ({"parameters": {"model.lr": {"min": 0.1}}}, "parameter model.lr: a grid needs values"),
        ({"metric": {"name": "val_acc", "goal": "up"}}, "metric goal 'up' is not maximize or minimize"),
        ({"command": ["${interpreter}", "${program}", "fit"]}, "command has no ${args}"),
        ({"method": "bayes"}, "method bayes needs the W&B sweep server"),
        ({"method": "random"}, "method random never ends on its own: pass --max_runs N"),
    ],
    ids=["method", "grid-distribution", "goal", "no-args", "bayes", "random-unbounded"],
)
def test_a_bad_sweep_file_fails_in_one_line_naming_the_problem(cifar_dir, tmp_path, override, message):
    path = _tiny_sweep(tmp_path, cifar_dir, **override)
    res = _sweep([str(path), "--dry_run"], tmp_path)
    assert res.returncode == 2
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith(f"python -m zoo.cli.sweep: error: {path}: {message}"), line


def test_zoo_sweep_is_the_runner(cifar_dir, tmp_path, capsys):
    from zoo.cli.main import main as zoo_main

    assert zoo_main(["sweep", str(_tiny_sweep(tmp_path, cifar_dir)), "--dry_run", "--trainer.max_epochs", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and all(line.endswith("--trainer.max_epochs 3") for line in lines)


def test_load_sweep_names_missing_keys(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("program: train.py\nmethod: grid\n")
    with pytest.raises(SweepError, match="no metric, parameters"):
        load_sweep(path)


def test_plot_draws_a_small_png_from_the_results_table(cifar_dir, tmp_path):
    from zoo.cli.sweep import main as sweep_main

    rows = [
        {"run": f"b{b}-l{lr}", "data.batch_size": b, "model.lr": lr, "status": "ok", "final_val_acc": lr * b / 100}
        for b in (8, 16)
        for lr in (0.01, 0.05)
    ]
    (tmp_path / "out" / "tiny").mkdir(parents=True)
    (tmp_path / "out" / "tiny" / "results.json").write_text(json.dumps(rows))
    png = tmp_path / "plot.png"
    args = ["--run_root", str(tmp_path / "out"), "--out", str(png), "--plot", "model.lr", "data.batch_size"]
    assert sweep_main([str(_tiny_sweep(tmp_path, cifar_dir)), *args, "final_val_acc"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 100_000
    assert sweep_main([str(_tiny_sweep(tmp_path, cifar_dir)), *args]) == 2, "X LINE and at least one Y"
