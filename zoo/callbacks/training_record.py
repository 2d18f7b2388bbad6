"""The training record kept in every checkpoint: wall time over resumed runs, hardware, precision, and the
monitored validation metric after each epoch with the training time spent to reach it (the time-to-accuracy
``zoo publish`` reports), and the published weights a fine-tuning run started from, with their own record."""

from __future__ import annotations

import platform
import time
from typing import Any

import lightning as L
import torch

from zoo.weights import Weights

__all__ = ["TrainingRecord", "hardware_string"]


def hardware_string(accelerator: str = "cpu") -> str:
    if accelerator in ("gpu", "cuda") and torch.cuda.is_available():
        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"


class TrainingRecord(L.Callback):
    """Keeps, in every checkpoint, the training wall time summed over resumed runs, the hardware and precision,
    so that published weights can state what they cost without anyone typing it; and the ``curve``: after each
    validation of a fit, ``[epoch, training seconds so far, monitored value]`` (the task's ``monitor``).

    A run that starts from published weights (``--model.pretrained``) keeps ``starts_from``: their name, file hash,
    recipe, data, validation split and training record as they were when it started (resuming keeps the first),
    so that weights published from it count what the weights beneath them cost, even once their entry is replaced."""

    def __init__(self) -> None:
        self.wall_time_s = 0.0
        self.runs: list[dict] = []
        self.curve: list[list] = []
        self.monitor: str | None = None
        self.starts_from: dict | None = None
        self._start: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.monotonic()
        accel = type(trainer.accelerator).__name__.replace("Accelerator", "").lower()
        self.runs.append(
            {
                "hardware": hardware_string(accel),
                "devices": trainer.world_size,
                "precision": str(trainer.precision),
                "torch": str(torch.__version__),
                "start_epoch": trainer.current_epoch,
            }
        )
        weights = getattr(pl_module, "weights", None)  # FineTuning.weights: the published weights loaded
        if self.starts_from is None and isinstance(weights, Weights):
            self.starts_from = {
                "weights": weights.name,
                "sha256": weights.sha256,
                "recipe": weights.recipe,
                "data": weights.data,
                "val_split": weights.evaluation.get("val_split"),
                "training": weights.training,
            }

    def _elapsed(self) -> float:
        return self.wall_time_s + (time.monotonic() - self._start if self._start is not None else 0.0)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.monitor = getattr(pl_module, "monitor", ("val_loss", "min"))[0]
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or self._start is None or value is None:
            return
        point = [trainer.current_epoch, round(self._elapsed(), 2), round(float(value), 6)]
        if self.curve and self.curve[-1][0] == point[0]:  # validated again within the epoch (val_check_interval)
            self.curve[-1] = point
        else:
            self.curve.append(point)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.wall_time_s, self._start = self._elapsed(), None

    def state_dict(self) -> dict[str, Any]:
        state = {"wall_time_s": self._elapsed(), "runs": self.runs, "monitor": self.monitor, "curve": self.curve}
        return state | ({"starts_from": self.starts_from} if self.starts_from else {})

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.wall_time_s = float(state_dict.get("wall_time_s", 0.0))
        self.runs = list(state_dict.get("runs", []))
        self.curve = [list(p) for p in state_dict.get("curve", [])]
        self.monitor = state_dict.get("monitor")
        self.starts_from = state_dict.get("starts_from")
