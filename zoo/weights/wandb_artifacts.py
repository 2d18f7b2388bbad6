"""Checkpoints as W&B model artifacts: the manifest-style metadata a ``train.py`` checkpoint is logged with, and
``wandb:ENTITY/PROJECT/NAME:ALIAS`` resolved to the ``.ckpt`` inside such an artifact, on this machine.

Where an artifact is looked for, in order:

1. ``$ZOO_WANDB_ARTIFACTS/<entity>/<project>/<name>/<alias>/``: a copy staged by hand (for a machine without
   network: ``wandb artifact get ENTITY/PROJECT/NAME:ALIAS --root <that folder>`` where there is network, then copy
   the folder). Used as it is; the zoo never writes there.
2. W&B itself (``wandb.Api().artifact``) unless ``WANDB_MODE`` is offline or disabled: downloaded into
   ``<cache>/wandb/<entity>/<project>/<name>/<alias>/`` (``$ZOO_CACHE``, else ``~/.cache/zoo``), again only when the
   alias has moved to other contents since the last download.
3. That cache folder as it is, offline (or when W&B cannot be reached).

A folder may hold ``.wandb-artifact.json`` (the zoo writes it on download): the artifact's version, aliases, metadata
and the md5 of each file, which are checked before the checkpoint is read. Nothing here imports wandb unless it
downloads.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from zoo.weights.store import PretrainedError, cache_dir, file_hash

__all__ = [
    "PREFIX",
    "STAGED_ENV",
    "RECORD",
    "ArtifactRef",
    "is_artifact",
    "artifact_checkpoint",
    "checkpoint_metadata",
    "md5_b64",
]

PREFIX = "wandb:"
STAGED_ENV = "ZOO_WANDB_ARTIFACTS"
RECORD = ".wandb-artifact.json"  # the artifact's version, aliases, metadata and file digests, beside its files
LARGE_KWARG = 2000  # characters of JSON: larger kwargs (vocabularies) stay in the checkpoint, named in the metadata
_REF = re.compile(r"(?P<entity>[^/:\s]+)/(?P<project>[^/:\s]+)/(?P<name>[\w.-]+)(?::(?P<alias>[\w.-]+))?")


def is_artifact(name: object) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


@dataclass(frozen=True)
class ArtifactRef:
    """``wandb:ENTITY/PROJECT/NAME:ALIAS`` (the alias defaults to ``latest``, as in W&B)."""

    entity: str
    project: str
    name: str
    alias: str = "latest"

    @classmethod
    def parse(cls, ref: str) -> ArtifactRef:
        m = _REF.fullmatch(ref.removeprefix(PREFIX))
        if not is_artifact(ref) or m is None:
            raise PretrainedError(
                f"{ref!r} is not a W&B artifact reference: write wandb:ENTITY/PROJECT/NAME:ALIAS, e.g. "
                "wandb:me/lightning-zoo/model-ab12cd34:best (a train.py run with --wandb.log_model true logs "
                "model-<run id> with aliases best and latest)"
            )
        return cls(m["entity"], m["project"], m["name"], m["alias"] or "latest")

    @property
    def path(self) -> str:
        return f"{self.entity}/{self.project}/{self.name}:{self.alias}"

    def folder(self, root: Path) -> Path:
        return root / self.entity / self.project / self.name / self.alias

    def __str__(self) -> str:
        return PREFIX + self.path


def md5_b64(path: Path) -> str:
    """The digest W&B gives a file in an artifact manifest: base64 of its md5."""
    return base64.b64encode(file_hash(path, hashlib.md5(usedforsecurity=False)).digest()).decode("ascii")


def _offline() -> bool:
    return os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun", "disabled")


def artifact_checkpoint(ref: str | ArtifactRef) -> Path:
    """The verified local ``.ckpt`` of W&B artifact ``ref`` (staged, downloaded or cached: see the module)."""
    ref = ArtifactRef.parse(ref) if isinstance(ref, str) else ref
    staged_root = os.environ.get(STAGED_ENV)
    if staged_root and (staged := ref.folder(Path(staged_root).expanduser())).is_dir():
        return _checkpoint_in(staged, ref)
    cached = ref.folder(cache_dir() / "wandb")
    roots = ([Path(staged_root).expanduser()] if staged_root else []) + [cache_dir() / "wandb"]
    if _offline():
        if cached.is_dir():
            return _checkpoint_in(cached, ref)
        raise PretrainedError(
            f"{ref}: WANDB_MODE={os.environ['WANDB_MODE']} and no copy of it on this machine {_staged_hint(ref, roots)}"
        )
    try:
        return _checkpoint_in(_download(ref, cached), ref)
    except _Unreachable as e:
        if cached.is_dir():
            return _checkpoint_in(cached, ref)
        raise PretrainedError(f"{ref}: {e}, and no copy of it on this machine {_staged_hint(ref, roots)}") from None


def _staged_hint(ref: ArtifactRef, roots: list[Path]) -> str:
    """Where copies were looked for, the aliases of the artifact found there, and how to put one there."""
    known = sorted({p.name for root in roots for p in ref.folder(root).parent.glob("*") if p.is_dir()})
    have = f"; aliases of {ref.name} there: {', '.join(known)}" if known else ""
    return (
        f"(looked in {' and '.join(map(str, roots))}{have}). Where there is network, run "
        f"`wandb artifact get {ref.path} --root <folder>/{ref.entity}/{ref.project}/{ref.name}/{ref.alias}` and set "
        f"{STAGED_ENV}=<folder> here" + (", or unset WANDB_MODE to download it" if _offline() else "")
    )


class _Unreachable(Exception):
    """W&B could not be asked (no network, no API key): a cached copy may still serve."""


def _download(ref: ArtifactRef, dest: Path) -> Path:
    """``ref`` downloaded into ``dest`` through a temporary folder beside it (kept only when complete), unless
    ``dest`` already holds the contents the alias points to now."""
    try:
        import wandb
    except ImportError:
        raise _Unreachable("wandb is not installed (pip install wandb) to download it") from None
    try:
        api = wandb.Api()
    except Exception as e:  # noqa: BLE001 (no API key: wandb.errors.UsageError; a broken config ...)
        raise _Unreachable(f"W&B cannot be asked ({type(e).__name__}: {_first_line(e)})") from e
    try:
        artifact = api.artifact(ref.path, type="model")
    except Exception as e:  # noqa: BLE001 (CommError for an unknown name or alias, network errors)
        text = _first_line(e)
        if "not found" in text.lower() or "does not contain" in text.lower():
            raise PretrainedError(f"{ref}: W&B has no such artifact or alias ({text}){_aliases(api, ref)}") from e
        raise _Unreachable(f"W&B cannot be reached ({type(e).__name__}: {text})") from e
    record = {
        "name": artifact.qualified_name,
        "version": artifact.version,
        "aliases": list(artifact.aliases),
        "digest": artifact.digest,
        "metadata": dict(artifact.metadata or {}),
        "files": {path: {"digest": e.digest, "size": e.size} for path, e in artifact.manifest.entries.items()},
    }
    if _record(dest).get("digest") == record["digest"]:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent))
    try:
        artifact.download(root=str(tmp))
        (tmp / RECORD).write_text(json.dumps(record, indent=1) + "\n")
        _verify(tmp, record, ref)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _aliases(api, ref: ArtifactRef) -> str:
    """``; its aliases: best, latest, v0, v1`` when W&B knows the artifact, else nothing."""
    try:
        versions = api.artifacts("model", f"{ref.entity}/{ref.project}/{ref.name}")
        names = sorted({a for v in versions for a in [v.version, *v.aliases]})
    except Exception:  # noqa: BLE001 (the artifact itself is unknown: the message above says so)
        return ""
    return f"; its aliases: {', '.join(names)}" if names else ""


def _record(folder: Path) -> dict:
    path = folder / RECORD
    return json.loads(path.read_text()) if path.is_file() else {}


def _verify(folder: Path, record: dict, ref: ArtifactRef) -> None:
    for name, entry in record.get("files", {}).items():
        path = folder / name
        if not path.is_file():
            raise PretrainedError(f"{ref}: {path} is missing from the copy in {folder}; delete the folder and fetch it")
        digest = md5_b64(path)
        if digest != entry["digest"]:
            raise PretrainedError(
                f"{ref}: {path} has md5 {digest}, the artifact's manifest says {entry['digest']}: the copy is corrupt "
                f"or was replaced. Refusing to load it; delete {folder} and fetch it again"
            )


def _checkpoint_in(folder: Path, ref: ArtifactRef) -> Path:
    """The one ``.ckpt`` of the artifact copy in ``folder``, after checking its files against their digests."""
    _verify(folder, _record(folder), ref)
    found = sorted(p for p in folder.rglob("*.ckpt") if p.is_file())
    if len(found) != 1:
        files = ", ".join(sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.name != RECORD)) or "none"
        what = "no .ckpt" if not found else "several .ckpt files"
        raise PretrainedError(
            f"{ref} holds {what} (files in {folder}: {files}): not a train.py checkpoint artifact "
            "(train.py --wandb.log_model true logs one checkpoint per version)"
        )
    return found[0]


def _first_line(e: BaseException) -> str:
    return next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)


def checkpoint_metadata(
    path: str | Path, *, selected_on: str | None, metric: dict, metrics: dict, recipe: str | None
) -> dict:
    """What a manifest entry says of weights, said of the ``train.py`` checkpoint at ``path``, read from the file
    itself: model, its kwargs, parameter count, the selection metric and its value, epoch and step, the
    recipe, the DataModule. ``selected_on``: ``"val_acc (max)"`` for the best checkpoint, ``None`` for the last."""
    from zoo._registry import UnknownModelError, task_class
    from zoo.weights.measure import data_spec

    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    hp = {k: v for k, v in (ckpt.get("hyper_parameters") or {}).items() if not k.startswith("_")}
    arch = hp.get("arch")
    try:
        cls = task_class(arch)
        keys = [*cls.weights_kwargs, "classes", "preprocessing"]
    except (UnknownModelError, KeyError, TypeError):
        cls, keys = None, list(hp)
    kwargs = {k: _plain(hp[k]) for k in keys if hp.get(k) is not None and k != "arch"}
    large = sorted(k for k, v in kwargs.items() if len(json.dumps(v)) > LARGE_KWARG)
    try:
        data = data_spec(ckpt)
    except Exception:  # noqa: BLE001 (a checkpoint not written by train.py: no DataModule recorded)
        data = None
    return {
        "model": arch,
        "task": (ckpt.get("hyper_parameters") or {}).get("_class_path") or (cls and f"{cls.__module__}.{cls.__name__}"),
        "model_kwargs": {k: v for k, v in kwargs.items() if k not in large},
        "model_kwargs_in_checkpoint": large,  # too large for metadata (vocabularies): in the file's hyper_parameters
        "params": sum(v.numel() for k, v in ckpt["state_dict"].items() if k.startswith("net.")),
        "metric": metric,
        "metrics": metrics,
        "checkpoint": {
            "file": Path(path).name,
            "epoch": ckpt.get("epoch"),
            "step": ckpt.get("global_step"),
            "selected_on": selected_on or "final",
        },
        "recipe": recipe,
        "data": data,
        "lightning": ckpt.get("pytorch-lightning_version"),
    }


def _plain(value):
    """JSON as W&B stores it (tuples as lists, tensors as numbers)."""
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))
