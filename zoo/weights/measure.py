"""Measuring weights on the data they were trained on: the DataModule a checkpoint records (as a manifest's
``data``), rebuilt on this machine, and a test or validation pass through a plain Trainer. ``zoo publish`` and
``zoo evaluate`` measure with it, so the published and the re-measured figures come from the same code."""

from __future__ import annotations

import importlib
import inspect
import json

import lightning as L

from zoo.checkpoint import CheckpointError

__all__ = ["data_spec", "build_datamodule", "evaluate", "split_evaluation"]


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


def split_evaluation(data_class: type | None, init_args: dict) -> dict[str, str]:
    """``val_split`` and ``test_split`` in words, as DataModule ``data_class`` describes the splits that
    ``init_args`` make (``describe_splits``); empty where it does not describe them."""
    describe = getattr(data_class, "describe_splits", None)
    if describe is None:
        return {}
    words = describe(init_args or {})
    return {
        "val_split": f"{words['val']}, used for model selection",
        "test_split": f"{words['test']}, measured once by `zoo publish`",
    }
