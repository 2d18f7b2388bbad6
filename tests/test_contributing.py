"""CONTRIBUTING.md's three checklists, followed from outside the package (``tests/toy_plugin.py``): a model, a
DataModule and a task, each ending in what proves it works."""

import pytest
import torch
import toy_plugin
from conftest import assert_resume_is_exact, quiet_trainer

import zoo
from zoo import _registry
from zoo.cli.card import model_card
from zoo.cli.readme import weights_table
from zoo.cli.train import main
from zoo.weights.publish import publish

QUIET = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]


@pytest.fixture
def plugin(monkeypatch):
    """The toy plugin registered, and the registry as it was afterwards."""
    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))
    monkeypatch.setattr(_registry, "_TASKS", dict(_registry._TASKS))
    toy_plugin.register()


def train(args: list[str], tmp_path, monkeypatch) -> int:
    monkeypatch.setenv("ZOO_RUN_DIR", "")
    monkeypatch.setattr("sys.argv", ["train.py"])
    return main(["fit", *args, *QUIET, "--run_root", str(tmp_path / "runs")])


def test_a_model_trains_predicts_and_has_a_card(plugin, tmp_path):
    assert "toy_cnn" in zoo.list_models(task="image") and zoo.task_class("toy_cnn") is zoo.tasks.ImageClassifier
    torch.manual_seed(0)
    model = zoo.create_model("toy_cnn", num_classes=3, lr=0.05)
    trainer = quiet_trainer(tmp_path, max_epochs=4)
    trainer.fit(model, toy_plugin.ToyImages())
    assert trainer.test(model, toy_plugin.ToyImages(), verbose=False)[0]["test_acc"] > 0.6  # it learnt
    bright = torch.full((3, 8, 8), 250, dtype=torch.uint8)
    assert model.predict(bright, top_k=1)[0][0][0] == "bright"  # classes and preprocessing came from the data
    card = model_card("toy_cnn")
    assert (
        card["architecture"] == toy_plugin.toy_cnn.__doc__ and card["params"] == 8 * 3 * 9 + 8 + 8 * 10 + 10
    )  # 10 classes by default


def test_a_datamodule_trains_through_train_py_and_resumes_exactly(plugin, tmp_path, monkeypatch):
    args = ["--model", "toy_cnn", "--model.num_classes", "3", "--data", "toy_plugin.ToyImages"]
    assert train([*args, "--trainer.fast_dev_run", "1"], tmp_path, monkeypatch) == 0
    assert_resume_is_exact(tmp_path, lambda: zoo.create_model("toy_cnn", num_classes=3), toy_plugin.ToyImages)


def test_a_task_trains_is_checked_publishes_and_loads(plugin, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="ToyRegressor trains toy_mlp"):
        toy_plugin.ToyRegressor(arch="toy_cnn")
    data = ["--data", "toy_plugin.ToyVectors", "--seed_everything", "0"]
    assert train(["--model", "toy_mlp", *data, "--trainer.max_epochs", "3"], tmp_path, monkeypatch) == 0
    best = tmp_path / "runs" / "toy_mlp-toyvectors" / "version_0" / "checkpoints" / "best.ckpt"
    assert type(zoo.load_checkpoint(best)) is toy_plugin.ToyRegressor
    monkeypatch.setenv("ZOO_CHECKPOINTS", str(tmp_path / "ckpts"))
    weights = publish(best, "toy", "configs/toy.yaml")
    assert weights.name == "toy_mlp.toy" and "float32_test_mse" in weights.dtype_check  # its headline metric
    assert f"| `toy_mlp.toy` | MSE {weights.metrics['test_mse']:.3f} |" in weights_table()
    loaded = zoo.load_pretrained("toy_mlp.toy")
    for k, v in zoo.load_checkpoint(best).net.state_dict().items():
        stored = v.half().float() if weights.dtype == "float16" else v
        assert torch.equal(loaded.net.state_dict()[k], stored), k
