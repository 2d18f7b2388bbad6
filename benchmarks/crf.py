"""The zoo's CRF against pytorch-crf (the reference, timed in the same run): negative log-likelihood + backward,
and Viterbi decoding, on the same random emissions, tags and ragged masks; the results are checked equal first
(log-likelihoods and gradients w.r.t. the emissions within 1e-5 of pytorch-crf run in float64, the summed
transition/start/end gradients within 1e-5 of the mean count per tag, paths exactly).

    OMP_NUM_THREADS=1 python benchmarks/crf.py            # B=32 T=40 K=17, B=256 T=128 K=9 and K=50 on the CPU
    python benchmarks/crf.py --sizes 32x40x17 --device cuda

Needs `pip install pytorch-crf` (a test-only dependency). Times are CPU time of this process
(`time.process_time`, so another process's load does not count; on CUDA, wall time with synchronisation): ours and
pytorch-crf alternate, block by block (each block a few calls, ~20 ms), over --repeats pairs. Prints the hardware and
versions, then the median milliseconds per call of each, and the speed-up: the median over pairs of the ratio
pytorch-crf / zoo within a pair (a load that changes over time hits both sides of a pair alike)."""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from _common import header

from zoo.nets.crf import CRF


def paired_ms(fast, slow, repeats: int, device: str) -> tuple[float, float, float]:
    """(zoo ms, reference ms, speed-up): medians over ``repeats`` alternating blocks of calls (see the docstring)."""
    clock = time.perf_counter if device == "cuda" else time.process_time

    def block(fn, calls: int) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = clock()
        for _ in range(calls):
            fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return (clock() - t0) / calls

    calls = []
    for fn in (fast, slow):
        fn()  # warm-up
        calls.append(max(1, min(50, int(0.02 / max(block(fn, 1), 1e-6)))))  # ~20 ms a block
    mine, ref = [], []
    for i in range(repeats):
        order = ((fast, calls[0], mine), (slow, calls[1], ref))
        for fn, n, out in order if i % 2 == 0 else order[::-1]:  # alternate which side goes first
            out.append(block(fn, n))
    ratio = statistics.median(r / m for m, r in zip(mine, ref))
    return 1000 * statistics.median(mine), 1000 * statistics.median(ref), ratio


def bench(B: int, T: int, K: int, dev: str, repeats: int) -> None:
    from torchcrf import CRF as TorchCRF

    torch.manual_seed(0)
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

    def nll_backward(model, loss):
        def run():
            emissions.grad = None
            model.zero_grad(set_to_none=True)
            loss().backward()

        return run

    mine = nll_backward(ours, lambda: ours.nll(emissions, tags, mask, "sum"))
    ref = nll_backward(theirs, lambda: -theirs(emissions, tags, mask, reduction="sum"))
    mine()
    g_ours = [emissions.grad.clone(), ours.transitions.grad, ours.start.grad, ours.end.grad]
    # the exact result: pytorch-crf in float64 (in fp32, its own gradients drift ~3e-5 at T=128)
    exact, e64 = copy.deepcopy(theirs).double(), emissions.detach().double().requires_grad_()
    nll64 = -exact(e64, tags, mask, reduction="none")
    nll64.sum().backward()
    g_exact = [e64.grad, exact.transitions.grad, exact.start_transitions.grad, exact.end_transitions.grad]
    torch.testing.assert_close(ours.nll(emissions, tags, mask, "none").detach().double(), nll64, rtol=1e-5, atol=1e-5)
    # d/d emissions to 1e-5; the others are expected minus observed counts, summed over B*T positions: to 1e-5 of
    # the mean count per tag
    counts = float(mask.sum()) / K
    for x, y, tol in zip(g_ours, g_exact, (1e-5, 1e-5 * counts, 1e-5 * counts, 1e-5 * counts)):
        torch.testing.assert_close(x.double(), y, rtol=0, atol=tol)
    decoded = ours.decode(emissions, mask)
    assert all(decoded[i, : lengths[i]].tolist() == p for i, p in enumerate(theirs.decode(emissions, mask)))
    rows = {
        "NLL + backward": (mine, ref),
        "Viterbi decode": (
            lambda: ours.decode(emissions.detach(), mask),
            lambda: theirs.decode(emissions.detach(), mask),
        ),
    }
    for name, (fast, slow) in rows.items():
        m, r, ratio = paired_ms(fast, slow, repeats, dev)
        print(f"| {B}x{T}x{K} | {name} | {m:.3f} | {r:.3f} | {ratio:.2f}x |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="32x40x17,256x128x9,256x128x50", help="BxTxK, comma-separated")
    p.add_argument("--repeats", type=int, default=31, help="alternating pairs of blocks")
    p.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    import torchcrf

    dev = args.device
    torch.set_num_threads(args.threads)
    version = getattr(torchcrf, "__version__", "installed")
    print(header(f"the zoo's CRF against pytorch-crf {version}", dev))
    print("checked first at every size: NLL and gradients within 1e-5 of pytorch-crf in float64, paths equal\n")
    print("| B x T x K | | zoo ms (CPU) | pytorch-crf ms (CPU) | speed-up (median of pairs) |\n|---|---|---|---|---|")
    for size in args.sizes.split(","):
        B, T, K = (int(v) for v in size.lower().split("x"))
        bench(B, T, K, dev, args.repeats)


if __name__ == "__main__":
    main()
