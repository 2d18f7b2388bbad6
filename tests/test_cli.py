"""The ``zoo`` console script: info (model cards from the manifest), predict, evaluate, verify."""

import json
import os
import shutil

import lightning as L
import numpy as np
import pytest
import torch
from conftest import N_TEST, N_TRAIN, quiet_trainer
from PIL import Image

import zoo
from datamodules.cifar10 import CIFAR10DataModule
from zoo.callbacks import TrainingRecord
from zoo.cli.card import lineage_seconds, model_card
from zoo.cli.main import EVALUATE_TOLERANCE, main
from zoo.cli.readme import lineage_curve, weights_table
from zoo.weights import checkpoint_dir, read_manifest
from zoo.weights.publish import publish

REPO_CHECKPOINTS = checkpoint_dir()


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.mark.parametrize("name", sorted(read_manifest()), ids=str)
def test_model_card_comes_from_the_manifest(name):
    entry, card = read_manifest()[name], model_card(name)
    assert card["metrics"] == entry.metrics and card["sha256"] == entry.sha256
    assert card["params"] == entry.params  # counted on the loaded net, equal to what publish recorded
    assert card["recipe"] == entry.recipe and os.path.isfile(card["recipe"])
    assert card["data_licence"] and "not stated" not in card["data_licence"]  # every dataset says its terms
    if entry.preprocessing:
        assert card["mflops"] > 0


def test_info_of_a_model_lists_its_weights(capsys):
    code, out = run(capsys, "info", "bilstm_crf", "--json")
    card = json.loads(out)
    assert code == 0 and card["published_weights"] == ["bilstm_crf.conll2003", "bilstm_crf.ud_en_ewt_upos"]
    code, out = run(capsys, "info", "resnet20.cifar10")
    acc = zoo.get_weights("resnet20.cifar10").metrics["test_acc"]
    assert code == 0 and f"{acc * 100:.2f}" not in out and f"test_acc={acc:.4f}" in out and "MFLOPs" in out
    code, out = run(capsys, "info", "resnet21")
    assert code == 2 and "resnet20" in out  # unknown name: close matches suggested


def test_predict_text_models(capsys):
    code, out = run(capsys, "predict", "gru_classifier.names", "Nakamura", "Ivanov", "--top-k", "2", "--json")
    rows = json.loads(out)
    assert code == 0 and [r["input"] for r in rows] == ["Nakamura", "Ivanov"]
    assert rows[0]["output"][0][0] == "Japanese" and rows[1]["output"][0][0] == "Russian"
    assert len(rows[0]["output"]) == 2
    code, out = run(capsys, "predict", "bilstm_crf.conll2003", "EU rejects German call to boycott British lamb .")
    assert code == 0 and "EU [ORG]" in out and "German [MISC]" in out
    code, out = run(capsys, "predict", "seq2seq_gru_attn", "Ein Mann schläft .", "--beam", "1", "--json")
    assert code == 0 and "man" in json.loads(out)[0]["output"].lower()


def test_predict_images_and_bad_input(capsys, tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(path)
    code, out = run(capsys, "predict", "resnet20.cifar10", str(path), "--top-k", "3", "--json")
    (row,) = json.loads(out)
    classes = read_manifest()["resnet20.cifar10"].classes
    probs = [p for _, p in row["output"]]
    assert code == 0 and all(c in classes for c, _ in row["output"]) and probs == sorted(probs, reverse=True)
    code, out = run(capsys, "predict", "resnet20.cifar10", str(tmp_path / "missing.png"))
    assert code == 2 and "missing.png" in out
    code, out = run(capsys, "predict", "resnet20.nope", str(path))
    assert code == 2 and "resnet20.cifar10" in out  # unknown tag: the available ones listed


@pytest.fixture
def local_weights(tmp_path, monkeypatch):
    """A copy of the repository's weights folder, as ZOO_CHECKPOINTS."""
    folder = tmp_path / "ckpts"
    shutil.copytree(REPO_CHECKPOINTS, folder)
    monkeypatch.setenv("ZOO_CHECKPOINTS", str(folder))
    return folder


def test_verify_finds_a_corrupt_or_missing_file(capsys, local_weights):
    code, out = run(capsys, "verify")
    assert code == 0 and "every local weights file matches" in out
    with open(local_weights / "lenet5.cifar10.safetensors", "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02")
    (local_weights / "gru_classifier.names.safetensors").unlink()
    code, out = run(capsys, "verify")
    assert code == 1 and "MISMATCH" in out and "missing" in out and "2 problem(s)" in out


def train_lenet(dm, tmp_path, seed: int, ckpt: str):
    """LeNet-5 trained an epoch on ``dm`` from ``seed``, saved as ``tmp_path / ckpt``: the model and its Trainer."""
    L.seed_everything(seed)
    model = zoo.create_model("lenet5", lr=3e-3, optimizer="adamw", schedule="constant")
    trainer = quiet_trainer(tmp_path)
    trainer.fit(model, dm)
    trainer.save_checkpoint(tmp_path / ckpt)
    return model, trainer


@pytest.fixture
def lenet_fixture(cifar_dir, monkeypatch, tmp_path):
    """LeNet-5 trained an epoch on the CIFAR fixture and published as ``lenet5.fixture`` into a temporary
    checkpoints folder: its DataModule, Trainer and the published entry."""
    dm = CIFAR10DataModule(
        data_dir=str(cifar_dir), num_images=(N_TRAIN, N_TEST), val_size=40, num_workers=0, batch_size=16
    )
    trainer = train_lenet(dm, tmp_path, seed=0, ckpt="m.ckpt")[1]
    monkeypatch.setenv("ZOO_CHECKPOINTS", str(tmp_path / "ckpts"))
    entry = publish(tmp_path / "m.ckpt", "fixture", "configs/lenet5.cifar10.yaml", data_dir=str(cifar_dir))
    return dm, trainer, entry


def test_evaluate_reproduces_or_says_it_does_not(capsys, cifar_dir, tmp_path, lenet_fixture):
    """Published on the fixture, re-measured: reproduced; with the manifest's figure moved past the tolerance: not."""
    code, out = run(capsys, "evaluate", "lenet5.fixture", "--data-dir", str(cifar_dir))
    assert code == 0 and "test_acc reproduced" in out
    manifest_path = tmp_path / "ckpts" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["lenet5.fixture"]["metrics"]["test_acc"] += 2 * EVALUATE_TOLERANCE / 100
    manifest_path.write_text(json.dumps(manifest))
    code, out = run(capsys, "evaluate", "lenet5", "--data-dir", str(cifar_dir))  # the model's one set of weights
    assert code == 1 and "NOT reproduced" in out


@pytest.mark.slow
@pytest.mark.timeout(1800)  # DenseNet-BC-100 reads 10,000 test images in ~11 minutes on one loaded CPU core
@pytest.mark.parametrize("name", sorted(read_manifest()), ids=str)
def test_evaluate_reproduces_every_published_metric_on_the_real_data(name, capsys):
    data = os.environ.get("ZOO_DATA_DIR", "")
    folder = {"CIFAR10": "cifar10", "Names": "names", "CharLM": "tinyshakespeare", "Translation": "multi30k"}
    folder |= {"CoNLL": "conll2003", "CoNLLU": "ud_en_ewt"}
    cls = read_manifest()[name].data["class_path"].rsplit(".", 1)[1].removesuffix("DataModule")
    if not os.path.isdir(os.path.join(data, folder[cls])):
        pytest.skip(f"the real data of {name} is not in ZOO_DATA_DIR={data!r}")
    code, out = run(capsys, "evaluate", name)
    assert code == 0, out


def test_tta_is_published_beside_the_plain_figure_and_re_measured(capsys, cifar_dir, lenet_fixture):
    """Test-time augmentation (flip) is an explicit option: publish measures it beside the headline, never in it;
    ``zoo evaluate --tta flip`` compares with the TTA figure; text models refuse it."""
    dm, trainer, entry = lenet_fixture
    loaded = zoo.load_pretrained("lenet5.fixture")
    plain = trainer.test(loaded, dm, verbose=False)[0]
    loaded.tta = "flip"
    flipped = trainer.test(loaded, dm, verbose=False)[0]
    assert entry.metrics["test_acc"] == pytest.approx(plain["test_acc"])  # the headline is the plain figure
    assert entry.metrics["test_acc_tta_flip"] == pytest.approx(flipped["test_acc"])
    assert plain["test_loss"] != flipped["test_loss"]  # another measurement, not a copy
    code, out = run(capsys, "evaluate", "lenet5.fixture", "--data-dir", str(cifar_dir), "--tta", "flip")
    assert code == 0 and "test_acc_tta_flip reproduced" in out
    code, out = run(capsys, "predict", "gru_classifier.names", "Nakamura", "--tta", "flip")
    assert code == 2


def test_publish_records_the_other_seeds_of_a_recipe(cifar_dir, tmp_path, lenet_fixture):
    dm = lenet_fixture[0]
    other, trainer = train_lenet(dm, tmp_path, seed=1, ckpt="seed1.ckpt")
    measured = trainer.test(other, dm, verbose=False)[0]["test_acc"]
    entry = publish(
        tmp_path / "m.ckpt",
        "fixture",
        "configs/lenet5.cifar10.yaml",
        data_dir=str(cifar_dir),
        other_seeds=(tmp_path / "seed1.ckpt",),
    )
    seeds = entry.evaluation["over_seeds"]
    assert entry.evaluation["seeds"] == 2 and seeds["metric"] == "test_acc"
    assert seeds["values"] == [entry.metrics["test_acc"], pytest.approx(measured)]  # measured, not typed
    assert seeds["mean"] == pytest.approx(sum(seeds["values"]) / 2, abs=1e-6)
    assert seeds["std"] == pytest.approx(abs(seeds["values"][0] - seeds["values"][1]) / 2**0.5, abs=1e-6)
    assert "2 seeds:" in weights_table()


def test_weights_fine_tuned_from_published_ones_count_what_those_cost(capsys, cifar_dir, tmp_path, lenet_fixture):
    """A run started from published weights records them in its checkpoint (hash, recipe, training) as they were
    when it started; weights published from it carry that record, also once they replace their base's entry (and
    when published again), and the README counts both trainings' minutes and validation curve."""
    dm = lenet_fixture[0]
    kwargs = dict(lr=1e-3, optimizer="adamw", schedule="constant")
    recipe, folder = "configs/lenet5.cifar10.yaml", tmp_path / "ckpts"

    def fit(model, name: str):
        trainer = quiet_trainer(tmp_path, callbacks=[TrainingRecord()])
        trainer.fit(model, dm)
        trainer.save_checkpoint(tmp_path / name)
        return tmp_path / name

    base = publish(fit(zoo.create_model("lenet5", **kwargs), "base.ckpt"), "fixture", recipe, data_dir=str(cifar_dir))
    tuned = fit(zoo.create_model("lenet5", pretrained="lenet5.fixture", **kwargs), "tuned.ckpt")
    for _ in range(2):  # the second publish finds its own entry under the base's name: the record still holds
        entry = publish(tuned, "fixture", recipe, data_dir=str(cifar_dir))
        start = entry.training["starts_from"]
        assert start["weights"] == "lenet5.fixture" and start["sha256"] == base.sha256 != entry.sha256
        assert start["training"] == base.training and start["recipe"] == recipe
    assert read_manifest(folder)["lenet5.fixture"].sha256 == entry.sha256
    assert "starts_from" not in base.training
    total = lineage_seconds(entry.training)
    assert total == pytest.approx(base.training["wall_time_s"] + entry.training["wall_time_s"]) and total > 0
    lineage = f"fine-tuned from `lenet5.fixture`: {total / 60:.0f} min in all"
    assert lineage in weights_table() and "fine-tuned from `lenet5.fixture`" in run(capsys, "info", "lenet5.fixture")[1]
    curve = lineage_curve(entry.training, entry.evaluation["val_split"])
    (b_epoch, b_s, b_val), (epoch, seconds, val) = curve["points"]  # one validation each, the base's first
    assert [b_epoch, b_val] == [0, base.training["curve"]["points"][0][2]] and epoch == 1
    assert seconds == pytest.approx(base.training["wall_time_s"] + entry.training["curve"]["points"][0][1], abs=0.01)
    assert not curve["partial"]
    other_split = lineage_curve(entry.training, "another split")  # validated elsewhere: the base's figures are not
    assert other_split["partial"] and [p[2] for p in other_split["points"]] == [val]  # comparable, its time counts
    assert other_split["points"][0][1] == pytest.approx(seconds, abs=0.01)
    del entry.training["starts_from"]["training"]["curve"]  # weights trained before runs kept their curve: the same
    assert lineage_curve(entry.training, entry.evaluation["val_split"]) == other_split


def test_publish_refuses_non_finite_weights(cifar_dir, tmp_path, lenet_fixture):
    ckpt = torch.load(tmp_path / "m.ckpt", weights_only=True)
    ckpt["state_dict"]["net.head.bias"][0] = float("nan")
    torch.save(ckpt, tmp_path / "nan.ckpt")
    with pytest.raises(zoo.CheckpointError, match=r"nan.ckpt holds non-finite weights \(1 tensors .*net.head.bias"):
        publish(tmp_path / "nan.ckpt", "nan", "configs/lenet5.cifar10.yaml", data_dir=str(cifar_dir))
    assert "lenet5.nan" not in read_manifest(tmp_path / "ckpts")
