import io
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.cifar10_files import find_cifar10

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
N_TRAIN, N_TEST = 200, 40  # tiny CIFAR-10 in the real format: 5 train batches of 40, one test batch of 40
FIXTURE_ARGS = [
    "--data.num_images",
    f"[{N_TRAIN},{N_TEST}]",
    "--data.val_size",
    "40",
    "--data.num_workers",
    "0",
    "--data.batch_size",
    "16",
    "--data.eval_batch_size",
    "20",
]


def quiet_trainer(tmp_path: Path, **kw) -> L.Trainer:
    """A Trainer for one epoch in ``tmp_path`` that logs, checkpoints and prints nothing; ``kw`` overrides."""
    args = dict(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    return L.Trainer(**{**args, **kw})


class SaveBatches(L.Callback):
    """Saves each training batch's inputs as ``rank<r>_batch<i>.pt`` in ``folder`` (what each DDP rank read)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        torch.save(batch[0], self.folder / f"rank{trainer.global_rank}_batch{batch_idx}.pt")


class StopAt(L.Callback):
    """Saves a checkpoint at ``path`` after batch ``batch`` of epoch ``epoch`` and stops the run there."""

    def __init__(self, epoch: int, batch: int, path: Path) -> None:
        self.epoch, self.batch, self.path = epoch, batch, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            trainer.save_checkpoint(self.path)
            trainer.should_stop = True


def assert_resume_is_exact(tmp_path: Path, make_model, make_dm, epoch: int = 1, batch: int = 2, **trainer_kw) -> dict:
    """Train ``make_model()`` on ``make_dm()`` for ``epoch + 1`` epochs three times from seed 0: unbroken; stopped
    after batch ``batch`` of ``epoch`` (a checkpoint saved there); resumed from that checkpoint. The resumed run must
    end with the unbroken run's weights (and the stopped one without them). Returns the checkpoint."""
    ckpt = tmp_path / "mid.ckpt"

    def run(callbacks=(), ckpt_path=None):
        L.seed_everything(0)
        model = make_model()
        trainer = quiet_trainer(tmp_path, max_epochs=epoch + 1, callbacks=list(callbacks), **trainer_kw)
        trainer.fit(model, make_dm(), ckpt_path=ckpt_path)
        return model.state_dict()

    full = run()
    stopped = run([StopAt(epoch, batch, ckpt)])
    assert any(not torch.equal(a, b) for a, b in zip(full.values(), stopped.values())), "the run did not stop early"
    resumed = run(ckpt_path=ckpt)
    for (k, a), b in zip(full.items(), resumed.values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=k)
    return torch.load(ckpt, weights_only=True)


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """No test reaches the network or writes W&B files outside its temp dir."""
    monkeypatch.setenv("WANDB_MODE", os.environ.get("ZOO_TEST_WANDB_MODE", "disabled"))
    for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    # wandb.init in a test sets WANDB_SERVICE (its service's address) in os.environ: a train.py subprocess started
    # later would attach to that service instead of its own and write no run files. Restored after each test.
    # train.py's main() in a test sets ZOO_RUN_DIR (for the processes DDP relaunches). setenv first: monkeypatch
    # undoes only what it recorded, and deleting an absent variable records nothing, so a value set during the test
    # would outlive it (a later module-scoped train.py subprocess then wrote its run into that test's folder).
    for var in ("WANDB_SERVICE", "ZOO_RUN_DIR", "ZOO_DEBUG"):
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    # downloaded weights go to a per-test cache: a user's ~/.cache/zoo must neither serve nor receive test files
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "zoo-cache"))


def _batch(rng, n: int, label: str) -> bytes:
    labels = [int(i % 10) for i in range(n)]
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    for i, y in enumerate(labels):  # make the classes learnable: a class-dependent red channel offset
        data[i, :1024] = np.clip(data[i, :1024].astype(int) // 4 + 20 * y, 0, 255).astype(np.uint8)
    d = {"batch_label": label, "labels": labels, "data": data, "filenames": [f"{i}_x.png" for i in range(n)]}
    return pickle.dumps(d, protocol=2)


def write_cifar(
    root: Path, as_archive: bool = True, n_train: int = N_TRAIN, n_test: int = N_TEST, seed: int = 0
) -> Path:
    """Write CIFAR-10 python batches (same keys, dtypes and layout as the Toronto files) under root/cifar10."""
    rng = np.random.default_rng(seed)
    members = {f"data_batch_{i}": _batch(rng, n_train // 5, f"training batch {i} of 5") for i in range(1, 6)}
    members["test_batch"] = _batch(rng, n_test, "testing batch 1 of 1")
    members["batches.meta"] = pickle.dumps({"label_names": CLASSES, "num_cases_per_batch": n_train // 5}, protocol=2)
    base = root / "cifar10"
    if as_archive:
        base.mkdir(parents=True, exist_ok=True)
        path = base / "cifar-10-python.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            for name, raw in members.items():
                info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
                info.size = len(raw)
                tar.addfile(info, io.BytesIO(raw))
        return path
    folder = base / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for name, raw in members.items():
        (folder / name).write_bytes(raw)
    return folder


IMAGE_CLASSES = ["cat", "dog", "owl"]
N_IMAGES = 8  # images per class: 6 train / 1 val / 1 test with the default fractions


def write_images(folder: Path, classes=IMAGE_CLASSES, n: int = N_IMAGES, seed: int = 0) -> Path:
    """``folder/<class>/`` with ``n`` tiny images each: sizes vary, PNG and JPEG, every third one grayscale."""
    rng = np.random.default_rng(seed)
    for y, name in enumerate(classes):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            h, w = 10 + 3 * i, 14 + 2 * (i % 3)
            px = (rng.integers(0, 60, (h, w, 3)) + 80 * y).clip(0, 255).astype(np.uint8)
            img = Image.fromarray(px)
            if i % 3 == 0:
                img = img.convert("L")
            img.save(folder / name / f"{name}{i}.{'png' if i % 2 else 'jpg'}")
    return folder


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_cifar(root)
    return root


NAMES = {  # a tiny surnames corpus in the real layout: <data_dir>/names/<Language>.txt, one name per line
    "Japanese": ["Abe", "Aida", "Nakamura", "Tanaka", "Suzuki", "Sato", "Ito", "Kato", "Abe"],
    "Russian": [
        "Ivanov",
        "Petrov",
        "Smirnov",
        "Volkov",
        "Popov",
        "Sokolov",
        "Lebedev",
        "Kozlov",
        "Morozov",
        "Novikov",
        "Pavlov",
        "Orlov",
        "Belov",
        "Zaitsev",
    ],
    "Scottish": ["Mcdonald", "Campbell", "Stewart", "Murray", "Fraser", "Macleod"],
}


def write_names(root: Path, names: dict[str, list[str]] = NAMES) -> Path:
    (root / "names").mkdir(parents=True, exist_ok=True)
    for lang, items in names.items():
        (root / "names" / f"{lang}.txt").write_text("\n".join(items) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def names_dir(tmp_path_factory) -> Path:
    return write_names(tmp_path_factory.mktemp("names_data"))


@pytest.fixture(scope="session")
def text_path(tmp_path_factory) -> Path:
    """A small plain-text corpus for the language models."""
    path = tmp_path_factory.mktemp("text") / "plays.txt"
    lines = [
        f"{who}:\nThe quick brown fox jumps over the lazy dog {i}.\n" for i, who in enumerate(["ROMEO", "JULIET"] * 60)
    ]
    path.write_text("".join(lines), encoding="utf-8")
    return path


@pytest.fixture
def real_data_dir(request) -> Path:
    """The real datasets' folder; the test is skipped unless it holds those that the test's ``real_data`` marks
    name (default: CIFAR-10, as the archive or its batches, not merely a folder of that name)."""
    d = Path(os.environ.get("ZOO_DATA_DIR", ROOT.parent / "shared" / "data"))
    needed = [name for mark in request.node.iter_markers("real_data") for name in mark.args] or ["cifar10"]
    missing = [n for n in needed if (find_cifar10(d) is None if n == "cifar10" else not (d / n).is_dir())]
    if missing:
        pytest.skip(f"real {', '.join(missing)} not in {d} (set ZOO_DATA_DIR)")
    return d


def run_train(args: list[str], cwd: Path, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run train.py in a subprocess (as users do), from ``cwd`` so its runs/ folder lands in a temp dir."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    # never the W&B service of an in-process run of this pytest (it would take the child's run: no run files);
    # the per-test fixture clears it, but a module-scoped fixture runs before that
    full_env.pop("WANDB_SERVICE", None)
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def lenet_args(cifar_dir: Path, *args: str) -> list[str]:
    """``train.py`` options for LeNet-5 on the CIFAR fixture, one validation batch, no progress bar; ``args`` last."""
    data = ["--data", "cifar10", "--data.data_dir", str(cifar_dir), *FIXTURE_ARGS]
    return [
        "--model",
        "lenet5",
        *data,
        "--trainer.limit_val_batches",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        *args,
    ]


def pairs_tsv(folder: Path) -> Path:
    path = folder / "pairs.tsv"
    path.write_text("".join(f"ein hund {i} .\ta dog {i} .\n" for i in range(60)), encoding="utf-8")
    return path


TAGGED = [("EU", "PROPN", "I-ORG"), ("rejects", "VERB", "O"), ("German", "ADJ", "I-MISC"), (".", "PUNCT", "O")]


def tagged_files(folder: Path, kind: str, words: list[tuple[str, str, str]] = TAGGED) -> Path:
    """train/dev/test files of two tagged sentences each, as CoNLL-2003 columns or CoNLL-U."""
    folder = folder / kind
    folder.mkdir()
    for split in ("train", "dev", "test"):
        if kind == "conll":
            text = "\n".join(f"{w} NNP I-NP {ner}" for w, _, ner in words) + "\n\n"
            (folder / f"{split}.txt").write_text(text * 2)
        else:
            rows = [f"{i}\t{w}\t_\t{pos}\t_\t_\t0\t_\t_\t_" for i, (w, pos, _) in enumerate(words, start=1)]
            (folder / f"x-ud-{split}.conllu").write_text(("\n".join(rows) + "\n\n") * 2)
    return folder


def slow_except(values, fast, ids=None) -> list:
    """``values`` as test parameters, those not in ``fast`` marked ``slow``: ``make test`` keeps a cheap
    representative of a parametrized check, ``make test-all`` runs every case."""
    return [
        v if v in fast else pytest.param(v, marks=pytest.mark.slow, id=None if ids is None else ids(v)) for v in values
    ]
