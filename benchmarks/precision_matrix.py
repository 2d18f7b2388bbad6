"""The precision matrix: one training step of a registered model under a given precision, through a real
``lightning.Trainer`` on a tiny batch, reported as ``pass``, ``refused`` (the message says what to use instead) or
``fail`` (an error, NaN weights, or weights that did not move). Shared by ``tests/test_precision.py`` (CPU, in
``make test``) and ``benchmarks/gpu_check.py`` (the same cells on CUDA).

Each family gets toy data in its real format, written once into a work folder (the text tasks build their net in
``setup`` from the DataModule's vocabularies, so a step goes through the real DataModule): 32x32 images in memory,
a names corpus, a character text, a tab-separated parallel corpus, CoNLL-2003 columns. Nets are the registered
architectures; the text ones with small widths (the precision paths are the same at any width).

``FP16_AMP`` is a column of its own: real float16 autocast with a ``GradScaler``. Lightning turns ``16-mixed`` into
``bf16-mixed`` on CPU (with a warning), so on CPU this column is the only place fp16 autocast runs; it trains until
the scaler lets a step through (its first scales overflow the gradients of some nets: those skipped steps are
announced by the task, see ``zoo.tasks._precision``).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from _common import quiet_lightning, quiet_trainer
from lightning.pytorch.plugins import MixedPrecision
from torch.utils.data import DataLoader, TensorDataset

import zoo
from zoo._registry import get_entry
from zoo.tasks._precision import PrecisionGuard, PrecisionRefused

__all__ = [
    "PRECISIONS",
    "FP16_AMP",
    "Cell",
    "run_cell",
    "run_matrix",
    "markdown_table",
    "ToyData",
    "LARGE",
    "tiny_model",
]

PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "bf16-true", "16-true", "64-true")
FP16_AMP = "16-mixed+scaler"  # float16 autocast + GradScaler as a plugin: real fp16 AMP, on CPU too
BATCH = 2
# Nets whose float16 and float64 cells are slow on CPU (fp16 kernels are 10-100x slower than fp32 there): one cell
# took 1.5-26 s here (1 thread, batch 2); "all": every cell is (DenseNet-BC-250, 5 s in fp32). The tests mark these
# cells slow; on a GPU they are as quick as the others.
LARGE = {
    name: "fp16/fp64"
    for name in (
        "densenet121", "densenet_bc_100_12", "googlenet", "preact_resnet18", "resnet18", "resnet34", "resnet50",
        "resnet110", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
    )
} | {"densenet_bc_250_24": "all"}  # fmt: skip
MAX_SCALER_STEPS = 24  # GradScaler starts at 2**16 and halves per overflowing step: enough to settle

# small widths for the text families (task keyword arguments); the image nets are the registered ones
TINY = {
    "sequence": {"embed_dim": 8, "hidden_size": 8},
    "language_model": {"embed_dim": 8, "hidden_size": 8, "dropout": 0.0},
    "seq2seq": {"embed_dim": 8, "hidden_size": 8, "dropout": 0.0},
    "tagging": {"word_dim": 8, "hidden_size": 8, "dropout": 0.0, "char_dim": 4, "char_hidden": 4},
}


@dataclass
class Cell:
    model: str
    precision: str
    status: str  # "pass" | "refused" | "fail"
    detail: str = ""  # the refusal's message, the failure, or what the pass involved (steps skipped ...)
    seconds: float = 0.0
    skipped: int = 0  # optimiser steps the GradScaler skipped
    notes: list[str] = field(default_factory=list)  # warnings the run gave about precision

    @property
    def short(self) -> str:
        return self.status if not self.detail else f"{self.status} ({self.detail})"


class TinyImages(L.LightningDataModule):
    """``n`` random 32x32 images of ``num_classes`` classes, in memory, as batches of ``BATCH``."""

    def __init__(self, n: int = BATCH, num_classes: int = 10, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, 32, 32, generator=g)
        self.y = torch.arange(n) % num_classes
        self.classes = [f"c{i}" for i in range(num_classes)]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x, self.y), batch_size=BATCH, shuffle=False)


class ToyData:
    """Toy data of every family in its real on-disk format under ``root``, written on first use; ``datamodule(
    kind, n)`` gives a DataModule whose train split has at least ``n`` batches of ``BATCH``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _names(self) -> Path:
        d = self.root / "names" / "names"
        if not d.exists():
            d.mkdir(parents=True)
            # distinct names (the DataModule drops repeats): Japanese-like syllable pairs, Russian-like -ov surnames
            syllables = ["ka", "to", "mi", "sa", "no", "ri"]
            words = {
                "Japanese": [a.title() + b for a in syllables for b in syllables],
                "Russian": [a.title() + b + "ov" for a in ("Iv", "Pet", "Pop", "Orl", "Vol", "Sok") for b in "aeiou"],
            }
            for lang, names in words.items():
                (d / f"{lang}.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
        return d.parent

    def _text(self) -> Path:
        p = self.root / "charlm.txt"
        if not p.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            p.write_text("ROMEO:\nThe quick brown fox jumps over the lazy dog.\n" * 40, encoding="utf-8")
        return p

    def _pairs(self) -> Path:
        p = self.root / "pairs.tsv"
        if not p.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            p.write_text("".join(f"ein hund {i % 7} .\ta dog {i % 7} .\n" for i in range(120)), encoding="utf-8")
        return p

    def _conll(self) -> Path:
        d = self.root / "conll"
        if not d.exists():
            d.mkdir(parents=True)
            rows = [("Peter", "I-PER"), ("Smith", "I-PER"), ("visited", "O"), ("Paris", "I-LOC"), (".", "O")]
            sentence = "\n".join(f"{w} NNP I-NP {t}" for w, t in rows) + "\n\n"
            for split, n in (("train", 60), ("dev", 4), ("test", 4)):
                (d / f"{split}.txt").write_text("-DOCSTART- -X- O O\n\n" + sentence * n, encoding="utf-8")
        return d

    def datamodule(self, name: str) -> L.LightningDataModule:
        kind = get_entry(name).kind
        b = {"batch_size": BATCH}
        if kind == "image":
            return TinyImages(n=BATCH * MAX_SCALER_STEPS)
        if kind == "sequence":
            from datamodules.names import NamesDataModule

            return NamesDataModule(str(self._names()), val_fraction=0.1, test_fraction=0.1, **b)
        if kind == "language_model":
            from datamodules.charlm import CharLMDataModule

            return CharLMDataModule(str(self._text()), seq_len=8, eval_batch_size=BATCH, **b)
        if kind == "seq2seq":
            from datamodules.translation import TranslationDataModule

            if name == "seq_autoencoder":  # one side: each line is its own target
                return TranslationDataModule(source=str(self._text()), min_freq=1, src_lang="en", **b)
            return TranslationDataModule(str(self._pairs()), min_freq=1, **b)
        if kind == "tagging":
            from datamodules.conll import CoNLLDataModule

            return CoNLLDataModule(str(self._conll()), **b)
        raise ValueError(f"no toy data for task kind {kind!r} (model {name})")


def tiny_model(name: str) -> L.LightningModule:
    """Registered model ``name`` as its task, with the small widths of ``TINY`` for the text families."""
    return zoo.create_model(name, **TINY.get(get_entry(name).kind, {}))


class _Watch(L.Callback):
    """Keeps the weights at the start of training; with ``until_a_step``, stops the run once they have moved (the
    GradScaler let a step through)."""

    def __init__(self, until_a_step: bool) -> None:
        self.until_a_step = until_a_step
        self.before: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self.before = {k: p.detach().clone() for k, p in pl_module.named_parameters()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        moved = any(not torch.equal(self.before[k], p.detach()) for k, p in pl_module.named_parameters())
        if moved and self.until_a_step:
            trainer.should_stop = True  # the scaler settled: a step went through


def trainer_for(precision: str, device: str, root: Path, max_steps: int, callbacks: list) -> L.Trainer:
    kw: dict = {"precision": precision}
    if precision == FP16_AMP:
        kw = {"plugins": [MixedPrecision("16-mixed", device, torch.amp.GradScaler(device))]}
    return quiet_trainer(
        accelerator=device,
        devices=1,
        max_steps=max_steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=root,
        callbacks=callbacks,
        **kw,
    )


def scaled(precision: str, device: str) -> bool:
    """Whether a cell's steps go through a GradScaler, whose first steps overflow float16 and are skipped (so the
    cell trains until one goes through): ``FP16_AMP``, and ``16-mixed`` on CUDA, which Lightning runs with one."""
    return precision == FP16_AMP or (precision == "16-mixed" and device == "cuda")


def run_cell(name: str, precision: str, data: ToyData, device: str = "cpu") -> Cell:
    """One cell: build ``name``, train it one step (for ``FP16_AMP``, until the scaler lets a step through) under
    ``precision`` on ``device``; ``pass`` when every weight is finite and some changed."""
    start = time.perf_counter()
    L.seed_everything(0, verbose=False)
    amp = scaled(precision, device)
    watch = _Watch(until_a_step=amp)
    notes: list[str] = []
    try:
        model, dm = tiny_model(name), data.datamodule(name)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer = trainer_for(precision, device, data.root / "runs", MAX_SCALER_STEPS if amp else 1, [watch])
            trainer.fit(model, dm)
        notes = [str(w.message) for w in caught if _about_precision(str(w.message))]
    except PrecisionRefused as e:
        return Cell(name, precision, "refused", str(e), time.perf_counter() - start)
    except Exception as e:  # noqa: BLE001 - any other error is the cell's failure, reported in the table
        first = (str(e).splitlines() or [""])[0][:200]
        return Cell(name, precision, "fail", f"{type(e).__name__}: {first}", _since(start))
    params = dict(model.named_parameters())
    bad = [k for k, p in params.items() if not torch.isfinite(p).all()]
    changed = [k for k, p in params.items() if not torch.equal(watch.before[k].to(p.device), p.detach())]
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in params.values()})
    guard = next((cb for cb in trainer.callbacks if isinstance(cb, PrecisionGuard)), None)
    skipped = guard.skips.skipped if guard is not None else 0
    announced = any("skipped" in n for n in notes)
    fail = [
        f"non-finite weights: {', '.join(bad[:3])}" if bad else "",
        "no weight changed" if not changed else "",
        f"{skipped} steps skipped without a word" if skipped and not announced else "",
    ]
    if any(fail):
        return Cell(name, precision, "fail", "; ".join(f for f in fail if f), _since(start), skipped, notes)
    ran_as = str(trainer.precision)
    detail = ", ".join(
        ([f"ran as {ran_as}"] if ran_as != precision and not amp else [])
        + ([f"{skipped} scaler steps skipped, announced"] if skipped else [])
    )
    cell = Cell(name, precision, "pass", detail, _since(start), skipped, notes)
    cell.notes.append(f"weights {'/'.join(dtypes)}, {len(changed)}/{len(params)} tensors moved")
    return cell


def _since(start: float) -> float:
    return time.perf_counter() - start


def _about_precision(message: str) -> bool:
    return any(w in message for w in ("precision", "GradScaler", "float16", "bf16", "fp16", "AMP"))


def run_matrix(
    models: list[str], precisions: list[str], data: ToyData, device: str = "cpu", echo: bool = False
) -> list[Cell]:
    cells = []
    for name in models:
        for precision in precisions:
            cell = run_cell(name, precision, data, device)
            if echo:
                print(f"{name:22s} {precision:16s} {cell.seconds:7.2f}s  {cell.short}", flush=True)
            cells.append(cell)
    return cells


def markdown_table(cells: list[Cell]) -> str:
    """Models x precisions as a markdown table; a cell is its status (refusals and failures with their reason)."""
    precisions = list(dict.fromkeys(c.precision for c in cells))
    models = list(dict.fromkeys(c.model for c in cells))
    at = {(c.model, c.precision): c for c in cells}
    lines = ["| model | " + " | ".join(precisions) + " |", "|---" * (len(precisions) + 1) + "|"]
    for m in models:
        row = [at[m, p].short if (m, p) in at else "" for p in precisions]
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python benchmarks/precision_matrix.py [--device cpu] [--models NAME ...] [--precisions P ...]``: the matrix
    as a markdown table (the README's), each cell's time and notes on stderr as it runs; exit 1 if a cell failed."""
    import argparse
    import sys
    import tempfile

    ap = argparse.ArgumentParser(description="the precision matrix: one training step per model and precision")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", nargs="+", default=None, help="default: every registered model")
    default = [*PRECISIONS, FP16_AMP]
    ap.add_argument("--precisions", nargs="+", default=default, help=f"default: {' '.join(default)}")
    args = ap.parse_args(argv)
    cells = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models or zoo.list_models():
            for precision in args.precisions:
                cell = run_cell(name, precision, ToyData(Path(tmp)), args.device)
                print(f"{name:20s} {precision:16s} {cell.seconds:6.2f}s {cell.short}; {'; '.join(cell.notes)}",
                      file=sys.stderr, flush=True)  # fmt: skip
                cells.append(cell)
    print(markdown_table(cells))
    return int(any(c.status == "fail" for c in cells))


if __name__ == "__main__":
    quiet_lightning()
    raise SystemExit(main())
