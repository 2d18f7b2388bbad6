"""``make demo``: first every published family that needs no image data answers one real input (a surname, a
German sentence, an English sentence to tag, a prompt), with no dataset on disk; then published ResNet-20 weights
are measured on the CIFAR-10 test split (downloaded, md5-checked, when it is not on disk), fine-tuned briefly
through ``train.py`` (W&B offline run written), measured again, and the demo says where everything went.

Offline and without CIFAR-10, it stops after the first part with one line saying which file to put where."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import zoo
from datamodules import DatasetError, cifar10_files, default_data_dir
from datamodules.cifar10 import CIFAR10DataModule
from datamodules.cifar10_files import download_cifar10, find_cifar10
from zoo.checkpoint import CheckpointError, read_checkpoint
from zoo.cli.main import render_result
from zoo.weights import PretrainedError
from zoo.weights.measure import evaluate

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = "resnet20.cifar10"
STEPS = 100
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


def cifar10_part(data_dir: Path, t0: float) -> int:
    """Measure, fine-tune through train.py, measure again."""
    os.environ.setdefault("WANDB_MODE", "offline")
    dm = CIFAR10DataModule(data_dir=str(data_dir), num_workers=1)
    print(f"[2/4] {WEIGHTS} on the CIFAR-10 test split")
    ensure_cifar10(data_dir)
    weights = zoo.get_weights(WEIGHTS)
    print(f"      {WEIGHTS}: sha256 verified, loading; manifest test accuracy {100 * weights.metrics['test_acc']:.2f}%")
    model = zoo.load_pretrained(weights)
    before = evaluate(model, dm, "test")["test_acc"]
    print(f"      measured now on the 10,000 test images: {100 * before:.2f}%")

    print(f"[3/4] fine-tuning through train.py for {STEPS} steps (lr 0.005, W&B offline)")
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
    env = {**os.environ, "ZOO_DATA_DIR": str(data_dir)}
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if out.returncode:
        print(out.stdout[-3000:], out.stderr[-3000:], sep="\n")
        return out.returncode
    report = [line for line in out.stdout.splitlines() if line.startswith(("run folder", "last checkpoint", "W&B"))]
    run_dir = Path(report[0].split(": ", 1)[1])

    print("[4/4] measuring the fine-tuned last.ckpt on the test split")
    ckpt = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    tuned = zoo.create_model("resnet20")
    tuned.load_state_dict(ckpt["state_dict"])
    after = evaluate(tuned.eval(), dm, "test")["test_acc"]

    print(f"\ntest accuracy before: {100 * before:.2f}%   after fine-tuning: {100 * after:.2f}%")
    print("\n".join(report))
    print(f"config: {run_dir / 'config.yaml'}")
    print(f"demo took {time.time() - t0:.0f} s")
    return 0


def main() -> int:
    t0 = time.time()
    data_dir = default_data_dir()
    try:
        show_families()
        return cifar10_part(data_dir, t0)
    except (DatasetError, PretrainedError, CheckpointError) as e:  # a message that says what to do; no traceback
        print("demo: error: " + str(e).replace("\n", " "), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
