"""CIFAR-10 training loader throughput: the zoo's resumable loader against a plain shuffled DataLoader.

The zoo's training loader seeds each image's augmentation from its sampler key, so that a resumed run augments as
an unbroken one (README, "Resume"); this measures what that costs. Both loaders read the same 6,400 random uint8
images with the same crop + flip + normalise pipeline in the main process (no workers: images/s per process), and
the ratio to the plain loader in the same run is the figure to compare across machines.
Usage: ``python benchmarks/loader_throughput.py [--images 6400] [--batch 128] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader

from datamodules._augment import augmentation
from datamodules._base import EpochSampler, ResumableLoader
from datamodules.cifar10 import CIFAR10_MEAN, CIFAR10_STD, TensorImages


def images_per_second(loader: DataLoader) -> float:
    next(iter(loader))  # warm-up
    t0 = time.perf_counter()
    n = sum(len(x) for x, _ in loader)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=6400)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3, help="alternating runs of each loader; the best is kept")
    args = ap.parse_args()
    torch.manual_seed(0)
    x = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (args.images,))
    flags = dict(hflip=0.5, vflip=0.0, crop_padding=4, padding_mode="constant", rotation=0.0, scale=None)
    transform = augmentation(**flags, noise_std=0.0, cutout=0, size=32, mean=CIFAR10_MEAN, std=CIFAR10_STD)
    ds = TensorImages(x, y, transform)
    plain = DataLoader(ds, batch_size=args.batch, shuffle=True)
    zoo_loader = ResumableLoader(ds, batch_size=args.batch, sampler=EpochSampler(ds))
    ref = new = 0.0
    for _ in range(args.repeats):
        ref, new = max(ref, images_per_second(plain)), max(new, images_per_second(zoo_loader))
    print(f"torch {torch.__version__}, {args.images} images, batch {args.batch}, main process")
    print(f"{'plain shuffled DataLoader (reference)':<40} {ref:8,.0f} img/s")
    print(f"{'zoo ResumableLoader, seeded augmentation':<40} {new:8,.0f} img/s  {new / ref:.2f}x")


if __name__ == "__main__":
    main()
