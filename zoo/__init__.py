"""lightning-zoo: classic architectures as ready-to-train LightningModules, with published weights."""

from __future__ import annotations

import importlib
import inspect

import lightning as L

from zoo._checkpoint import load_checkpoint
from zoo._pretrained import PretrainedError, get_pretrained, pretrained_names
from zoo._publish import CheckpointError
from zoo._registry import UnknownModelError, get_entry, model_names, register_model

__all__ = [
    "list_models",
    "create_model",
    "load_pretrained",
    "load_checkpoint",
    "list_pretrained",
    "register_model",
    "task_class",
    "UnknownModelError",
    "PretrainedError",
    "CheckpointError",
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


def create_model(name: str, pretrained: bool | str | None = False, **kwargs) -> L.LightningModule:
    """Build registered model ``name`` as its LightningModule (``.net`` is the plain ``nn.Module``).

    ``pretrained``: ``True`` for the model's published weights (when it has exactly one set), a tag (``"cifar10"``)
    or a full name (``"resnet20.cifar10"``); the weights' model kwargs (sizes, vocabulary) come with them. Other
    keyword arguments go to the task (``lr=``, ``num_classes=`` ...) and override those; any the task does not take
    go to the net builder (``zero_init_residual=True``).
    """
    cls = task_class(name)
    if pretrained:
        full, entry = _weights(name, pretrained)
        kwargs = {**entry["model_kwargs"], **kwargs, "pretrained": full}
    accepted = set(inspect.signature(cls).parameters)
    task_kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    net_kwargs = {**task_kwargs.pop("net_kwargs", {}), **{k: v for k, v in kwargs.items() if k not in accepted}}
    return cls(arch=name, net_kwargs=net_kwargs or None, **task_kwargs)


def load_pretrained(name: str, **kwargs) -> L.LightningModule:
    """Published weights ``model.tag`` (see ``list_pretrained()``) as a LightningModule in eval mode.

    The sha256 is checked before loading; ``num_classes=`` other than the weights' resets the classifier.
    """
    return create_model(get_pretrained(name)["model"], **{**kwargs, "pretrained": name}).eval()


def _weights(model: str, pretrained: bool | str) -> tuple[str, dict]:
    """The full name ``model.tag`` and the entry of the weights that ``pretrained`` (True, a tag, a full name)
    means for ``model``."""
    if pretrained is True:
        have = pretrained_names(f"{model}.*")
        if len(have) == 1:
            return have[0], get_pretrained(have[0])
        if have:
            raise PretrainedError(
                f"{model} has several published weights ({', '.join(have)}): choose one, e.g. pretrained={have[0]!r}"
            )
        others = ", ".join(list_models(pretrained=True)) or "none"
        raise PretrainedError(f"{model} has no published weights; models that have some: {others}")
    if not isinstance(pretrained, str):
        raise TypeError(f"pretrained is True, False, a tag or a name 'model.tag'; got {pretrained!r}")
    full = pretrained if "." in pretrained else f"{model}.{pretrained}"
    entry = get_pretrained(full)  # an unknown name raises here, listing the available ones
    if (owner := entry["model"]) != model:  # said here: the entry's kwargs would not even build this model
        raise PretrainedError(
            f"weights {full!r} are for model {owner!r}, not {model!r}; "
            f"use create_model({owner!r}, ...) or weights made for {model} "
            f"(zoo.list_pretrained('{model}*'))"
        )
    return full, entry
