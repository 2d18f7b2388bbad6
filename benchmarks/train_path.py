"""CIFAR-10 training throughput along the whole path: train.py's (Trainer + task + DataModule) against a plain
PyTorch loop over the same net and loader, and the batched pipeline (``--data.batch_augment true``) against the
per-image DataLoader.

Per model, with its recipe's settings (``configs/<model>.cifar10.yaml``: precision, channels_last, batch size,
loader workers, crop + flip), images/s of
- the loaders alone: the per-image DataLoader, and the resident batches with the same augmentation;
- the net's training step alone on one resident batch (what no loader can beat);
- a plain loop (autocast, SGD with Nesterov momentum as the task's) and the Trainer, each over each loader.
Ratios are within this process: ``trainer / plain`` is what Lightning costs (guard: >= 0.95), ``batched / per-image``
what the batched pipeline gains. Each figure is the best of ``--repeats`` runs, alternated. Reads CIFAR-10 from
``$ZOO_DATA_DIR`` when it is there, else random images of the same shape (the speed is the same).
Usage: ``python benchmarks/train_path.py [--models lenet5 resnet20] [--batches 40] [--threads 1] [--repeats 2]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
import yaml
from _common import header, quiet_lightning, quiet_trainer

import zoo
from datamodules import DatasetError
from datamodules.cifar10 import CIFAR10DataModule

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
WARMUP = 5  # batches before the clock starts: oneDNN primitive creation, loader workers starting


class RandomCIFAR10(CIFAR10DataModule):
    """CIFAR-10's shapes and dtypes from a seeded generator: where the dataset is not on disk."""

    def prepare_data(self) -> None:
        pass

    def _load(self) -> dict:
        g = torch.Generator().manual_seed(0)
        image = lambda n: torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)  # noqa: E731
        label = lambda n: torch.randint(0, 10, (n,), generator=g)  # noqa: E731
        return {"train": (image(50_000), label(50_000)), "test": (image(10_000), label(10_000))}


def recipe(model: str) -> tuple[dict, dict, dict]:
    """(task, data, trainer) arguments of ``configs/<model>.cifar10.yaml``."""
    cfg = yaml.safe_load((CONFIGS / f"{model}.cifar10.yaml").read_text())
    task, data = dict(cfg["model"]["init_args"]), dict(cfg["data"]["init_args"])
    data.pop("batch_augment", None)  # both paths are measured
    data.setdefault("num_workers", 1)  # the per-image path as the 2-core recipes ran it
    return task, data, cfg.get("trainer", {})


def datamodule(data: dict, batch_augment: bool) -> CIFAR10DataModule:
    try:
        dm = CIFAR10DataModule(**data, batch_augment=batch_augment, download=False)
        dm.setup("fit")
    except DatasetError:
        dm = RandomCIFAR10(**data, batch_augment=batch_augment)
        dm.setup("fit")
    return dm


class Clock(L.Callback):
    """Seconds from the start of batch ``WARMUP`` to the end of the last."""

    def __init__(self, last: int) -> None:
        self.last, self.seconds = last, None

    def on_train_batch_start(self, trainer, module, batch, i) -> None:
        if i == WARMUP:
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, i) -> None:
        if i == self.last:
            self.seconds = time.perf_counter() - self.t0


def through_trainer(task: dict, data: dict, trainer: dict, batch_augment: bool, batches: int) -> float:
    clock = Clock(WARMUP + batches - 1)
    t = quiet_trainer(
        max_epochs=1,
        limit_train_batches=WARMUP + batches,
        limit_val_batches=0,
        precision=trainer.get("precision", "32-true"),
        callbacks=[clock],
    )
    t.fit(zoo.create_model(**task), datamodule(data, batch_augment))
    return batches * data["batch_size"] / clock.seconds


def plain_loop(task: dict, data: dict, trainer: dict, batch_augment: bool, batches: int) -> float:
    """A plain PyTorch loop (autocast as the recipe, SGD with momentum) over the DataModule's training loader."""
    return timed_steps(datamodule(data, batch_augment).train_dataloader(), task, data, trainer, batches)


def step_alone(task: dict, data: dict, trainer: dict, batch_augment: bool, batches: int) -> float:
    """The plain loop's step on one resident batch, again and again: the net's own pace."""
    batch = next(iter(datamodule(data, True).train_dataloader()))
    return timed_steps([batch] * (WARMUP + batches), task, data, trainer, batches)


def loader_alone(task: dict, data: dict, trainer: dict, batch_augment: bool, batches: int) -> float:
    return timed_batches(datamodule(data, batch_augment).train_dataloader(), data, batches, lambda x, y: None)


def timed_steps(loader, task: dict, data: dict, trainer: dict, batches: int) -> float:
    net = zoo.create_model(**task).net
    fmt = torch.channels_last if task.get("channels_last") else torch.contiguous_format
    net = net.to(memory_format=fmt).train()
    opt = torch.optim.SGD(
        net.parameters(), lr=task["lr"], momentum=0.9, nesterov=True, weight_decay=task["weight_decay"]
    )
    bf16 = trainer.get("precision") == "bf16-mixed"

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(net(x.contiguous(memory_format=fmt)).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return timed_batches(loader, data, batches, step)


def timed_batches(loader, data: dict, batches: int, step) -> float:
    """Images/s of ``step`` over batches ``WARMUP`` .. ``WARMUP + batches - 1`` of ``loader``."""
    for i, (x, y) in enumerate(loader):
        if i == WARMUP:
            t0 = time.perf_counter()
        step(x, y)
        if i == WARMUP + batches - 1:
            return batches * data["batch_size"] / (time.perf_counter() - t0)
    raise ValueError(f"the training split holds fewer than {WARMUP + batches} batches: use a smaller --batches")


MEASURES = {  # name -> (function, batch_augment, threads: the training threads, or those plus the loader workers')
    "loader, per-image": (loader_alone, False, "threads"),
    "loader, batched": (loader_alone, True, "threads"),
    "net step, resident batch": (step_alone, True, "threads"),
    "plain loop, per-image": (plain_loop, False, "threads"),
    "train.py path, per-image": (through_trainer, False, "threads"),
    "plain loop, batched": (plain_loop, True, "threads"),
    "train.py path, batched": (through_trainer, True, "threads"),
    # the batched path has no loader workers: the cores they took go to the training threads
    "train.py path, batched, +workers' cores": (through_trainer, True, "threads+workers"),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["lenet5", "resnet20"])
    p.add_argument("--batches", type=int, default=40, help="timed batches per measurement (after 5 of warm-up)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2, help="runs of each measurement, alternated; the best is shown")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(header("train.py path vs plain loop; batched pipeline vs per-image DataLoader (images/s)"))
    failed = False
    for model in args.models:
        task, data, trainer = recipe(model)
        task["name"] = task.pop("arch")
        workers = data.get("num_workers", 2)
        measures = {k: v for k, v in MEASURES.items() if workers or v[2] == "threads"}
        speed = {name: 0.0 for name in measures}
        for _ in range(args.repeats):
            for name, (measure, batched, threads) in measures.items():
                torch.set_num_threads(args.threads + (workers if threads == "threads+workers" else 0))
                speed[name] = max(speed[name], measure(task, data, trainer, batched, args.batches))
        setting = f"{trainer.get('precision', '32-true')}, channels_last={bool(task.get('channels_last'))}"
        print(
            f"\n{model} ({setting}, batch {data['batch_size']}, {workers} loader worker(s), {args.threads} thread(s))"
        )
        for name, v in speed.items():
            print(f"  {name:<40} {v:9,.0f} img/s")
        for path in ("per-image", "batched"):
            ratio = speed[f"train.py path, {path}"] / speed[f"plain loop, {path}"]
            failed |= ratio < 0.95
            verdict = "(guard >= 0.95)" if ratio >= 0.95 else "BELOW the 0.95 guard"
            print(f"  train.py path / plain loop, {path:<23} {ratio:5.2f}x  {verdict}")
        for name in [k for k in measures if k.startswith("train.py path, batched")]:
            gain = speed[name] / speed["train.py path, per-image"]
            print(f"  train.py path, {name.replace('train.py path, ', ''):<27} / per-image {gain:5.2f}x")
    return int(failed)


if __name__ == "__main__":
    quiet_lightning()
    raise SystemExit(main())
