"""``make demo`` on a machine with no data: every published family answers a real input first; CIFAR-10 is then
downloaded (progress shown, md5-checked) from a local HTTP server, or, when that fails, the demo says in one line what
to put where and fine-tunes the published weights to generated shapes through train.py (a smaller set here). The
fine-tuning on CIFAR-10 itself (minutes) is not run here."""

import hashlib
import re

import numpy as np
import pytest
import test_download
from conftest import N_TEST, N_TRAIN, write_cifar

from datamodules import DatasetError, shapes
from datamodules import cifar10_files as cifar
from datamodules.images import ImageFolderDataModule
from zoo.checkpoint import read_checkpoint
from zoo.cli import demo

server = test_download.server  # the local HTTP server fixture


@pytest.fixture
def no_data(tmp_path, monkeypatch):
    """``ZOO_DATA_DIR`` is an empty folder."""
    empty = tmp_path / "data"
    empty.mkdir()
    monkeypatch.setenv("ZOO_DATA_DIR", str(empty))
    return empty


@pytest.fixture
def served_archive(server, tmp_path, monkeypatch):
    """A small CIFAR-10 archive on ``server`` at the URL the download uses, with its md5 as the expected one."""
    archive = write_cifar(tmp_path / "served").read_bytes()
    server.files["/cifar-10-python.tar.gz"] = archive
    monkeypatch.setattr(cifar, "URL", f"{server.url}/cifar-10-python.tar.gz")
    monkeypatch.setattr(cifar, "ARCHIVE_MD5", hashlib.md5(archive).hexdigest())
    return archive


def test_every_published_family_has_a_demo_input():
    assert set(demo.family_weights()) == set(demo.INPUTS)
    assert "resnet20.cifar10" not in demo.INPUTS  # the image weights are the CIFAR-10 part's


def test_families_answer_without_any_dataset(no_data, capsys):
    answers = demo.show_families()
    out = capsys.readouterr().out
    assert set(answers) == set(demo.INPUTS)
    for name, answer in answers.items():
        assert name in out and answer.splitlines()[-1] in out, name
    assert re.fullmatch(r"German 0\.\d{3}, \w+ 0\.\d{3}, \w+ 0\.\d{3}", answers["gru_classifier.names"])
    assert "man" in answers["seq2seq_gru_attn.multi30k_de_en"].lower()
    assert {"Peter Smith [PER]", "Reuters [ORG]", "Berlin [LOC]"} <= set(
        answers["bilstm_crf.conll2003"].split("spans: ")[1].split("; ")
    )
    assert "fox/NOUN" in answers["bilstm_crf.ud_en_ewt_upos"]
    text = answers["lstm_lm.tinyshakespeare"]
    assert text.startswith("ROMEO:\n") and len(text) == len("ROMEO:\n") + 120
    assert list(no_data.iterdir()) == []  # no dataset was read or written


def test_offline_without_cifar10_says_what_to_put_where_and_fine_tunes_to_generated_shapes(
    no_data, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(cifar, "URL", "http://127.0.0.1:9/cifar-10-python.tar.gz")  # refused at once
    monkeypatch.setattr(demo, "SPLITS", {"train": 40, "val": 8, "test": 25})  # a smaller set, the same flow
    monkeypatch.setattr(demo, "SHAPES_EPOCHS", 8)
    monkeypatch.setattr(demo, "RUNS", tmp_path / "runs")
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert demo.main() == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    [line] = [line for line in captured.out.splitlines() if "could not be downloaded" in line]
    assert "could not be downloaded from http://127.0.0.1:9/cifar-10-python.tar.gz" in line
    assert (
        f"Put cifar-10-python.tar.gz (or the extracted cifar-10-batches-py/ folder) into {no_data / 'cifar10'}" in line
    )
    assert all(name in captured.out for name in demo.INPUTS), "the families answer before the CIFAR-10 part"
    assert not (no_data / "cifar10").exists(), "a failed download leaves nothing behind (an empty cifar10/ neither)"
    # the embedded default: the published backbone fine-tuned to four generated shapes through train.py
    assert sorted(p.name for p in (no_data / "demo-shapes" / "test").iterdir()) == sorted(shapes.CLASSES)
    [run] = (tmp_path / "runs" / "demo-resnet20-shapes").iterdir()
    assert (run / "checkpoints" / "last.ckpt").is_file() and list((run / "wandb").glob("offline-run-*"))
    before, after = map(float, re.search(r"before: ([\d.]+)%   after fine-tuning: ([\d.]+)%", captured.out).groups())
    assert before < 50 < after, "a new head starts near chance (25%); eight short epochs learn the shapes"
    ckpt = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert ckpt["hyper_parameters"]["classes"] == list(shapes.CLASSES)
    assert ckpt["callbacks"]["TrainingRecord"]["starts_from"]["weights"] == "resnet20.cifar10"


def test_generated_shapes_are_an_image_folder_of_four_classes_and_the_same_for_a_seed(tmp_path):
    splits = {"train": 3, "val": 1, "test": 2}
    root = shapes.write_shapes(tmp_path / "a", seed=0, splits=splits)
    again = shapes.write_shapes(tmp_path / "b", seed=0, splits=splits)
    other = shapes.write_shapes(tmp_path / "c", seed=1, splits=splits)
    files = sorted(p.relative_to(root) for p in root.rglob("*.png"))
    assert len(files) == 4 * sum(splits.values())
    assert all((root / f).read_bytes() == (again / f).read_bytes() for f in files)
    assert any((root / f).read_bytes() != (other / f).read_bytes() for f in files)
    dm = ImageFolderDataModule(root=str(root), num_workers=0, mean=[0.5] * 3, std=[0.25] * 3)
    dm.setup("fit")
    assert dm.classes == list(shapes.CLASSES) and len(dm.train_set) == 4 * splits["train"]
    with pytest.raises(ValueError, match="shape must be one of circle, cross, square, triangle; got 'star'"):
        shapes.draw_shape("star", np.random.default_rng(0))


@pytest.mark.parametrize("tty", [False, True], ids=["log", "terminal"])
def test_missing_cifar10_is_downloaded_with_progress(no_data, served_archive, server, monkeypatch, capsys, tty):
    monkeypatch.setattr(cifar, "DOWNLOAD_CHUNK", len(served_archive) // 4 + 1)  # four reads
    monkeypatch.setattr(cifar.sys.stderr, "isatty", lambda: tty)
    path = demo.ensure_cifar10(no_data)
    assert path == no_data / "cifar10" / "cifar-10-python.tar.gz" and path.read_bytes() == served_archive
    err = capsys.readouterr().err
    percents = [int(p) for p in re.findall(r"(\d+)% of", err)]
    assert percents == [25, 50, 75, 100]
    assert ("\r" in err and "[" + "#" * 30 + "]" in err) == tty
    assert load_counts(path) == (N_TRAIN, N_TEST)
    demo.ensure_cifar10(no_data)
    assert len(server.requests) == 1, "once on disk, the archive is not downloaded again"


def test_download_with_the_wrong_md5_keeps_nothing(no_data, served_archive, server):
    server.mode = "wrong"
    with pytest.raises(DatasetError, match=r"has md5 \w+, expected \w+; nothing was kept.*Put cifar-10-python"):
        demo.ensure_cifar10(no_data)
    assert not (no_data / "cifar10").exists(), "nothing kept, not even the folder made for it"


def load_counts(path) -> tuple[int, int]:
    data = cifar.load_cifar10(path, (N_TRAIN, N_TEST))
    return len(data["train"][1]), len(data["test"][1])
