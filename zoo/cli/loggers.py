"""The loggers of a ``train.py`` run, all writing into the run folder: W&B by default (offline unless an API key
is configured or ``--wandb.mode`` / ``WANDB_MODE`` says otherwise; its run id kept in the run folder, so that a
resumed run continues the same W&B run), with the user's ``--wandb.*`` options. A ``WandbLogger`` given with
``--trainer.logger`` is set up the same way, what it was given taking precedence over ``--wandb.*``.

With ``--wandb.log_model``, the best and the last checkpoint become versions of the model artifact
``model-<run id>`` (aliases ``best`` and ``latest``), each with manifest-style metadata (model, kwargs, selection
metric and value, epoch, step, recipe, data): ``zoo.load_pretrained("wandb:ENTITY/PROJECT/model-<id>:best")``
and ``zoo publish wandb:...`` take them."""

from __future__ import annotations

import dataclasses
import inspect
import os
import secrets
import string
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_only

from zoo.cli._wandb_logger import WandbLogger
from zoo.cli.file_loggers import RunCSVLogger

__all__ = ["WandbOptions", "wandb_logger", "run_loggers"]

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


def _new_run_id() -> str:
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def wandb_logger(
    run_dir: Path,
    name: str,
    resume: bool,
    options: WandbOptions,
    *,
    recipe: str | None = None,
    run_id: str | None = None,
    save_dir: str | None = None,
    **init: Any,
) -> Logger | None:
    """The run's W&B logger; ``None`` when W&B is disabled (then the run leaves no W&B files at all).

    ``run_id``: the W&B run id (default: the one in ``<run_dir>/wandb_id`` when resuming, else a new one; kept
    there either way); ``save_dir``: where W&B writes (default: the run folder); ``recipe``: the config named in
    the model artifacts' metadata; ``init``: more ``WandbLogger`` / ``wandb.init`` arguments."""
    try:
        import wandb  # noqa: F401
    except ImportError:
        print(f"wandb is not installed: logging to CSV in {run_dir / 'csv'}", file=sys.stderr)
        return RunCSVLogger(save_dir=str(run_dir / "csv"))
    if wandb_mode(options) == "disabled":
        return None
    id_file = run_dir / "wandb_id"
    if run_id is None and resume and id_file.is_file():
        run_id = id_file.read_text().strip()
    run_id = run_id or _new_run_id()
    if rank_zero_only.rank == 0:
        id_file.write_text(run_id)
    logger = WandbLogger(
        **{"resume": "allow", **init},
        project=options.project or os.environ.get("WANDB_PROJECT", "lightning-zoo"),
        entity=options.entity,
        name=options.name or name,
        group=options.group,
        tags=list(options.tags) or None,
        log_model=options.log_model,
        id=run_id,
        save_dir=save_dir or str(run_dir),
        recipe=recipe,
    )
    if logger._wandb_init.get("anonymous") is None:
        logger._wandb_init.pop("anonymous", None)  # Lightning passes None, which W&B warns about on every run
    return logger


# WandbLogger arguments that are --wandb.* options too: given to the logger, they replace the option
_AS_OPTIONS = ("project", "entity", "name", "group", "tags", "log_model", "mode")


def _adopted(args: dict[str, Any], run_dir: Path, name: str, resume: bool, options: WandbOptions, recipe: str | None):
    """The zoo's W&B logger made from the init arguments of a ``WandbLogger`` the user gave: what they set (not
    Lightning's defaults, which would put the run in ./wandb, in project lightning_logs, with an id a resume
    cannot find) replaces the ``--wandb.*`` options; the run folder, its id file and the zoo's defaults do the
    rest."""
    defaults = {
        k: p.default for k, p in inspect.signature(LightningWandbLogger).parameters.items() if p.default is not p.empty
    }
    given = {k: v for k, v in args.items() if v is not None and (k not in defaults or v != defaults[k])}
    given.pop("experiment", None)
    options = dataclasses.replace(options, **{k: given.pop(k) for k in _AS_OPTIONS if k in given})
    if given.pop("offline", False):  # as the zoo runs offline: WANDB_MODE, which (unlike offline=True) allows log_model
        options = dataclasses.replace(options, mode="offline")
    run_id = given.pop("id", None) or given.pop("version", None)
    save_dir = given.pop("save_dir", None) or given.pop("dir", None)
    return wandb_logger(run_dir, name, resume, options, recipe=recipe, run_id=run_id, save_dir=save_dir, **given)


def run_loggers(
    given: Any, parsed: Any, run_dir: Path, name: str, resume: bool, options: WandbOptions, recipe: str | None
) -> Logger | list[Logger] | bool:
    """The loggers of a run from ``--trainer.logger`` (``given``, instantiated; ``parsed``, its parsed config): none
    given (or true) is the zoo's W&B logger; false is none; a ``WandbLogger`` among those given is replaced by the
    zoo's, set up from its arguments (:func:`_adopted`); any other logger is kept as it is."""
    if given in (None, True):
        return wandb_logger(run_dir, name, resume, options, recipe=recipe) or False
    if given is False:
        return False
    many = isinstance(given, (list, tuple))
    loggers, configs = (list(given), list(parsed)) if many else ([given], [parsed])
    out = []
    for logger, config in zip(loggers, configs):
        if type(logger) is LightningWandbLogger:
            logger = _adopted(dict(vars(config.init_args)), run_dir, name, resume, options, recipe)
        if logger is not None:
            out.append(logger)
    return out if many else (out[0] if out else False)
