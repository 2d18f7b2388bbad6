"""The manifest of published weights: ``manifest.json`` in the checkpoints folder maps ``model.tag`` to one entry,
read here into a typed :class:`Weights`. The file is parsed once per process (again only when it changes on disk)."""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from zoo.weights.store import CHECKPOINTS_ENV, PretrainedError, checkpoint_dir

__all__ = ["Weights", "read_manifest", "write_manifest", "weights_names", "find_weights"]

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Weights:
    """One published set of weights. ``kwargs`` rebuild the net (the side file's, such as vocabularies, merged in
    once the entry is resolved by ``zoo.weights.resolve``, which also sets ``path``: the local file, verified)."""

    name: str  # model.tag
    file: str
    sha256: str
    model: str
    kwargs: dict = field(default_factory=dict)  # the task's weights_kwargs (manifest key: model_kwargs)
    kwargs_file: dict | None = None  # {"file", "sha256", "keys"} of large kwargs kept beside the weights
    url: str | None = None
    params: int | None = None
    dtype: str | None = None
    dtype_check: dict = field(default_factory=dict)
    classes: list = field(default_factory=list)
    preprocessing: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    evaluation: dict = field(default_factory=dict)
    recipe: str | None = None
    data: dict | None = None  # the DataModule that measured it: {"class_path", "init_args"}
    training: dict = field(default_factory=dict)
    path: Path | None = None  # set when resolved: the verified local weights file

    @property
    def tag(self) -> str:
        return self.name.split(".", 1)[1]

    @property
    def file_spec(self) -> dict:
        """The weights file as the store looks it up: ``file``, ``sha256``, ``url``."""
        return {"file": self.file, "sha256": self.sha256, "url": self.url}

    @property
    def file_specs(self) -> list[dict]:
        """Every file of the entry: the weights, then the kwargs side file if there is one."""
        return [self.file_spec] + ([self.kwargs_file] if self.kwargs_file else [])

    @classmethod
    def from_json(cls, name: str, d: dict) -> Weights:
        known = {f.name for f in dataclasses.fields(cls)} - {"name", "kwargs", "kwargs_file", "path"}
        return cls(
            name=name,
            kwargs=dict(d.get("model_kwargs") or {}),
            kwargs_file=d.get("model_kwargs_file"),
            **{k: v for k, v in d.items() if k in known},
        )

    def to_json(self) -> dict:
        d = {"file": self.file, "sha256": self.sha256, "model": self.model, "model_kwargs": self.kwargs}
        if self.kwargs_file:
            d["model_kwargs_file"] = self.kwargs_file
        for f in dataclasses.fields(self):
            if f.name not in ("name", "file", "sha256", "model", "kwargs", "kwargs_file", "path"):
                value = getattr(self, f.name)
                if value is not None:
                    d[f.name] = value
        return d


_cache: dict[Path, tuple[tuple[int, int], dict[str, Weights]]] = {}


def read_manifest(directory: Path | None = None) -> dict[str, Weights]:
    """The entries of ``directory``'s manifest, by name; empty when it has none (a folder about to be published
    into). Without ``directory``, the published weights (``checkpoint_dir()``), whose manifest must be there: a
    ``$ZOO_CHECKPOINTS`` with a typo would otherwise read as a zoo without weights, and every look-up would pass
    or fail for the wrong reason."""
    path = (directory or checkpoint_dir()) / MANIFEST
    try:
        stat = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        if directory is not None:
            return {}
        raise _no_manifest(path) from None
    stamp = (stat.st_mtime_ns, stat.st_size)
    cached = _cache.get(path)
    if cached is None or cached[0] != stamp:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise PretrainedError(f"{path} is not valid JSON ({e}); restore it from git") from e
        cached = _cache[path] = (stamp, {n: Weights.from_json(n, d) for n, d in raw.items()})
    return dict(cached[1])


def _no_manifest(path: Path) -> PretrainedError:
    """The published weights' manifest is not at ``path``: where that was looked for, and why there."""
    folder = path.parent
    why = (
        "does not exist" if not folder.exists() else "is not a folder" if not folder.is_dir() else f"has no {MANIFEST}"
    )
    env = os.environ.get(CHECKPOINTS_ENV)
    if env:
        return PretrainedError(
            f"{CHECKPOINTS_ENV}={env}: {folder} {why}, so no published weights can be looked up there. Point it at "
            f"a folder that holds a {MANIFEST} and the files it names (a copy of checkpoints/), or unset it to use "
            "the weights that come with lightning-zoo"
        )
    return PretrainedError(
        f"the published weights of lightning-zoo are looked for in {folder}, which {why}: the installation is "
        f"incomplete (reinstall it), or set {CHECKPOINTS_ENV} to a folder that holds a {MANIFEST}"
    )


def write_manifest(entries: dict[str, Weights], directory: Path) -> Path:
    path = directory / MANIFEST
    raw = {n: w.to_json() for n, w in sorted(entries.items())}
    path.write_text(json.dumps(raw, indent=2) + "\n")
    return path


def weights_names(pattern: str = "*") -> list[str]:
    return sorted(n for n in read_manifest() if fnmatch.fnmatchcase(n, pattern))


def find_weights(name: str) -> Weights:
    """The manifest entry ``name`` (not yet resolved: no file looked at); an unknown name lists the weights published
    for its model, or, when that model has none, every published name."""
    manifest = read_manifest()
    if name not in manifest:
        model = name.split(".")[0]
        same = sorted(n for n in manifest if n.split(".")[0] == model)
        hint = (
            f"available for {model}: {', '.join(same)}"
            if same
            else f"{model} has no published weights; available: {', '.join(sorted(manifest)) or 'none'}"
        )
        raise PretrainedError(f"no published weights named {name!r} in {checkpoint_dir() / MANIFEST}; {hint}")
    return manifest[name]
