"""DenseNet-BC-100 training speed: the zoo's dense block against concatenating every earlier map in every layer.

The reference is the textbook block (each layer concatenates the list of all earlier maps, as the zoo's
memory-efficient layers do without the checkpoint); the zoo's default grows one concatenation by a layer at a
time. Both compute the same function (checked first, in the same run); the ratio is what to compare across
machines. Usage: ``python benchmarks/densenet_concat.py [--batch 64] [--steps 10] [--bf16]``.
"""

from __future__ import annotations

import argparse

import torch
from cifar_throughput import training_speed  # this folder: on sys.path when run as a script

import zoo
from zoo.nets.densenet import DenseBlock


def listed_forward(block: DenseBlock, x: torch.Tensor) -> torch.Tensor:
    features = [x]
    for layer in block:
        features.append(layer(features))
    return torch.cat(features, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast + channels_last, as the recipe trains")
    args = ap.parse_args()
    torch.manual_seed(0)
    fmt = torch.channels_last if args.bf16 else torch.contiguous_format
    x = torch.randn(args.batch, 3, 32, 32).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (args.batch,))
    grown = zoo.create_model("densenet_bc_100_12").net.to(memory_format=fmt)
    listed = zoo.create_model("densenet_bc_100_12").net.to(memory_format=fmt)
    listed.load_state_dict(grown.state_dict())
    for block in listed.modules():
        if isinstance(block, DenseBlock):
            block.forward = listed_forward.__get__(block)
    with torch.no_grad():
        torch.testing.assert_close(grown.eval()(x), listed.eval()(x))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, bf16: {args.bf16}")
    ref = training_speed(listed, x, y, args.steps, args.bf16)
    new = training_speed(grown, x, y, args.steps, args.bf16)
    print(f"{'listed concatenation (reference)':<34} {ref:8.1f} img/s")
    print(f"{'grown concatenation (zoo)':<34} {new:8.1f} img/s  {new / ref:.2f}x")


if __name__ == "__main__":
    main()
