"""``--trainer.logger CSVLogger`` / ``TensorBoardLogger``: no save_dir needed, files in the run folder, the run's
config and metadata in them, a resumed run going on in the same files (nothing of the first part lost)."""

import csv
from pathlib import Path

import pytest
import yaml
from conftest import lenet_args, run_train

RUN = Path("runs") / "lenet5-cifar10" / "version_0"


def train(args, cwd):
    res = run_train(args, cwd, env={"WANDB_MODE": "offline"})
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return res


def lenet(cifar_dir, *args):
    return lenet_args(cifar_dir, "--trainer.limit_train_batches", "4", "--trainer.log_every_n_steps", "2", *args)


@pytest.mark.slow
def test_csv_logger_writes_into_the_run_folder_and_resume_appends(cifar_dir, tmp_path):
    res = train(["fit", *lenet(cifar_dir, "--trainer.max_epochs", "1", "--trainer.logger", "CSVLogger")], tmp_path)
    run = tmp_path / RUN
    assert f"logs: {RUN / 'csv'}" in res.stdout
    assert not (run / "wandb").exists() and not (tmp_path / "lightning_logs").exists(), "the CSV logger replaces W&B"
    hparams = yaml.safe_load((run / "csv" / "hparams.yaml").read_text())
    assert hparams["cli"]["trainer"]["max_epochs"] == 1 and hparams["run"]["params"] == 62006
    train(
        ["fit", *lenet(cifar_dir, "--trainer.max_epochs", "2", "--trainer.logger=CSVLogger", "--ckpt_path", "last")],
        tmp_path,
    )
    rows = list(csv.DictReader((run / "csv" / "metrics.csv").open()))
    epochs = sorted({int(r["epoch"]) for r in rows if r.get("val_acc")})
    assert epochs == [0, 1], "the first run's rows are kept, the resumed run's appended"
    steps = [int(r["step"]) for r in rows if r.get("lr/weights")]
    assert steps == [1, 3, 5, 7], "lr every log_every_n_steps, in both parts"


def test_tensorboard_logger_writes_into_the_run_folder(cifar_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(["fit", *lenet(cifar_dir, "--trainer.max_epochs", "1", "--trainer.logger", "TensorBoardLogger")], tmp_path)
    (events,) = (tmp_path / RUN / "tensorboard").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events.parent))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"val_acc", "grad_norm", "lr/weights", "samples_per_s"} <= set(tags), tags


@pytest.mark.slow
def test_w_and_b_beside_csv_when_both_are_listed(cifar_dir, tmp_path):
    both = ["--trainer.logger+=WandbLogger", "--trainer.logger+=CSVLogger"]
    train(["fit", *lenet(cifar_dir, "--trainer.max_epochs", "1", *both)], tmp_path)
    run = tmp_path / RUN
    assert (run / "csv" / "metrics.csv").is_file() and (run / "wandb_id").is_file()
    assert list((run / "wandb").glob("offline-run-*/run-*.wandb"))


def test_an_explicit_save_dir_is_used_as_given(tmp_path, monkeypatch):
    from zoo.cli.file_loggers import RUN_DIR_ENV, RunCSVLogger, RunTensorBoardLogger

    monkeypatch.setenv(RUN_DIR_ENV, str(tmp_path / "run"))
    assert Path(RunCSVLogger().log_dir) == tmp_path / "run" / "csv"
    assert Path(RunCSVLogger(save_dir=str(tmp_path / "elsewhere")).log_dir) == tmp_path / "elsewhere"
    assert Path(RunTensorBoardLogger().log_dir) == tmp_path / "run" / "tensorboard"
    assert Path(RunTensorBoardLogger(save_dir=str(tmp_path / "tb"), name="x").log_dir) == tmp_path / "tb" / "x"
