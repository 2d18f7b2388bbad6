"""Language models: stream batching, stateful truncated BPTT, resume with the carried state, sampling."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from conftest import SaveBatches, run_train
from conftest import quiet_trainer as trainer

import zoo
from datamodules import DatasetError
from datamodules.charlm import CharLMDataModule, StreamBatches

TEXT = "".join(f"{w} the quick brown fox jumps over the lazy dog.\n" for w in ("ROMEO:", "JULIET:", "NURSE:") * 40)
LM_MODELS = zoo.list_models(task="language_model")


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "t.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def lm_dm(path, **kw):
    return CharLMDataModule(str(path), **{"batch_size": 4, "seq_len": 16, "eval_batch_size": 2, **kw})


def tiny_lm(name="lstm_lm", **kw):
    return zoo.create_model(name, embed_dim=8, hidden_size=16, num_layers=2, dropout=0.0, **kw)


def test_stream_batches_are_contiguous_per_stream_and_sharded_per_rank():
    ids = torch.arange(101)
    ds = StreamBatches(ids, batch_size=2, seq_len=10)
    batches = list(ds)
    assert len(batches) == len(ds) == 5
    x = torch.cat([b[0] for b in batches], 1)
    y = torch.cat([b[1] for b in batches], 1)
    assert x[0].tolist() == list(range(50)) and x[1].tolist() == list(range(50, 100)) and torch.equal(y, x + 1)
    ranks = [torch.cat([b[0] for b in StreamBatches(ids, 2, 10, rank=r, world_size=2)], 1) for r in (0, 1)]
    assert ranks[0].shape == ranks[1].shape and not set(ranks[0].flatten().tolist()) & set(ranks[1].flatten().tolist())
    ds.skip = 3
    assert len(list(ds)) == 2 and len(list(ds)) == 5  # the skip applies once (resuming), then whole passes


def test_splits_by_position_and_bad_text(tmp_path, text_file):
    dm = lm_dm(text_file)
    dm.setup("fit")
    n = len(TEXT)
    assert [len(v) for v in dm.splits.values()] == [int(n * 0.85), int(n * 0.9) - int(n * 0.85), n - int(n * 0.9)]
    assert dm.vocab.itos[0] == "<unk>"
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DatasetError, match="not UTF-8"):
        lm_dm(tmp_path / "bad.txt").setup("fit")
    (tmp_path / "short.txt").write_text("hi")
    with pytest.raises(DatasetError, match="too little text"):
        lm_dm(tmp_path / "short.txt").setup("fit")
    with pytest.raises(DatasetError, match="no text file"):
        lm_dm(tmp_path / "missing.txt").setup("fit")
    big = lm_dm(text_file, batch_size=4000)
    big.setup("fit")
    with pytest.raises(DatasetError, match="too few for 4000 streams"):
        big.train_dataloader()


def test_carried_state_equals_running_the_whole_stream(text_file, tmp_path):
    """Validation carries the state across batches: its loss is the loss of each stream read in one pass."""
    L.seed_everything(0)
    model, dm = tiny_lm(), lm_dm(text_file)
    (res,) = trainer(tmp_path).validate(model, dm, verbose=False)
    ds = StreamBatches(dm.splits["val"], 2, 10**9)  # the same two streams, one window each
    x, y = next(iter(ds))
    with torch.no_grad():
        logits, _ = model.eval()(x)
    assert res["val_loss"] == pytest.approx(float(F.cross_entropy(logits.flatten(0, 1), y.flatten())), abs=1e-5)


def test_gradients_stop_at_the_bptt_boundary(text_file, tmp_path):
    """Each optimiser step sees gradients from its own ``bptt`` window only: the embedding rows of tokens that
    appear only in the previous window get none."""
    model, seen = tiny_lm(bptt=8), []

    class Rows(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            seen.append((pl_module.net.encoder.embedding.weight.grad.abs().sum(1) > 0).nonzero().flatten().tolist())

    dm = lm_dm(text_file, seq_len=16)
    trainer(tmp_path, max_steps=4, callbacks=[Rows()]).fit(model, dm)
    x, _ = next(iter(StreamBatches(dm.splits["train"], 4, 16)))
    for window, rows in zip(x.split(8, 1), seen[:2]):
        assert set(rows) == set(window.flatten().tolist())  # exactly the tokens read in this window
    assert model._state["train"][0].requires_grad is False


def test_resume_mid_epoch_is_exact(text_file, tmp_path):
    """Stopped after 3 batches and resumed from that checkpoint, the run ends with the weights of an unbroken one:
    the loader resumes at batch 4 and the carried hidden state comes back from the checkpoint."""

    def run(callbacks=(), ckpt=None):
        L.seed_everything(0)
        model = tiny_lm(bptt=8)
        trainer(tmp_path, callbacks=list(callbacks)).fit(model, lm_dm(text_file), ckpt_path=ckpt)
        return model

    class StopAt(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == 2:
                trainer.save_checkpoint(tmp_path / "mid.ckpt")
                trainer.should_stop = True

    full = run()
    run([StopAt()])
    ckpt = torch.load(tmp_path / "mid.ckpt", weights_only=True)
    assert ckpt["carried_state"][0].shape == (2, 4, 16)
    assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"position": 3}]
    resumed = run(ckpt=tmp_path / "mid.ckpt")
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=k)


def test_training_lowers_the_loss_and_sampling_is_seeded(text_file, tmp_path):
    L.seed_everything(0)
    model, dm = tiny_lm(lr=1e-2, schedule="constant"), lm_dm(text_file)
    t = trainer(tmp_path, max_epochs=6)
    first = t.validate(model, dm, verbose=False)[0]["val_loss"]
    t.fit(model, dm)
    assert t.callback_metrics["val_loss"] < first - 0.5
    assert t.callback_metrics["val_bpc"] == pytest.approx(float(t.callback_metrics["val_loss"]) / 0.6931472, rel=1e-4)
    a = model.generate("ROMEO:", 30, temperature=0.8, top_k=5, seed=3)
    assert a == model.generate("ROMEO:", 30, temperature=0.8, top_k=5, seed=3) and a.startswith("ROMEO:")
    assert len(a) == len("ROMEO:") + 30
    assert model.generate("\u2603 unseen", 5, temperature=0) == model.generate("\u2603 unseen", 5, temperature=0)
    assert len(model.generate("x", 10, top_p=0.5, seed=0)) == 11
    with pytest.raises(ValueError, match="top_p"):
        model.generate("x", 1, top_p=1.5)


def test_state_resets_teach_the_model_to_start_from_a_fresh_state(text_file, tmp_path):
    """Trained only on carried states, the model reads a window from a zero state (a prompt) badly; resetting a
    share of the streams during training fixes that without hurting the carried-state loss."""

    def fresh_state_loss(reset_prob):
        L.seed_everything(0)
        model, dm = tiny_lm(lr=1e-2, schedule="constant", reset_prob=reset_prob), lm_dm(text_file)
        t = trainer(tmp_path, max_epochs=6)
        t.fit(model, dm)
        windows = dm.splits["val"][: len(dm.splits["val"]) // 16 * 16].view(-1, 16)  # each read from a zero state
        with torch.no_grad():
            logits, _ = model.eval()(windows[:, :-1])
        fresh = F.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten())
        return float(fresh), float(t.callback_metrics["val_loss"])

    never, carried_never = fresh_state_loss(0.0)
    resets, carried_resets = fresh_state_loss(0.1)
    assert resets < never / 2 and carried_resets < carried_never + 0.1
    with pytest.raises(ValueError, match="reset_prob"):
        tiny_lm(reset_prob=1.5)


@pytest.mark.parametrize("name", LM_MODELS, ids=LM_MODELS)
def test_train_py_language_models(name, text_file, tmp_path):
    res = run_train(
        [
            "fit",
            "--model",
            name,
            "--data",
            "charlm",
            "--data.path",
            str(text_file),
            "--data.batch_size",
            "4",
            "--model.hidden_size",
            "16",
            "--model.bptt",
            "8",
            "--trainer.fast_dev_run",
            "2",
        ],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"run folder: runs/{name}-charlm/version_0" in res.stdout


def test_ddp_ranks_read_their_own_streams_and_save_their_states(text_file, tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    model = tiny_lm(bptt=8)
    t = trainer(
        tmp_path,
        strategy="ddp_spawn",
        accelerator="cpu",
        devices=2,
        max_steps=6,
        callbacks=[SaveBatches(tmp_path), ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=6)],
        enable_checkpointing=True,
    )
    t.fit(model, lm_dm(text_file))
    batches = [torch.cat([torch.load(f) for f in sorted(tmp_path.glob(f"rank{r}_*.pt"))], 1) for r in (0, 1)]
    assert batches[0].shape == batches[1].shape == (4, 48)  # 3 batches of 16 tokens (2 bptt steps each)
    assert not torch.equal(batches[0], batches[1])
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)
    h, c = ckpt["carried_state"]
    assert h.shape == c.shape == (2, 2, 4, 16) and not torch.equal(h[0], h[1])  # (world, layers, streams, hidden)


def test_bptt_longer_than_the_window_is_said(text_file, tmp_path):
    model = tiny_lm(bptt=64)
    with pytest.warns(UserWarning, match="bptt=64 is longer than the data's windows"):
        trainer(tmp_path, fast_dev_run=1).fit(model, lm_dm(text_file, seq_len=16))


def test_published_language_model_generates_alone(text_file, tmp_path, monkeypatch):
    from zoo.weights.publish import publish

    L.seed_everything(0)
    model = tiny_lm(bptt=8)
    t = trainer(tmp_path, max_epochs=2)
    t.fit(model, lm_dm(text_file))
    t.save_checkpoint(tmp_path / "last.ckpt")
    monkeypatch.setenv("ZOO_CHECKPOINTS", str(tmp_path / "ckpts"))
    entry = publish(tmp_path / "last.ckpt", "fixture", "configs/lstm_lm.tinyshakespeare.yaml")
    assert {"test_loss", "test_bpc", "val_loss"} <= set(entry.metrics) and "float32_test_loss" in entry.dtype_check
    assert entry.data["init_args"]["path"] == str(text_file)
    loaded = zoo.load_pretrained("lstm_lm.fixture")
    assert (
        loaded.generate("ROMEO:", 20, seed=1) == model.eval().generate("ROMEO:", 20, seed=1) or entry.dtype == "float16"
    )
    assert len(loaded.generate("JULIET:", 20, seed=1)) == len("JULIET:") + 20


def test_data_side_settings_reach_the_logged_hyperparameters(text_file, tmp_path):
    """A tokenizer chosen on the DataModule is adopted by the model: Lightning's merge of both hyperparameter sets
    for the logger sees one value (it used to fail with 'keys ... present in both ... different values')."""
    args = ["fit", "--model", "lstm_lm", "--data", "charlm", "--data.path", str(text_file), "--data.tokenizer"]
    args += ["whitespace", "--data.batch_size", "2", "--data.seq_len", "4", "--model.hidden_size", "8"]
    args += ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]
    res = run_train(args, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
