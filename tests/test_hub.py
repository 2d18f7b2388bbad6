"""The ways a user gets a model: create_model(pretrained=...), torch.hub (hubconf.py), and load_checkpoint for a
.ckpt of their own."""

import inspect
import json
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import N_TEST, N_TRAIN, quiet_trainer
from safetensors.torch import load_file

import zoo
from datamodules.cifar10 import CIFAR10DataModule
from datamodules.names import NamesDataModule
from zoo import CheckpointError, PretrainedError
from zoo.weights import read_manifest

ROOT = Path(__file__).resolve().parents[1]
REPO = ROOT / "checkpoints"
REPO_MANIFEST = read_manifest(REPO)


def publish_copies(folder: Path, entries: dict[str, str]) -> None:
    """A checkpoints folder whose manifest maps each new name to a copy of the repository's entry ``source``."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {}
    for name, source in entries.items():
        shutil.copy(REPO / REPO_MANIFEST[source].file, folder)
        manifest[name] = REPO_MANIFEST[source].to_json()
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture
def ckpts(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ZOO_CHECKPOINTS", str(tmp_path / "ckpts"))
    return tmp_path / "ckpts"


def assert_holds(net: torch.nn.Module, file: Path) -> None:
    own = net.state_dict()
    for k, v in load_file(file).items():
        assert torch.equal(own[k], v.to(own[k].dtype)), k


# -- create_model(pretrained=...) -----------------------------------------------------------------------------
@pytest.mark.parametrize("pretrained", [True, "cifar10", "lenet5.cifar10"])
def test_pretrained_true_tag_or_full_name(ckpts, pretrained):
    publish_copies(ckpts, {"lenet5.cifar10": "lenet5.cifar10"})
    model = zoo.create_model("lenet5", pretrained=pretrained)
    assert model.hparams.pretrained == "lenet5.cifar10"  # the task gets the full name
    assert_holds(model.net, ckpts / REPO_MANIFEST["lenet5.cifar10"].file)


def test_no_pretrained_is_a_fresh_model(ckpts):
    publish_copies(ckpts, {"lenet5.cifar10": "lenet5.cifar10"})
    model = zoo.create_model("lenet5", pretrained=False)
    stored = load_file(ckpts / REPO_MANIFEST["lenet5.cifar10"].file)
    assert model.hparams.pretrained is None
    assert not torch.equal(model.net.head.weight, stored["head.weight"].float())


def test_pretrained_brings_the_weights_model_kwargs(ckpts):
    publish_copies(ckpts, {"gru_classifier.names": "gru_classifier.names"})
    kwargs = REPO_MANIFEST["gru_classifier.names"].kwargs
    default = inspect.signature(zoo.task_class("gru_classifier")).parameters["hidden_size"].default
    assert kwargs["hidden_size"] != default  # else this test shows nothing
    model = zoo.create_model("gru_classifier", pretrained=True)
    assert model.hparams.hidden_size == kwargs["hidden_size"] and model.hparams.vocab == kwargs["vocab"]
    assert_holds(model.net, ckpts / REPO_MANIFEST["gru_classifier.names"].file)


def test_several_weights_ask_to_choose(ckpts):
    publish_copies(ckpts, {"lenet5.cifar10": "lenet5.cifar10", "lenet5.again": "lenet5.cifar10"})
    with pytest.raises(PretrainedError, match=r"several published weights \(lenet5.again, lenet5.cifar10\): choose"):
        zoo.create_model("lenet5", pretrained=True)
    assert zoo.create_model("lenet5", pretrained="again").hparams.pretrained == "lenet5.again"


def test_no_weights_or_unknown_tag_lists_what_exists(ckpts):
    publish_copies(ckpts, {"lenet5.cifar10": "lenet5.cifar10"})
    with pytest.raises(PretrainedError, match="resnet20 has no published weights; models that have some: lenet5$"):
        zoo.create_model("resnet20", pretrained=True)
    with pytest.raises(PretrainedError, match="'lenet5.imagenet'.*available for lenet5: lenet5.cifar10"):
        zoo.create_model("lenet5", pretrained="imagenet")
    with pytest.raises(PretrainedError, match="are for model 'lenet5', not 'resnet20'"):
        zoo.create_model("resnet20", pretrained="lenet5.cifar10")


# -- torch.hub ------------------------------------------------------------------------------------------------
def test_hub_load_local(monkeypatch):
    monkeypatch.delenv("ZOO_CHECKPOINTS", raising=False)  # the repository's own published weights
    model = torch.hub.load(str(ROOT), "resnet20", pretrained=True, source="local")
    assert isinstance(model, zoo.task_class("resnet20")) and model.hparams.pretrained == "resnet20.cifar10"
    assert_holds(model.net, REPO / REPO_MANIFEST["resnet20.cifar10"].file)
    fresh = torch.hub.load(str(ROOT), "resnet20", source="local", num_classes=7, zero_init_residual=True)
    assert fresh.hparams.pretrained is None and fresh.net.head.out_features == 7
    assert fresh.hparams.net_kwargs == {"zero_init_residual": True}


def test_hub_lists_every_model_with_help(tmp_path):
    # This torch has no source="local" for hub.list/help: serve the checkout as the cached copy of a GitHub repo,
    # which hub uses without the network when the ref is given.
    hub_dir = tmp_path / "hub"
    hub_dir.mkdir()
    (hub_dir / "someone_lightning-zoo_main").symlink_to(ROOT, target_is_directory=True)
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(hub_dir))
    try:
        listed = torch.hub.list("someone/lightning-zoo:main", trust_repo=True, verbose=False)
        doc = torch.hub.help("someone/lightning-zoo:main", "resnet20", trust_repo=True)
    finally:
        torch.hub.set_dir(old)
    assert listed == zoo.list_models()  # every registered model, and nothing else (no helper leaks out)
    assert "pretrained" in doc and "resnet20.cifar10" in doc and "ImageClassifier" in doc


# -- load_checkpoint --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, cifar_dir):
    """A lenet5 fine-tuned from published weights for a few steps, saved by its Trainer; the weights folder is
    gone afterwards, as on a machine that only has the .ckpt."""
    tmp = tmp_path_factory.mktemp("finetune")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ZOO_CHECKPOINTS", str(tmp / "ckpts"))
        publish_copies(tmp / "ckpts", {"lenet5.cifar10": "lenet5.cifar10"})
        L.seed_everything(0)
        model = zoo.create_model("lenet5", pretrained=True, lr=1e-2, optimizer="adamw", schedule="constant")
        dm = CIFAR10DataModule(
            data_dir=str(cifar_dir), num_images=(N_TRAIN, N_TEST), val_size=40, num_workers=0, batch_size=16
        )
        trainer = quiet_trainer(tmp, limit_train_batches=3, limit_val_batches=1)
        trainer.fit(model, dm)
        trainer.save_checkpoint(tmp / "last.ckpt")
    shutil.rmtree(tmp / "ckpts")
    return tmp / "last.ckpt", model


def test_load_checkpoint_round_trip_without_the_published_weights(finetuned):
    path, trained = finetuned
    model = zoo.load_checkpoint(path)
    assert type(model) is type(trained) and not model.training and model.hparams.arch == "lenet5"
    for k, v in trained.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    published = load_file(REPO / REPO_MANIFEST["lenet5.cifar10"].file)
    assert not torch.equal(model.net.head.weight, published["head.weight"].float())  # the fine-tuned ones
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(model(x), trained.eval()(x))


def test_load_checkpoint_of_a_text_model_keeps_its_vocabulary(names_dir, tmp_path):
    model = zoo.create_model("gru_classifier", hidden_size=16)
    dm = NamesDataModule(str(names_dir), val_fraction=0.2, test_fraction=0.2, batch_size=8)
    trainer = quiet_trainer(tmp_path, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(model, dm)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = zoo.load_checkpoint(tmp_path / "m.ckpt")
    assert loaded.hparams.vocab == model.hparams.vocab and loaded.hparams.classes == model.hparams.classes
    assert loaded.predict("Nakamura") == model.eval().predict("Nakamura")


def test_unsafe_pickle_is_refused_and_never_run(tmp_path, finetuned):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):  # unpickling would call Path.write_text(marker, "x")
            return Path.write_text, (marker, "x")

    ckpt = torch.load(finetuned[0], weights_only=True)
    evil = tmp_path / "evil.ckpt"
    torch.save({**ckpt, "extra": Payload()}, evil)
    with pytest.raises(CheckpointError, match="weights_only=True refuses; it is not loaded unsafely"):
        zoo.load_checkpoint(evil)
    assert not marker.exists()


def test_bad_checkpoints_say_what_is_wrong(tmp_path, finetuned):
    ckpt = torch.load(finetuned[0], weights_only=True)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        zoo.load_checkpoint(tmp_path / "missing.ckpt")
    truncated = tmp_path / "truncated.ckpt"  # a save or a copy cut short: the file is named, and what it is
    truncated.write_bytes(finetuned[0].read_bytes()[:2000])
    with pytest.raises(
        CheckpointError, match=r"truncated.ckpt cannot be read: it is corrupt, truncated at 2,000 bytes \(a zip"
    ):
        zoo.load_checkpoint(truncated)
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty.ckpt cannot be read: it is empty \(0 bytes"):
        zoo.load_checkpoint(empty)
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"\x80\x02 not a checkpoint")
    with pytest.raises(CheckpointError, match=r"corrupt.ckpt cannot be read \(UnpicklingError: .*corrupt, truncated"):
        zoo.load_checkpoint(corrupt)
    other = tmp_path / "other.ckpt"  # another library's Lightning checkpoint: no arch
    torch.save({"state_dict": ckpt["state_dict"], "hyper_parameters": {"lr": 0.1}}, other)
    with pytest.raises(CheckpointError, match="not a lightning-zoo training checkpoint"):
        zoo.load_checkpoint(other)
    unknown = tmp_path / "unknown.ckpt"
    torch.save({**ckpt, "hyper_parameters": {**ckpt["hyper_parameters"], "arch": "lenet9"}}, unknown)
    with pytest.raises(CheckpointError, match="model 'lenet9', which is not registered here.*Did you mean 'lenet5'"):
        zoo.load_checkpoint(unknown)
    state = dict(ckpt["state_dict"])
    state["net.extra"] = state.pop("net.head.bias")
    state["net.head.weight"] = torch.zeros(3, state["net.head.weight"].shape[1])
    misfit = tmp_path / "misfit.ckpt"
    torch.save({**ckpt, "state_dict": state}, misfit)
    with pytest.raises(CheckpointError) as info:
        zoo.load_checkpoint(misfit)
    msg = str(info.value)
    assert "missing ['net.head.bias']" in msg and "unexpected ['net.extra']" in msg
    assert "net.head.weight (3, 84) vs (10, 84)" in msg
