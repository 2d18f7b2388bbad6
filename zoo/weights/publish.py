"""Turn a finished run's Lightning checkpoint into published weights: a safetensors file of the net and a
manifest entry whose metrics are measured here, on the test split, never typed by hand."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import lightning as L
from safetensors.torch import save_file

from datamodules.contract import Labelled, Preprocessed
from zoo.callbacks.divergence import non_finite
from zoo.checkpoint import CheckpointError, model_from_checkpoint, read_checkpoint
from zoo.weights.manifest import Weights, read_manifest, write_manifest
from zoo.weights.measure import build_datamodule, data_spec, evaluate, split_evaluation
from zoo.weights.store import checkpoint_dir, sha256_of

__all__ = ["publish", "FP16_TOLERANCE"]

FP16_TOLERANCE = 0.05  # points of the headline metric (Task.headline_metric) that fp16 storage may change
LARGE_KWARG = 2000  # characters of JSON: model kwargs larger than this go to <name>.kwargs.json


def publish(
    ckpt_path: str | Path,
    tag: str,
    recipe: str,
    data_dir: str | None = None,
    out_dir: Path | None = None,
    fp16_tolerance: float | None = FP16_TOLERANCE,
    other_seeds: tuple[str | Path, ...] = (),
    source: str | None = None,
) -> Weights:
    """Write ``<arch>.<tag>.safetensors`` and its manifest entry; returns the entry.

    ``source``: what the user named instead of ``ckpt_path`` (a ``wandb:`` artifact, whose local copy ``ckpt_path``
    is), recorded in the entry's checkpoint and command.

    ``other_seeds``: checkpoints of the same recipe trained with other seeds. Their test headline metric is
    measured too and the entry records every value with their mean and standard deviation (the published weights
    are ``ckpt_path``'s: choose it by validation, e.g. the median seed, never by test).

    The weights are stored in float16 when that changes the test accuracy by at most ``fp16_tolerance``
    percentage points (a test loss, for language models, by at most ``fp16_tolerance / 100``; both measured
    here; ``None`` keeps float32). The published metrics are always those of the stored weights."""
    ckpt = read_checkpoint(ckpt_path)
    if bad := non_finite(ckpt["state_dict"]):
        raise CheckpointError(
            f"{ckpt_path} holds non-finite weights ({len(bad)} tensors with NaN or inf: {', '.join(bad[:3])}): "
            "the run diverged; publish a checkpoint from before it, or train again"
        )
    hp = ckpt["hyper_parameters"]
    arch = hp["arch"]
    model = model_from_checkpoint(ckpt, ckpt_path).eval()
    cls = type(model)
    spec = data_spec(ckpt)
    dm = build_datamodule(spec, data_dir)
    t0 = time.time()
    val = evaluate(model, dm, "validate")
    test = evaluate(model, dm, "test")
    state = {k: v.detach().contiguous().cpu() for k, v in model.net.state_dict().items()}
    key, scale = cls.headline_metric()
    dtype, storage = "float32", {f"float32_{key}": test[key]}
    if fp16_tolerance is not None:
        half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        model.net.load_state_dict(half)  # copied into the fp32 parameters, as loading the published file does
        val16, test16 = evaluate(model, dm, "validate"), evaluate(model, dm, "test")
        storage[f"float16_{key}"] = test16[key]
        storage["tolerance_points"] = fp16_tolerance
        if abs(test16[key] - test[key]) * scale <= fp16_tolerance + 1e-9:
            dtype, state, val, test = "float16", half, val16, test16
    model.net.load_state_dict(state)  # the weights as stored
    tta = {}  # test-time augmentation, measured beside the plain figures (which stay the headline)
    for mode in getattr(cls, "tta_modes", ()):
        model.tta = mode
        tta |= {f"{k}_tta_{mode}": v for k, v in evaluate(model, dm, "test").items() if k.startswith("test_")}
        model.tta = None
    over_seeds = _over_seeds(test[key], other_seeds, arch, key, dm) if other_seeds else None
    eval_s = time.time() - t0
    out_dir = out_dir or checkpoint_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"{arch}.{tag}"
    file = out_dir / f"{name}.safetensors"
    save_file(state, str(file), metadata={"model": arch, "name": name})
    umask = os.umask(0)
    os.umask(umask)
    file.chmod(0o666 & ~umask)  # safetensors creates its files 0600: weights in a shared folder are for everyone
    record = ckpt.get("callbacks", {}).get("TrainingRecord", {})
    model_kwargs = {k: hp[k] for k in cls.weights_kwargs if hp.get(k) is not None}
    large = {k: v for k, v in model_kwargs.items() if len(json.dumps(v)) > LARGE_KWARG}
    side_file = {}
    if large:  # vocabularies, tokenisers: beside the weights, so that the manifest stays readable
        side = out_dir / f"{name}.kwargs.json"
        side.write_text(json.dumps(large, ensure_ascii=False) + "\n", encoding="utf-8")
        model_kwargs = {k: v for k, v in model_kwargs.items() if k not in large}
        side_file = {"model_kwargs_file": {"file": side.name, "sha256": sha256_of(side), "keys": sorted(large)}}
    dm_hp = ckpt.get("datamodule_hyper_parameters") or {}
    split = ", ".join(f"{k}={dm_hp[k]}" for k in ("val_size", "val_fraction", "split_seed") if k in dm_hp)
    entry = {
        "file": file.name,
        "sha256": sha256_of(file),
        "model": arch,
        "model_kwargs": model_kwargs,
        **side_file,
        "params": sum(p.numel() for p in model.net.parameters()),
        "dtype": dtype,
        "dtype_check": storage,
        "classes": list(dm.classes or []) if isinstance(dm, Labelled) else [],
        "preprocessing": dict(dm.preprocessing or {}) if isinstance(dm, Preprocessed) else {},  # images only
        "metrics": {
            **{k: v for k, v in test.items() if k.startswith("test_")},
            **tta,
            **{k: v for k, v in val.items() if k.startswith("val_")},
        },
        "evaluation": {
            "test_split": "the dataset's official test split, measured once by `zoo publish`",
            "val_split": f"held out of train by {type(dm).__name__} ({split}), used for model selection",
            **split_evaluation(type(dm), spec["init_args"]),
            "checkpoint": {
                "file": Path(ckpt_path).name,
                "epoch": ckpt.get("epoch"),
                "step": ckpt.get("global_step"),
                "selected_on": f"{cls.monitor[0]} ({cls.monitor[1]})" if Path(ckpt_path).stem == "best" else "final",
                **({"source": source} if source else {}),
            },
            "seeds": 1 + len(other_seeds),
            **({"over_seeds": over_seeds} if over_seeds else {}),
            "command": f"zoo publish {source or ckpt_path} --tag {tag} --recipe {recipe}"
            + (" --other-seeds " + " ".join(map(str, other_seeds)) if other_seeds else ""),
            "eval_seconds": round(eval_s, 1),
        },
        "recipe": recipe,
        "data": data_spec(ckpt),
        "training": {
            "wall_time_s": round(record.get("wall_time_s", 0.0), 1),
            "steps": ckpt.get("global_step"),
            "runs": record.get("runs", []),
            # [epoch, training seconds, monitored value] up to this checkpoint: the time-to-accuracy of the README
            **({"curve": {"monitor": record["monitor"], "points": record["curve"]}} if record.get("curve") else {}),
            # the published weights it was fine-tuned from, with their training (its own starts_from included)
            **({"starts_from": record["starts_from"]} if record.get("starts_from") else {}),
        },
    }
    weights = Weights.from_json(name, entry)
    write_manifest({**read_manifest(out_dir), name: weights}, out_dir)
    return weights


def _over_seeds(published: float, others: tuple, arch: str, key: str, dm: L.LightningDataModule) -> dict:
    """The test headline metric of the published weights and of each other seed's checkpoint (as trained)."""
    values = [published]
    for path in others:
        model = model_from_checkpoint(read_checkpoint(path), path).eval()
        if model.hparams.arch != arch:
            raise ValueError(f"{path} holds a {model.hparams.arch}, not a {arch}: not another seed of this recipe")
        values.append(evaluate(model, dm, "test")[key])
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return {
        "metric": key,
        "values": values,  # the published weights (as stored) first, then the other seeds' checkpoints
        "checkpoints": [str(p) for p in others],
        "mean": round(mean, 6),
        "std": round(std, 6),  # sample standard deviation (n - 1)
    }
