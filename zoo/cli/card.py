"""Model cards: what ``zoo info`` shows of a registered model or of published weights, from the registry and the
manifest (never typed by hand: the README's tables come from the same place)."""

from __future__ import annotations

import importlib

import zoo
from zoo.weights import read_manifest
from zoo.weights.measure import split_evaluation

__all__ = ["model_card", "count_flops", "data_licence", "lineage_seconds", "fine_tuned_from"]


def count_flops(net, shape: list[int]) -> float:
    """Multiply-adds (the papers' convention) of one forward pass on a zero input of ``shape`` (C, H, W)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net.eval()(torch.zeros(1, *shape))
    return counter.get_total_flops() / 2


def lineage_seconds(training: dict) -> float:
    """Training seconds of a manifest ``training`` record and of every published weights it started from."""
    base = training.get("starts_from")
    return training["wall_time_s"] + (lineage_seconds(base["training"]) if base else 0.0)


def fine_tuned_from(training: dict) -> str:
    """``"; fine-tuned from `<weights>`: N min in all"`` for weights trained from published ones, else ``""``."""
    base = training.get("starts_from")
    return f"; fine-tuned from `{base['weights']}`: {lineage_seconds(training) / 60:.0f} min in all" if base else ""


def _data_class(class_path: str) -> type | None:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name, None)


def data_licence(class_path: str) -> str:
    licence = getattr(_data_class(class_path), "licence", None)
    return licence or "not stated: check the dataset's terms before you publish results"


def model_card(name: str) -> dict:
    """What ``zoo info`` shows: registered model ``name`` or published weights ``model.tag``, from the registry and
    the manifest (never typed by hand: the README's tables come from the same place)."""
    manifest = read_manifest()
    weights = zoo.get_weights(name) if name in manifest else None
    model = weights.model if weights else name
    entry = zoo.model_info(model)  # raises UnknownModelError, listing the names
    card: dict = {"model": model, "task": entry.task, "kind": entry.kind, "architecture": entry.summary}
    if weights:
        net = zoo.load_pretrained(weights).net
        data = weights.data or {}
        splits = split_evaluation(_data_class(data["class_path"]), data.get("init_args")) if data else {}
        card |= {
            "weights": weights.name,
            "file": weights.file,
            "sha256": weights.sha256,
            "dtype": weights.dtype,
            "classes": weights.classes,
            "metrics": weights.metrics,
            "evaluation": {**weights.evaluation, **splits},
            "recipe": weights.recipe,
            "data": data.get("class_path"),
            "data_args": data.get("init_args"),
            "data_licence": data_licence(data["class_path"]) if data else None,
            "training": weights.training,
        }
        shape = weights.preprocessing.get("input_size")
    else:
        net = zoo.create_model(model).net
        shape = [3, 32, 32] if entry.kind == "image" else None
        card["published_weights"] = [w.name for w in manifest.values() if w.model == model]
    if net is not None:
        card["params"] = sum(p.numel() for p in net.parameters())
    if shape and net is not None:
        card["mflops"] = round(count_flops(net, shape) / 1e6, 1)
        card["input_size"] = shape
    return card
