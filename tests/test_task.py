import json

import lightning as L
import pytest
import torch
from conftest import N_TEST, N_TRAIN, SaveBatches, assert_resume_is_exact, pairs_tsv, quiet_trainer, write_images

import zoo
from datamodules.cifar10 import CIFAR10DataModule
from datamodules.conll import CoNLLDataModule
from datamodules.images import ImageFolderDataModule
from datamodules.names import NamesDataModule
from datamodules.synthetic import AddingDataModule
from datamodules.translation import TranslationDataModule
from zoo.tasks._optim import build_schedule, param_groups


def small_dm(cifar_dir, **kw):
    args = dict(num_images=(N_TRAIN, N_TEST), val_size=40, num_workers=0, batch_size=16, eval_batch_size=20)
    return CIFAR10DataModule(data_dir=str(cifar_dir), **{**args, **kw})


def test_hparams_are_json(tmp_path):
    m = zoo.create_model("resnet20", label_smoothing=0.1, zero_init_residual=True)
    json.dumps(dict(m.hparams))


def test_no_weight_decay_on_norm_and_bias():
    net = zoo.create_model("resnet20").net
    decay, no_decay = param_groups(net, 5e-4, lr=0.1)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    bn_and_bias = {id(p) for n, p in net.named_parameters() if "bn" in n or n.endswith("bias") or "stem.1" in n}
    assert bn_and_bias == {id(p) for p in no_decay["params"]}


@pytest.mark.parametrize("name", ["cosine", "onecycle", "constant"])
def test_schedules_warm_up_then_decay(name):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = build_schedule(opt, name, total_steps=100, warmup_steps=10)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] < 0.05 and max(lrs) == pytest.approx(0.1, rel=1e-3)
    assert lrs.index(max(lrs)) in range(8, 12)
    if name == "constant":
        assert lrs[-1] == pytest.approx(0.1)
    else:
        assert lrs[-1] < 0.01


@pytest.mark.parametrize(
    "kw,msg",
    [
        (dict(optimizer="adam"), "optimizer must be one of"),
        (dict(schedule="step"), "schedule must be one of"),
        (dict(label_smoothing=1.0), "label_smoothing"),
    ],
)
def test_bad_task_values(kw, msg):
    with pytest.raises(ValueError, match=msg):
        zoo.create_model("lenet5", **kw)


def test_learns_the_fixture(cifar_dir):
    """A few epochs on the learnable fixture beat chance: loss, metrics and optimiser are wired together."""
    L.seed_everything(0)
    model = zoo.create_model("lenet5", lr=3e-3, optimizer="adamw", schedule="constant")
    dm = small_dm(cifar_dir, hflip=0.0, crop_padding=0)
    trainer = L.Trainer(
        max_epochs=15, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(model, dm)
    assert trainer.callback_metrics["val_acc"] > 0.3  # chance is 0.1
    # the training accuracy, accumulated over each epoch and logged at its end (Task.train_metrics)
    assert 0.3 < trainer.callback_metrics["train_acc"] <= 1 and model.train_acc.update_count == 0


@pytest.mark.parametrize("precision", ["32-true", "16-mixed", "bf16-mixed", "bf16-true", "16-true", "64-true"])
def test_every_precision_trains_and_tests(cifar_dir, precision, tmp_path):
    model = zoo.create_model("resnet20", channels_last=True)
    trainer = L.Trainer(
        fast_dev_run=1,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, small_dm(cifar_dir))
    assert torch.isfinite(trainer.callback_metrics["train_loss"])
    if precision.endswith("mixed"):
        assert all(p.dtype == torch.float32 for p in model.parameters()), "mixed precision keeps fp32 weights"
    trainer.test(model, small_dm(cifar_dir), verbose=False)
    assert torch.isfinite(trainer.callback_metrics["test_loss"])


@pytest.mark.slow
def test_ddp_spawn_two_cpu_processes(cifar_dir, tmp_path):
    """Two processes train, and each reads its own half of the training split (the zoo's sampler shards it)."""
    model = zoo.create_model("lenet5")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = quiet_trainer(
        tmp_path,
        strategy="ddp_spawn",
        accelerator="cpu",
        devices=2,
        limit_val_batches=1,
        callbacks=[SaveBatches(tmp_path)],
    )
    trainer.fit(model, small_dm(cifar_dir, batch_size=20, hflip=0.0, crop_padding=0))
    assert trainer.world_size == 2
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "the weights trained in the spawned processes come back to the main process"
    ranks = [sorted(tmp_path.glob(f"rank{r}_*.pt")) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 4  # 160 training images, 80 per rank, batches of 20
    images = [{tuple(x.flatten().tolist()) for f in files for x in torch.load(f)} for files in ranks]
    assert len(images[0]) == len(images[1]) == 80 and not images[0] & images[1]


@pytest.mark.parametrize("name", ["lenet5", "gru_classifier", "lstm_lm", "bilstm_crf", "seq2seq_gru_attn"])
def test_every_task_checks_the_shared_training_values(name):
    with pytest.raises(ValueError, match="lr must be > 0, got 0"):
        zoo.create_model(name, lr=0)
    with pytest.raises(ValueError, match="weight_decay must be >= 0.*backbone_lr_mult must be >= 0"):
        zoo.create_model(name, weight_decay=-1, backbone_lr_mult=-1)
    with pytest.raises(ValueError, match="schedule must be one of"):
        zoo.create_model(name, schedule="step")


@pytest.mark.parametrize("data", [pytest.param("cifar10", marks=pytest.mark.slow), "images", "cifar10-ddp"])
def test_resume_mid_epoch_is_exact(cifar_dir, tmp_path, data):
    """Stopped after 3 batches of the second epoch and resumed from that checkpoint, the run ends with the weights
    of an unbroken one: the loader goes on at batch 4 with the same order and the same random crops, flips and
    cutout (drawn in a loader worker), and the net's dropout draws the same masks. Under DDP too (2 processes)."""
    ddp = dict(strategy="ddp_spawn", accelerator="cpu", devices=2) if data.endswith("ddp") else {}
    aug = dict(crop_padding=2, hflip=0.5, cutout=4, num_workers=0 if ddp else 1)
    if data.startswith("cifar10"):  # 160 training images: 20 batches an epoch (10 per process under DDP)
        make_dm = lambda: small_dm(cifar_dir, batch_size=8, **aug)  # noqa: E731
    else:  # 30 training images: 7 batches an epoch
        root = write_images(tmp_path / "photos", n=12)
        make_dm = lambda: ImageFolderDataModule(  # noqa: E731
            root=str(root), image_size=16, batch_size=4, eval_batch_size=8, **aug
        )
    classes = 3 if data == "images" else 10
    make_model = lambda: zoo.create_model("alexnet", num_classes=classes, lr=0.02)  # noqa: E731
    ckpt = assert_resume_is_exact(tmp_path, make_model, make_dm, **ddp)
    assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches": 3}]


@pytest.mark.parametrize("data", ["names", "conll", "pairs", "adding"])
def test_text_resume_mid_epoch_is_exact(names_dir, tmp_path, data):
    """The length-bucketed loaders of the sequence tasks resume mid-epoch too (with dropout in the nets)."""
    if data == "adding":  # 48 sequences, batches of 8
        make_dm = lambda: AddingDataModule(length=10, train_size=48, eval_size=8, batch_size=8)  # noqa: E731
        make_model = lambda: zoo.create_model("lstm_classifier", hidden_size=8, num_layers=2, dropout=0.3)  # noqa: E731
    elif data == "names":  # 17 training names, batches of 4
        make_dm = lambda: NamesDataModule(str(names_dir), val_fraction=0.2, test_fraction=0.2, batch_size=4)  # noqa
        make_model = lambda: zoo.create_model("gru_classifier", hidden_size=8, dropout=0.3)  # noqa: E731
    elif data == "conll":  # 24 training sentences of 1-6 words, batches of 4
        words = ["EU", "rejects", "German", "call", "to", "boycott"]
        folder = tmp_path / "conll"
        folder.mkdir()
        lines = [f"{w} NNP I-NP {'I-ORG' if w == 'EU' else 'O'}" for w in words]
        for split, n in (("train", 24), ("dev", 4), ("test", 4)):
            sentences = ["\n".join(lines[: 1 + i % 6]) for i in range(n)]
            (folder / f"{split}.txt").write_text("\n\n".join(sentences) + "\n")
        make_dm = lambda: CoNLLDataModule(str(folder), batch_size=4)  # noqa: E731
        make_model = lambda: zoo.create_model("bilstm_crf", word_dim=8, hidden_size=8, dropout=0.3)  # noqa: E731
    else:  # 60 pairs, 48 of them training, batches of 8
        path = pairs_tsv(tmp_path)
        make_dm = lambda: TranslationDataModule(str(path), batch_size=8, min_freq=1)  # noqa: E731
        make_model = lambda: zoo.create_model("seq2seq_gru_attn", embed_dim=8, hidden_size=8, dropout=0.3)  # noqa
    ckpt = assert_resume_is_exact(tmp_path, make_model, make_dm)
    assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches": 3}]
