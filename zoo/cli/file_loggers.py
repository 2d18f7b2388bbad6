"""Lightning's CSV and TensorBoard loggers, writing into the run folder: ``--trainer.logger CSVLogger`` (or
``TensorBoardLogger``) resolves to these, whose ``save_dir`` defaults to the run's own folder
(``<run>/csv``, ``<run>/tensorboard``; the run folder is known only once ``train.py`` has chosen its version,
after the loggers are built, hence the late look-up). An explicit ``save_dir`` is used as given.

A resumed run goes on in the same files: TensorBoard adds an event file beside the first, and the CSV logger
appends to ``metrics.csv``, which Lightning's writer would delete when it finds it."""

from __future__ import annotations

import csv
import os

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

__all__ = ["RUN_DIR_ENV", "RunCSVLogger", "RunTensorBoardLogger", "SHORT_NAMES"]

RUN_DIR_ENV = "ZOO_RUN_DIR"  # set by train.py once the run folder is chosen; the processes DDP relaunches see it


def _run_folder(sub: str) -> str:
    if not os.environ.get(RUN_DIR_ENV):
        raise RuntimeError(f"the run folder is not chosen yet: pass save_dir to the {sub} logger")
    return os.path.join(os.environ[RUN_DIR_ENV], sub)


class _AppendingWriter(ExperimentWriter):
    """Keeps the ``metrics.csv`` of the run it resumes, and its columns."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = next(csv.reader(f), [])


class RunCSVLogger(CSVLogger):
    """``CSVLogger`` whose files land in ``<run>/csv/metrics.csv`` (and ``hparams.yaml``) by default."""

    def __init__(
        self,
        save_dir: str | None = None,
        name: str | None = "",
        version: int | str | None = "",
        prefix: str = "",
        flush_logs_every_n_steps: int = 100,
    ) -> None:
        super().__init__(save_dir or "", name, version, prefix, flush_logs_every_n_steps)
        self._in_run_folder = save_dir is None

    @property
    def save_dir(self) -> str:
        return _run_folder("csv") if self._in_run_folder else super().save_dir

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:  # a fixed folder (a new one when versioned): append to what is there
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return super().experiment


class RunTensorBoardLogger(TensorBoardLogger):
    """``TensorBoardLogger`` whose event files land in ``<run>/tensorboard`` by default
    (``tensorboard --logdir runs`` shows every run)."""

    def __init__(self, save_dir: str | None = None, name: str | None = "", version: int | str | None = "", **kwargs):
        super().__init__(save_dir or "", name, version, **kwargs)
        self._in_run_folder = save_dir is None

    @property
    def root_dir(self) -> str:
        return os.path.join(_run_folder("tensorboard"), self.name) if self._in_run_folder else super().root_dir

    @property
    def save_dir(self) -> str:
        return _run_folder("tensorboard") if self._in_run_folder else super().save_dir


SHORT_NAMES = {"CSVLogger": f"{__name__}.RunCSVLogger", "TensorBoardLogger": f"{__name__}.RunTensorBoardLogger"}
