"""Training throughput of the CIFAR CNNs on this machine: fp32 against channels_last + bf16 autocast.

Prints images/s for each configuration and the ratio to the fp32 reference measured in the same run
(absolute figures differ 2-5x between machines; compare ratios). Synthetic inputs, so the data loader is
not measured. Usage: ``python benchmarks/cifar_throughput.py [--models resnet20 lenet5] [--steps 20]``; the
default models are those with a CIFAR-10 recipe in ``configs/``.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import zoo


def images_per_second(name: str, batch: int, steps: int, bf16: bool, channels_last: bool) -> float:
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = zoo.create_model(name).net.to(memory_format=fmt)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=fmt)
    return training_speed(net, x, torch.randint(0, 10, (batch,)), steps, bf16)


def training_speed(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, bf16: bool) -> float:
    """Images/s of SGD steps of ``net`` on the batch ``x``, ``y`` (after 3 warm-up steps)."""
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):  # warm-up: oneDNN primitive creation
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return len(x) * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["lenet5", "resnet20", "resnet56", "vgg11_bn", "densenet_bc_100_12"])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    bf16_ok = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, native bf16: {bf16_ok}, batch {args.batch}")
    print(f"{'model':<10} {'configuration':<26} {'img/s':>8} {'vs fp32':>8}")
    for name in args.models:
        ref = images_per_second(name, args.batch, args.steps, bf16=False, channels_last=False)
        for label, bf16, cl in (
            ("fp32", False, False),
            ("fp32 channels_last", False, True),
            ("bf16 autocast", True, False),
            ("bf16 channels_last", True, True),
        ):
            ips = ref if label == "fp32" else images_per_second(name, args.batch, args.steps, bf16, cl)
            print(f"{name:<10} {label:<26} {ips:8.0f} {ips / ref:8.2f}x")


if __name__ == "__main__":
    main()
