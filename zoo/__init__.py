"""lightning-zoo: classic architectures as ready-to-train LightningModules, with published weights."""

from __future__ import annotations

import importlib
import inspect

import lightning as L

from zoo._pretrained import PretrainedError, get_pretrained, pretrained_names
from zoo._registry import UnknownModelError, get_entry, model_names, register_model

__all__ = [
    "list_models",
    "create_model",
    "load_pretrained",
    "list_pretrained",
    "register_model",
    "task_class",
    "UnknownModelError",
    "PretrainedError",
]
__version__ = "0.1.0"


def list_models(pattern: str = "*", pretrained: bool = False, task: str | None = None) -> list[str]:
    """Registered model names matching a glob (``"resnet*"``); with ``pretrained=True`` only those with weights;
    ``task`` (``image``, ``sequence``, ``language_model``) keeps one kind."""
    names = model_names(pattern, task)
    if pretrained:
        have = {n.split(".")[0] for n in pretrained_names()}
        names = [n for n in names if n in have]
    return names


def list_pretrained(pattern: str = "*") -> list[str]:
    """Published weights ``model.tag`` matching a glob (``"resnet*"``)."""
    return pretrained_names(pattern)


def task_class(name: str) -> type[L.LightningModule]:
    """The LightningModule class that trains registered model ``name``."""
    module, _, cls = get_entry(name).task.rpartition(".")
    return getattr(importlib.import_module(module), cls)


def create_model(name: str, **kwargs) -> L.LightningModule:
    """Build registered model ``name`` as its LightningModule (``.net`` is the plain ``nn.Module``).

    Keyword arguments go to the task (``lr=``, ``pretrained=``, ``num_classes=`` ...); any the task does not take
    go to the net builder (``zero_init_residual=True``).
    """
    cls = task_class(name)
    accepted = set(inspect.signature(cls).parameters)
    task_kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    net_kwargs = {**task_kwargs.pop("net_kwargs", {}), **{k: v for k, v in kwargs.items() if k not in accepted}}
    return cls(arch=name, net_kwargs=net_kwargs or None, **task_kwargs)


def load_pretrained(name: str, **kwargs) -> L.LightningModule:
    """Published weights ``model.tag`` (see ``list_pretrained()``) as a LightningModule in eval mode.

    The sha256 is checked before loading; ``num_classes=`` other than the weights' resets the classifier.
    """
    entry = get_pretrained(name)
    model = create_model(entry["model"], **{**entry["model_kwargs"], **kwargs, "pretrained": name})
    return model.eval()
