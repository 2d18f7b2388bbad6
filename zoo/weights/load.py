"""Loading published weights: the entry a user means (``True``, a tag, ``model.tag``) resolved once (its files found
and verified, its side-file kwargs merged), then loaded into a net, with a new vocabulary or class list mapped onto
the weights' rows when fine-tuning on other data."""

from __future__ import annotations

import dataclasses
import json

import torch
import torch.nn as nn
from lightning.pytorch.utilities import rank_zero_info

from zoo.weights.manifest import Weights, find_weights, weights_names
from zoo.weights.store import PretrainedError, find_file

__all__ = ["resolve", "weights_for", "load_into"]

HEAD_PREFIX = "head."  # every classifier net names its final layer ``head``


def resolve(weights: str | Weights) -> Weights:
    """``weights`` (a name or an entry) with its files found and verified (sha256) and the side file's kwargs
    merged into ``kwargs``; an entry already resolved is returned as it is, so each file is hashed once."""
    w = weights if isinstance(weights, Weights) else find_weights(weights)
    if w.path is not None:
        return w
    kwargs = w.kwargs
    if w.kwargs_file:  # large kwargs (vocabularies, tokenisers) stored beside the weights
        side = find_file(w.name, w.kwargs_file)
        kwargs = {**kwargs, **json.loads(side.read_text(encoding="utf-8"))}
    return dataclasses.replace(w, kwargs=kwargs, path=find_file(w.name, w.file_spec))


def weights_for(model: str, pretrained: bool | str | Weights) -> Weights:
    """The resolved weights that ``pretrained`` means for registered model ``model``: ``True`` (its only published
    set), a tag (``"cifar10"``), a full name (``"resnet20.cifar10"``) or an entry."""
    if pretrained is True:
        have = weights_names(f"{model}.*")
        if len(have) == 1:
            return resolve(have[0])
        if have:
            raise PretrainedError(
                f"{model} has several published weights ({', '.join(have)}): choose one, e.g. pretrained={have[0]!r}"
            )
        others = ", ".join(sorted({n.split(".")[0] for n in weights_names()})) or "none"
        raise PretrainedError(f"{model} has no published weights; models that have some: {others}")
    if isinstance(pretrained, str):
        pretrained = find_weights(pretrained if "." in pretrained else f"{model}.{pretrained}")
    if not isinstance(pretrained, Weights):
        raise TypeError(f"pretrained is True, False, a tag or a name 'model.tag'; got {pretrained!r}")
    if pretrained.model != model:  # said here: the entry's kwargs would not even build this model
        raise PretrainedError(
            f"weights {pretrained.name!r} are for model {pretrained.model!r}, not {model!r}; "
            f"use create_model({pretrained.model!r}, ...) or weights made for {model} "
            f"(zoo.list_pretrained('{model}*'))"
        )
    return resolve(pretrained)


def load_into(net: nn.Module, weights: Weights, *, arch: str, remap: dict[str, tuple] | None = None) -> None:
    """Load resolved ``weights`` into ``net`` (built as ``arch``).

    ``remap`` is for a model whose vocabularies differ from the weights' (fine-tuning on other data):
    ``{state key: (vocabulary name, weights' entries, model's entries, dims)}``. Along ``dims`` (the axes that
    the vocabulary indexes), the rows of entries both hold are copied and the model's other rows keep their fresh
    initialisation; ``dims=()`` keeps the model's tensor (buffers rebuilt from the vocabulary). What was mapped
    is logged. A classifier ``head`` of another size, with no vocabulary to map it, is kept freshly initialised,
    and that is logged too."""
    from safetensors.torch import load_file

    name = weights.name
    if weights.model != arch:
        raise PretrainedError(
            f"weights {name!r} are for model {weights.model!r}, not {arch!r}; "
            f"use --model {weights.model} or weights made for {arch} (zoo.list_pretrained('{arch}*'))"
        )
    state = load_file(resolve(weights).path)
    own = net.state_dict()
    mapped: dict[str, tuple[int, int]] = {}
    for key, (vocab, old, new, dims) in (remap or {}).items():
        if key in state and key in own:
            state[key], found = _remapped(state[key], own[key], old, new, dims)
            mapped[vocab] = (found, len(new))
    head = [k for k in state if k.startswith(HEAD_PREFIX)]
    reset = any(k in own and own[k].shape != state[k].shape for k in head)
    if reset:
        for k in head:
            del state[k]
    unexpected = [k for k in state if k not in own]
    missing = [k for k in own if k not in state and not (reset and k.startswith(HEAD_PREFIX))]
    bad = [k for k in state if k in own and own[k].shape != state[k].shape]
    if missing or unexpected or bad:
        raise PretrainedError(
            f"weights {name!r} do not fit this {arch}: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"shape mismatch {bad[:5]}; were they built with other model kwargs ({weights.kwargs})?"
        )
    net.load_state_dict(state, strict=not reset)
    for vocab, (found, total) in mapped.items():
        rank_zero_info(
            f"{name}: {vocab}: {found:,} of the data's {total:,} entries are known to the weights and keep their "
            f"learnt rows; {total - found:,} start fresh"
        )
    if reset:
        rank_zero_info(
            f"{name}: classifier reset: the weights have {weights.kwargs.get('num_classes')} classes, "
            f"the model has {getattr(net, 'num_classes', '?')}; backbone loaded"
        )


def _remapped(saved: torch.Tensor, fresh: torch.Tensor, old: list, new: list, dims: tuple[int, ...]):
    """``fresh`` with the rows (along ``dims``) of the entries of ``new`` that ``old`` holds taken from ``saved``;
    and how many entries were found."""
    index = {t: i for i, t in enumerate(old)}
    pairs = [(j, index[t]) for j, t in enumerate(new) if t in index]
    out = fresh.detach().clone()
    if pairs and dims:
        to, src = (torch.tensor(c) for c in zip(*pairs))
        if dims == (0,):
            out[to] = saved[src].to(out.dtype)
        elif dims == (0, 1):
            out[to[:, None], to[None, :]] = saved[src[:, None], src[None, :]].to(out.dtype)
        else:
            raise ValueError(f"cannot map a vocabulary along dims {dims}")
    return out, len(pairs)
