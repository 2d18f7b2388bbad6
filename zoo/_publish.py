"""Turn a finished run's Lightning checkpoint into published weights: a safetensors file of the net and a
manifest entry whose metrics are measured here, on the test split, never typed by hand."""

from __future__ import annotations

import importlib
import inspect
import json
import time
from pathlib import Path

import lightning as L
import torch
from safetensors.torch import save_file

import zoo
from zoo._pretrained import checkpoint_dir, read_manifest, sha256_of
from zoo._registry import UnknownModelError

__all__ = [
    "publish",
    "model_from_checkpoint",
    "headline_metric",
    "read_checkpoint",
    "CheckpointError",
    "evaluate",
    "data_spec",
    "build_datamodule",
]


class CheckpointError(RuntimeError):
    """A ``.ckpt`` file is missing, corrupt, unsafe to load, or not from ``train.py``."""


def read_checkpoint(path: str | Path) -> dict:
    """``torch.load(weights_only=True)``: nothing in the file is executed; a file that needs more is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 (truncated zip, pickle refused by weights_only, ...)
        raise CheckpointError(
            f"{path} cannot be read safely ({type(e).__name__}: {str(e).splitlines()[0]}). It is corrupt, truncated, "
            "or holds Python objects that weights_only=True refuses; it is not loaded unsafely."
        ) from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "arch" not in ckpt.get("hyper_parameters", {}):
        raise CheckpointError(f"{path} is not a lightning-zoo training checkpoint (no state_dict / model arch)")
    return ckpt


# Hyperparameters that only initialise weights which the checkpoint's state_dict then replaces: rebuilding with them
# would need the published weights file or the word-vector file on this machine, for nothing.
INIT_ONLY = ("pretrained", "word_vectors")


def model_from_checkpoint(ckpt: dict, path: str | Path) -> L.LightningModule:
    """The task of a checkpoint read by :func:`read_checkpoint` (``path`` names it in errors): its class from
    ``arch``, rebuilt from its hyperparameters, its ``state_dict`` loaded strictly."""
    hp = ckpt["hyper_parameters"]
    try:
        cls = zoo.task_class(hp["arch"])
    except UnknownModelError as e:
        raise CheckpointError(f"{path} holds model {hp['arch']!r}, which is not registered here: {e}") from e
    accepted = inspect.signature(cls).parameters
    kwargs = {k: v for k, v in hp.items() if not k.startswith("_")}  # LightningCLI's _class_path, _instantiator
    model = cls(**{**kwargs, **{k: None for k in INIT_ONLY if k in accepted}})
    state, own = ckpt["state_dict"], model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"the state_dict of {path} does not fit {cls.__name__}({hp['arch']!r}) rebuilt from its hyperparameters: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, shape (checkpoint vs model) {shapes[:5]}"
        )
    model.load_state_dict(state)
    return model


def data_spec(ckpt: dict) -> dict:
    """The DataModule a checkpoint was trained on, as ``{"class_path", "init_args"}`` (without machine paths)."""
    hp = ckpt.get("datamodule_hyper_parameters") or {}
    class_path = hp.get("_class_path") or ckpt.get("datamodule_class_path")  # train.py's, or the task's record
    if not class_path:
        raise CheckpointError("the checkpoint does not say which DataModule it was trained with; train with train.py")
    args = {k: v for k, v in hp.items() if not k.startswith("_") and k not in ("data_dir", "num_workers")}
    return {"class_path": class_path, "init_args": json.loads(json.dumps(args))}  # tuples as the manifest has them


def build_datamodule(spec: dict, data_dir: str | None = None) -> L.LightningDataModule:
    """Rebuild a DataModule from :func:`data_spec` (a manifest's ``data``), reading from ``data_dir``."""
    module, _, name = spec["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    accepted = inspect.signature(cls).parameters
    extra = {"num_workers": 0, **({"data_dir": data_dir} if data_dir else {})}
    return cls(**spec["init_args"], **{k: v for k, v in extra.items() if k in accepted})


def evaluate(model: L.LightningModule, dm: L.LightningDataModule, stage: str) -> dict[str, float]:
    trainer = L.Trainer(
        accelerator="auto",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    run = trainer.test if stage == "test" else trainer.validate
    return {k: round(float(v), 6) for k, v in run(model, datamodule=dm, verbose=False)[0].items()}


FP16_TOLERANCE = 0.05  # percentage points of test accuracy that fp16 storage may change
LARGE_KWARG = 2000  # characters of JSON: model kwargs larger than this go to <name>.kwargs.json


def headline_metric(cls: type) -> tuple[str, float]:
    """The metric a task selects on, as measured on test, and its scale to points: fractions (accuracy, F1) x100,
    BLEU (already 0-100) x1, a loss (nats) x100 (so a point is 0.01 nats)."""
    key = "test_" + cls.monitor[0].removeprefix("val_")
    return key, 1.0 if key == "test_bleu" else 100.0


def publish(
    ckpt_path: str | Path,
    tag: str,
    recipe: str,
    data_dir: str | None = None,
    out_dir: Path | None = None,
    fp16_tolerance: float | None = FP16_TOLERANCE,
) -> dict:
    """Write ``<arch>.<tag>.safetensors`` and its manifest entry; returns the entry.

    The weights are stored in float16 when that changes the test accuracy by at most ``fp16_tolerance``
    percentage points (a test loss, for language models, by at most ``fp16_tolerance / 100``; both measured
    here; ``None`` keeps float32). The published metrics are always those of the stored weights."""
    ckpt = read_checkpoint(ckpt_path)
    hp = ckpt["hyper_parameters"]
    arch = hp["arch"]
    model = model_from_checkpoint(ckpt, ckpt_path).eval()
    cls = type(model)
    dm = build_datamodule(data_spec(ckpt), data_dir)
    t0 = time.time()
    val = evaluate(model, dm, "validate")
    test = evaluate(model, dm, "test")
    state = {k: v.detach().contiguous().cpu() for k, v in model.net.state_dict().items()}
    key, scale = headline_metric(cls)
    dtype, storage = "float32", {f"float32_{key}": test[key]}
    if fp16_tolerance is not None:
        half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        model.net.load_state_dict(half)  # copied into the fp32 parameters, as loading the published file does
        val16, test16 = evaluate(model, dm, "validate"), evaluate(model, dm, "test")
        storage[f"float16_{key}"] = test16[key]
        storage["tolerance_points"] = fp16_tolerance
        if abs(test16[key] - test[key]) * scale <= fp16_tolerance + 1e-9:
            dtype, state, val, test = "float16", half, val16, test16
    eval_s = time.time() - t0
    out_dir = out_dir or checkpoint_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"{arch}.{tag}"
    file = out_dir / f"{name}.safetensors"
    save_file(state, str(file), metadata={"model": arch, "name": name})
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
        "classes": list(getattr(dm, "classes", [])),
        "preprocessing": _preprocessing(dm),
        "metrics": {
            **{k: v for k, v in test.items() if k.startswith("test_")},
            **{k: v for k, v in val.items() if k.startswith("val_")},
        },
        "evaluation": {
            "test_split": "the dataset's official test split, measured once by `zoo publish`",
            "val_split": f"held out of train by {type(dm).__name__} ({split}), used for model selection",
            "checkpoint": {
                "file": Path(ckpt_path).name,
                "epoch": ckpt.get("epoch"),
                "step": ckpt.get("global_step"),
                "selected_on": f"{cls.monitor[0]} ({cls.monitor[1]})" if Path(ckpt_path).stem == "best" else "final",
            },
            "seeds": 1,
            "command": f"zoo publish {ckpt_path} --tag {tag} --recipe {recipe}",
            "eval_seconds": round(eval_s, 1),
        },
        "recipe": recipe,
        "data": data_spec(ckpt),
        "training": {
            "wall_time_s": round(record.get("wall_time_s", 0.0), 1),
            "steps": ckpt.get("global_step"),
            "runs": record.get("runs", []),
        },
    }
    manifest = read_manifest(out_dir)
    manifest[name] = entry
    (out_dir / "manifest.json").write_text(json.dumps(dict(sorted(manifest.items())), indent=2) + "\n")
    return entry


def _preprocessing(dm: L.LightningDataModule) -> dict:
    """How the image DataModules read an image for evaluation (their ``preprocessing``); nothing for text data."""
    return dict(getattr(dm, "preprocessing", None) or {})
