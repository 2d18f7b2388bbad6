"""Model registry: a name maps to a net builder and the task (LightningModule) that trains it.

Builders live beside their architectures in ``zoo/nets`` and return a plain ``nn.Module``; the task named at
registration wraps it. This module imports neither Lightning nor the nets, so ``zoo.nets`` can use it.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass

import torch.nn as nn

__all__ = ["ModelEntry", "register_model", "get_entry", "model_names", "UnknownModelError"]


class UnknownModelError(KeyError):
    """Raised for a model name that is not registered; the message suggests close matches."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    task: str  # import path of the LightningModule class that trains this net
    kind: str  # the key of TASKS: "image", "sequence", "language_model"
    module: str  # where the builder is defined


_REGISTRY: dict[str, ModelEntry] = {}

TASKS = {
    "image": "zoo.tasks.image.ImageClassifier",
    "sequence": "zoo.tasks.sequence.SequenceClassifier",
    "language_model": "zoo.tasks.language_model.LanguageModel",
    "seq2seq": "zoo.tasks.translation.Seq2Seq",
    "tagging": "zoo.tasks.tagging.Tagger",
}


def register_model(*, task: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a net builder under its function name; ``task`` is a key of ``TASKS``."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASKS)}")

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        if name in _REGISTRY:
            other = _REGISTRY[name].module
            raise ValueError(f"model name {name!r} is already registered (by {other}); pick another name")
        _REGISTRY[name] = ModelEntry(name=name, builder=fn, task=TASKS[task], kind=task, module=fn.__module__)
        return fn

    return decorator


def _ensure_loaded() -> None:
    import zoo.nets  # noqa: F401  (importing the package registers every builder)


def model_names(pattern: str = "*", task: str | None = None) -> list[str]:
    _ensure_loaded()
    if task is not None and task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASKS)}")
    return sorted(n for n, e in _REGISTRY.items() if fnmatch.fnmatchcase(n, pattern.lower()) and task in (None, e.kind))


def get_entry(name: str) -> ModelEntry:
    _ensure_loaded()
    if not isinstance(name, str) or name not in _REGISTRY:
        close = difflib.get_close_matches(str(name).lower(), list(_REGISTRY), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownModelError(
            f"unknown model {name!r}.{hint} `zoo.list_models()` (or `zoo list`) shows the {len(_REGISTRY)} names."
        )
    return _REGISTRY[name]
