"""``train.py``: LightningCLI over the registry's tasks and the DataModules.

What it adds to LightningCLI:
- registry names as users type them: ``--model resnet20 --data cifar10`` (rewritten to class paths);
- one folder per run, ``runs/<name>/version_<n>/`` with ``checkpoints/{best,last}.ckpt``, ``config.yaml`` and
  the W&B run; ``--ckpt_path last|best`` finds the newest run of that name and continues in its folder;
- defaults: W&B logger (offline unless an API key is configured or ``WANDB_MODE`` is set), ``best.ckpt`` on the
  task's validation metric, ``last.ckpt`` every epoch (and every ``--checkpoint_every_n_steps``), written
  atomically and never with non-finite weights, a stop on a non-finite loss, training curves and run metadata
  in the loggers (``--wandb.*`` options), progress bar, and the training record used when weights are published;
- SIGTERM and Ctrl-C save ``interrupted.ckpt`` at a batch boundary and exit with status 143 / 130;
- a resume says which file and step it continues from, refuses a checkpoint of another model or with other
  hyperparameters, and never replaces a run's further progress;
- errors in what the user passed are one line (``train.py: error: ...``, status 2); ``--debug`` or
  ``ZOO_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from pathlib import Path

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import (
    Callback,
    ModelCheckpoint,
    RichProgressBar,
    TQDMProgressBar,
)
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

import datamodules.charlm  # noqa: F401
import datamodules.cifar10  # noqa: F401  (short class names: --data CIFAR10DataModule)
import datamodules.conll  # noqa: F401
import datamodules.names  # noqa: F401
import datamodules.synthetic  # noqa: F401
import datamodules.translation  # noqa: F401
import zoo.tasks  # noqa: F401  (short class names: --model ImageClassifier)
from datamodules import DATAMODULES
from zoo import UnknownModelError, model_info
from zoo.callbacks import PredictionSaver, TrainingRecord
from zoo.callbacks.divergence import DivergenceError, StopOnDivergence
from zoo.callbacks.interruption import InterruptCheckpoint, received_signal, signals_routed
from zoo.callbacks.media import media_callbacks
from zoo.callbacks.run_metadata import RunMetadata
from zoo.callbacks.training_curves import TrainingCurves
from zoo.checkpoint import INIT_ONLY
from zoo.cli.checkpoint_io import SafeCheckpointIO
from zoo.cli.errors import USER_ERRORS, UsageError, one_line, worker_error
from zoo.cli.file_loggers import RUN_DIR_ENV
from zoo.cli.file_loggers import SHORT_NAMES as FILE_LOGGERS
from zoo.cli.loggers import WandbOptions, run_loggers
from zoo.cli.resume import checkpoint_position, plain_value, resolve_checkpoint, resume_points, run_versions, task_path

__all__ = ["ZooCLI", "main", "rewrite_argv"]


SUBCOMMANDS = ("fit", "validate", "test", "predict")
SHORT_KEYS = ("--model", "--data", "--model.help", "--data.help", "--trainer.logger", "--trainer.logger+")


def rewrite_argv(argv: list[str]) -> list[str]:
    """``--model resnet20`` -> ``--model <task class> --model.arch resnet20``; ``--data cifar10`` -> class path;
    ``--model.help resnet20`` / ``--data.help translation`` -> the help of that class; ``--trainer.logger
    CSVLogger`` / ``TensorBoardLogger`` -> the ones that write into the run folder."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        key, eq, value = arg.partition("=")
        if key in SHORT_KEYS and not eq and i + 1 < len(argv):
            value, i = argv[i + 1], i + 1
        elif not (key in SHORT_KEYS and eq):
            out.append(arg)
            i += 1
            continue
        short = re.fullmatch(r"[a-z0-9_]+", value)  # a registry name, not a class name or path
        if key.startswith("--trainer.logger"):
            out += [key, FILE_LOGGERS.get(value, value)]
        elif key.startswith("--data"):
            if short and value not in DATAMODULES:
                raise UsageError(
                    f"unknown {key} {value!r}: one of {', '.join(DATAMODULES)}, or a DataModule class path"
                )
            out += [key, DATAMODULES.get(value, value)]
        elif short:
            try:
                entry = model_info(value)
            except UnknownModelError as e:
                raise UsageError(str(e)) from None
            out += [key, entry.task] if key == "--model.help" else ["--model", entry.task, "--model.arch", value]
        else:
            out += [key, value]
        i += 1
    return out


class ZooCLI(LightningCLI):
    def init_parser(self, **kwargs) -> LightningArgumentParser:
        return super().init_parser(**{**kwargs, "exit_on_error": False})  # main() prints the error in one line

    def _parse_ckpt_path(self) -> None:
        """Lightning would load the checkpoint's hyperparameters over what the user typed, silently (and only
        for a file, not ``last``/``best``); :meth:`_check_checkpoint` compares them instead."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--run_name",
            type=str | None,
            default=None,
            help="runs are saved in <run_root>/<run_name>/version_<n> (default: <arch>-<data>)",
        )
        parser.add_argument("--run_root", type=str, default="runs", help="folder that holds the runs")
        parser.add_argument(
            "--checkpoint_every_n_steps",
            type=int | None,
            default=None,
            help="also rewrite last.ckpt every N training steps (it is always rewritten at the end of each epoch)",
        )
        parser.add_class_arguments(WandbOptions, "wandb", help="W&B settings of the run (the default logger)")

    def _run_name(self) -> str:
        cfg = self.config[self.subcommand]
        if cfg.get("run_name"):
            return cfg.run_name
        arch = getattr(self.model.hparams, "arch", type(self.model).__name__.lower())
        data = type(self.datamodule).__name__.replace("DataModule", "").lower() if self.datamodule else "data"
        return f"{arch}-{data}"

    def _run_dir(self, base: Path, ckpt: str | None) -> Path:
        if os.environ.get(RUN_DIR_ENV):
            return Path(os.environ[RUN_DIR_ENV])
        run = Path(ckpt).resolve().parent.parent if ckpt else None
        versions = run_versions(base)
        new = base / f"version_{int(versions[-1].name[8:]) + 1 if versions else 0}"
        if not (run and run.parent == base.resolve() and Path(ckpt).parent.name == "checkpoints"):
            return new
        if self.subcommand == "fit" and (points := resume_points(run)):
            step, furthest = checkpoint_position(Path(ckpt))[1], points[-1]
            if furthest[0] > step:  # continuing there would overwrite its further progress
                print(
                    f"{run.name} has progressed to step {furthest[0]} ({furthest[2].name}) beyond step {step} of "
                    f"{Path(ckpt).name}: this run continues in {new} so that nothing in {run.name} is replaced",
                    file=sys.stderr,
                )
                return new
        return run  # continue in the folder of the run being resumed

    def _check_checkpoint(self, ckpt: Path) -> None:
        """Resume only the model the checkpoint holds; evaluate it rebuilt from its own hyperparameters."""
        hp = dict(torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True).get("hyper_parameters") or {})
        mine = dict(getattr(self.model, "hparams", {}))
        if "arch" not in hp or "arch" not in mine:
            return  # not a zoo task: Lightning's own checks apply
        theirs = hp.get("_class_path") or task_path(type(self.model))
        if (hp["arch"], theirs) != (mine["arch"], task_path(type(self.model))):
            raise UsageError(
                f"--ckpt_path {ckpt} holds {hp['arch']} ({theirs.rsplit('.', 1)[-1]}), but --model is {mine['arch']} "
                f"({type(self.model).__name__}): pass --model {hp['arch']} to use it, or leave out --ckpt_path"
            )
        speed = set(getattr(self.model, "speed_kwargs", ()))  # how fast, not what is trained: free to change
        differ = {
            k: (mine[k], hp[k])
            for k in mine.keys() & hp.keys() - speed
            if not k.startswith("_") and mine[k] is not None and plain_value(mine[k]) != plain_value(hp[k])
        }
        if self.subcommand != "fit":
            kwargs = {k: v for k, v in hp.items() if not k.startswith("_")}
            self.model = type(self.model)(**{**kwargs, **{k: None for k in INIT_ONLY if k in kwargs}})
            if differ:
                shown = ", ".join(f"{k} {v[1]!r}" for k, v in sorted(differ.items()))
                print(f"{self.subcommand}: the model is rebuilt as the checkpoint holds it ({shown})", file=sys.stderr)
        elif differ:
            shown = ", ".join(f"--model.{k} {v[0]!r} (checkpoint: {v[1]!r})" for k, v in sorted(differ.items()))
            raise UsageError(
                f"--ckpt_path resumes {ckpt} exactly as it was saved, but these options differ from it: {shown}. "
                "Leave them out to resume, or leave out --ckpt_path to start a new run"
            )

    def _config_file(self, ckpt: str | None) -> Path:
        """``config.yaml`` for a new run; a resumed run writes its command's config beside it, never over it
        (``config.resume-1.yaml`` ...); other subcommands ``test.yaml``, ``predict.yaml``."""
        if self.subcommand != "fit":
            return self.run_dir / f"{self.subcommand}.yaml"
        if not (ckpt and (self.run_dir / "config.yaml").is_file()):
            return self.run_dir / "config.yaml"
        n = 1
        while (self.run_dir / f"config.resume-{n}.yaml").exists():
            n += 1
        return self.run_dir / f"config.resume-{n}.yaml"

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        cfg, init = self.config[self.subcommand], self.config_init[self.subcommand]
        base = Path(cfg.run_root) / self._run_name()
        ckpt = init.get("ckpt_path")
        if ckpt in ("last", "best"):
            init["ckpt_path"] = ckpt = str(resolve_checkpoint(base, ckpt))
        elif ckpt and not Path(ckpt).is_file():
            raise UsageError(f"--ckpt_path {ckpt}: no such file")
        if ckpt:
            epoch, step = checkpoint_position(Path(ckpt))
            self._check_checkpoint(Path(ckpt))
            verb = "resuming from" if self.subcommand == "fit" else f"{self.subcommand}:"
            if rank_zero_only.rank == 0:
                print(f"{verb} {ckpt} (epoch {epoch}, step {step})", file=sys.stderr)
        self.run_dir = self._run_dir(base, ckpt)
        os.environ[RUN_DIR_ENV] = str(self.run_dir)
        dumped = self._parser(self.subcommand).dump(cfg, skip_none=False)
        self.config_file = self._config_file(ckpt)
        if rank_zero_only.rank == 0:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                self.config_file.write_text(dumped)
            except OSError as e:
                raise UsageError(
                    f"cannot write the run folder {self.run_dir} ({e.strerror}): pass --run_root a folder you can "
                    "write to"
                ) from None
        self.config_dict = yaml.safe_load(dumped)
        trainer_cfg = self.config_init[self.subcommand]["trainer"]
        options, name = init.get("wandb") or WandbOptions(), f"{base.name}/{self.run_dir.name}"
        given = (trainer_cfg.get("logger"), cfg.trainer.logger)  # a WandbLogger among them is set up as the zoo's
        logger = run_loggers(*given, self.run_dir, name, ckpt is not None, options, str(self.config_file))
        callbacks = trainer_cfg.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        defaults = self._default_callbacks(
            logger,
            options,
            progress_bar=trainer_cfg.get("enable_progress_bar") is not False,
            checkpoints=trainer_cfg.get("enable_checkpointing") is not False,
        )
        callbacks += [cb for cb in defaults if not any(type(c) is type(cb) for c in callbacks)]
        plugins = trainer_cfg.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(SafeCheckpointIO())
        self.trainer = super().instantiate_trainer(logger=logger, callbacks=callbacks, plugins=plugins, **kwargs)
        return self.trainer

    def _default_callbacks(
        self, logger, options: WandbOptions, progress_bar: bool, checkpoints: bool
    ) -> list[Callback]:
        bars: list[Callback] = []
        if progress_bar:
            bars.append(RichProgressBar() if sys.stdout.isatty() else TQDMProgressBar(refresh_rate=50))
        if self.subcommand == "predict":
            return [*bars, PredictionSaver(str(self.run_dir))]
        meta = [RunMetadata(self.config_dict, self.config_file)] if logger else []
        if self.subcommand != "fit":
            return [*bars, *meta]
        cbs: list[Callback] = [StopOnDivergence(), TrainingRecord(), *bars, *meta]
        if checkpoints:
            ckpt_dir = self.run_dir / "checkpoints"
            metric, mode = getattr(self.model, "monitor", ("val_loss", "min"))
            every = self.config[self.subcommand].get("checkpoint_every_n_steps")
            last = {"dirpath": ckpt_dir, "filename": "last", "enable_version_counter": False}
            cbs += [
                ModelCheckpoint(
                    dirpath=ckpt_dir, filename="best", monitor=metric, mode=mode, enable_version_counter=False
                ),
                ModelCheckpoint(**last, save_on_train_epoch_end=True),  # every epoch, improved or not
                *([ModelCheckpoint(**last, every_n_train_steps=every)] if every else []),
                InterruptCheckpoint(ckpt_dir),
            ]
        if logger:
            cbs.append(TrainingCurves())
        loggers = logger if isinstance(logger, list) else [logger]
        if options.media and any(type(lg).__name__ == "WandbLogger" for lg in loggers):
            cbs += media_callbacks(self.model, options.media_every_n_epochs, options.media_samples)
        return cbs

    def report(self) -> None:
        if rank_zero_only.rank != 0:
            return
        lines = [f"run folder: {self.run_dir}"]
        cb = self.trainer.checkpoint_callback
        if self.subcommand == "fit" and cb is not None:
            if cb.best_model_path:
                lines.append(f"best checkpoint: {cb.best_model_path} ({cb.monitor}={float(cb.best_model_score):.4f})")
            if (last := self.run_dir / "checkpoints" / "last.ckpt").is_file():
                lines.append(f"last checkpoint: {last}")
        for saver in (c for c in self.trainer.callbacks if isinstance(c, PredictionSaver) and c.path):
            lines.append(f"predictions: {saver.path}")
        for logger in self.trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                mode = os.environ.get("WANDB_MODE", "online")
                if mode == "disabled":
                    continue
                lines.append(f"W&B run ({mode}): {logger.experiment.dir.rsplit('/files', 1)[0]}")
                if mode == "offline":
                    lines.append(f"  upload it later with: wandb sync {logger.experiment.dir.rsplit('/files', 1)[0]}")
            elif logger.log_dir:
                lines.append(f"logs: {os.path.normpath(logger.log_dir)}")
        print("\n".join(lines))


def _finish_wandb(exit_code: int) -> None:
    """Close a W&B run before the last line is printed, so that W&B's own lines do not come after it."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=exit_code)


def _interrupted() -> int:
    signum = received_signal() or 15
    name = "Ctrl-C" if signum == 2 else "SIGTERM"
    run = Path(os.environ.get(RUN_DIR_ENV, "runs/<name>/version_<n>"))
    saved = run / "checkpoints" / "interrupted.ckpt"
    if saved.is_file():
        epoch, step = checkpoint_position(saved)
        message = (
            f"interrupted by {name}: {saved} saved (epoch {epoch}, step {step}); resume with the same command and "
            "--ckpt_path last"
        )
    else:
        message = f"interrupted by {name} before training started: nothing was trained, nothing saved"
    if rank_zero_only.rank == 0:  # under DDP every process stops; one says so
        print(f"\n{message}", file=sys.stderr)
    return 128 + signum


def _quiet_lightning() -> None:
    """Lightning's advertisement for its own logger, and its warning when a resumed run saves into its folder."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(lambda r: "litlogger" not in r.getMessage())
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")


def _run(args: list[str], from_command_line: bool, debug: bool) -> int:
    try:
        if args and args[0].startswith("--") and args[0] != "--help" and not set(args) & set(SUBCOMMANDS):
            raise UsageError(f"no subcommand: start with one of {', '.join(SUBCOMMANDS)} (train.py fit {args[0]} ...)")
        args = rewrite_argv(args)
        if from_command_line:  # strategy="ddp" relaunches sys.argv, so rewrite it in place
            sys.argv[1:] = args
        cli = ZooCLI(
            None,
            None,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=None,  # the config is written into the run folder instead
            args=None if from_command_line else args,
            auto_configure_optimizers=False,
            seed_everything_default=0,  # what True gave, without "No seed found"
        )
    except SIGTERMException:
        _finish_wandb(1)
        return _interrupted()
    except Exception as e:
        if debug:
            raise
        e = worker_error(e)
        status = 2 if isinstance(e, USER_ERRORS) else 1
        _finish_wandb(status)
        kind = "" if isinstance(e, (*USER_ERRORS, DivergenceError)) else f"{type(e).__name__}: "
        print(f"train.py: error: {kind}{one_line(e)}", file=sys.stderr)
        if status == 1 and not isinstance(e, DivergenceError):
            print("(run again with --debug or ZOO_DEBUG=1 for the traceback)", file=sys.stderr)
        return status
    cli.report()
    for logger in cli.trainer.loggers:  # WandbLogger never finishes its run: flush its files before we exit
        if type(logger).__name__ == "WandbLogger" and logger._experiment is not None:
            logger.experiment.finish()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in args or os.environ.get("ZOO_DEBUG", "") not in ("", "0")
    if "--debug" in args:
        os.environ["ZOO_DEBUG"] = "1"  # the processes that strategy="ddp" relaunches do not see the flag
        args = [a for a in args if a != "--debug"]
    with signals_routed(launcher=argv is None):
        return _run(args, argv is None, debug)


_quiet_lightning()
