"""train.py end to end, in subprocesses as users run it."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import FIXTURE_ARGS, ROOT, pairs_tsv, run_train, slow_except, tagged_files

# train.py configs; configs/sweeps/ holds W&B sweep files, tested by test_sweeps.py
CONFIGS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yaml") if p.parent.name != "sweeps")
RECIPES = [c for c in CONFIGS if "/trainer/" not in c and "/finetune/" not in c]  # fine-tuning: test_finetune.py
PRESETS = [c for c in CONFIGS if "/trainer/" in c]
# `make test` runs the cheap recipes and presets; the large CIFAR nets' recipes and the presets that only change the
# device or the process count (run on CPU processes here) are in `make test-all`
SLOW_CONFIGS = {f"configs/{n}.cifar10.yaml" for n in ("densenet_bc_100_12", "resnet56", "vgg11_bn")} | {
    f"configs/trainer/{n}.yaml" for n in ("gpu", "ddp")
}


def fixture_args(cifar_dir: Path) -> list[str]:
    return ["--data.data_dir", str(cifar_dir), *FIXTURE_ARGS]


def ok(res: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return res


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIGS)
def test_every_config_parses(config):
    cfg = yaml.safe_load((ROOT / config).read_text())
    assert set(cfg) <= {"seed_everything", "model", "data", "trainer"}, config
    if config in RECIPES:
        arch = cfg["model"]["init_args"]["arch"]
        import zoo

        assert arch in zoo.list_models()


@pytest.mark.parametrize("config", slow_except(RECIPES, set(RECIPES) - SLOW_CONFIGS, str))
def test_recipe_runs_fast_dev_run(config, cifar_dir, names_dir, text_path, tmp_path):
    args = ["fit", "--config", str(ROOT / config), "--config", str(ROOT / "configs/trainer/debug.yaml")]
    data = yaml.safe_load((ROOT / config).read_text())["data"]["class_path"].rsplit(".", 1)[1]
    data_args = {
        "NamesDataModule": ["--data.data_dir", str(names_dir)],
        "CharLMDataModule": ["--data.path", str(text_path), "--data.batch_size", "4"],
        "TranslationDataModule": ["--data.path", str(pairs_tsv(tmp_path)), "--data.min_freq", "1"],
        "CoNLLDataModule": ["--data.path", str(tagged_files(tmp_path, "conll"))],
        "CoNLLUDataModule": ["--data.path", str(tagged_files(tmp_path, "conllu"))],
    }.get(data) or fixture_args(cifar_dir)
    ok(run_train(args + data_args, tmp_path))


@pytest.mark.parametrize("preset", slow_except(PRESETS, set(PRESETS) - SLOW_CONFIGS, str))
def test_trainer_preset_runs(preset, cifar_dir, tmp_path):
    args = [
        "fit",
        "--model",
        "lenet5",
        "--data",
        "cifar10",
        "--config",
        str(ROOT / preset),
        "--trainer.fast_dev_run",
        "1",
    ]
    if "gpu" in preset or "ddp" in preset:  # no GPU here: same preset on CPU processes
        args += [
            "--trainer.accelerator",
            "cpu",
            "--trainer.devices",
            "2" if "ddp" in preset else "1",
            "--trainer.precision",
            "bf16-mixed",
        ]
    ok(run_train(args + fixture_args(cifar_dir), tmp_path))


@pytest.mark.slow
def test_registry_names_and_class_names(cifar_dir, tmp_path):
    base = ["--trainer.fast_dev_run", "1", *fixture_args(cifar_dir)]
    ok(run_train(["fit", "--model", "resnet20", "--data", "cifar10", *base], tmp_path))
    ok(run_train(["fit", "--model=ImageClassifier", "--model.arch", "lenet5", "--data=cifar10", *base], tmp_path))
    ok(
        run_train(
            [
                "fit",
                "--model",
                "zoo.tasks.image.ImageClassifier",
                "--model.arch",
                "lenet5",
                "--data",
                "datamodules.cifar10.CIFAR10DataModule",
                *base,
            ],
            tmp_path,
        )
    )


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--model", "resnet21"], "unknown model 'resnet21'. Did you mean"),
        pytest.param(
            ["--model", "resnet20", "--model.optimizer", "sgdd"],
            "optimizer must be one of sgd, adamw",
            marks=pytest.mark.slow,
        ),
        pytest.param(["--model", "resnet20", "--model.lr", "-1"], "lr must be > 0, got -1", marks=pytest.mark.slow),
        pytest.param(["--model", "resnet20", "--data.hflip", "1.5"], "hflip is a probability", marks=pytest.mark.slow),
        pytest.param(["--model", "resnet20", "--trainer.max_epochs", "two"], "max_epochs", marks=pytest.mark.slow),
        pytest.param(["--model", "resnet20", "--ckpt_path", "nope.ckpt"], "no such file", marks=pytest.mark.slow),
        (["--model", "resnet20", "--ckpt_path", "last"], "no last.ckpt"),
    ],
    ids=["unknown-model", "bad-choice", "bad-lr", "bad-prob", "bad-type", "missing-ckpt", "no-last"],
)  # make test runs unknown-model and no-last; the others are marked slow below (each is a ~15 s subprocess)
def test_bad_input_is_a_clear_error(args, msg, cifar_dir, tmp_path):
    res = run_train(
        ["fit", "--data", "cifar10", *args, "--trainer.fast_dev_run", "1", *fixture_args(cifar_dir)], tmp_path
    )
    assert res.returncode != 0
    assert msg in res.stderr + res.stdout, res.stderr[-2000:]


@pytest.mark.parametrize("args", [["--model", "lenet5"], ["--config", "configs/lenet5.cifar10.yaml"]])
def test_a_missing_subcommand_is_named(args, capsys):
    """Not LightningCLI's 'invalid choice: zoo.tasks.image.ImageClassifier' (the rewritten --model lenet5)."""
    from zoo.cli.train import main

    assert main(args) == 2
    assert capsys.readouterr().err.strip() == (
        f"train.py: error: no subcommand: start with one of fit, validate, test, predict (train.py fit {args[0]} ...)"
    )


def test_missing_dataset_offline(tmp_path):
    res = run_train(
        [
            "fit",
            "--model",
            "lenet5",
            "--data",
            "cifar10",
            "--data.data_dir",
            str(tmp_path / "nodata"),
            "--data.download",
            "false",
            "--trainer.fast_dev_run",
            "1",
        ],
        tmp_path,
    )
    assert res.returncode != 0 and "CIFAR-10 not found" in res.stderr and "nodata/cifar10" in res.stderr


def test_fit_resume_last_test_predict(cifar_dir, tmp_path):
    base = [
        "--model",
        "lenet5",
        "--data",
        "cifar10",
        "--trainer.limit_train_batches",
        "3",
        "--trainer.limit_val_batches",
        "1",
        *fixture_args(cifar_dir),
    ]
    out = ok(run_train(["fit", *base, "--trainer.max_epochs", "1"], tmp_path)).stdout
    run_dir = tmp_path / "runs" / "lenet5-cifar10" / "version_0"
    assert "run folder: runs/lenet5-cifar10/version_0" in out
    assert (run_dir / "checkpoints" / "best.ckpt").is_file() and (run_dir / "config.yaml").is_file()
    first = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)  # hparams are JSON-able
    assert first["global_step"] == 3 and first["hyper_parameters"]["arch"] == "lenet5"

    ok(run_train(["fit", *base, "--trainer.max_epochs", "2", "--ckpt_path", "last"], tmp_path))
    assert not (tmp_path / "runs" / "lenet5-cifar10" / "version_1").exists(), "resume continues in the same folder"
    second = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert second["global_step"] == 6 and second["epoch"] > first["epoch"]
    record = second["callbacks"]["TrainingRecord"]
    assert len(record["runs"]) == 2
    # the curve: one point per validated epoch, kept across the resume, time growing, the task's monitored metric
    assert record["monitor"] == "val_acc" and [p[0] for p in record["curve"]] == [0, 1]
    assert 0 < record["curve"][0][1] < record["curve"][1][1] <= record["wall_time_s"] + 0.005  # curve: 0.01 s
    assert record["curve"][0] == first["callbacks"]["TrainingRecord"]["curve"][0] and 0 <= record["curve"][1][2] <= 1

    ok(run_train(["fit", *base, "--trainer.max_epochs", "1"], tmp_path))
    assert (tmp_path / "runs" / "lenet5-cifar10" / "version_1" / "checkpoints" / "last.ckpt").is_file()
    assert second["global_step"] == torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]

    res = ok(run_train(["test", *base, "--ckpt_path", "best"], tmp_path))
    assert "test_acc" in res.stdout
    ok(run_train(["predict", *base, "--ckpt_path", "best"], tmp_path))
    probs = torch.load(run_dir.parent / "version_1" / "predictions.pt")  # the newest run's best.ckpt
    assert probs.shape == (40, 10) and torch.allclose(probs.sum(1), torch.ones(40))


@pytest.mark.slow
def test_sigterm_saves_and_resumes(cifar_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [
        sys.executable,
        str(ROOT / "train.py"),
        "fit",
        "--model",
        "lenet5",
        "--data",
        "cifar10",
        "--trainer.max_epochs",
        "1000",
        "--trainer.limit_val_batches",
        "1",
        *fixture_args(cifar_dir),
    ]
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpt_dir = tmp_path / "runs" / "lenet5-cifar10" / "version_0" / "checkpoints"
    deadline = time.time() + 120
    while not (ckpt_dir / "last.ckpt").exists() and time.time() < deadline:  # training is under way
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert (ckpt_dir / "interrupted.ckpt").is_file() and "resume with the same command and --ckpt_path last" in err
    stopped = torch.load(ckpt_dir / "interrupted.ckpt", weights_only=True)["global_step"]
    res = ok(
        run_train(
            [
                "fit",
                "--model",
                "lenet5",
                "--data",
                "cifar10",
                "--ckpt_path",
                "last",
                "--trainer.max_epochs",
                str(stopped // 10 + 2),
                "--trainer.limit_val_batches",
                "1",
                *fixture_args(cifar_dir),
            ],
            tmp_path,
        )
    )
    assert torch.load(ckpt_dir / "last.ckpt", weights_only=True)["global_step"] > stopped, res.stdout[-500:]


@pytest.mark.slow
def test_wandb_offline_run_is_written(cifar_dir, tmp_path):
    ok(
        run_train(
            [
                "fit",
                "--model",
                "lenet5",
                "--data",
                "cifar10",
                "--trainer.max_epochs",
                "1",
                "--trainer.limit_train_batches",
                "2",
                "--trainer.limit_val_batches",
                "1",
                *fixture_args(cifar_dir),
            ],
            tmp_path,
            env={"WANDB_MODE": "offline"},
        )
    )
    runs = list((tmp_path / "runs" / "lenet5-cifar10" / "version_0" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("run-*.wandb")), "the offline run holds its record file"


@pytest.mark.slow
def test_bf16_on_an_avx2_only_cpu(cifar_dir, tmp_path):
    """oneDNN limited to AVX2 (no native bf16), as on many CPUs: bf16-mixed must still train."""
    ok(
        run_train(
            [
                "fit",
                "--model",
                "resnet20",
                "--data",
                "cifar10",
                "--trainer.precision",
                "bf16-mixed",
                "--trainer.fast_dev_run",
                "2",
                *fixture_args(cifar_dir),
            ],
            tmp_path,
            env={"ONEDNN_MAX_CPU_ISA": "AVX2"},
        )
    )
