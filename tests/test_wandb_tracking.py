"""What a train.py run holds in W&B, read back from its offline ``run-*.wandb`` records: the resolved config
and run metadata (after setup), the curves, the summary, the config file; the user's --wandb options; a resumed
run's config beside the original; nothing at all when W&B is disabled."""

from pathlib import Path

import pytest
from conftest import lenet_args, run_train
from wandb_records import WandbRun


@pytest.fixture
def wandb_env():
    return {"WANDB_MODE": "offline"}  # conftest points the W&B folders at a temporary one and clears WANDB_SERVICE


def lenet(cifar_dir: Path, *args: str) -> list[str]:
    return lenet_args(cifar_dir, "--trainer.limit_train_batches", "4", "--trainer.log_every_n_steps", "2", *args)


def train(args, cwd, env):
    res = run_train(args, cwd, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return res


def runs(run_dir: Path) -> list[WandbRun]:
    return [WandbRun(p) for p in sorted((run_dir / "wandb").glob("offline-run-*"))]


def test_an_image_run_logs_config_metadata_curves_and_best(cifar_dir, tmp_path, wandb_env):
    opts = ["--wandb.tags", "[seed0,smoke]", "--wandb.group", "lenet-seeds", "--wandb.project", "zoo-tests"]
    train(["fit", *lenet(cifar_dir, "--trainer.max_epochs", "2", *opts)], tmp_path, wandb_env)
    run_dir = tmp_path / "runs" / "lenet5-cifar10" / "version_0"
    (run,) = runs(run_dir)
    assert run.run["tags"] == ["seed0", "smoke"] and run.run["group"] == "lenet-seeds"
    assert run.run["project"] == "zoo-tests"
    cli, meta = run.config["cli"], run.config["run"]
    assert cli["trainer"]["max_epochs"] == 2 and cli["model"]["init_args"]["arch"] == "lenet5"
    assert cli["data"]["class_path"] == "datamodules.cifar10.CIFAR10DataModule" and cli["seed_everything"] == 0
    assert meta["params"] == 62006 and meta["world_size"] == 1 and meta["precision"] == "32-true"
    assert meta["torch"] and meta["lightning"] and meta["hardware"] and meta["flops_per_sample"] > 6e5
    assert not [k for k in run.config if k.startswith("_") and k.split("/")[0] != "_wandb"], "no private keys"
    assert len(run.config["classes"]) == 10, "classes as the data filled them in, not null"
    lrs = run.curve("lr/weights")
    assert len(lrs) == 4 and lrs == sorted(lrs, reverse=True) and lrs[0] < 0.1, "per step: the cosine decay shows"
    assert all(g > 0 for g in run.curve("grad_norm")) and all(s > 0 for s in run.curve("samples_per_s"))
    assert len(run.curve("step_time_s")) == 4
    assert run.summary["val_acc"] == max(run.curve("val_acc")), "the summary holds the best, not the last"
    assert "config.yaml" in run.files


@pytest.mark.slow
def test_resume_keeps_the_config_and_test_lands_in_the_summary(names_dir, tmp_path, wandb_env):
    data = ["--data", "names", "--data.data_dir", str(names_dir), "--trainer.enable_progress_bar", "false"]
    train(["fit", "--model", "gru_classifier", *data, "--trainer.max_epochs", "1"], tmp_path, wandb_env)
    train(
        ["fit", "--model", "gru_classifier", *data, "--trainer.max_epochs", "2", "--ckpt_path", "last"],
        tmp_path,
        wandb_env,
    )
    run_dir = tmp_path / "runs" / "gru_classifier-names" / "version_0"
    assert {p.name for p in run_dir.glob("config*.yaml")} == {"config.yaml", "config.resume-1.yaml"}
    assert "max_epochs: 1" in (run_dir / "config.yaml").read_text()
    train(["test", "--model", "gru_classifier", *data, "--ckpt_path", "best"], tmp_path, wandb_env)
    first, resumed, tested = runs(run_dir)
    assert first.run["id"] == resumed.run["id"] == tested.run["id"], "one W&B run across resume and test"
    assert first.config["vocab"] and first.config["classes"], "the vocabulary and classes the data filled in"
    assert "test_acc" in tested.summary and 0 <= tested.summary["test_acc"] <= 1


@pytest.mark.slow
def test_a_disabled_logger_leaves_no_wandb_files(cifar_dir, tmp_path, wandb_env):
    for i, off in enumerate((["--wandb.mode", "disabled"], ["--trainer.logger", "false"])):
        train(
            ["fit", *lenet(cifar_dir, "--trainer.max_epochs", "1", "--run_name", f"off{i}", *off)], tmp_path, wandb_env
        )
        run_dir = tmp_path / "runs" / f"off{i}" / "version_0"
        assert not (run_dir / "wandb").exists() and not (run_dir / "wandb_id").exists()
        assert (run_dir / "checkpoints" / "last.ckpt").is_file()


def test_import_zoo_imports_no_wandb_and_no_captum():
    import subprocess
    import sys

    code = "import sys, zoo, zoo.callbacks.media; print(sorted({'wandb', 'captum'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
