"""Precision, checked for every task: a precision the device cannot train under is refused when fit starts, with
what to use instead, and optimiser steps that float16 mixed precision skips are announced.

Under ``16-mixed`` a ``GradScaler`` multiplies the loss by a scale (2**16 at first) before backward; when a gradient
overflows float16 it skips that optimiser step and halves the scale. The first steps of deeper nets are skipped
that way until the scale fits (measured on CPU with real fp16 autocast: resnet44/56/110, vgg11_bn, the taggers at
their default widths), which is normal, but a run whose step count says N updates then made fewer: the skips are
counted from the scale (it only ever drops on a skipped step) and said once, when the first step goes through;
skips later in the run are said at its end. (On CPU, Lightning itself turns ``16-mixed`` into ``bf16-mixed``, which
needs no scaler, and warns; real fp16 autocast on CPU needs a ``MixedPrecision("16-mixed", "cpu")`` plugin.)
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

__all__ = ["PrecisionRefused", "PrecisionGuard", "SkippedSteps", "refusal", "slowdown"]


class PrecisionRefused(ValueError):
    """A precision this model cannot train under on this device; the message says what to use instead."""


def refusal(precision: str, device: torch.device) -> str | None:
    """Why training under Lightning precision ``precision`` on ``device`` is refused (None: it is not). Every
    registered model passes every precision on CPU and CUDA (the precision matrix, ``tests/test_precision.py``),
    so what is left is the hardware: float64 on Apple GPUs, bfloat16 on CUDA GPUs without it."""
    if precision.startswith("64") and device.type == "mps":
        return "Apple's MPS backend has no float64: use --trainer.precision 32-true (or train on CPU in float64)"
    if precision.startswith("bf16") and device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if major < 8:  # bfloat16 arithmetic came with Ampere (sm_80); older GPUs emulate it slowly, if at all
            return (
                f"this GPU ({torch.cuda.get_device_name(device)}, sm_{major}{minor}) has no bfloat16 arithmetic: use "
                "--trainer.precision 16-mixed (float16 with a loss scaler) or 32-true"
            )
    return None


def _cpu_has_bf16() -> bool:
    """Whether oneDNN has bfloat16 kernels for this CPU (x86 with AVX-512, or AMX; Arm with BF16); True when torch
    cannot say, so that no warning is given on a guess."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return True


def slowdown(precision: str, device: torch.device) -> str | None:
    """Why training under ``precision`` on ``device`` works but is much slower than float32 (None: it is not):
    bfloat16 on a CPU whose oneDNN has no bfloat16 kernels (an AVX2-only x86) is emulated. Measured on a 2-core
    AVX2 AMD EPYC, 1 thread: ResNet-20's recipe step 16x slower in bf16-mixed than in 32-true."""
    if precision.startswith("bf16") and device.type == "cpu" and not _cpu_has_bf16():
        return (
            f"--trainer.precision {precision} on this CPU (no bfloat16 kernels: AVX2 only, no AVX-512 or AMX) is "
            "emulated, 4-16x slower than float32 in our measurements: pass --trainer.precision 32-true"
        )
    return None


class SkippedSteps:
    """Counts optimiser steps skipped by a loss scaler from its scale before and after each step, and words them:
    the initial back-off once, when its first step goes through; later skips at the end of the run."""

    def __init__(self) -> None:
        self.steps = 0  # optimiser steps seen
        self.initial = 0  # skipped before the first step that went through
        self.later = 0  # skipped after it
        self.first_scale: float | None = None
        self.scale: float | None = None  # after the latest step
        self.announced = False

    @property
    def skipped(self) -> int:
        return self.initial + self.later

    def observe(self, before: float, after: float) -> str | None:
        """One optimiser step: the scale before it and after the scaler's update. Returns the announcement of the
        initial back-off at the first step that went through after skipped ones, else None."""
        self.steps += 1
        if self.first_scale is None:
            self.first_scale = before
        self.scale = after
        skipped = after < before  # the scale drops only when a step is skipped (backoff_factor < 1)
        if skipped:
            if self.initial == self.steps - 1:  # no step has gone through yet
                self.initial += 1
            else:
                self.later += 1
            return None
        if self.initial and not self.announced:
            self.announced = True
            return (
                f"the first {self.initial} optimiser step(s) were skipped: their float16 gradients overflowed at "
                f"the GradScaler's loss scale, which it lowered from {self.first_scale:g} to {after:g}; normal at the "
                "start of 16-mixed training (the weights move from now on; the step count includes the skipped ones)"
            )
        return None

    def summary(self) -> str | None:
        """At the end of training: skips not announced yet (all steps skipped, or skips after the first step)."""
        if self.initial == self.steps and self.steps:
            return (
                f"all {self.steps} optimiser step(s) of this run were skipped: the float16 gradients overflowed at "
                f"every loss scale the GradScaler tried (from {self.first_scale:g} down to {self.scale:g}), so the "
                "weights did not change. Train for more steps, or use --trainer.precision bf16-mixed (no scaler needed)"
            )
        if self.later:
            return (
                f"{self.later} of {self.steps} optimiser steps were skipped after the first one that went through: "
                "their float16 gradients overflowed (the GradScaler lowered its scale each time). A few are normal; "
                "many mean the loss or the gradients are too large for float16: clip gradients, lower --model.lr, or "
                "use --trainer.precision bf16-mixed"
            )
        return None


def _scaler(trainer: L.Trainer):
    return getattr(trainer.precision_plugin, "scaler", None)


class PrecisionGuard(L.Callback):
    """Every task's precision checks (attached by ``Task.configure_callbacks``): the refusal at fit start, and the
    skipped-step count of a loss scaler (``skips``; its wording as rank-zero warnings)."""

    def __init__(self) -> None:
        self.skips = SkippedSteps()
        self._before: float | None = None  # the scale at the pending optimiser step

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        why = refusal(str(trainer.precision), pl_module.device)
        if why:
            raise PrecisionRefused(f"--trainer.precision {trainer.precision} on {pl_module.device.type}: {why}")
        if slow := slowdown(str(trainer.precision), pl_module.device):
            rank_zero_warn(slow)
        self.skips, self._before = SkippedSteps(), None

    def _settle(self, trainer: L.Trainer) -> None:
        """Account for the pending step, whose scaler update has run by now."""
        scaler = _scaler(trainer)
        if self._before is None or scaler is None:
            return
        message = self.skips.observe(self._before, float(scaler.get_scale()))
        self._before = None
        if message:
            rank_zero_warn(message)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        # called before the scaler steps (inside Lightning's precision plugin); under manual optimisation several
        # times per batch, so the previous step is settled here too
        self._settle(trainer)
        scaler = _scaler(trainer)
        if scaler is not None and scaler.is_enabled():
            self._before = float(scaler.get_scale())

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        self._settle(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._settle(trainer)
        message = self.skips.summary()
        if message:
            rank_zero_warn(message)
