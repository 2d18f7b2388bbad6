"""lightning-zoo: classic architectures as ready-to-train LightningModules, with published weights."""

from __future__ import annotations

import inspect

import lightning as L

import zoo.nets  # noqa: F401  (importing the nets registers every builder)
from zoo._registry import (
    UnknownModelError,
    get_entry,
    model_names,
    register_model,
    register_task,
    task_class,
)
from zoo.checkpoint import CheckpointError, load_checkpoint
from zoo.weights import PretrainedError, Weights, resolve, weights_for, weights_names
from zoo.weights.wandb_artifacts import artifact_checkpoint, is_artifact

__all__ = [
    "list_models",
    "create_model",
    "load_pretrained",
    "load_checkpoint",
    "list_pretrained",
    "get_weights",
    "register_model",
    "register_task",
    "task_class",
    "model_info",
    "Weights",
    "UnknownModelError",
    "PretrainedError",
    "CheckpointError",
]
__version__ = "0.1.0"


def list_models(pattern: str = "*", pretrained: bool = False, task: str | None = None) -> list[str]:
    """Registered model names matching a glob (``"resnet*"``); with ``pretrained=True`` only those with weights;
    ``task`` (``image``, ``sequence``, ``language_model``, ``seq2seq``, ``tagging``) keeps one kind."""
    names = model_names(pattern, task)
    if pretrained:
        have = {n.split(".")[0] for n in weights_names()}
        names = [n for n in names if n in have]
    return names


def list_pretrained(pattern: str = "*") -> list[str]:
    """Published weights ``model.tag`` matching a glob (``"resnet*"``)."""
    return weights_names(pattern)


def get_weights(name: str) -> Weights:
    """Published weights ``model.tag``, or the only set of model ``name``, resolved: their files found and
    sha256-verified, their kwargs complete. Pass the result on as ``pretrained=`` to load it without another
    look-up."""
    return resolve(name) if "." in name else weights_for(name, True)


def model_info(name: str):
    """The registry's entry of model ``name``: builder, task class path, task kind, one-line summary."""
    return get_entry(name)


def create_model(name: str, pretrained: bool | str | Weights | None = False, **kwargs) -> L.LightningModule:
    """Build registered model ``name`` as its LightningModule (``.net`` is the plain ``nn.Module``).

    ``pretrained``: ``True`` for the model's published weights (when it has exactly one set), a tag (``"cifar10"``),
    a full name (``"resnet20.cifar10"``) or a :class:`Weights`; the weights' model kwargs (sizes, vocabulary) come
    with them. Other keyword arguments go to the task (``lr=``, ``num_classes=`` ...) and override those; any the
    task does not take go to the net builder (``zero_init_residual=True``).
    """
    cls = task_class(name)
    if pretrained:
        weights = weights_for(name, pretrained)  # resolved once here, passed down to the task
        # The task takes the weights' architecture itself (Task.take_weights_kwargs). What it maps instead of taking
        # (classes, vocabularies) it takes only when not given, and a default such as num_classes=10 looks given:
        # those come from the weights here, unless passed.
        defaults = {k: weights.kwargs[k] for k in cls.remappable if k in weights.kwargs}
        kwargs = {**defaults, **kwargs, "pretrained": weights}
    accepted = set(inspect.signature(cls).parameters)
    task_kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    net_kwargs = {**task_kwargs.pop("net_kwargs", {}), **{k: v for k, v in kwargs.items() if k not in accepted}}
    return cls(arch=name, net_kwargs=net_kwargs or None, **task_kwargs)


def load_pretrained(name: str | Weights, **kwargs) -> L.LightningModule:
    """Published weights ``model.tag`` (see ``list_pretrained()``) as a LightningModule in eval mode.

    The sha256 is checked before loading; ``num_classes=`` other than the weights' resets the classifier.
    ``"wandb:ENTITY/PROJECT/NAME:ALIAS"`` is a checkpoint that ``train.py --wandb.log_model`` logged to W&B
    (``model-<run id>:best`` or ``:latest``), found staged, cached or downloaded (``zoo.weights.wandb_artifacts``),
    checked against its digests and loaded as :func:`load_checkpoint` loads a ``.ckpt``.
    """
    if is_artifact(name):
        if kwargs:
            raise TypeError(
                f"load_pretrained({name!r}) rebuilds the checkpoint exactly as it was trained and takes no model "
                f"arguments (got {', '.join(kwargs)}); to change them, fine-tune it with train.py"
            )
        return load_checkpoint(artifact_checkpoint(name))
    weights = resolve(name)
    return create_model(weights.model, **{**kwargs, "pretrained": weights}).eval()
