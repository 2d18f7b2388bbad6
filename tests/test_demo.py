"""``make demo`` on a machine with no data: every published family answers a real input first; CIFAR-10 is then
downloaded (progress shown, md5-checked) from a local HTTP server, or, when that fails, the demo ends with one line
saying what to put where. The fine-tuning itself (minutes on CIFAR-10) is not run here."""

import hashlib
import re

import pytest
import test_download
from conftest import N_TEST, N_TRAIN, write_cifar

from datamodules import DatasetError
from datamodules import cifar10_files as cifar
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


def test_offline_without_cifar10_says_what_to_put_where(no_data, monkeypatch, capsys):
    monkeypatch.setattr(cifar, "URL", "http://127.0.0.1:9/cifar-10-python.tar.gz")  # refused at once
    assert demo.main() == 2
    captured = capsys.readouterr()
    [line] = captured.err.splitlines()
    assert line.startswith("demo: error: ") and "Traceback" not in captured.out + captured.err
    assert "could not be downloaded from http://127.0.0.1:9/cifar-10-python.tar.gz" in line
    assert (
        f"Put cifar-10-python.tar.gz (or the extracted cifar-10-batches-py/ folder) into {no_data / 'cifar10'}" in line
    )
    assert all(name in captured.out for name in demo.INPUTS), "the families answer before the CIFAR-10 part"
    assert not list(no_data.rglob("*.part")), "a failed download leaves nothing behind"


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
    assert list((no_data / "cifar10").iterdir()) == []


def load_counts(path) -> tuple[int, int]:
    data = cifar.load_cifar10(path, (N_TRAIN, N_TEST))
    return len(data["train"][1]), len(data["test"][1])
