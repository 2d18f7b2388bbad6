"""The life of a train.py run under faults: failed starts, crashes, plateaus, divergence, Ctrl-C and SIGTERM,
resuming the wrong thing, and what the user reads when something is wrong. Every run is a subprocess, as users
run it; faults come from tests/fault_injection.py."""

import signal
from pathlib import Path

import pytest
import torch
from conftest import ROOT, lenet_args, run_train, slow_except

TESTS = str(ROOT / "tests")
ENV = {"PYTHONPATH": f"{ROOT}:{TESTS}", "WANDB_MODE": "disabled"}


def lenet(cifar_dir: Path, *args: str, sub: str = "fit") -> list[str]:
    return [sub, *lenet_args(cifar_dir, *args)]


def train(args: list[str], cwd: Path, status: int = 0):
    res = run_train(args, cwd, env=ENV)
    assert res.returncode == status, res.stdout[-2000:] + res.stderr[-4000:]
    return res


def error_line(res) -> str:
    """The error message: the last line of stderr, which must be the only line that says it."""
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("train.py: error: "), res.stderr[-3000:]
    return last


def step_of(path: Path) -> int:
    return torch.load(path, weights_only=True, mmap=True)["global_step"]


def ckpts(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").glob("*.ckpt")) if (run / "checkpoints").is_dir() else []


@pytest.mark.slow
def test_a_failed_start_or_a_crash_leaves_nothing_that_resume_prefers(cifar_dir, tmp_path):
    run = tmp_path / "runs" / "lenet5-cifar10" / "version_0"
    short = ["--trainer.limit_train_batches", "3"]
    train(lenet(cifar_dir, *short, "--trainer.max_epochs", "2"), tmp_path)
    bad = tmp_path / "bad" / "cifar10"
    bad.mkdir(parents=True)
    (bad / "cifar-10-python.tar.gz").write_bytes(b"not a tar archive")
    # the resume fails while the data loads (after the Trainer exists), then a fresh run fails the same way
    for extra in (["--ckpt_path", "last"], []):
        res = train(
            lenet(cifar_dir, *short, "--trainer.max_epochs", "3", "--data.data_dir", str(bad.parent), *extra),
            tmp_path,
            status=2,
        )
        assert "corrupt" in error_line(res)
    assert ckpts(run) == ["best.ckpt", "last.ckpt"] and step_of(run / "checkpoints" / "last.ckpt") == 6
    assert ckpts(run.parent / "version_1") == [], "a failed start saves no checkpoint"
    # a crash in the middle of an epoch: one line with its type, no checkpoint taken at the crash
    res = train(
        lenet(
            cifar_dir,
            *short,
            "--trainer.max_epochs",
            "3",
            "--ckpt_path",
            "last",
            "--trainer.callbacks+=fault_injection.CrashAt",
            "--trainer.callbacks.step",
            "7",
        ),
        tmp_path,
        1,
    )
    assert "RuntimeError: injected crash at step 7" in res.stderr and "--debug" in res.stderr.splitlines()[-1]
    assert ckpts(run) == ["best.ckpt", "last.ckpt"] and step_of(run / "checkpoints" / "last.ckpt") == 6

    res = train(lenet(cifar_dir, *short, "--trainer.max_epochs", "3", "--ckpt_path", "last"), tmp_path)
    assert (
        f"resuming from {Path('runs/lenet5-cifar10/version_0/checkpoints/last.ckpt')} (epoch 1, step 6)" in res.stderr
    )
    assert ckpts(run) == ["best.ckpt", "last.ckpt"], "no best-v1.ckpt / last-v1.ckpt beside them"
    assert step_of(run / "checkpoints" / "last.ckpt") == 9


@pytest.mark.slow
def test_last_ckpt_is_at_most_one_epoch_or_n_steps_old(cifar_dir, tmp_path):
    run = tmp_path / "runs"
    # a plateau: with a learning rate of 1e-9 validation never improves after epoch 0
    train(
        lenet(
            cifar_dir,
            "--trainer.limit_train_batches",
            "3",
            "--trainer.max_epochs",
            "3",
            "--model.lr",
            "1e-9",
            "--run_name",
            "plateau",
        ),
        tmp_path,
    )
    assert step_of(run / "plateau" / "version_0" / "checkpoints" / "best.ckpt") == 3, "the plateau did not happen"
    assert step_of(run / "plateau" / "version_0" / "checkpoints" / "last.ckpt") == 9
    # a crash at step 5 of a 10-step epoch: only --checkpoint_every_n_steps has kept anything
    crash = ["--trainer.callbacks+=fault_injection.CrashAt", "--trainer.callbacks.step", "5"]
    train(lenet(cifar_dir, *crash, "--run_name", "every", "--checkpoint_every_n_steps", "2"), tmp_path, status=1)
    assert step_of(run / "every" / "version_0" / "checkpoints" / "last.ckpt") == 4
    train(lenet(cifar_dir, *crash, "--run_name", "epochly"), tmp_path, status=1)
    assert ckpts(run / "epochly" / "version_0") == []


@pytest.mark.slow
def test_resume_refuses_another_model_or_other_options_and_never_goes_back(cifar_dir, tmp_path):
    short = ["--trainer.limit_train_batches", "3"]
    train(lenet(cifar_dir, *short, "--trainer.max_epochs", "2", "--model.lr", "0.02"), tmp_path)
    run = tmp_path / "runs" / "lenet5-cifar10" / "version_0"
    last = str(run / "checkpoints" / "last.ckpt")
    args = [a if a != "lenet5" else "resnet20" for a in lenet(cifar_dir, *short, "--ckpt_path", last)]
    msg = error_line(train(args, tmp_path, status=2))
    assert "holds lenet5" in msg and "--model is resnet20" in msg
    msg = error_line(train(lenet(cifar_dir, *short, "--model.lr", "0.5", "--ckpt_path", "last"), tmp_path, status=2))
    assert "--model.lr 0.5 (checkpoint: 0.02)" in msg
    # resuming from best.ckpt (step 3 or 6) while last.ckpt is at step 6: a new folder unless best is the furthest;
    # a speed switch (--model.compile, None in the checkpoint) may differ
    res = train(
        lenet(
            cifar_dir,
            *short,
            "--model.lr",
            "0.02",
            "--model.compile",
            "false",
            "--trainer.max_epochs",
            "3",
            "--ckpt_path",
            str(run / "checkpoints" / "best.ckpt"),
        ),
        tmp_path,
    )
    if step_of(run / "checkpoints" / "best.ckpt") < 6:
        assert "so that nothing in version_0 is replaced" in res.stderr
        assert step_of(run / "checkpoints" / "last.ckpt") == 6 and (run.parent / "version_1" / "checkpoints").is_dir()


@pytest.mark.slow
def test_evaluating_a_checkpoint_rebuilds_its_model(names_dir, tmp_path):
    data = ["--data", "names", "--data.data_dir", str(names_dir), "--trainer.enable_progress_bar", "false"]
    sizes = ["--model.hidden_size", "12", "--model.net_kwargs.forget_bias", "2.0"]  # typed: 2.0 is a float here
    train(["fit", "--model", "lstm_classifier", *data, *sizes, "--trainer.max_epochs", "1"], tmp_path)
    res = train(["test", "--model", "lstm_classifier", *data, "--ckpt_path", "best"], tmp_path)
    assert "rebuilt as the checkpoint holds it" in res.stderr and "test_acc" in res.stdout


def test_divergence_stops_the_run_and_keeps_nan_out_of_checkpoints(cifar_dir, tmp_path):
    res = train(lenet(cifar_dir, "--model.lr", "1e8", "--trainer.max_epochs", "3"), tmp_path, status=1)
    msg = error_line(res)
    assert "training diverged: the loss is nan at epoch 0, step" in msg and "--model.lr" in msg
    for path in (tmp_path / "runs").rglob("*.ckpt"):
        state = torch.load(path, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), path


@pytest.mark.parametrize(
    "signum",
    slow_except([signal.SIGINT, signal.SIGTERM], {signal.SIGTERM}, lambda s: s.name),
    ids=["ctrl-c", "sigterm"],
)
def test_an_interrupted_run_resumes_exactly(signum, cifar_dir, tmp_path):
    two = ["--trainer.max_epochs", "2", "--data.cutout", "8"]  # 10 steps an epoch; crop, flip and cutout drawn
    train(lenet(cifar_dir, *two, "--run_name", "whole"), tmp_path)
    cut = [
        "--run_name",
        "cut",
        "--trainer.callbacks+=fault_injection.SignalAt",
        "--trainer.callbacks.step",
        "13",
        "--trainer.callbacks.signum",
        str(int(signum)),
    ]
    res = train(lenet(cifar_dir, *two, *cut), tmp_path, status=128 + signum)
    run = tmp_path / "runs" / "cut" / "version_0" / "checkpoints"
    assert step_of(run / "interrupted.ckpt") == 13
    assert "interrupted.ckpt saved (epoch 1, step 13); resume with the same command and --ckpt_path last" in res.stderr
    train(lenet(cifar_dir, *two, "--run_name", "cut", "--ckpt_path", "last"), tmp_path)
    assert not (run / "interrupted.ckpt").exists(), "superseded by the finished run's last.ckpt"
    whole = torch.load(tmp_path / "runs" / "whole" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    resumed = torch.load(run / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == whole["global_step"] == 20
    for k, v in whole["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][k], v, atol=1e-6, rtol=1e-5, msg=k)


@pytest.mark.slow
@pytest.mark.parametrize("rank", [None, 0, 1], ids=["every-process", "rank-0", "rank-1"])
def test_sigterm_under_ddp_saves_once_and_resumes_exactly(rank, cifar_dir, tmp_path):
    """A SIGTERM to every process of a DDP run (a scheduler's), to the launcher alone or to one worker stops all
    ranks at the same step: one interrupted.ckpt, exit 143, and the resume ends where an unbroken run ends."""
    ddp = ["--trainer.strategy", "ddp", "--trainer.accelerator", "cpu", "--trainer.devices", "2"]
    two = ["--trainer.max_epochs", "2", *ddp]  # 5 steps an epoch per process
    train(lenet(cifar_dir, *two, "--run_name", "whole"), tmp_path)
    at = ["--trainer.callbacks.step", "7", "--trainer.callbacks.signum", str(int(signal.SIGTERM))]
    cut = ["--run_name", "cut", "--trainer.callbacks+=fault_injection.SignalAt", *at]
    cut += [] if rank is None else ["--trainer.callbacks.rank", str(rank)]
    res = run_train(lenet(cifar_dir, *two, *cut), tmp_path, env=ENV, timeout=180)
    assert res.returncode == 143, res.stderr[-4000:]
    run = tmp_path / "runs" / "cut" / "version_0" / "checkpoints"
    assert ckpts(run.parent) == ["best.ckpt", "interrupted.ckpt", "last.ckpt"]
    stopped = step_of(run / "interrupted.ckpt")
    assert stopped in (7, 8), "every rank stops at the batch boundary after the signal"  # the flag is shared per step
    assert res.stderr.count("interrupted.ckpt saved") == 1, res.stderr[-3000:]
    train(lenet(cifar_dir, *two, "--run_name", "cut", "--ckpt_path", "last"), tmp_path)
    whole = torch.load(tmp_path / "runs" / "whole" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    resumed = torch.load(run / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == whole["global_step"] == 10
    for k, v in whole["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][k], v, atol=1e-6, rtol=1e-5, msg=k)


def test_a_signal_during_setup_says_nothing_was_trained(cifar_dir, tmp_path):
    res = train(lenet(cifar_dir, "--trainer.callbacks+=fault_injection.SignalInSetup"), tmp_path, status=143)
    assert "interrupted by SIGTERM before training started: nothing was trained, nothing saved" in res.stderr
    assert not list((tmp_path / "runs").rglob("*.ckpt"))


@pytest.mark.slow
@pytest.mark.parametrize("rank", [0, 1], ids=["launcher", "worker"])
def test_a_signal_to_one_ddp_process_during_setup_stops_them_all(rank, cifar_dir, tmp_path):
    """One process stopping before training stops the others too. The launcher (rank 0): its workers exit quietly
    instead of failing on the connection it closed ('RuntimeError: ... Connection closed by peer' printed by each).
    A worker: it passes the signal to the launcher, which no longer fails at its next collective on the connection
    the worker closed (exit 1) or is killed by Lightning's child-process observer."""
    ddp = ["--trainer.strategy", "ddp", "--trainer.accelerator", "cpu", "--trainer.devices", "2"]
    signal_ = ["--trainer.callbacks+=fault_injection.SignalInSetup", "--trainer.callbacks.rank", str(rank)]
    res = run_train(lenet(cifar_dir, *ddp, *signal_), tmp_path, env=ENV, timeout=120)
    assert res.returncode == 143, res.stderr[-3000:]
    assert res.stderr.count("nothing was trained, nothing saved") == 1, res.stderr[-3000:]
    assert "error" not in res.stderr, res.stderr[-3000:]


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--model.lr", "-1"], "lr must be > 0, got -1"),
        (["--trainer.max_epochs", "two"], "--trainer.max_epochs: expected int, got two"),
        (["--model.nosuch", "3"], "Option 'nosuch' is not accepted"),
        (["--data", "cifar100"], "unknown --data 'cifar100': one of cifar10, images, names"),
        (["--ckpt_path", "{tmp}/truncated.ckpt"], "truncated.ckpt is not a readable training checkpoint"),
        (["--run_root", "{tmp}/a_file"], "cannot write the run folder"),
    ],
    ids=["bad-value", "bad-type", "unknown-option", "unknown-data", "truncated-ckpt", "unwritable-run-root"],
)
def test_errors_in_what_the_user_passed_are_one_line(args, expected, cifar_dir, tmp_path):
    (tmp_path / "truncated.ckpt").write_bytes(b"PK\x03\x04 cut short")
    (tmp_path / "a_file").write_text("")
    args = [a.format(tmp=tmp_path) for a in args]
    res = train([*lenet(cifar_dir, "--trainer.fast_dev_run", "1"), *args], tmp_path, status=2)
    assert expected in error_line(res)
    assert len([line for line in res.stderr.splitlines() if "error" in line.lower()]) == 1


@pytest.mark.slow
def test_debug_shows_the_traceback(cifar_dir, tmp_path):
    res = train([*lenet(cifar_dir, "--trainer.fast_dev_run", "1"), "--model.lr", "-1", "--debug"], tmp_path, 1)
    assert "Traceback" in res.stderr and "lr must be > 0" in res.stderr


@pytest.mark.slow
def test_help_of_short_names_and_checkpointing_off(cifar_dir, tmp_path):
    assert "source_column" in train(["fit", "--data.help", "translation"], tmp_path).stdout
    assert "--model.lr" in train(["fit", "--model.help", "resnet20"], tmp_path).stdout
    train(
        lenet(
            cifar_dir,
            "--trainer.limit_train_batches",
            "2",
            "--trainer.max_epochs",
            "1",
            "--trainer.enable_checkpointing",
            "false",
        ),
        tmp_path,
    )
    assert not list((tmp_path / "runs").rglob("*.ckpt"))
