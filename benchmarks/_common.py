"""What the benchmark scripts share: a header naming the machine and versions, a quiet Lightning and a quiet Trainer."""

from __future__ import annotations

import logging
import platform
import warnings

import lightning
import torch

from zoo.callbacks.training_record import hardware_string

__all__ = ["header", "quiet_lightning", "quiet_trainer"]


def header(title: str, accelerator: str = "cpu") -> str:
    """``title`` with the hardware (the GPU for ``accelerator="cuda"``), thread count and versions: what a figure
    printed below it was measured on."""
    bf16 = "avx512_bf16" in open("/proc/cpuinfo").read() if platform.system() == "Linux" else "?"
    return (
        f"## {title}\n{hardware_string(accelerator)} (AVX-512 bf16: {bf16}), torch {torch.__version__}, "
        f"lightning {lightning.__version__}, python {platform.python_version()}"
    )


def quiet_lightning() -> None:
    """Silence the Trainer's banners and the data's summaries: for the scripts' own processes only (set in a test's
    process, it would hide every later test's log records)."""
    for logger in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(logger).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")


def quiet_trainer(**kwargs) -> lightning.Trainer:
    """A Trainer that times and nothing else: no logger, checkpoints, progress bar or summary (``kwargs`` the rest)."""
    return lightning.Trainer(
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, **kwargs
    )
