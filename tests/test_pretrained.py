import json
import shutil

import lightning as L
import pytest
import torch
from conftest import N_TEST, N_TRAIN
from safetensors.torch import load_file

import zoo
from datamodules.cifar10 import CIFAR10DataModule
from zoo.callbacks import TrainingRecord
from zoo.checkpoint import CheckpointError, read_checkpoint
from zoo.cli import readme
from zoo.weights import PretrainedError, checkpoint_dir, read_manifest, sha256_of
from zoo.weights.measure import build_datamodule, evaluate
from zoo.weights.publish import publish


@pytest.fixture(scope="module")
def trained_ckpt(tmp_path_factory, cifar_dir):
    """A lenet5 checkpoint trained for one epoch on the fixture, as train.py would leave it."""
    L.seed_everything(0)
    out = tmp_path_factory.mktemp("run")
    model = zoo.create_model("lenet5", lr=3e-3, optimizer="adamw", schedule="constant")
    dm = CIFAR10DataModule(
        data_dir=str(cifar_dir), num_images=(N_TRAIN, N_TEST), val_size=40, num_workers=0, batch_size=16
    )
    trainer = L.Trainer(
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out,
        callbacks=[TrainingRecord()],
    )
    trainer.fit(model, dm)
    trainer.save_checkpoint(out / "last.ckpt")
    return out / "last.ckpt"


@pytest.fixture
def published(trained_ckpt, cifar_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_CHECKPOINTS", str(tmp_path / "ckpts"))
    entry = publish(trained_ckpt, "fixture", "configs/lenet5.cifar10.yaml", data_dir=str(cifar_dir))
    dm = CIFAR10DataModule(data_dir=str(cifar_dir), num_images=(N_TRAIN, N_TEST), val_size=40, num_workers=0)
    return entry, dm


def test_publish_writes_weights_and_measured_metrics(published):
    entry, dm = published
    path = checkpoint_dir() / entry.file
    assert path.suffix == ".safetensors" and sha256_of(path) == entry.sha256
    assert path.stat().st_mode & 0o777 == (checkpoint_dir() / "manifest.json").stat().st_mode & 0o777, "not 0600"
    assert read_manifest()["lenet5.fixture"] == entry
    assert entry.params == 62_006 and entry.classes[0] == "airplane"
    model = zoo.load_pretrained("lenet5.fixture")
    assert not model.training
    assert evaluate(model, dm, "test")["test_acc"] == pytest.approx(entry.metrics["test_acc"])  # not typed
    assert "val_acc" in entry.metrics and entry.training["wall_time_s"] >= 0
    check = entry.dtype_check
    fp16_ok = abs(check["float16_test_acc"] - check["float32_test_acc"]) * 100 <= check["tolerance_points"]
    assert entry.dtype == ("float16" if fp16_ok else "float32")


def test_publish_keeps_the_curve_and_the_readme_gives_the_time_to_accuracy(
    trained_ckpt, cifar_dir, published, monkeypatch
):
    """The run's validation curve (from its TrainingRecord) goes into the manifest; the README's time-to-accuracy
    table reads it: minutes to the paper's figure (the first validation at or above it) and to the best."""
    curve = published[0].training["curve"]
    assert curve["monitor"] == "val_acc" and [p[0] for p in curve["points"]] == [0, 1]
    entry = publish(trained_ckpt, "cifar10", "configs/lenet5.cifar10.yaml", data_dir=str(cifar_dir))
    (_, first_s, first), (_, second_s, second) = entry.training["curve"]["points"]
    assert 0 < first_s < second_s <= entry.training["wall_time_s"] + 0.05  # the manifest rounds it to 0.1 s
    assert readme.minutes_to(entry.training["curve"], min(first, second)) == first_s / 60
    assert readme.minutes_to(entry.training["curve"], max(first, second) + 1e-6) is None
    monkeypatch.setitem(readme.PAPERS, "lenet5", (max(first, second) + 1e-6, "a figure no run reached"))
    row = next(r for r in readme.time_to_accuracy_table().splitlines() if "`lenet5.cifar10`" in r)
    best_s = first_s if first >= second else second_s
    assert row.endswith(f"| not reached | {max(first, second):.2%} ({best_s / 60:.0f}) |"), row
    assert "lenet5.fixture" not in readme.time_to_accuracy_table()  # CIFAR-10 entries only


def test_list_pretrained_and_models(published):
    assert zoo.list_pretrained("lenet*") == ["lenet5.fixture"]
    assert zoo.list_models(pretrained=True) == ["lenet5"]


def test_loaded_weights_equal_the_checkpoint(published, trained_ckpt):
    entry, _ = published
    state = read_checkpoint(trained_ckpt)["state_dict"]
    net = zoo.load_pretrained("lenet5.fixture").net
    for k, v in net.state_dict().items():
        stored = state[f"net.{k}"].half().float() if entry.dtype == "float16" else state[f"net.{k}"]
        assert torch.equal(v, stored), k


@pytest.mark.parametrize("tolerance, dtype", [(None, "float32"), (100.0, "float16")])
def test_storage_dtype_follows_the_measured_test_change(tolerance, dtype, trained_ckpt, cifar_dir, tmp_path):
    entry = publish(trained_ckpt, "t", "r.yaml", data_dir=str(cifar_dir), out_dir=tmp_path, fp16_tolerance=tolerance)
    assert entry.dtype == dtype and entry.dtype_check["float32_test_acc"] >= 0
    stored = load_file(tmp_path / entry.file)
    assert {v.dtype for k, v in stored.items() if "num_batches" not in k} == {getattr(torch, dtype)}
    if dtype == "float16":  # the published metric is the one of the stored (rounded) weights
        assert entry.metrics["test_acc"] == entry.dtype_check["float16_test_acc"]
    else:
        assert entry.metrics["test_acc"] == entry.dtype_check["float32_test_acc"]


def test_other_num_classes_resets_head_keeps_backbone(published, caplog):
    ref = zoo.load_pretrained("lenet5.fixture").net
    net = zoo.load_pretrained("lenet5.fixture", num_classes=3).net
    assert net.head.out_features == 3
    assert torch.equal(net.features[0].weight, ref.features[0].weight)


def test_sha256_mismatch_is_refused(published):
    entry, _ = published
    path = checkpoint_dir() / entry.file
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(PretrainedError, match="Refusing to load"):
        zoo.load_pretrained("lenet5.fixture")


def test_missing_file_says_where_it_looked(published):
    entry, _ = published
    (checkpoint_dir() / entry.file).unlink()
    with pytest.raises(PretrainedError, match=f"looked for .*{entry.file}"):
        zoo.load_pretrained("lenet5.fixture")


def test_unknown_tag_lists_available(published):
    with pytest.raises(PretrainedError, match="available for lenet5: lenet5.fixture"):
        zoo.load_pretrained("lenet5.imagenet")


def test_weights_for_another_architecture(published):
    with pytest.raises(PretrainedError, match="are for model 'lenet5', not 'resnet20'"):
        zoo.create_model("resnet20", pretrained="lenet5.fixture")
    path = checkpoint_dir() / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["resnet20.bad"] = {**manifest["lenet5.fixture"], "model": "resnet20"}  # mislabelled entry
    path.write_text(json.dumps(manifest))
    with pytest.raises(PretrainedError, match="do not fit this resnet20"):
        zoo.load_pretrained("resnet20.bad")


def test_bad_checkpoints_are_refused(tmp_path, trained_ckpt):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        read_checkpoint(tmp_path / "nope.ckpt")
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(trained_ckpt.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt, truncated"):
        read_checkpoint(cut)
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "x": shutil.rmtree}, evil)  # a pickle that would import a function
    with pytest.raises(CheckpointError, match="weights_only=True refuses"):
        read_checkpoint(evil)
    other = tmp_path / "other.ckpt"
    torch.save({"model": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="not a lightning-zoo training checkpoint"):
        read_checkpoint(other)


# -- the repository's own published weights -------------------------------------------------------------------
REPO_MANIFEST = read_manifest()
# to keep `make test` short, the entries whose measurement takes over ~30 s (test-all measures every entry)
SLOW_TO_MEASURE = {
    "densenet_bc_100_12.cifar10",
    "resnet56.cifar10",
    "vgg11_bn.cifar10",
    "seq2seq_gru_attn.multi30k_de_en",
}
# DenseNet-BC-100 on the 10,000 test images (288 MFLOPs each, many small layers) runs past the 10-minute test limit
# on an AVX2-only CPU (over 600 s, 2 cores, two training runs beside it): it gets 30 minutes.
LONG_TO_MEASURE = {"densenet_bc_100_12.cifar10": 1800}
# the folder of ZOO_DATA_DIR that each DataModule of a manifest entry reads
DATA_FOLDERS = {
    "CIFAR10DataModule": "cifar10",
    "NamesDataModule": "names",
    "CharLMDataModule": "tinyshakespeare",
    "TranslationDataModule": "multi30k",
    "CoNLLDataModule": "conll2003",
    "CoNLLUDataModule": "ud_en_ewt",
}


def _data_folder(name: str) -> str:
    entry = REPO_MANIFEST[name]
    return DATA_FOLDERS[(entry.data or {}).get("class_path", "CIFAR10DataModule").rpartition(".")[2]]


MEASURED = [
    pytest.param(
        n,
        marks=(pytest.mark.real_data(_data_folder(n)),)
        + ((pytest.mark.slow, pytest.mark.timeout(LONG_TO_MEASURE.get(n, 600))) if n in SLOW_TO_MEASURE else ()),
    )
    for n in sorted(REPO_MANIFEST)
]


@pytest.mark.parametrize("name", sorted(REPO_MANIFEST), ids=sorted(REPO_MANIFEST))
def test_repo_weights_verify_and_load(name):
    entry = REPO_MANIFEST[name]
    assert sha256_of(checkpoint_dir() / entry.file) == entry.sha256
    from safetensors.torch import load_file

    model = zoo.load_pretrained(name)
    stored, loaded = load_file(checkpoint_dir() / entry.file), model.net.state_dict()
    assert not model.training and stored.keys() == loaded.keys()
    for k, v in stored.items():  # every tensor loaded, as stored (fp16 files load into fp32 parameters)
        assert torch.equal(loaded[k], v.to(loaded[k].dtype)), k
    assert entry.recipe and (checkpoint_dir().parent / entry.recipe).is_file()


@pytest.mark.parametrize("name", MEASURED, ids=sorted(REPO_MANIFEST))
def test_repo_weights_reproduce_their_test_accuracy(name, real_data_dir):
    entry = REPO_MANIFEST[name]
    spec = entry.data or {"class_path": "datamodules.cifar10.CIFAR10DataModule", "init_args": {}}
    key = "test_" + zoo.task_class(entry.model).monitor[0].removeprefix("val_")  # the selection metric
    measured = evaluate(zoo.load_pretrained(name), build_datamodule(spec, str(real_data_dir)), "test")[key]
    assert measured == pytest.approx(entry.metrics[key], abs=1e-3)
