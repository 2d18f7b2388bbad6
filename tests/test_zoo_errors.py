"""The ``zoo`` command on bad input and on its own faults: one line that names what is wrong (exit 2 for what the
user passed, exit 1 for a fault of the zoo), the traceback only with ``--debug`` or ``ZOO_DEBUG=1``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from datamodules.contract import open_image
from zoo.cli.main import main
from zoo.weights import PretrainedError, find_weights, read_manifest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("ZOO_DEBUG", raising=False)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line(err: str) -> str:
    assert err.startswith("zoo: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


# -- where the published weights are looked for -----------------------------------------------------------------
@pytest.fixture(params=["missing", "a file", "no manifest"])
def wrong_checkpoints(request, tmp_path, monkeypatch) -> Path:
    """``ZOO_CHECKPOINTS`` at a folder that does not exist, at a file, or at a folder without a manifest."""
    folder = tmp_path / "ckpts"
    if request.param == "a file":
        folder.write_text("not a folder")
    elif request.param == "no manifest":
        folder.mkdir()
        (folder / "lenet5.cifar10.safetensors").write_bytes(b"weights, but no manifest naming them")
    monkeypatch.setenv("ZOO_CHECKPOINTS", str(folder))
    return folder


def test_verify_fails_naming_where_it_looked(capsys, wrong_checkpoints):
    code, out, err = run(capsys, "verify")
    assert code == 2 and "matches" not in out
    assert f"ZOO_CHECKPOINTS={wrong_checkpoints}" in one_line(err) and "unset it" in err


def test_every_lookup_says_the_weights_folder_is_wrong(capsys, wrong_checkpoints):
    for lookup in (zoo.list_pretrained, lambda: find_weights("lenet5.cifar10"), lambda: zoo.list_models("*", True)):
        with pytest.raises(PretrainedError, match=f"ZOO_CHECKPOINTS={wrong_checkpoints}: "):
            lookup()
    for argv in (["list"], ["info", "lenet5.cifar10"], ["predict", "lenet5.cifar10", "x.png"]):
        code, _, err = run(capsys, *argv)
        assert code == 2 and str(wrong_checkpoints) in one_line(err), argv
    assert zoo.create_model("lenet5").net is not None  # no weights asked for: no manifest read
    assert read_manifest(wrong_checkpoints.parent / "new") == {}  # a folder named to publish into may be empty


def test_verify_of_a_manifest_without_entries_fails(capsys, tmp_path, monkeypatch):
    (tmp_path / "manifest.json").write_text("{}")
    monkeypatch.setenv("ZOO_CHECKPOINTS", str(tmp_path))
    code, out, _ = run(capsys, "verify")
    assert code == 1 and "lists no weights" in out and str(tmp_path / "manifest.json") in out


def test_verify_in_a_subprocess_prints_one_line_and_no_traceback(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "ZOO_CHECKPOINTS": str(tmp_path / "chekpoints"),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("ZOO_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "zoo.cli", "verify"], env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert str(tmp_path / "chekpoints") in one_line(proc.stderr) and "does not exist" in proc.stderr


# -- an unknown tag ---------------------------------------------------------------------------------------------
def test_info_of_an_unknown_tag_lists_the_models_weights(capsys):
    code, _, err = run(capsys, "info", "resnet20.nosuchtag")
    assert code == 2 and "available for resnet20: resnet20.cifar10" in one_line(err) and "Did you mean" not in err
    code, _, err = run(capsys, "info", "resnet18.cifar10")  # a model without weights: what is published instead
    assert code == 2 and "resnet18 has no published weights" in one_line(err) and "resnet20.cifar10" in err


# -- faults of the zoo and --debug ------------------------------------------------------------------------------
def _fault(*args, **kwargs):
    raise RuntimeError("CUDA error: an illegal memory access was encountered\nCompile with TORCH_USE_CUDA_DSA")


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(capsys, monkeypatch):
    monkeypatch.setattr(zoo, "list_models", _fault)
    code, _, err = run(capsys, "list")
    assert code == 1 and one_line(err) == (
        "zoo: error: RuntimeError: CUDA error: an illegal memory access was encountered "
        "(run with --debug for the traceback)\n"
    )
    for argv in (["--debug", "list"], ["list", "--debug"]):
        with pytest.raises(RuntimeError, match="illegal memory access"):
            main(argv)
    monkeypatch.setenv("ZOO_DEBUG", "1")
    with pytest.raises(RuntimeError, match="illegal memory access"):
        main(["list"])
    monkeypatch.setenv("ZOO_DEBUG", "0")
    assert main(["list"]) == 1


def test_debug_shows_the_traceback_of_a_user_error_too(capsys):
    assert main(["info", "resnet21"]) == 2 and "resnet20" in capsys.readouterr().err
    with pytest.raises(zoo.UnknownModelError, match="resnet20"):
        main(["info", "resnet21", "--debug"])


# -- a user's checkpoint that cannot be read --------------------------------------------------------------------
@pytest.fixture
def broken_ckpts(tmp_path) -> dict[str, Path]:
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}, "hyper_parameters": {"arch": "lenet5"}}, good)
    data = good.read_bytes()
    out = {"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"\x80\x02 not a checkpoint"}
    for name, content in out.items():
        (tmp_path / f"{name}.ckpt").write_bytes(content)
    return {name: tmp_path / f"{name}.ckpt" for name in out}


@pytest.mark.parametrize("command", ["predict", "publish", "evaluate"])
def test_a_broken_checkpoint_is_named(capsys, tmp_path, broken_ckpts, command):
    (tmp_path / "photo.png").write_bytes(b"")
    for kind, path in broken_ckpts.items():
        extra = {
            "predict": [str(tmp_path / "photo.png")],
            "publish": ["--tag", "x", "--recipe", "configs/lenet5.cifar10.yaml"],
            "evaluate": [],
        }[command]
        code, _, err = run(capsys, command, str(path), *extra)
        assert code == 2 and str(path) in one_line(err), (kind, err)
        if command != "evaluate":
            assert {"truncated": "truncated at", "empty": "empty (0 bytes", "garbage": "(UnpicklingError"}[kind] in err
        else:  # not looked up as weights named '....ckpt'
            assert "is a checkpoint" in err and "no published weights" not in err


# -- image inputs -----------------------------------------------------------------------------------------------
@pytest.fixture
def images(tmp_path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    paths = {k: tmp_path / f"{k}.png" for k in ("photo", "other", "big", "huge", "text", "cut")}
    for k in ("photo", "other"):
        Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)).save(paths[k])
    Image.new("RGB", (40, 40)).save(paths["big"])  # 1,600 pixels
    Image.new("RGB", (50, 50)).save(paths["huge"])  # 2,500 pixels
    paths["text"].write_text("not a picture")
    paths["cut"].write_bytes(paths["photo"].read_bytes()[:200])
    return paths


@pytest.fixture
def small_pixel_limit(monkeypatch):
    """PIL's decompression-bomb limit at 1,000 pixels: warns above it, raises above 2,000 (so does a real bomb)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)


def test_open_image_refuses_more_pixels_than_the_limit(images, small_pixel_limit):
    for name in ("big", "huge"):  # PIL only warns for the first; both are refused before decoding
        with pytest.raises(ValueError, match="refused before decoding: Image size .* exceeds limit"):
            open_image(images[name], "RGB", 32)
    assert open_image(images["photo"], "RGB", 32).size == (20, 24)


def test_predict_refuses_a_decompression_bomb_naming_it(capsys, images, small_pixel_limit, monkeypatch):
    monkeypatch.setattr(zoo, "load_pretrained", _fault)  # nothing is loaded for inputs that cannot be read
    code, _, err = run(capsys, "predict", "lenet5.cifar10", str(images["huge"]))
    assert code == 2 and one_line(err).startswith(
        f"zoo: error: {images['huge']} cannot be read as an image: ValueError: refused"
    )


def test_predict_names_every_unreadable_input_before_loading(capsys, images, monkeypatch):
    monkeypatch.setattr(zoo, "load_pretrained", _fault)
    inputs = [images["photo"], images["text"], images["photo"].parent / "missing.png", images["cut"]]
    code, _, err = run(capsys, "predict", "lenet5.cifar10", *map(str, inputs))
    assert code == 2 and "3 of the 4 inputs cannot be read as images, none was run" in one_line(err)
    assert f"{inputs[1]} (not an image PIL can read)" in err and f"{inputs[2]} (no such file)" in err
    assert f"{inputs[3]} (" in err and f"{inputs[0]} (" not in err


def test_predict_answers_every_readable_input(capsys, images):
    code, out, _ = run(capsys, "predict", "lenet5.cifar10", str(images["photo"]), str(images["other"]), "--json")
    rows = json.loads(out)
    assert code == 0 and [r["input"] for r in rows] == [str(images["photo"]), str(images["other"])]
