"""What W&B logging costs a training run: the same ``train.py`` run (LeNet-5 on CIFAR-10, a fixed number of
steps and validations) with the W&B logger offline and media on (the default), offline with ``--wandb.media
false``, and W&B disabled (no logger), alternating so that the machine's drift falls on all three alike.

Prints the median wall time of each (whole process: start-up, W&B's service, the files it writes) and the
ratio to the run without W&B measured in the same invocation. Usage: ``python benchmarks/wandb_overhead.py
[--repeats 3] [--steps 60] [--epochs 2]``; needs CIFAR-10 under ``ZOO_DATA_DIR`` (``make bench`` sets it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {
    "W&B disabled (reference)": ({"WANDB_MODE": "disabled"}, []),
    "W&B offline, --wandb.media false": ({"WANDB_MODE": "offline"}, ["--wandb.media", "false"]),
    "W&B offline, media on (default)": ({"WANDB_MODE": "offline"}, []),
}


def run_once(env: dict, extra: list[str], steps: int, epochs: int, workdir: Path) -> float:
    args = ["fit", "--model", "lenet5", "--data", "cifar10", "--trainer.max_epochs", str(epochs)]
    args += ["--trainer.limit_train_batches", str(steps), "--trainer.limit_val_batches", "10"]
    args += ["--trainer.log_every_n_steps", "10", "--trainer.enable_progress_bar", "false", *extra]
    with tempfile.TemporaryDirectory(dir=workdir) as cwd:
        wandb_dirs = {k: cwd for k in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR")}
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **wandb_dirs, **env}
        full_env.pop("WANDB_SERVICE", None)
        t0 = time.perf_counter()
        res = subprocess.run(
            [sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=full_env, capture_output=True, text=True
        )
        elapsed = time.perf_counter() - t0
    if res.returncode:
        sys.exit(f"train.py failed:\n{res.stderr[-2000:]}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="alternating runs of each variant; the median is kept")
    ap.add_argument("--steps", type=int, default=60, help="training steps per epoch")
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as workdir:
        for _ in range(args.repeats):
            for name, (env, extra) in VARIANTS.items():
                times[name].append(run_once(env, extra, args.steps, args.epochs, Path(workdir)))
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    ref = medians[next(iter(VARIANTS))]
    print(f"train.py lenet5, {args.epochs} epochs x {args.steps} steps, median of {args.repeats} alternating runs")
    for name, m in medians.items():
        print(f"{name:<36} {m:7.1f} s  {m / ref:.2f}x")


if __name__ == "__main__":
    main()
