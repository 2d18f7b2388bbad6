"""GPU check, one command (under 10 minutes on one GPU): what the CPU tests cannot show, run on the device.

1. the precision matrix (``benchmarks/precision_matrix.py``): every registered model x 32-true, 16-mixed (real
   float16 autocast with a GradScaler on CUDA), bf16-mixed, bf16-true, 16-true, 64-true, one training step through
   a real ``lightning.Trainer`` on a tiny batch (its 32-true column is one training step of every model);
2. a training step of every image net at training size (batch 128, 32x32) in float32 and under autocast: ms/step;
3. translation (beam 5 and greedy) and tagging (CRF Viterbi) with the published weights on the device, against
   the same calls on CPU (the decoded outputs must agree);
4. a short ResNet-20 run: on CIFAR-10 when ``$ZOO_DATA_DIR/cifar10`` holds it (``--data-dir``), fed once by the
   per-image DataLoader and once by the batched pipeline on the device; else on a learnable synthetic set.

It prints each part as a markdown table and exits 1 if a cell fails or a decode disagrees with CPU.

Usage: ``python benchmarks/gpu_check.py [--device cuda] [--out gpu_check.md]``. ``--device cpu --quick`` runs a
few models and a few steps on CPU (so the script is tested without a GPU, ``tests/test_gpu_check.py``); there the
fp16 column is added as a ``MixedPrecision`` plugin, since Lightning turns ``16-mixed`` into bf16 on CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import quiet_lightning, quiet_trainer  # noqa: E402
from precision_matrix import FP16_AMP, PRECISIONS, ToyData, markdown_table, run_matrix  # noqa: E402

import zoo  # noqa: E402

QUICK_MODELS = ["lenet5", "resnet20", "gru_classifier", "lstm_lm", "seq2seq_gru_attn", "bilstm_crf"]
GERMAN = [
    "Ein Hund läuft durch den Park.",
    "Zwei Männer spielen Fußball auf einer Wiese.",
    "Eine Frau sitzt auf einer Bank und liest ein Buch.",
    "Kinder spielen am Strand.",
]
ENGLISH = ["Peter Smith visited Paris last week .", "EU rejects German call to boycott British lamb .", "Hi ."]


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    return "\n".join([*lines, *("| " + " | ".join(str(v) for v in row) + " |" for row in rows)])


def step_times(device: str, models: list[str], batch: int, steps: int) -> tuple[str, bool]:
    """ms per SGD step of each image net at ``batch`` 32x32 images, float32 and under the device's autocast."""
    amp = torch.bfloat16 if device == "cpu" or torch.cuda.is_bf16_supported() else torch.float16
    rows, ok = [], True
    for name in models:
        torch.manual_seed(0)
        net = zoo.create_model(name).net.to(device)
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        x, y = torch.randn(batch, 3, 32, 32, device=device), torch.randint(0, 10, (batch,), device=device)
        row = [name]
        for dtype in (None, amp):
            loss = [_step(net, opt, x, y, dtype) for _ in range(2)][-1]  # warm-up: kernel selection
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                loss = _step(net, opt, x, y, dtype)
            _sync(device)
            ok &= bool(torch.isfinite(torch.tensor(loss)))
            row.append(f"{1000 * (time.perf_counter() - t0) / steps:.1f}")
        rows.append(row)
    amp_name = str(amp).removeprefix("torch.")
    return table(["model", f"fp32 ms/step (batch {batch})", f"{amp_name} autocast ms/step"], rows), ok


def _step(net: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, dtype) -> float:
    """One SGD step, under autocast to ``dtype`` unless it is None; returns the loss."""
    with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        loss = F.cross_entropy(net(x).float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def decode_check(device: str, quick: bool) -> tuple[str, bool]:
    """The published translator and tagger decode on ``device`` as they do on CPU."""
    rows, ok = [], True
    translator = zoo.load_pretrained("seq2seq_gru_attn.multi30k_de_en")
    sentences = GERMAN[:2] if quick else GERMAN
    for beam in (1, 5):
        ref = translator.to("cpu").translate(sentences, beam=beam)
        translator.to(device)
        _sync(device)
        t0 = time.perf_counter()
        out = translator.translate(sentences, beam=beam)
        _sync(device)
        ms = 1000 * (time.perf_counter() - t0) / len(sentences)
        same = sum(a == b for a, b in zip(out, ref))
        ok &= same == len(sentences)
        rows.append([f"translate, beam {beam}", f"{same}/{len(sentences)}", f"{ms:.1f}", out[0]])
    tagger = zoo.load_pretrained("bilstm_crf.conll2003")
    ref = tagger.to("cpu").tag(ENGLISH)
    tagger.to(device)
    _sync(device)
    t0 = time.perf_counter()
    out = tagger.tag(ENGLISH)
    _sync(device)
    same = sum(a["tags"] == b["tags"] for a, b in zip(out, ref))
    ok &= same == len(ENGLISH)
    ms = 1000 * (time.perf_counter() - t0) / len(ENGLISH)
    rows.append(["tag (CRF Viterbi)", f"{same}/{len(ENGLISH)}", f"{ms:.1f}", " ".join(out[0]["tags"])])
    return table(["decode on " + device, "same as CPU", "ms/sentence", "first output"], rows), ok


class SyntheticCIFAR(L.LightningDataModule):
    """CIFAR-10-shaped images whose class is a colour offset over noise: learnable, for when the real set is absent."""

    def __init__(self, n_train: int, n_val: int, batch_size: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        n = n_train + n_val
        y = torch.arange(n) % 10
        x = torch.randn(n, 3, 32, 32, generator=g) + 0.5 * torch.randn(10, 3, 1, 1, generator=g)[y]
        self.train_set, self.val_set = TensorDataset(x[:n_train], y[:n_train]), TensorDataset(x[n_train:], y[n_train:])
        self.batch_size, self.classes = batch_size, [f"class{i}" for i in range(10)]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=4 * self.batch_size)


def resnet20_run(
    device: str, epochs: int, quick: bool, root: Path, data_dir: Path | None, num_images: tuple[int, int]
) -> tuple[str, bool]:
    """ResNet-20 for ``epochs`` epochs: val accuracy and images/s. On CIFAR-10 (``data_dir``, else
    ``$ZOO_DATA_DIR``; in ``quick`` mode only when given) twice, fed by the per-image DataLoader and by the batched
    pipeline on the device (``--data.batch_augment true``: the recipes' path, and the only one that keeps a GPU
    busy); without it, on a learnable synthetic set (``quick``: a few steps)."""
    from datamodules import default_data_dir
    from datamodules.cifar10 import CIFAR10DataModule

    folder = data_dir or (None if quick else default_data_dir())
    if folder is not None and (folder / "cifar10").exists():
        val = min(5000, num_images[0] // 5)
        cifar = dict(data_dir=str(folder), batch_size=16 if quick else 128, val_size=val, num_images=num_images)
        n_train, workers = num_images[0] - val, 0 if quick else min(8, os.cpu_count() or 1)
        runs = [
            (f"CIFAR-10 {n_train}/{val}, per-image loader", CIFAR10DataModule(**cifar, num_workers=workers)),
            (f"CIFAR-10 {n_train}/{val}, batched on the device", CIFAR10DataModule(**cifar, batch_augment=True)),
        ]
    else:
        n_train = 64 if quick else 10_000
        runs = [("synthetic (no CIFAR-10 found)", SyntheticCIFAR(n_train, n_train // 4, 16 if quick else 128))]
    precision = "32-true" if device == "cpu" else "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    rows, ok = [], True
    for data, dm in runs:
        L.seed_everything(0, verbose=False)
        model = zoo.create_model("resnet20", warmup_epochs=0 if quick else 1, channels_last=device != "cpu")
        trainer = quiet_trainer(
            accelerator=device,
            devices=1,
            max_epochs=epochs,
            precision=precision,
            default_root_dir=root,
        )
        t0 = time.perf_counter()
        trainer.fit(model, dm)
        seconds = time.perf_counter() - t0
        acc = float(trainer.callback_metrics.get("val_acc", float("nan")))
        ok &= acc == acc and (quick or acc > 0.1)  # better than chance (a few quick steps need not be)
        speed = f"{epochs * n_train / seconds:.0f}"
        rows.append([data, precision, epochs, trainer.global_step, f"{seconds:.1f}", speed, f"{100 * acc:.2f}%"])
    header = ["ResNet-20 data", "precision", "epochs", "steps", "seconds", "images/s", "val acc"]
    return table(header, rows), ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--quick", action="store_true", help="a few models and steps (a test that the script runs)")
    ap.add_argument("--models", nargs="+", help="models of the precision matrix (default: every registered one)")
    ap.add_argument("--resnet-epochs", type=int, default=3)
    ap.add_argument("--out", type=Path, help="also write the tables to this markdown file")
    ap.add_argument("--data-dir", type=Path, help="folder holding cifar10/ (default: $ZOO_DATA_DIR)")
    ap.add_argument("--num-images", type=int, nargs=2, default=(50_000, 10_000), help="(train, test) of a subset")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check.py: error: no CUDA device here; run it on a GPU machine, or --device cpu --quick")
        return 2
    device = args.device
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    parts = [f"# GPU check: {name}, torch {torch.__version__}, lightning {L.__version__}"]
    models = args.models or (QUICK_MODELS if args.quick else zoo.list_models())
    images = [m for m in models if zoo.task_class(m).__name__ == "ImageClassifier"]
    precisions = [*PRECISIONS, FP16_AMP] if device == "cpu" else list(PRECISIONS)
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cells = run_matrix(models, precisions, ToyData(Path(tmp)), device)
        bad = [c for c in cells if c.status == "fail"]
        ok &= not bad
        parts += [
            f"## Precision matrix ({len(cells)} cells, {time.perf_counter() - t0:.0f} s; {len(bad)} failed)",
            markdown_table(cells),
        ]
        batch, steps = (8, 2) if args.quick else (128, 10)
        epochs, cifar = 1 if args.quick else args.resnet_epochs, (args.data_dir, tuple(args.num_images))
        for title, run in (
            ("Training step of every image net", lambda: step_times(device, images, batch, steps)),
            ("Decoding on the device", lambda: decode_check(device, args.quick)),
            ("ResNet-20", lambda: resnet20_run(device, epochs, args.quick, Path(tmp), *cifar)),
        ):  # fmt: skip
            t0 = time.perf_counter()
            text, passed = run()
            ok &= passed
            parts += [f"## {title} ({time.perf_counter() - t0:.0f} s){'' if passed else ' - FAILED'}", text]
    report = "\n\n".join(parts) + "\n"
    print(report)
    if args.out:
        args.out.write_text(report, encoding="utf-8")
    return 0 if ok else 1


if __name__ == "__main__":
    quiet_lightning()
    sys.exit(main())
