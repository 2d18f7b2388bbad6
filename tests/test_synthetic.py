"""Adding and copy-memory tasks, and watching gradients through time."""

import lightning as L
import pytest
import torch
from conftest import run_train

import zoo
from datamodules.synthetic import AddingDataModule, CopyMemoryDataModule, adding_problem, copy_memory
from zoo.callbacks import HiddenStateGradients
from zoo.callbacks.media import media_callbacks


def test_adding_problem_marks_one_value_per_half_and_sums_them():
    x, y = adding_problem(500, 20, torch.Generator().manual_seed(0))
    marks = x[..., 1]
    assert x.shape == (500, 20, 2) and torch.equal(marks.sum(1), torch.full((500,), 2.0))
    assert torch.equal(marks[:, :10].sum(1), torch.ones(500)) and torch.equal(marks[:, 10:].sum(1), torch.ones(500))
    torch.testing.assert_close(y, (x[..., 0] * marks).sum(1))
    assert torch.equal(adding_problem(500, 20, torch.Generator().manual_seed(0))[0], x)  # seeded
    dm = AddingDataModule(length=20, train_size=50, eval_size=20)
    dm.setup()
    assert not torch.equal(dm.datasets["val"].tensors[0], dm.datasets["test"].tensors[0])  # splits from other seeds


def test_copy_memory_layout():
    x, y = copy_memory(4, length=6, n_symbols=3, alphabet=5, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 3 + 6 + 3)
    assert torch.equal(y[:, -3:], x[:, :3]) and (y[:, :-3] == -100).all()  # recall the first symbols at the end
    assert (x[:, 8] == 6).all() and (x[:, 3:8] == 0).all() and (x[:, 9:] == 0).all()  # blanks, delimiter
    dm = CopyMemoryDataModule(length=6, n_symbols=3, alphabet=5)
    assert len(dm.vocab) == 7 and dm.classes == ["_", "1", "2", "3", "4", "5"]
    with pytest.raises(ValueError, match="alphabet >= 2"):
        CopyMemoryDataModule(alphabet=1)


@pytest.mark.parametrize("name", ["rnn_classifier", "lstm_classifier", "gru_classifier"])
def test_last_step_gradient_equals_the_fused_pass(name):
    """The step-by-step diagnostic agrees with autograd on the fused kernels at the last step."""
    torch.manual_seed(0)
    model = zoo.create_model(name, hidden_size=8, objective="regress", input_size=2).eval()
    x, y = adding_problem(6, 12, torch.Generator().manual_seed(1))
    norms = model.hidden_state_gradients((x, torch.full((6,), 12), y))
    out, state = model.net.encoder(x)
    h = (state[0] if isinstance(state, tuple) else state)[-1]  # (B, H), the final state, fused
    h.retain_grad()
    model._loss(model.net.head(h), y).backward()
    grads_before = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.hidden_state_gradients((x, torch.full((6,), 12), y))
    assert [p.grad for p in model.parameters() if p.grad is not None][0].equal(grads_before[0])  # untouched
    assert norms.shape == (12,) and float(norms[-1]) == pytest.approx(float(h.grad.norm(dim=-1).mean()), rel=1e-4)


def test_callback_records_and_logs(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    from lightning.pytorch.loggers import WandbLogger

    cb = HiddenStateGradients(every_n_steps=2)
    logger = WandbLogger(save_dir=str(tmp_path), project="t")
    model = zoo.create_model("rnn_classifier", hidden_size=8)
    trainer = L.Trainer(
        max_steps=4,
        logger=logger,
        callbacks=[cb, *media_callbacks(model)],
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, AddingDataModule(length=15, train_size=64, eval_size=16, batch_size=16))
    assert [s for s, _ in cb.history] == [2, 4] and all(len(n) == 15 for _, n in cb.history)
    assert "hgrad_ratio" in trainer.callback_metrics
    files = logger.experiment.dir
    logger.experiment.finish()
    assert list((tmp_path / "wandb").rglob("*.table.json")), f"no W&B table written under {files}"


@pytest.mark.slow
def test_train_py_memory_task_with_the_callback(tmp_path):
    res = run_train(
        [
            "fit",
            "--model",
            "gru_classifier",
            "--data",
            "copy",
            "--data.length",
            "5",
            "--data.n_symbols",
            "2",
            "--data.train_size",
            "64",
            "--data.eval_size",
            "16",
            "--trainer.max_steps",
            "2",
            "--trainer.limit_val_batches",
            "1",
            "--trainer.logger",
            "false",
            "--trainer.callbacks+=HiddenStateGradients",
            "--trainer.callbacks.every_n_steps",
            "1",
        ],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    res = run_train(
        [
            "fit",
            "--model",
            "lstm_classifier",
            "--data",
            "adding",
            "--data.length",
            "8",
            "--data.train_size",
            "32",
            "--data.eval_size",
            "8",
            "--trainer.fast_dev_run",
            "1",
        ],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
