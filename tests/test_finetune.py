"""Fine-tuning from published weights: frozen backbones, gradual unfreezing, the backbone learning-rate multiplier,
vocabularies and classes mapped onto the weights' rows, and every recipe in configs/finetune/ run through train.py
on a fixture in the user's own data format."""

from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from conftest import (
    FIXTURE_ARGS,
    N_TEST,
    N_TRAIN,
    ROOT,
    pairs_tsv,
    quiet_trainer,
    run_train,
    tagged_files,
    write_images,
)
from safetensors.torch import load_file

import zoo
from datamodules.cifar10 import CIFAR10DataModule
from zoo.tasks._optim import param_groups
from zoo.weights import checkpoint_dir, read_manifest

FINETUNE = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs" / "finetune").glob("*.yaml"))


def published_state(name: str) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in load_file(checkpoint_dir() / zoo.get_weights(name).file).items()}


def test_finetune_arguments_are_checked():
    with pytest.raises(ValueError, match="freeze must be one of backbone"):
        zoo.create_model("lenet5", freeze="all")
    with pytest.raises(ValueError, match="needs --model.freeze backbone"):
        zoo.create_model("lenet5", unfreeze_epoch=2)
    with pytest.raises(ValueError, match="backbone_lr_mult must be >= 0"):
        zoo.create_model("lenet5", backbone_lr_mult=-1.0)


def test_backbone_learns_at_its_multiplier():
    model = zoo.create_model("resnet20", backbone_lr_mult=0.1)
    groups = param_groups(model.net, 5e-4, 0.2, model.is_head, 0.1)
    head = {id(p) for p in model.net.head.parameters()}
    for g in groups:
        in_head = {id(p) in head for p in g["params"]}
        assert len(in_head) == 1  # no group mixes head and backbone
        assert g["lr"] == pytest.approx(0.2 if in_head.pop() else 0.02)
    assert sum(len(g["params"]) for g in groups) == len(list(model.net.parameters()))


def test_frozen_backbone_then_unfrozen(cifar_dir, tmp_path):
    """Epoch 0: only the head learns, batch-norm statistics included the backbone is bit-identical to the weights;
    epoch 1 (unfreeze_epoch): the backbone learns."""
    model = zoo.create_model(
        "resnet20", pretrained="cifar10", freeze="backbone", unfreeze_epoch=1, lr=0.05, schedule="constant"
    )
    dm = CIFAR10DataModule(data_dir=str(cifar_dir), num_images=(N_TRAIN, N_TEST), val_size=40, num_workers=0)
    weights = published_state("resnet20.cifar10")

    def fit(epochs: int, ckpt=None) -> L.Trainer:
        trainer = quiet_trainer(tmp_path, max_epochs=epochs, limit_train_batches=3, limit_val_batches=1)
        trainer.fit(model, dm, ckpt_path=ckpt)
        return trainer

    trainer = fit(1)
    state = model.net.state_dict()
    backbone = [k for k in state if not k.startswith("head.") and "num_batches" not in k]
    assert all(torch.equal(state[k], weights[k]) for k in backbone)
    assert not torch.equal(state["head.weight"], weights["head.weight"])
    trainer.save_checkpoint(tmp_path / "e1.ckpt")
    fit(2, tmp_path / "e1.ckpt")  # resumed: the backbone's state comes from the epoch, not from the last run
    state = model.net.state_dict()
    assert not torch.equal(state["stem.0.weight"], weights["stem.0.weight"])
    assert all(p.requires_grad for p in model.net.parameters())


def test_vocabulary_and_classes_map_onto_the_weights(names_dir, tmp_path):
    """A classifier fine-tuned on data with other characters and labels keeps the rows of those the weights know."""
    model = zoo.create_model("gru_classifier", pretrained="names", freeze="backbone")
    old_vocab, old_classes = list(model.hparams.vocab), list(model.hparams.classes)
    dm = _csv_dm(tmp_path)
    trainer = quiet_trainer(tmp_path, max_steps=1)
    trainer.fit(model, dm)
    new_vocab, new_classes = model.hparams.vocab, model.hparams.classes
    assert new_vocab != old_vocab and new_classes == ["Japanese", "Klingon", "Russian"]
    weights = published_state("gru_classifier.names")
    emb = model.net.state_dict()["encoder.embedding.weight"]
    known = [(i, old_vocab.index(t)) for i, t in enumerate(new_vocab) if t in old_vocab]
    assert "!" in new_vocab and "!" not in old_vocab and len(known) > 10
    assert all(torch.equal(emb[i], weights["encoder.embedding.weight"][j]) for i, j in known)
    fresh = new_vocab.index("!")
    assert not any(torch.equal(emb[fresh], row) for row in weights["encoder.embedding.weight"])
    # predictions use the new labels; the model still reads raw text alone
    assert {label for label, _ in model.predict("Nakamura", top_k=3)[0]} == set(new_classes)
    head = model.net.state_dict()["head.weight"]
    assert head.shape[0] == 3 and old_classes != new_classes


def _csv_dm(tmp_path: Path):
    from datamodules.text_classification import TextClassificationDataModule

    rows = [("Nakamura", "Japanese"), ("Tanaka", "Japanese"), ("Ivanov", "Russian"), ("Petrov", "Russian")] * 6
    rows += [("Qapla!", "Klingon"), ("Worf", "Klingon"), ("Qo'noS", "Klingon")] * 6
    path = tmp_path / "names.csv"
    path.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows), encoding="utf-8")
    return TextClassificationDataModule(str(path), tokenizer="char", batch_size=8)


def test_data_read_another_way_is_refused(tmp_path):
    model = zoo.create_model("gru_classifier", pretrained="names")
    dm = _csv_dm(tmp_path)
    dm.hparams.tokenizer = "whitespace"
    trainer = quiet_trainer(tmp_path, max_steps=1)
    with pytest.raises(ValueError, match="tokenizer='whitespace' but the model with tokenizer='char'"):
        trainer.fit(model, dm)


def _recipe_data(config: str, tmp_path: Path, cifar_dir: Path, text_path: Path) -> list[str]:
    data = yaml.safe_load((ROOT / config).read_text())["data"]["class_path"].rsplit(".", 1)[1]
    if data == "ImageFolderDataModule":
        return ["--data.root", str(write_images(tmp_path / "images")), "--data.num_workers", "0"]
    if data == "TextClassificationDataModule":
        return ["--data.path", _csv_dm(tmp_path).hparams.path]
    if data == "CoNLLDataModule":  # a tag type the weights never saw (PROD) beside known ones
        words = [("EU", "", "I-ORG"), ("buys", "", "O"), ("German", "", "I-MISC"), ("Golf", "", "I-PROD")]
        return ["--data.path", str(tagged_files(tmp_path, "conll", words))]
    if data == "TranslationDataModule":
        return ["--data.path", str(pairs_tsv(tmp_path))]
    if data == "CharLMDataModule":
        return ["--data.path", str(text_path), "--data.batch_size", "4"]
    return ["--data.data_dir", str(cifar_dir), *FIXTURE_ARGS]


@pytest.mark.parametrize("config", FINETUNE, ids=FINETUNE)
def test_finetune_recipe_runs_from_the_weights(config, tmp_path, cifar_dir, text_path):
    """train.py with the recipe on a fixture: the run starts from the published weights, whose backbone rows for
    entries the data shares are still the weights' after the first (frozen) steps."""
    cfg = yaml.safe_load((ROOT / config).read_text())["model"]["init_args"]
    args = ["fit", "--config", str(ROOT / config), "--trainer.max_steps", "1", "--trainer.limit_val_batches", "1"]
    args += ["--trainer.logger", "false", "--trainer.precision", "32-true"]
    if "freeze" not in cfg:  # a recipe that trains everything at once: frozen here, to see the weights' rows
        args += ["--model.freeze", "backbone"]
    res = run_train(args + _recipe_data(config, tmp_path, cifar_dir, text_path), tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    (ckpt,) = (tmp_path / "runs").glob("*/version_0/checkpoints/last.ckpt")
    tuned = zoo.load_checkpoint(ckpt)
    weights, old = published_state(cfg["pretrained"]), zoo.get_weights(cfg["pretrained"]).kwargs
    old_vocab, new_vocab = tuned.vocabularies(old), tuned.vocabularies(tuned.hparams)
    checked = 0
    for key, value in tuned.net.state_dict().items():
        if tuned.is_head(key) or "num_batches" in key:
            continue
        vocab, dims = tuned.indexed_params.get(key, (None, None))
        if vocab is None or old_vocab[vocab] == new_vocab[vocab]:
            assert torch.equal(value, weights[key]), key
        else:  # rows of the entries both vocabularies hold
            pairs = [(i, old_vocab[vocab].index(t)) for i, t in enumerate(new_vocab[vocab]) if t in old_vocab[vocab]]
            assert pairs and all(torch.equal(value[i], weights[key][j]) for i, j in pairs), key
        checked += 1
    assert checked >= 4
    if "CoNLL" in str(yaml.safe_load((ROOT / config).read_text())["data"]):
        tags = tuned.hparams.tags
        assert "S-PROD" in tags and "S-ORG" in tags and "mapping them onto the weights" in res.stdout + res.stderr


def test_a_bare_tag_names_the_models_weights():
    """``--model.pretrained cifar10`` (train.py passes it to the task as is) means the model's own weights."""
    from zoo.tasks.image import ImageClassifier

    model = ImageClassifier(arch="resnet20", pretrained="cifar10")
    assert model.hparams.pretrained == "resnet20.cifar10"
    assert torch.equal(model.net.state_dict()["head.bias"], published_state("resnet20.cifar10")["head.bias"])
    with pytest.raises(zoo.PretrainedError, match="available for resnet20: resnet20.cifar10"):
        ImageClassifier(arch="resnet20", pretrained="imagenet")


class EpochStates(L.Callback):
    """Saves each rank's net state at the end of every training epoch, as ``rank<r>_epoch<e>.pt`` in ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        state = {k: v.detach().clone() for k, v in pl_module.net.state_dict().items()}
        torch.save(state, self.folder / f"rank{trainer.global_rank}_epoch{trainer.current_epoch}.pt")


def test_a_frozen_backbone_under_ddp_trains_the_head_then_everything(cifar_dir, tmp_path):
    """Two DDP processes (each reads its own half of the data): in epoch 0 the frozen backbone stays exactly as it
    started on both ranks while the head trains; from unfreeze_epoch 1 the backbone trains too, and the ranks hold
    the same weights throughout (a backbone unfrozen after DDP wrapped the model would train on each rank's own
    gradients: the model is wrapped anew)."""
    L.seed_everything(0)
    model = zoo.create_model("lenet5", freeze="backbone", unfreeze_epoch=1, lr=0.05, schedule="constant")
    start = {k: v.clone() for k, v in model.net.state_dict().items()}
    dm = CIFAR10DataModule(data_dir=str(cifar_dir), num_images=(N_TRAIN, N_TEST), val_size=40, num_workers=0)
    ddp = {"strategy": "ddp_fork", "accelerator": "cpu", "devices": 2}
    trainer = quiet_trainer(
        tmp_path, max_epochs=2, limit_train_batches=3, limit_val_batches=1, callbacks=[EpochStates(tmp_path)], **ddp
    )
    trainer.fit(model, dm)
    states = {(r, e): torch.load(tmp_path / f"rank{r}_epoch{e}.pt", weights_only=True) for r in (0, 1) for e in (0, 1)}
    backbone = [k for k in start if not model.is_head(k)]
    assert backbone and len(backbone) < len(start)
    for key, state in states.items():
        assert all(torch.equal(state[k], states[0, key[1]][k]) for k in start), f"the ranks disagree at {key}"
    assert all(torch.equal(states[r, 0][k], start[k]) for r in (0, 1) for k in backbone)
    assert not torch.equal(states[0, 0]["head.weight"], start["head.weight"])
    assert all(not torch.equal(states[0, 1][k], states[0, 0][k]) for k in backbone)
    assert all(p.requires_grad for p in model.net.parameters())


@pytest.mark.parametrize("ema", [False, True], ids=["plain", "ema"])
def test_image_classes_the_weights_know_keep_their_rows(tmp_path, ema):
    """resnet20.cifar10 fine-tuned on cat/dog/owl folders: the cat and dog rows of the classifier start as CIFAR's,
    the owl row fresh. Under EMA the average holds the new 3-class classifier (it copies the model after the task
    rebuilt its head for the data), and the fit ends on it."""
    from lightning.pytorch.callbacks import EMAWeightAveraging

    from datamodules.images import ImageFolderDataModule

    model = zoo.create_model("resnet20", pretrained="cifar10", lr=1e-9, schedule="constant")
    dm = ImageFolderDataModule(root=str(write_images(tmp_path / "imgs")), num_workers=0, batch_size=4)
    averaging = [EMAWeightAveraging(decay=0.5)] if ema else []
    trainer = quiet_trainer(tmp_path, max_steps=1, callbacks=averaging)
    trainer.fit(model, dm)
    if ema:
        assert averaging[0]._average_model.module.net.head.weight.shape[0] == 3
    assert model.hparams.classes == ["cat", "dog", "owl"] and model.hparams.num_classes == 3
    head, cifar = model.net.state_dict()["head.weight"], published_state("resnet20.cifar10")["head.weight"]
    names = read_manifest()["resnet20.cifar10"].classes
    assert torch.allclose(head[0], cifar[names.index("cat")], atol=1e-6)
    assert torch.allclose(head[1], cifar[names.index("dog")], atol=1e-6)
    assert not any(torch.allclose(head[2], row, atol=1e-3) for row in cifar)
    assert model.predict(torch.zeros(3, 32, 32), top_k=3)[0][0][0] in {"cat", "dog", "owl"}
