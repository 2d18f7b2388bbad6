"""The zoo's CRF against pytorch-crf (the reference, timed in the same run): negative log-likelihood + backward,
and Viterbi decoding, on the same random emissions, tags and masks; the results are checked equal first.

    python benchmarks/crf.py                      # B=32, T=40, K=17 on the CPU
    python benchmarks/crf.py --batch 256 --device cuda

Needs `pip install pytorch-crf` (a test-only dependency). Prints milliseconds per call (median of --repeats) and
the speed-up over pytorch-crf."""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from zoo.nets.crf import CRF


def median_ms(fn, repeats: int, device: str) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=40)
    p.add_argument("--tags", type=int, default=17)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    from torchcrf import CRF as TorchCRF

    torch.manual_seed(0)
    B, T, K, dev = args.batch, args.length, args.tags, args.device
    ours, theirs = CRF(K).to(dev), TorchCRF(K, batch_first=True).to(dev)
    with torch.no_grad():
        theirs.transitions.copy_(ours.transitions)
        theirs.start_transitions.copy_(ours.start)
        theirs.end_transitions.copy_(ours.end)
    emissions = torch.randn(B, T, K, device=dev, requires_grad=True)
    tags = torch.randint(0, K, (B, T), device=dev)
    lengths = torch.randint(T // 2, T + 1, (B,), device=dev)
    lengths[0] = T
    mask = torch.arange(T, device=dev)[None] < lengths[:, None]

    a, b = ours.nll(emissions, tags, mask, "sum"), -theirs(emissions, tags, mask, reduction="sum")
    assert torch.allclose(a, b, rtol=1e-5), (a, b)
    decoded = ours.decode(emissions, mask)
    assert all(decoded[i, : lengths[i]].tolist() == p for i, p in enumerate(theirs.decode(emissions, mask)))

    def nll_backward(crf_loss):
        def run():
            emissions.grad = None
            crf_loss().backward()

        return run

    rows = {
        "NLL + backward": (
            nll_backward(lambda: ours.nll(emissions, tags, mask, "sum")),
            nll_backward(lambda: -theirs(emissions, tags, mask, reduction="sum")),
        ),
        "Viterbi decode": (
            lambda: ours.decode(emissions.detach(), mask),
            lambda: theirs.decode(emissions.detach(), mask),
        ),
    }
    print(f"B={B} T={T} K={K} on {dev} ({torch.get_num_threads()} threads); results equal to pytorch-crf")
    for name, (mine, ref) in rows.items():
        m, r = median_ms(mine, args.repeats, dev), median_ms(ref, args.repeats, dev)
        print(f"{name:16s} zoo {m:8.2f} ms   pytorch-crf {r:8.2f} ms   speed-up {r / m:5.2f}x")


if __name__ == "__main__":
    main()
