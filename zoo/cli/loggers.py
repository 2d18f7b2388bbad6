"""The loggers of a ``train.py`` run, all writing into the run folder: W&B by default (offline unless an API key
is configured or ``--wandb.mode`` / ``WANDB_MODE`` says otherwise; its run id kept in the run folder, so that a
resumed run continues the same W&B run), with the user's ``--wandb.*`` options."""

from __future__ import annotations

import os
import secrets
import string
import sys
from dataclasses import dataclass, field
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.utilities import rank_zero_only

__all__ = ["WandbOptions", "wandb_logger"]

MODES = ("online", "offline", "disabled")


@dataclass
class WandbOptions:
    """W&B settings of a run (``--wandb.project``, ``--wandb.tags [a,b]`` ...).

    Args:
        project: W&B project (default: ``$WANDB_PROJECT`` or ``lightning-zoo``).
        entity: W&B user or team (default: yours).
        name: run name shown in W&B (default: ``<run_name>/version_<n>``).
        group: groups runs in the W&B UI (seeds of one recipe, a sweep).
        tags: tags to filter runs by.
        log_model: upload checkpoints as model artifacts: true (best and last, at the end) or "all" (as saved).
        mode: online, offline or disabled (default: ``$WANDB_MODE``, else offline unless an API key is set up).
        media: log the family's pictures at validation end (sample predictions, confusion matrix, generated
            text, attention, tagged sentences, gradients through time); false turns them all off.
        media_every_n_epochs: log them every n-th epoch (and at the last).
        media_samples: at most this many examples per picture or table.
    """

    project: str | None = None
    entity: str | None = None
    name: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    log_model: bool | str = False
    mode: str | None = None
    media: bool = True
    media_every_n_epochs: int = 1
    media_samples: int = 8

    def __post_init__(self) -> None:
        if self.media_every_n_epochs < 1 or self.media_samples < 1:
            raise ValueError("--wandb.media_every_n_epochs and --wandb.media_samples must be >= 1")
        if self.mode is not None and self.mode not in MODES:
            raise ValueError(f"--wandb.mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        if self.log_model not in (True, False, "all"):
            raise ValueError(f"--wandb.log_model is true, false or all; got {self.log_model!r}")


def _key_configured() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def wandb_mode(options: WandbOptions) -> str:
    """The mode this run uses (and sets in ``WANDB_MODE`` for W&B to read)."""
    mode = options.mode or os.environ.get("WANDB_MODE") or ("online" if _key_configured() else "offline")
    os.environ["WANDB_MODE"] = mode  # the env var (unlike offline=True) still allows log_model
    return mode


def wandb_logger(run_dir: Path, name: str, resume: bool, options: WandbOptions) -> Logger | None:
    """The run's W&B logger; ``None`` when W&B is disabled (then the run leaves no W&B files at all)."""
    try:
        import wandb  # noqa: F401
        from lightning.pytorch.loggers import WandbLogger
    except ImportError:
        print(f"wandb is not installed: logging to CSV in {run_dir}", file=sys.stderr)
        return CSVLogger(run_dir, name="", version="")
    if wandb_mode(options) == "disabled":
        return None
    id_file = run_dir / "wandb_id"
    run_id = id_file.read_text().strip() if resume and id_file.is_file() else None
    if run_id is None:
        run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
        if rank_zero_only.rank == 0:
            id_file.write_text(run_id)
    logger = WandbLogger(
        project=options.project or os.environ.get("WANDB_PROJECT", "lightning-zoo"),
        entity=options.entity,
        name=options.name or name,
        group=options.group,
        tags=list(options.tags) or None,
        log_model=options.log_model,
        id=run_id,
        save_dir=str(run_dir),
        resume="allow",
    )
    logger._wandb_init.pop("anonymous", None)  # Lightning passes None, which W&B warns about on every run
    return logger
