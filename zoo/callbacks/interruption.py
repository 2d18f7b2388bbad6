"""Interruption: SIGTERM and Ctrl-C (SIGINT) stop a run the same way, at a batch boundary, with
``interrupted.ckpt`` that resumes exactly; a second Ctrl-C stops at once. Before training starts (parsing, data
loading, setup) either signal stops the run straight away and nothing is saved, since nothing was trained.

Lightning handles SIGTERM itself (a flag that the loops read after each batch); Ctrl-C is turned into that same
flag here. Under DDP (world size > 1) Lightning's own handler is replaced once training starts: it forwards the
signal to the worker processes and issues a ``broadcast`` from inside the handler, a collective that interleaves
with the training step's and deadlocks the job (or stops the ranks at different steps). Here the handler only
records the signal; after each training batch the ranks reduce what they received (one ``max`` of an integer)
and all raise Lightning's flag together, so a signal to any one process, or to all, stops every rank at the same
batch boundary with one ``interrupted.ckpt``. Before training, the process that Lightning's ``ddp`` launcher
runs as rank 0 sends its workers the signal it received; a worker it started that receives one sends it on to
the launcher, so that one process stopping is never left to its peers' next collective ("Connection closed by
peer") or to Lightning's child-process observer (a SIGKILL of every process, 5 s later).

Any other exception (a bad data file, a crash, a diverged loss) saves nothing: ``last.ckpt``, written every epoch,
stays the newest resume point instead of a checkpoint taken at a point that cannot be resumed.
"""

from __future__ import annotations

import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

__all__ = ["Interrupted", "InterruptCheckpoint", "signals_routed", "received_signal"]

_state: dict = {"trainer": None, "signum": None}
# the pid of the train.py process started from the command line: the workers that Lightning's ``ddp`` launcher
# starts from it inherit its environment (torchrun's and SLURM's ranks each start train.py afresh, and record their own)
LAUNCHER_ENV = "ZOO_LAUNCHER_PID"


class Interrupted(SIGTERMException):
    """SIGTERM or SIGINT before training started: raised at once, nothing to save."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


def received_signal() -> int | None:
    """The signal that interrupted this process (``signal.SIGTERM`` or ``signal.SIGINT``), if one did."""
    return _state["signum"]


def _handle(signum: int, frame) -> None:
    first, trainer = _state["signum"] is None, _state["trainer"]
    _state["signum"] = signum
    if trainer is None:
        if not first:  # already stopping (a worker gets its own signal back from the launcher it passed it to)
            return
        _pass_to_launcher(signum)
        raise Interrupted(signum)
    if not first:
        if signum == signal.SIGINT:
            print("\nsecond Ctrl-C: stopping now, without saving", file=sys.stderr)
            raise KeyboardInterrupt
    elif trainer.world_size == 1:  # the loop stops after this batch (for SIGTERM, Lightning's handler set it too)
        trainer._signal_connector.received_sigterm = True
    # under DDP the ranks raise the flag together, after the batch: InterruptCheckpoint.on_train_batch_end


def _pass_to_launcher(signum: int) -> None:
    """A worker of Lightning's ``ddp`` launcher (a child of the recorded launcher, local rank > 0) sends it the
    signal, and the launcher stops every worker it started (:meth:`InterruptCheckpoint.on_exception`)."""
    launcher = os.environ.get(LAUNCHER_ENV, "")
    if os.environ.get("LOCAL_RANK", "0") != "0" and launcher == str(os.getppid()):
        os.kill(int(launcher), signum)


def _take_over_sigterm(trainer: L.Trainer) -> None:
    """Under DDP, SIGTERM goes to :func:`_handle` alone (after Lightning registered its handler, at fit)."""
    if trainer.world_size > 1 and signal.getsignal(signal.SIGTERM) is not _handle:
        signal.signal(signal.SIGTERM, _handle)


def _stop_together(trainer: L.Trainer) -> None:
    """One collective per batch, at the same point on every rank: the largest signal number any rank received."""
    local = torch.tensor([_state["signum"] or 0], dtype=torch.int32, device=trainer.strategy.root_device)
    signum = int(trainer.strategy.reduce(local, reduce_op="max").item())
    if signum:
        _state["signum"] = _state["signum"] or signum
        trainer._signal_connector.received_sigterm = True


@contextmanager
def signals_routed(launcher: bool = False):
    """Within: SIGTERM and SIGINT of this process go through :class:`InterruptCheckpoint` (enter early); after, the
    handlers that were there before (train.py's ``main`` is also called in-process, by tests or notebooks).
    ``launcher``: this process may launch DDP workers (train.py from the command line), which pass it a signal they
    receive before training; a worker has the variable already, and keeps its launcher's."""
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    _state["signum"] = None
    if launcher:
        os.environ.setdefault(LAUNCHER_ENV, str(os.getpid()))
    for s in before:
        signal.signal(s, _handle)
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


class InterruptCheckpoint(L.Callback):
    """Saves ``<dirpath>/interrupted.ckpt`` when a signal stops training at a batch boundary (never for other
    exceptions, nor before the first step); deletes it when a later run of the same folder finishes."""

    def __init__(self, dirpath: str | Path, filename: str = "interrupted") -> None:
        self.path = Path(dirpath) / f"{filename}.ckpt"

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _take_over_sigterm(trainer)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _take_over_sigterm(trainer)
        _state["trainer"] = trainer

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if trainer.world_size > 1:
            _stop_together(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _state["trainer"] = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        _state["trainer"] = None
        if isinstance(exception, Interrupted) and trainer.strategy.launcher is not None:
            trainer.strategy.launcher.kill(exception.signum)  # DDP workers it started stop too, not wait for it
        at_boundary = isinstance(exception, SIGTERMException) and not isinstance(exception, Interrupted)
        if at_boundary and trainer.global_step > 0:
            trainer.save_checkpoint(self.path)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # only when fit finishes
        _state["trainer"] = None
        if rank_zero_only.rank == 0 and self.path.is_file():
            self.path.unlink()  # superseded by this run's last.ckpt
