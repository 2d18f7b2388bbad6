"""``make demo``: load published ResNet-20 weights, measure them on the CIFAR-10 test split, fine-tune them
briefly through ``train.py`` (W&B offline run written), measure again, and say where everything went."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import zoo
from datamodules import DatasetError, default_data_dir
from datamodules.cifar10 import CIFAR10DataModule, find_cifar10
from zoo.checkpoint import read_checkpoint
from zoo.weights.measure import evaluate

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = "resnet20.cifar10"
STEPS = 100


def main() -> int:
    t0 = time.time()
    data_dir = default_data_dir()
    if find_cifar10(data_dir) is None:
        raise DatasetError(
            f"the demo needs CIFAR-10: put cifar-10-python.tar.gz into {data_dir / 'cifar10'} "
            "or set ZOO_DATA_DIR to a folder holding cifar10/cifar-10-python.tar.gz"
        )
    os.environ.setdefault("WANDB_MODE", "offline")
    dm = CIFAR10DataModule(num_workers=1)
    weights = zoo.get_weights(WEIGHTS)
    print(f"[1/3] {WEIGHTS}: sha256 verified, loading; manifest test accuracy {100 * weights.metrics['test_acc']:.2f}%")
    model = zoo.load_pretrained(weights)
    before = evaluate(model, dm, "test")["test_acc"]
    print(f"      measured now on the 10,000 test images: {100 * before:.2f}%")

    print(f"[2/3] fine-tuning through train.py for {STEPS} steps (lr 0.005, W&B offline)")
    cmd = [
        sys.executable,
        "train.py",
        "fit",
        "--config",
        "configs/finetune/resnet20.cifar10.yaml",
        "--trainer.limit_train_batches",
        str(STEPS),
        "--run_name",
        "demo-resnet20-finetune",
    ]
    print("      $ " + " ".join(cmd[1:]))
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        print(out.stdout[-3000:], out.stderr[-3000:], sep="\n")
        return out.returncode
    report = [line for line in out.stdout.splitlines() if line.startswith(("run folder", "last checkpoint", "W&B"))]
    run_dir = Path(report[0].split(": ", 1)[1])

    print("[3/3] measuring the fine-tuned last.ckpt on the test split")
    ckpt = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    tuned = zoo.create_model("resnet20")
    tuned.load_state_dict(ckpt["state_dict"])
    after = evaluate(tuned.eval(), dm, "test")["test_acc"]

    print(f"\ntest accuracy before: {100 * before:.2f}%   after fine-tuning: {100 * after:.2f}%")
    print("\n".join(report))
    print(f"config: {run_dir / 'config.yaml'}")
    print(f"demo took {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
