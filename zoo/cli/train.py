"""``train.py``: LightningCLI over the registry's tasks and the DataModules.

What it adds to LightningCLI:
- registry names as users type them: ``--model resnet20 --data cifar10`` (rewritten to class paths);
- one folder per run, ``runs/<name>/version_<n>/`` with ``checkpoints/{best,last}.ckpt``, ``config.yaml`` and
  the W&B run; ``--ckpt_path last|best`` finds the newest run of that name and continues in its folder;
- defaults: W&B logger (offline unless an API key is configured or ``WANDB_MODE`` is set), ModelCheckpoint on
  the task's validation metric plus ``last.ckpt``, LearningRateMonitor, progress bar, a checkpoint on
  interruption, and the training record used when weights are published;
- SIGTERM saves ``interrupted.ckpt`` at a batch boundary and exits with status 143.
"""

from __future__ import annotations

import os
import re
import secrets
import string
import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import (
    Callback,
    LearningRateMonitor,
    ModelCheckpoint,
    OnExceptionCheckpoint,
    RichProgressBar,
    TQDMProgressBar,
)
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger
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

__all__ = ["ZooCLI", "main", "rewrite_argv", "resolve_checkpoint"]

RUN_DIR_ENV = "ZOO_RUN_DIR"  # passed to the processes that strategy="ddp" relaunches


def rewrite_argv(argv: list[str]) -> list[str]:
    """``--model resnet20`` -> ``--model <task class> --model.arch resnet20``; ``--data cifar10`` -> class path."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        key, eq, value = arg.partition("=")
        if key in ("--model", "--data") and not eq and i + 1 < len(argv):
            value, i = argv[i + 1], i + 1
        elif not (key in ("--model", "--data") and eq):
            out.append(arg)
            i += 1
            continue
        if key == "--data":
            out += ["--data", DATAMODULES.get(value, value)]
        elif re.fullmatch(r"[a-z0-9_]+", value):  # a registry name, not a class name or path
            try:
                entry = model_info(value)
            except UnknownModelError as e:
                raise SystemExit(f"train.py: error: {e}") from None
            out += ["--model", entry.task, "--model.arch", value]
        else:
            out += ["--model", value]
        i += 1
    return out


def _wandb_logger(run_dir: Path, name: str, resume: bool) -> Logger:
    try:
        import wandb  # noqa: F401
        from lightning.pytorch.loggers import WandbLogger
    except ImportError:
        print(f"wandb is not installed: logging to CSV in {run_dir}", file=sys.stderr)
        return CSVLogger(run_dir, name="", version="")
    if "WANDB_MODE" not in os.environ and not _wandb_key_configured():
        os.environ["WANDB_MODE"] = "offline"  # the env var (unlike offline=True) still allows log_model
    id_file = run_dir / "wandb_id"
    run_id = id_file.read_text().strip() if resume and id_file.is_file() else None
    if run_id is None:
        run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
        if rank_zero_only.rank == 0:
            id_file.write_text(run_id)
    return WandbLogger(
        project=os.environ.get("WANDB_PROJECT", "lightning-zoo"),
        name=name,
        id=run_id,
        save_dir=str(run_dir),
        resume="allow",
    )


def _wandb_key_configured() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def _versions(base: Path) -> list[Path]:
    found = [p for p in base.glob("version_*") if p.name[8:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[8:]))


def resolve_checkpoint(base: Path, which: str) -> Path:
    """The newest ``last`` (or ``interrupted``, if newer) or ``best`` checkpoint among runs under ``base``."""
    names = ("last.ckpt", "interrupted.ckpt") if which == "last" else ("best.ckpt",)
    for version in reversed(_versions(base)):
        files = [version / "checkpoints" / n for n in names if (version / "checkpoints" / n).is_file()]
        if files:
            return max(files, key=lambda p: p.stat().st_mtime)
    raise SystemExit(
        f"train.py: error: --ckpt_path {which}: no {' or '.join(names)} under {base}/version_*/checkpoints. "
        "Pass --run_name of the run to resume (see the runs/ folder) or a checkpoint file."
    )


class ZooCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--run_name",
            type=str | None,
            default=None,
            help="runs are saved in <run_root>/<run_name>/version_<n> (default: <arch>-<data>)",
        )
        parser.add_argument("--run_root", type=str, default="runs", help="folder that holds the runs")

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
        if run and run.parent == base.resolve() and Path(ckpt).parent.name == "checkpoints":
            return run  # continue in the folder of the run being resumed
        versions = _versions(base)
        n = int(versions[-1].name[8:]) + 1 if versions else 0
        return base / f"version_{n}"

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        cfg, init = self.config[self.subcommand], self.config_init[self.subcommand]
        base = Path(cfg.run_root) / self._run_name()
        ckpt = init.get("ckpt_path")
        if ckpt in ("last", "best"):
            init["ckpt_path"] = ckpt = str(resolve_checkpoint(base, ckpt))
        elif ckpt and not Path(ckpt).is_file():
            raise SystemExit(f"train.py: error: --ckpt_path {ckpt}: no such file")
        self.run_dir = self._run_dir(base, ckpt)
        os.environ[RUN_DIR_ENV] = str(self.run_dir)
        if rank_zero_only.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / ("config.yaml" if self.subcommand == "fit" else f"{self.subcommand}.yaml")).write_text(
                self._parser(self.subcommand).dump(cfg, skip_none=False)
            )
        trainer_cfg = self.config_init[self.subcommand]["trainer"]
        logger = trainer_cfg.get("logger")
        if logger in (None, True):
            logger = _wandb_logger(self.run_dir, f"{base.name}/{self.run_dir.name}", resume=ckpt is not None)
        callbacks = trainer_cfg.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        defaults = self._default_callbacks(logger, progress_bar=trainer_cfg.get("enable_progress_bar") is not False)
        callbacks += [cb for cb in defaults if not any(type(c) is type(cb) for c in callbacks)]
        self.trainer = super().instantiate_trainer(logger=logger, callbacks=callbacks, **kwargs)
        return self.trainer

    def _default_callbacks(self, logger, progress_bar: bool) -> list[Callback]:
        bars: list[Callback] = []
        if progress_bar:
            bars.append(RichProgressBar() if sys.stdout.isatty() else TQDMProgressBar(refresh_rate=50))
        if self.subcommand == "predict":
            return [*bars, PredictionSaver(str(self.run_dir))]
        if self.subcommand != "fit":
            return bars
        ckpt_dir = self.run_dir / "checkpoints"
        metric, mode = getattr(self.model, "monitor", ("val_loss", "min"))
        cbs: list[Callback] = [
            ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=metric, mode=mode, save_last=True),
            OnExceptionCheckpoint(dirpath=ckpt_dir, filename="interrupted"),
            TrainingRecord(),
            *bars,
        ]
        if logger:
            cbs.append(LearningRateMonitor(logging_interval="epoch"))
        return cbs

    def report(self) -> None:
        if rank_zero_only.rank != 0:
            return
        lines = [f"run folder: {self.run_dir}"]
        cb = self.trainer.checkpoint_callback
        if self.subcommand == "fit" and cb is not None:
            if cb.best_model_path:
                lines.append(f"best checkpoint: {cb.best_model_path} ({cb.monitor}={float(cb.best_model_score):.4f})")
            if cb.last_model_path:
                lines.append(f"last checkpoint: {cb.last_model_path}")
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
                lines.append(f"logs: {logger.log_dir}")
        print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # from the command line: strategy="ddp" relaunches sys.argv, so rewrite it in place
        sys.argv[1:] = rewrite_argv(sys.argv[1:])
    else:
        argv = rewrite_argv(argv)
    try:
        cli = ZooCLI(
            None,
            None,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=None,  # the config is written into the run folder instead
            args=argv,
            auto_configure_optimizers=False,
        )
    except SIGTERMException:
        run = os.environ.get(RUN_DIR_ENV, "runs/<name>/version_<n>")
        print(f"\ninterrupted: {run}/checkpoints/interrupted.ckpt saved; resume with --ckpt_path last", file=sys.stderr)
        return 143
    cli.report()
    for logger in cli.trainer.loggers:  # WandbLogger never finishes its run: flush its files before we exit
        if type(logger).__name__ == "WandbLogger" and logger._experiment is not None:
            logger.experiment.finish()
    return 0
