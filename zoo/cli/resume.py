"""Where ``train.py`` resumes from: a run folder's checkpoints, read without loading their tensors, and which of
them ``--ckpt_path last`` / ``best`` means."""

from __future__ import annotations

from pathlib import Path

import torch

from zoo.checkpoint import CheckpointError
from zoo.cli.errors import UsageError

__all__ = ["checkpoint_position", "plain_value", "resolve_checkpoint", "resume_points", "run_versions", "task_path"]


def run_versions(base: Path) -> list[Path]:
    found = [p for p in base.glob("version_*") if p.name[8:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[8:]))


def checkpoint_position(path: Path) -> tuple[int, int]:
    """``(epoch, global_step)`` of a Lightning checkpoint, read without loading its tensors."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(ckpt["epoch"]), int(ckpt["global_step"])
    except Exception as e:  # noqa: BLE001 (truncated, not a checkpoint, pickle refused)
        raise CheckpointError(
            f"{path} is not a readable training checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "pass another file, or delete it to fall back on the run's other checkpoints"
        ) from None


def resume_points(version: Path) -> list[tuple[int, float, Path]]:
    """A run's ``last.ckpt`` and ``interrupted.ckpt`` as (step, mtime, path); a step-0 file resumes nothing."""
    found = []
    for name in ("last.ckpt", "interrupted.ckpt"):
        path = version / "checkpoints" / name
        if path.is_file() and (step := checkpoint_position(path)[1]) > 0:
            found.append((step, path.stat().st_mtime, path))
    return sorted(found)


def resolve_checkpoint(base: Path, which: str) -> Path:
    """``last``: the furthest of ``last.ckpt`` / ``interrupted.ckpt`` (by step) in the newest run under ``base``
    that has one; ``best``: the newest run's ``best.ckpt``."""
    for version in reversed(run_versions(base)):
        if which == "last" and (points := resume_points(version)):
            return points[-1][2]
        if which == "best" and (version / "checkpoints" / "best.ckpt").is_file():
            return version / "checkpoints" / "best.ckpt"
    names = "last.ckpt or interrupted.ckpt" if which == "last" else "best.ckpt"
    raise UsageError(
        f"--ckpt_path {which}: no {names} under {base}/version_*/checkpoints. "
        "Pass --run_name of the run to resume (see the runs/ folder) or a checkpoint file."
    )


def plain_value(value):
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    if isinstance(value, dict):
        return {k: plain_value(v) for k, v in value.items()}
    return value


def task_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
