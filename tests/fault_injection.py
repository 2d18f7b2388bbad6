"""Callbacks that inject faults into a ``train.py`` run from the command line
(``--trainer.callbacks+=fault_injection.SignalAt``, with ``tests/`` on ``PYTHONPATH``)."""

import os
import signal

import lightning as L


class SignalAt(L.Callback):
    """Sends this process ``signum`` after training step ``step`` (as a user's Ctrl-C or a scheduler's SIGTERM);
    under DDP only in the process of global rank ``rank`` when given (a user's ``kill`` of the launcher), else in
    every process (a scheduler signals the whole job)."""

    def __init__(self, step: int, signum: int = int(signal.SIGINT), twice: bool = False, rank: int | None = None):
        self.step, self.signum, self.twice, self.rank = step, signum, twice, rank

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and self.rank in (None, trainer.global_rank):
            os.kill(os.getpid(), self.signum)
            if self.twice:
                os.kill(os.getpid(), self.signum)


class SignalInSetup(L.Callback):
    """Sends this process ``signum`` while the run is being set up, before the first training step (under DDP
    only in the process of global rank ``rank`` when given)."""

    def __init__(self, signum: int = int(signal.SIGTERM), rank: int | None = None) -> None:
        self.signum, self.rank = signum, rank

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.rank in (None, trainer.global_rank):
            os.kill(os.getpid(), self.signum)


class CrashAt(L.Callback):
    """Raises an error (not an interruption) after training step ``step``: a crash in the middle of a run."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"injected crash at step {self.step}")
