"""The zoo's ``WandbLogger``: Lightning's, logging a run's checkpoints as model artifacts the way the zoo's runs make
them. Named as Lightning's (the zoo's callbacks recognise a W&B logger by that name) and kept in a private module,
which jsonargparse leaves out of the short names, so that ``--trainer.logger WandbLogger`` still means Lightning's
(that one is then rebuilt as this one: ``zoo.cli.loggers.run_loggers``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_only

__all__ = ["WandbLogger"]


class WandbLogger(LightningWandbLogger):
    """Lightning's WandbLogger (and named as it, which is what the zoo's callbacks recognise), logging checkpoints
    as the zoo's runs make them: Lightning would log every ModelCheckpoint's file with both aliases ``latest`` and
    ``best`` (an unmonitored callback's file counts as its "best") and as ``model.ckpt``; here the monitored best
    file gets ``best`` and the newest file ``latest``, each once per save, under its own name, with the
    metadata of :func:`zoo.weights.wandb_artifacts.checkpoint_metadata`.

    ``log_model=True``: both at the end of a successful fit (two versions; one if the best is the newest);
    ``"all"``: each file as it is saved."""

    def __init__(self, *args: Any, recipe: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._recipe = recipe
        self._latest_metrics: dict[str, float] = {}
        self._saves: dict[str, dict[str, float]] = {}  # file -> the metrics logged when it was last saved
        self._logged: set[tuple[str, int, int]] = set()  # (file, epoch, step) already logged

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        super().log_metrics(metrics, step)
        self._latest_metrics |= {k: float(v) for k, v in metrics.items() if k.startswith("val")}

    def after_save_checkpoint(self, checkpoint_callback: ModelCheckpoint) -> None:
        path = checkpoint_callback._last_checkpoint_saved  # the file this save wrote
        if not self._log_model or not path:
            return
        self._checkpoint_callbacks[id(checkpoint_callback)] = checkpoint_callback
        self._saves[path] = dict(self._latest_metrics)
        if self._log_model == "all":
            best = bool(checkpoint_callback.monitor) and path == checkpoint_callback.best_model_path
            self._log_checkpoint(
                path, checkpoint_callback if best else None, ["best", "latest"] if best else ["latest"]
            )

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if status != "success" or self._log_model is not True or self._experiment is None:
            return
        callbacks = list(self._checkpoint_callbacks.values())
        monitored = next((cb for cb in callbacks if cb.monitor and Path(cb.best_model_path).is_file()), None)
        files = {p for p in self._saves if Path(p).is_file()} | ({monitored.best_model_path} if monitored else set())
        if not files:
            return
        newest = max(files, key=lambda p: Path(p).stat().st_mtime_ns)
        if monitored:
            best = monitored.best_model_path
            self._log_checkpoint(best, monitored, ["best", "latest"] if best == newest else ["best"])
        if not monitored or newest != monitored.best_model_path:
            self._log_checkpoint(newest, None, ["latest"])

    @rank_zero_only
    def _log_checkpoint(self, path: str, best_of: ModelCheckpoint | None, aliases: list[str]) -> None:
        """Log the file at ``path`` as a version of the run's model artifact; ``best_of``: the monitored callback
        whose best it is (its score is the metadata's metric value), ``None`` for the last checkpoint."""
        import torch
        import wandb

        from zoo.weights.wandb_artifacts import checkpoint_metadata

        position = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        key = (path, position.get("epoch"), position.get("global_step"))
        if key in self._logged:  # two callbacks (every epoch, every N steps) wrote last.ckpt at the same step
            return
        metrics = self._saves.get(path, {})
        monitor = next((cb for cb in self._checkpoint_callbacks.values() if cb.monitor), None)
        if best_of is not None:
            score = best_of.best_model_score
            metric = {"name": best_of.monitor, "mode": best_of.mode, "value": None if score is None else float(score)}
        else:
            name = monitor.monitor if monitor else None
            metric = {"name": name, "mode": monitor.mode if monitor else None, "value": metrics.get(name)}
        selected = f"{best_of.monitor} ({best_of.mode})" if best_of is not None else None
        metadata = checkpoint_metadata(path, selected_on=selected, metric=metric, metrics=metrics, recipe=self._recipe)
        if not self._checkpoint_name:
            self._checkpoint_name = f"model-{self.experiment.id}"
        description = f"{metadata['model']} checkpoint {Path(path).name} of run {self.experiment.name}"
        artifact = wandb.Artifact(self._checkpoint_name, type="model", description=description, metadata=metadata)
        artifact.add_file(path, name=Path(path).name, policy=self.add_file_policy)
        self.experiment.log_artifact(artifact, aliases=aliases)
        self._logged.add(key)
