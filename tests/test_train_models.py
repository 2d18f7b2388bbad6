"""Every registered model trains for a step through ``train.py`` on both image DataModules (CIFAR-10 and the
user's own folder), and the task refuses data that does not fit the net.

In-process (``zoo.cli.train.main(argv)``, the same code path as the script) because a subprocess per model would
cost ~10 s of imports each; ``test_train_cli.py`` covers the script itself in subprocesses.
"""

import re

import pytest
from conftest import FIXTURE_ARGS, slow_except, write_images

import zoo
from zoo.cli.train import main

NAMES = zoo.list_models(task="image")
# `make test` steps four small nets through train.py (tests/test_precision.py steps every model through a Trainer in
# `make test`); `make test-all` every net (DenseNet-BC-250, 5.4 GMACs per 32x32 image, costs ~25 s a step here).
MODELS = slow_except(NAMES, {"lenet5", "alexnet", "resnet20", "vgg11_bn"})
TINY = ["--trainer.fast_dev_run", "1", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("photos"))


def fit(args: list[str], tmp_path, monkeypatch) -> int:
    monkeypatch.setenv("ZOO_RUN_DIR", "")  # main() sets it for DDP children; undone after the test
    monkeypatch.setattr("sys.argv", ["train.py"])  # LightningCLI warns when args and pytest's argv both exist
    return main(["fit", *args, *TINY, "--run_root", str(tmp_path / "runs")])


def cifar_args(cifar_dir) -> list[str]:
    # batch size 4 (a later flag wins): one step of the largest net stays quick
    return [*FIXTURE_ARGS, "--data.data_dir", str(cifar_dir), "--data.batch_size", "4", "--data.eval_batch_size", "4"]


@pytest.mark.parametrize("name", MODELS)
def test_one_step_on_cifar10(name, cifar_dir, tmp_path, monkeypatch):
    assert fit(["--model", name, "--data", "cifar10", *cifar_args(cifar_dir)], tmp_path, monkeypatch) == 0


@pytest.mark.parametrize("name", MODELS)
def test_one_step_on_an_image_folder(name, photos, tmp_path, monkeypatch):
    data = ["--data", "images", "--data.root", str(photos), "--data.num_workers", "0", "--data.batch_size", "4"]
    data += ["--data.eval_batch_size", "4"]
    assert fit(["--model", name, "--model.num_classes", "3", *data], tmp_path, monkeypatch) == 0


def test_num_classes_that_disagree_with_the_folder(photos, tmp_path, monkeypatch, capsys):
    data = ["--data", "images", "--data.root", str(photos), "--data.num_workers", "0"]
    assert fit(["--model", "lenet5", *data], tmp_path, monkeypatch) == 2
    assert re.search(
        r"train.py: error: .*the data has 3 classes \(cat, dog, owl\).*--model.num_classes 3", capsys.readouterr().err
    )


def test_grayscale_data_for_a_three_channel_model(photos, tmp_path, monkeypatch, capsys):
    data = ["--data", "images", "--data.root", str(photos), "--data.num_workers", "0", "--data.channels", "1"]
    assert fit(["--model", "lenet5", "--model.num_classes", "3", *data], tmp_path, monkeypatch) == 2
    assert "1-channel images but the model takes in_chans=3" in capsys.readouterr().err
    ok = ["--model.in_chans", "1", "--data.mean", "[0.5]", "--data.std", "[0.25]"]
    assert fit(["--model", "lenet5", "--model.num_classes", "3", *data, *ok], tmp_path, monkeypatch) == 0
