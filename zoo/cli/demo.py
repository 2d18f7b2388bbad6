"""``make demo``: first every published family that needs no image data answers one real input (a surname, a
German sentence, an English sentence to tag, a prompt), with no dataset on disk; then published ResNet-20 weights
are measured on the CIFAR-10 test split (downloaded, md5-checked, when it is not on disk), fine-tuned briefly
through ``train.py`` (W&B offline run written), measured again, and the demo says where everything went.

Offline and without CIFAR-10, it says in one line which file to put where, and fine-tunes the published weights to
an embedded default instead: images of four shapes that it generates (``datamodules.shapes``), through the
``train.py`` recipe for a folder of one's own images, measured before (a new head: chance) and after."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import lightning as L

import zoo
from datamodules import DatasetError, cifar10_files, default_data_dir
from datamodules.cifar10 import CIFAR10DataModule
from datamodules.cifar10_files import download_cifar10, find_cifar10
from datamodules.shapes import CLASSES, SPLITS, write_shapes
from zoo.checkpoint import CheckpointError, read_checkpoint
from zoo.cli.main import render_result
from zoo.weights import PretrainedError
from zoo.weights.measure import build_datamodule, data_spec, evaluate

ROOT = Path(__file__).resolve().parents[2]
RUNS = ROOT / "runs"  # train.py's --run_root for the fine-tuning runs
WEIGHTS = "resnet20.cifar10"
STEPS = 100
SHAPES_EPOCHS = 8  # the first with the backbone frozen (configs/finetune/resnet20.imagefolder.yaml)
# published weights -> (one real input, predict options); the image weights are shown on CIFAR-10 afterwards
INPUTS = {
    "gru_classifier.names": ("Schwarzenegger", {"top_k": 3}),
    "seq2seq_gru_attn.multi30k_de_en": ("Ein Mann fährt mit dem Fahrrad .", {"beam": 5}),
    "bilstm_crf.conll2003": ("Peter Smith of Reuters reported from Berlin that Siemens will cut jobs .", {}),
    "bilstm_crf.ud_en_ewt_upos": ("The quick brown fox jumps over the lazy dog .", {}),
    "lstm_lm.tinyshakespeare": ("ROMEO:\n", {"length": 120, "temperature": 0.8, "seed": 0}),
}


def family_weights() -> list[str]:
    """Published weights that the first part shows: all but the image classifiers."""
    return [n for n in zoo.list_pretrained() if zoo.model_info(n.split(".", 1)[0]).kind != "image"]


def show_families() -> dict[str, str]:
    """Load each of ``family_weights`` through the public API and print its answer to its input in ``INPUTS``;
    returns the answers as printed, by weights name."""
    print("[1/4] each published family answers one input (no dataset needed)")
    answers = {}
    for name in family_weights():
        if name not in INPUTS:
            print(f"      {name}: no demo input for it yet (zoo predict {name} TEXT tries one)")
            continue
        text, options = INPUTS[name]
        answers[name] = render_result(zoo.load_pretrained(name).predict(text, **options)[0])
        print(f"      {name} <- {text!r}")
        print("\n".join("        " + line for line in answers[name].splitlines()))
    return answers


def ensure_cifar10(data_dir: Path) -> Path:
    """The CIFAR-10 archive or folder under ``data_dir``, downloaded (with progress, md5-checked) when absent."""
    found = find_cifar10(data_dir)
    if found is not None:
        print(f"      CIFAR-10: {found}")
        return found
    print(f"      CIFAR-10 is not in {data_dir}: downloading {cifar10_files.URL} (163 MB, md5-checked)", flush=True)
    path = download_cifar10(data_dir)
    print(f"      saved {path}")
    return path


def fine_tune(args: list[str], data_dir: Path) -> Path | int:
    """Run ``train.py fit`` with ``args`` (W&B offline); its run folder, or its exit status when it failed (its
    output printed)."""
    cmd = [sys.executable, "train.py", "fit", *args, "--run_root", str(RUNS)]
    print("      $ " + " ".join(cmd[1:]))
    env = {"WANDB_MODE": "offline", **os.environ, "ZOO_DATA_DIR": str(data_dir)}
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if out.returncode:
        print(out.stdout[-3000:], out.stderr[-3000:], sep="\n")
        return out.returncode
    report = [line for line in out.stdout.splitlines() if line.startswith(("run folder", "last checkpoint", "W&B"))]
    print("\n".join("      " + line for line in report))
    return Path(report[0].split(": ", 1)[1])


def measure_tuned(run_dir: Path, data_dir: Path, before: float | L.LightningModule, t0: float) -> int:
    """Measure the run's last.ckpt on the test split of the data it was trained on (``before``: the accuracy before
    fine-tuning, or the model to measure it on that split), and say where everything went."""
    last = run_dir / "checkpoints" / "last.ckpt"
    print(f"[4/4] measuring the fine-tuned {last.name} on the test split")
    dm = build_datamodule(data_spec(read_checkpoint(last)), str(data_dir))
    if isinstance(before, L.LightningModule):
        before = evaluate(before, dm, "test")["test_acc"]
    after = evaluate(zoo.load_checkpoint(last), dm, "test")["test_acc"]
    print(f"\ntest accuracy before: {100 * before:.2f}%   after fine-tuning: {100 * after:.2f}%")
    print(f"run folder: {run_dir} (config.yaml, checkpoints/, wandb/)")
    print(f"demo took {time.time() - t0:.0f} s")
    return 0


def cifar10_part(data_dir: Path, t0: float) -> int:
    """Measure the published weights on the CIFAR-10 test split, fine-tune them through train.py, measure again."""
    dm = CIFAR10DataModule(data_dir=str(data_dir), num_workers=1)
    weights = zoo.get_weights(WEIGHTS)
    print(f"      {WEIGHTS}: sha256 verified, loading; manifest test accuracy {100 * weights.metrics['test_acc']:.2f}%")
    before = evaluate(zoo.load_pretrained(weights), dm, "test")["test_acc"]
    print(f"      measured now on the 10,000 test images: {100 * before:.2f}%")
    print(f"[3/4] fine-tuning through train.py for {STEPS} steps (lr 0.005, W&B offline)")
    args = ["--config", "configs/finetune/resnet20.cifar10.yaml", "--trainer.limit_train_batches", str(STEPS)]
    run_dir = fine_tune([*args, "--run_name", "demo-resnet20-finetune"], data_dir)
    return run_dir if isinstance(run_dir, int) else measure_tuned(run_dir, data_dir, before, t0)


def shapes_part(data_dir: Path, t0: float) -> int:
    """Where CIFAR-10 cannot be had: fine-tune the published weights to generated images of shapes (a new 4-class
    head on the CIFAR-10 backbone) through train.py, measured before and after on their test split."""
    root = write_shapes(data_dir / "demo-shapes", splits=SPLITS)
    counts = ", ".join(f"{n} {split}" for split, n in SPLITS.items())
    print(f"      the demo goes on with generated images: {', '.join(CLASSES)} ({counts} per class) in {root}")
    print(f"[3/4] fine-tuning {WEIGHTS} to them through train.py for {SHAPES_EPOCHS} epochs (W&B offline)")
    config = "configs/finetune/resnet20.imagefolder.yaml"
    args = ["--config", config, "--data.root", str(root), "--trainer.max_epochs", str(SHAPES_EPOCHS)]
    run_dir = fine_tune([*args, "--run_name", "demo-resnet20-shapes"], data_dir)
    if isinstance(run_dir, int):
        return run_dir
    new_head = zoo.load_pretrained(WEIGHTS, num_classes=len(CLASSES))  # the backbone as published, a new head
    return measure_tuned(run_dir, data_dir, new_head, t0)


def main() -> int:
    t0 = time.time()
    data_dir = default_data_dir()
    try:
        show_families()
        print(f"[2/4] {WEIGHTS} on the CIFAR-10 test split")
        try:
            ensure_cifar10(data_dir)
        except DatasetError as e:  # offline, or a download that did not check out: nothing of it was kept
            print("      " + str(e).replace("\n", " "))
            return shapes_part(data_dir, t0)
        return cifar10_part(data_dir, t0)
    except (DatasetError, PretrainedError, CheckpointError) as e:  # a message that says what to do; no traceback
        print("demo: error: " + str(e).replace("\n", " "), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
