"""Model registry: a name maps to a net builder and the task (LightningModule) that trains it.

Builders live beside their architectures in ``zoo/nets`` and return a plain ``nn.Module``; the task named at
registration wraps it. This module imports neither Lightning nor the nets (the nets import it; ``zoo`` imports
the nets, so every builder is registered once ``zoo`` is imported). Tasks are named by import path and imported
when first asked for, since they import this module too.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch.nn as nn

__all__ = [
    "ModelEntry",
    "register_model",
    "register_task",
    "get_entry",
    "model_names",
    "task_class",
    "task_kinds",
    "check_task",
    "UnknownModelError",
]


class UnknownModelError(KeyError):
    """Raised for a model name that is not registered; the message suggests close matches."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    task: str  # import path of the LightningModule class that trains this net
    kind: str  # the task's key: "image", "sequence", "language_model", "seq2seq", "tagging", or one registered
    module: str  # where the builder is defined

    @property
    def summary(self) -> str:
        """The first paragraph of the builder's docstring (what ``zoo info`` shows as the architecture)."""
        paragraph = (self.builder.__doc__ or "").strip().split("\n\n")[0]
        return " ".join(line.strip() for line in paragraph.splitlines()) or self.name


_REGISTRY: dict[str, ModelEntry] = {}

# task kind -> import path of its LightningModule
_TASKS = {
    "image": "zoo.tasks.image.ImageClassifier",
    "sequence": "zoo.tasks.sequence.SequenceClassifier",
    "language_model": "zoo.tasks.language_model.LanguageModel",
    "seq2seq": "zoo.tasks.translation.Seq2Seq",
    "tagging": "zoo.tasks.tagging.Tagger",
}


def register_task(kind: str, task: str | type) -> None:
    """Make ``kind`` a task that models can register under: ``task`` is the LightningModule class (a subclass of
    ``zoo.tasks.Task``) or its import path."""
    path = task if isinstance(task, str) else f"{task.__module__}.{task.__qualname__}"
    if _TASKS.get(kind, path) != path:
        raise ValueError(f"task {kind!r} is already registered as {_TASKS[kind]}; pick another name")
    _TASKS[kind] = path


def task_kinds() -> list[str]:
    return sorted(_TASKS)


def register_model(*, task: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a net builder under its function name; ``task`` is a task kind (``task_kinds()``)."""
    if task not in _TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {task_kinds()} (or zoo.register_task it first)")

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        if name in _REGISTRY:
            other = _REGISTRY[name].module
            raise ValueError(f"model name {name!r} is already registered (by {other}); pick another name")
        _REGISTRY[name] = ModelEntry(name=name, builder=fn, task=_TASKS[task], kind=task, module=fn.__module__)
        return fn

    return decorator


def model_names(pattern: str = "*", task: str | None = None) -> list[str]:
    if task is not None and task not in _TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {task_kinds()}")
    return sorted(n for n, e in _REGISTRY.items() if fnmatch.fnmatchcase(n, pattern.lower()) and task in (None, e.kind))


def get_entry(name: str) -> ModelEntry:
    if not isinstance(name, str) or name not in _REGISTRY:
        close = difflib.get_close_matches(str(name).lower(), list(_REGISTRY), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownModelError(
            f"unknown model {name!r}.{hint} `zoo.list_models()` (or `zoo list`) shows the {len(_REGISTRY)} names."
        )
    return _REGISTRY[name]


def task_class(name: str) -> type:
    """The LightningModule class that trains registered model ``name``."""
    module, _, cls = get_entry(name).task.rpartition(".")
    return getattr(importlib.import_module(module), cls)


def check_task(name: str, cls: type) -> ModelEntry:
    """The entry of model ``name``, after checking that task class ``cls`` trains it (the registered task or a
    subclass of it); else a message naming the models that ``cls`` trains, from the registry."""
    entry = get_entry(name)
    if not issubclass(cls, task_class(name)):
        mine = [n for n in sorted(_REGISTRY) if issubclass(cls, task_class(n))]
        raise ValueError(
            f"{name!r} is a {entry.kind} model, trained by {entry.task.rsplit('.', 1)[-1]}, not {cls.__name__}; "
            f"{cls.__name__} trains {', '.join(mine) or 'no registered model'}"
        )
    return entry
