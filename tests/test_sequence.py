"""Recurrent classifiers: the nets' read-outs, the task, weights and train.py."""

import lightning as L
import pytest
import torch
from conftest import SaveBatches, quiet_trainer, run_train, slow_except

import zoo
from datamodules.names import NamesDataModule
from zoo.nets.recurrent import POOLINGS, RecurrentClassifier, RecurrentLM
from zoo.weights.publish import publish

SEQ_MODELS = zoo.list_models(task="sequence")


@pytest.mark.parametrize("pooling", [p for p in POOLINGS if p != "none"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_pooled_logits_of_a_padded_batch_equal_each_sequence_alone(pooling, bidirectional):
    torch.manual_seed(0)
    net = RecurrentClassifier(
        cell="gru",
        vocab_size=9,
        embed_dim=4,
        hidden_size=6,
        num_classes=3,
        pooling=pooling,
        bidirectional=bidirectional,
        num_layers=2,
    ).eval()
    x, lengths = torch.randint(1, 9, (3, 6)), torch.tensor([6, 2, 4])
    x[1, 2:], x[2, 4:] = 0, 0
    batch = net(x, lengths)
    assert batch.shape == (3, 3)
    for i, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(batch[i], net(x[i : i + 1, :n])[0], atol=1e-5, rtol=1e-4)


def test_per_step_logits_and_language_model_head():
    net = RecurrentClassifier(cell="lstm", vocab_size=9, num_classes=4, pooling="none", hidden_size=5)
    assert net(torch.randint(1, 9, (2, 7))).shape == (2, 7, 4)
    lm = RecurrentLM(cell="lstm", vocab_size=11, embed_dim=8, hidden_size=8, tie_weights=True)
    logits, state = lm(torch.randint(0, 11, (2, 5)))
    assert logits.shape == (2, 5, 11) and lm.head.weight is lm.encoder.embedding.weight
    with pytest.raises(ValueError, match="embed_dim == hidden_size"):
        RecurrentLM(cell="gru", vocab_size=11, embed_dim=4, hidden_size=8, tie_weights=True)
    with pytest.raises(ValueError, match="bidirectional must be False"):
        RecurrentLM(cell="gru", vocab_size=11, bidirectional=True)


@pytest.mark.parametrize("name", SEQ_MODELS, ids=SEQ_MODELS)
def test_every_sequence_model_forward_backward(name):
    net = zoo.create_model(name, vocab=["<pad>", "<unk>", "a", "b"], classes=["x", "y"]).net
    out = net(torch.tensor([[2, 3, 2], [3, 0, 0]]), torch.tensor([3, 1]))
    out.sum().backward()
    assert out.shape == (2, 2) and torch.isfinite(out).all()
    assert all(p.grad is not None for p in net.parameters()), "every parameter gets a gradient"


def names_dm(names_dir, **kw):
    return NamesDataModule(str(names_dir), **{"val_fraction": 0.2, "test_fraction": 0.2, "batch_size": 8, **kw})


def fit(model, dm, tmp_path, **kw):
    trainer = quiet_trainer(tmp_path, **kw)
    trainer.fit(model, dm)
    return trainer


def test_classifier_learns_the_fixture_and_round_trips(names_dir, tmp_path):
    L.seed_everything(0)
    model = zoo.create_model("gru_classifier", hidden_size=32, lr=1e-2, schedule="constant")
    trainer = fit(model, names_dm(names_dir), tmp_path, max_epochs=30)
    assert trainer.callback_metrics["train_acc"] > 0.9  # 3 languages, 20 names: memorised
    assert model.hparams.vocab[:2] == ["<pad>", "<unk>"] and model.hparams.classes == [
        "Japanese",
        "Russian",
        "Scottish",
    ]
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    ckpt = torch.load(tmp_path / "m.ckpt", weights_only=True)  # vocab and classes are plain JSON-able hparams
    loaded = type(model).load_from_checkpoint(tmp_path / "m.ckpt", weights_only=True)
    assert loaded.predict("Nakamura")[0][0][0] == model.predict("Nakamura")[0][0][0]
    assert ckpt["hyper_parameters"]["tokenizer"] == "char"
    top = loaded.predict(["Ivanov", "Q\u00f8\u00df!"], top_k=2)  # unseen characters
    assert len(top) == 2 and all(len(t) == 2 and 0 <= t[0][1] <= 1 for t in top)
    with pytest.raises(ValueError, match=r"text 1 \(''\) is empty"):  # nothing to classify: refused, not guessed
        loaded.predict(["Ivanov", ""])


def test_data_with_another_vocabulary_is_refused(names_dir, tmp_path):
    model = zoo.create_model(
        "lstm_classifier", vocab=["<pad>", "<unk>", "z"], classes=sorted(["Japanese", "Russian", "Scottish"])
    )
    with pytest.raises(ValueError, match="vocab .* differ from the model"):
        fit(model, names_dm(names_dir), tmp_path, fast_dev_run=1)


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed", "64-true"])
def test_precisions_train(names_dir, tmp_path, precision):
    model = zoo.create_model("lstm_classifier", hidden_size=8, pooling="attention")
    trainer = fit(model, names_dm(names_dir), tmp_path, fast_dev_run=1, precision=precision)
    assert torch.isfinite(trainer.callback_metrics["train_loss"])


def test_class_weights_and_gradient_clipping(names_dir, tmp_path):
    model = zoo.create_model("rnn_classifier", class_weighted=True, grad_clip=1e-6, lr=1.0, optimizer="sgd")
    fit(model, names_dm(names_dir), tmp_path, fast_dev_run=1)
    assert model.class_weights is not None and model.class_weights.shape == (3,)
    model.net(torch.tensor([[2, 3, 4]])).sum().backward()
    model.configure_gradient_clipping(model.trainer.optimizers[0])  # what the training loop calls before a step
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])) <= 1e-6 * 1.01


def test_published_sequence_weights_work_alone(names_dir, tmp_path, monkeypatch):
    L.seed_everything(0)
    model = zoo.create_model("gru_classifier", hidden_size=16)
    dm = names_dm(names_dir)
    trainer = fit(model, dm, tmp_path, max_epochs=2)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert ckpt["datamodule_hyper_parameters"]["data_dir"] == str(names_dir)
    monkeypatch.setenv("ZOO_CHECKPOINTS", str(tmp_path / "ckpts"))
    entry = publish(tmp_path / "last.ckpt", "fixture", "configs/gru_classifier.names.yaml", data_dir=str(names_dir))
    assert entry.kwargs["vocab"] == model.hparams.vocab and entry.data["init_args"]["val_fraction"] == 0.2
    assert "test_f1" in entry.metrics
    loaded = zoo.load_pretrained("gru_classifier.fixture")
    assert loaded.predict("Tanaka")[0][0][0] == model.eval().predict("Tanaka")[0][0][0]


@pytest.mark.parametrize("name", slow_except(SEQ_MODELS, {"gru_classifier"}, str))
def test_train_py_with_registry_names(name, names_dir, tmp_path):
    res = run_train(
        ["fit", "--model", name, "--data", "names", "--data.data_dir", str(names_dir), "--trainer.fast_dev_run", "1"],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"run folder: runs/{name}-names/version_0" in res.stdout


@pytest.mark.slow
def test_ddp_two_processes_bucketed_batches(names_dir, tmp_path):
    """Under DDP Lightning puts a DistributedSampler inside the bucketing batch sampler: each rank reads its own
    shard, both ranks step the same number of times (or DDP would hang)."""
    model = zoo.create_model("gru_classifier", hidden_size=8)
    fit(
        model,
        names_dm(names_dir, batch_size=4),
        tmp_path,
        strategy="ddp_spawn",
        accelerator="cpu",
        devices=2,
        callbacks=[SaveBatches(tmp_path)],
    )
    ranks = [sorted(tmp_path.glob(f"rank{r}_*.pt")) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 2  # 16 train names, 8 per rank, batches of 4
    rows = [{tuple(row.tolist()) for f in files for row in torch.load(f)} for files in ranks]
    assert len(rows[0]) == len(rows[1]) == 8 and not rows[0] & rows[1]


def test_weight_averaging_averages_a_net_built_from_the_data_and_resumes(names_dir, tmp_path):
    """Lightning's EMAWeightAveraging copies the module in its setup, before the module's own: a text task builds
    its net from the data's vocabulary in configure_model (which that setup calls), so the copy holds the whole net.
    The fit ends on the average (not the last step's weights), the checkpoint holds both, and a run resumes."""
    from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint

    def run(callbacks, **kw):
        L.seed_everything(0)
        model = zoo.create_model("gru_classifier", hidden_size=8, embed_dim=8, lr=1e-2)
        trainer = quiet_trainer(tmp_path, callbacks=callbacks, max_steps=3, max_epochs=9, limit_val_batches=0, **kw)
        trainer.fit(model, names_dm(names_dir))
        return model

    plain = run([])
    ema = EMAWeightAveraging(decay=0.5)
    ckpts = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    averaged = run([ema, ckpts], enable_checkpointing=True)
    assert sum(p.numel() for p in ema._average_model.parameters()) == sum(p.numel() for p in averaged.parameters())
    for (name, a), b in zip(averaged.named_parameters(), plain.parameters(), strict=True):
        assert a.shape == b.shape and not torch.equal(a, b), f"{name}: the fit should end on the average"
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert saved["state_dict"].keys() == saved["current_model_state"].keys() and any(
        k.startswith("net.") for k in saved["state_dict"]
    )
    resumed = quiet_trainer(
        tmp_path, callbacks=[EMAWeightAveraging(decay=0.5)], max_steps=5, max_epochs=9, limit_val_batches=0
    )
    model = zoo.create_model("gru_classifier", hidden_size=8, embed_dim=8, lr=1e-2)
    resumed.fit(model, names_dm(names_dir), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert saved["global_step"] < 5 and resumed.global_step == 5
