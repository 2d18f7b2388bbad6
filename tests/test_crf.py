"""The linear-chain CRF against brute-force enumeration of every path, and against pytorch-crf."""

import itertools

import pytest
import torch

from zoo.nets.crf import CRF, scheme_constraints
from zoo.nets.hmm import HMM

K = 4
TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def make_crf(num_tags=K, seed=0, constraints=None):
    torch.manual_seed(seed)
    crf = CRF(num_tags, *(constraints or ()))
    with torch.no_grad():  # scores of a realistic size, so paths differ clearly
        for p in (crf.transitions, crf.start, crf.end):
            p.normal_(0, 1)
    return crf


def masks():
    """Lengths 5, 3, 1, and one that skips positions (a first [CLS]-like token and an inner sub-word)."""
    m = torch.zeros(4, 5, dtype=torch.bool)
    m[0], m[1, :3], m[2, :1] = True, True, True
    m[3] = torch.tensor([False, True, False, True, True])
    return m


def paths_of(crf, e, kept):
    """Every allowed path over the kept positions of one sequence, with its score (brute force)."""
    n = len(kept)
    out = []
    for y in itertools.product(range(crf.num_tags), repeat=n):
        if not crf.allowed_start[y[0]] or not crf.allowed_end[y[-1]]:
            continue
        if any(not crf.allowed[a, b] for a, b in zip(y, y[1:])):
            continue
        s = crf.start[y[0]] + crf.end[y[-1]] + sum(e[kept[i], y[i]] for i in range(n))
        s = s + sum(crf.transitions[a, b] for a, b in zip(y, y[1:]))
        out.append((float(s), y))
    return out


@pytest.mark.parametrize("constrained", [False, True], ids=["free", "BIO"])
def test_partition_decoding_topk_and_marginals_equal_brute_force(constrained):
    cons = scheme_constraints(TAGS, "BIO") if constrained else None
    crf = make_crf(len(TAGS), constraints=cons)
    e, m = torch.randn(4, 5, len(TAGS)), masks()
    log_z, best = crf.log_partition(e, m), crf.decode(e, m)
    top, top_scores = crf.topk(e, m, k=3)
    marg = crf.marginals(e, m)
    for b in range(4):
        kept = m[b].nonzero().flatten().tolist()
        scored = sorted(paths_of(crf, e[b], kept), key=lambda s: -s[0])
        z = torch.logsumexp(torch.tensor([s for s, _ in scored]), 0)
        assert float(log_z[b]) == pytest.approx(float(z), abs=1e-4)
        assert best[b, kept].tolist() == list(scored[0][1])
        assert (best[b, ~m[b]] == -1).all()
        assert [top[b, r, kept].tolist() for r in range(3)] == [list(y) for _, y in scored[:3]]
        assert top_scores[b].tolist() == pytest.approx([s for s, _ in scored[:3]], abs=1e-4)
        for i, pos in enumerate(kept):
            for tag in range(len(TAGS)):
                p = sum(torch.exp(torch.tensor(s) - z) for s, y in scored if y[i] == tag)
                assert float(marg[b, pos, tag]) == pytest.approx(float(p), abs=1e-5)
        assert (marg[b, ~m[b]] == 0).all()
        gold = torch.zeros(1, 5, dtype=torch.long)
        gold[0, kept] = torch.tensor(scored[-1][1])
        nll = crf.nll(e[b : b + 1], gold, m[b : b + 1], reduction="none")
        assert float(nll) == pytest.approx(float(z) - scored[-1][0], abs=1e-4) and float(nll) >= 0


def test_equals_pytorch_crf():
    torchcrf = pytest.importorskip("torchcrf")
    ours = make_crf(K, seed=1)
    theirs = torchcrf.CRF(K, batch_first=True)
    with torch.no_grad():
        theirs.transitions.copy_(ours.transitions)
        theirs.start_transitions.copy_(ours.start)
        theirs.end_transitions.copy_(ours.end)
    g = torch.Generator().manual_seed(0)
    e, tags = torch.randn(8, 12, K, generator=g), torch.randint(0, K, (8, 12), generator=g)
    lengths = torch.randint(1, 13, (8,), generator=g)
    m = torch.arange(12)[None] < lengths[:, None]
    torch.testing.assert_close(ours.nll(e, tags, m, "none"), -theirs(e, tags, m, reduction="none"), atol=1e-5, rtol=0)
    decoded = ours.decode(e, m)
    for b, path in enumerate(theirs.decode(e, m)):
        assert decoded[b, : lengths[b]].tolist() == path


@pytest.mark.parametrize("scheme", ["BIO", "IOB1", "BIOES", "BILOU"])
def test_constrained_decoding_never_emits_an_invalid_transition(scheme):
    letters = {"BIO": "BI", "IOB1": "BI", "BIOES": "BIES", "BILOU": "BILU"}[scheme]
    tags = ["O"] + [f"{p}-{k}" for k in ("PER", "LOC", "ORG") for p in letters]
    allowed, start, end = scheme_constraints(tags, scheme)
    crf = make_crf(len(tags), constraints=(allowed, start, end))
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        e = torch.randn(16, 9, len(tags), generator=g) * 5
        lengths = torch.randint(1, 10, (16,), generator=g)
        m = torch.arange(9)[None] < lengths[:, None]
        paths, _ = crf.topk(e, m, k=2)
        for b in range(16):
            for y in paths[b, :, : lengths[b]].tolist():
                assert start[y[0]] and end[y[-1]] and all(allowed[a, c] for a, c in zip(y, y[1:])), (scheme, y)
        assert torch.isfinite(crf.nll(e, paths[:, 0].clamp(min=0), m, "none")).all()


def test_scheme_rules():
    allowed, start, end = scheme_constraints(TAGS, "BIO")
    i = {t: n for n, t in enumerate(TAGS)}
    assert allowed[i["B-PER"], i["I-PER"]] and not allowed[i["B-LOC"], i["I-PER"]] and not allowed[i["O"], i["I-LOC"]]
    assert not start[i["I-PER"]] and end.all()
    tags = ["O", "B-X", "I-X", "E-X", "S-X"]
    allowed, start, end = scheme_constraints(tags, "BIOES")
    assert allowed[1, 3] and not allowed[0, 2] and not allowed[1, 0] and allowed[3, 4]
    assert start.tolist() == [True, True, False, False, True] and end.tolist() == [True, False, False, True, True]
    with pytest.raises(ValueError, match="not BIO tags"):
        scheme_constraints(["O", "E-X"], "BIO")


def test_impossible_constraints_are_refused():
    none_can_end = torch.zeros(K, dtype=torch.bool)
    with pytest.raises(ValueError, match="no valid tag sequence of length 1"):
        CRF(K, allowed_end=none_can_end)
    stuck = torch.zeros(K, K, dtype=torch.bool)  # no transition at all: length 2 is impossible
    with pytest.raises(ValueError, match="of length 2"):
        CRF(K, allowed=stuck)


def test_low_precision_emissions_and_bad_input():
    crf = make_crf()
    e, tags, m = torch.randn(4, 5, K), torch.randint(0, K, (4, 5)), masks()
    for dtype in (torch.float16, torch.bfloat16):
        low = e.to(dtype)
        expected = crf.nll(low.float(), tags, m, "none")
        torch.testing.assert_close(crf.nll(low, tags, m, "none"), expected)
        assert crf.nll(low, tags, m).dtype == torch.float32
    single = crf.nll(e[:, :1], tags[:, :1], reduction="none")
    assert torch.isfinite(single).all() and (single >= 0).all()
    with pytest.raises(ValueError, match="no position left"):
        crf.nll(e, tags, torch.zeros(4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"tags must be in \[0, 4\)"):
        crf.nll(e, tags + 4, m)
    with pytest.raises(ValueError, match="emissions must be"):
        crf.decode(e[..., :3])


def test_margin_losses():
    crf = make_crf()
    e, m = torch.randn(4, 5, K), masks()
    best = crf.decode(e, m).clamp(min=0)
    assert crf.perceptron_loss(e, best, m, reduction="none").abs().max() < 1e-5  # gold is the best: no loss
    gold = torch.randint(0, K, (4, 5), generator=torch.Generator().manual_seed(3))
    per, hinge = crf.perceptron_loss(e, gold, m, reduction="none"), crf.hinge_loss(e, gold, m, reduction="none")
    assert (per >= 0).all() and (hinge >= per - 1e-5).all() and (hinge >= 1 - 1e-5).any()
    hinge.sum().backward()
    assert crf.transitions.grad is not None


def test_viterbi_exports():
    crf = make_crf().eval()

    class Decode(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.crf = crf

        def forward(self, emissions, mask):
            return self.crf.decode(emissions, mask)

    e, m = torch.randn(4, 5, K), masks()
    program = torch.export.export(Decode(), (e, m))
    torch.testing.assert_close(program.module()(e, m), crf.decode(e, m))


def test_state_saves_as_safetensors(tmp_path):
    from safetensors.torch import load_file, save_file

    crf = CRF(K)  # no constraints: the start and end masks must not share memory
    save_file(crf.state_dict(), str(tmp_path / "crf.safetensors"))
    assert load_file(str(tmp_path / "crf.safetensors")).keys() == crf.state_dict().keys()


def _log_space_nll(crf, e, tags, m):
    """The log-space recursion with autograd through every step, in float64 (the reference of the fast kernels)."""
    trans, start, end = (p.double() for p in crf._potentials())
    _, y, lengths, order = crf._compact(e.detach(), m, tags)
    ec = e.double() if order is None else e.double().gather(1, order[..., None].expand(-1, -1, e.shape[-1]))
    log_z = torch.logsumexp(crf._forward_alpha(ec, lengths, trans, start)[-1] + end, dim=-1)
    return log_z - crf._path_score(ec, y, lengths, trans, start, end)


@pytest.mark.parametrize("betas", ["scaled", "normalised", "overflow"])
@pytest.mark.parametrize("constrained", [False, True], ids=["free", "BIO"])
def test_fast_nll_and_gradients_equal_the_log_space_recursion(constrained, betas, monkeypatch):
    from zoo.nets import _crf_kernels

    if betas == "normalised":  # the per-step normalised backward recursion instead of the scaled one
        monkeypatch.setattr(_crf_kernels, "_SCALED_BETAS", False)
    if betas == "overflow":  # scaled betas beyond fp32's range: the backward must fall back to the normalised ones
        monkeypatch.setattr(_crf_kernels, "_scaled_w", lambda u, *args: torch.full_like(u, float("inf")))
    allowed, start, end = scheme_constraints(TAGS, "BIO")
    crf = make_crf(len(TAGS), constraints=(allowed, start, end) if constrained else None)
    g = torch.Generator().manual_seed(0)
    e = (3 * torch.randn(4, 5, len(TAGS), generator=g)).requires_grad_()
    tags = torch.zeros(4, 5, dtype=torch.long)  # O everywhere: valid under BIO
    prefix = torch.arange(5)[None] < torch.tensor([5, 3, 1, 4])[:, None]  # a mask of lengths: no compaction
    for m in (masks(), prefix, None):
        params = [e, crf.transitions, crf.start, crf.end]
        fast = crf.nll(e, tags, m, reduction="none")
        ref = _log_space_nll(crf, e, tags, m)
        torch.testing.assert_close(fast.double(), ref, atol=1e-5, rtol=1e-6)
        for a, b in zip(torch.autograd.grad(fast.sum(), params), torch.autograd.grad(ref.sum(), params)):
            torch.testing.assert_close(a.double(), b.double(), atol=1e-5, rtol=0)


def test_fast_log_partition_and_nll_gradcheck():
    from zoo.nets._crf_kernels import log_partition, nll

    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([4, 2, 1])
    trans = torch.randn(3, 3, generator=g, dtype=torch.float64)
    trans[0, 1] = -1e4  # a forbidden transition (NEG): its gradient is 0
    inputs = [torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True) for s in [(3, 4, 3), (3,), (3,)]]
    trans.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda e, t, s, n: log_partition(e, lengths, t, s, n), (inputs[0], trans, *inputs[1:])
    )
    tags = torch.randint(0, 3, (3, 4), generator=g)  # any tag after each end: its counts must be ignored
    assert torch.autograd.gradcheck(lambda e, t, s, n: nll(e, tags, lengths, t, s, n), (inputs[0], trans, *inputs[1:]))


@pytest.mark.parametrize("shape", [(1, 6), (3, 1), (1, 1)], ids=["B1", "T1", "B1T1"])
def test_fast_kernels_at_edge_shapes_leave_the_inputs_untouched(shape):
    B, T = shape
    crf = make_crf()
    g = torch.Generator().manual_seed(0)
    e = torch.randn(B, T, K, generator=g).requires_grad_()
    before = e.detach().clone()
    tags = torch.randint(0, K, (B, T), generator=g)
    m = torch.ones(B, T, dtype=torch.bool)
    m[1:, T // 2 + 1 :] = False
    paths = crf.decode(e, m)
    fast = crf.nll(e, tags, m, reduction="none")
    assert torch.equal(e.detach(), before)  # B = 1: a permuted view of the emissions is contiguous, not a copy
    ref = _log_space_nll(crf, e, tags, m)
    torch.testing.assert_close(fast.double(), ref, atol=1e-5, rtol=1e-6)
    params = [e, crf.transitions, crf.start, crf.end]
    for a, b in zip(torch.autograd.grad(fast.sum(), params), torch.autograd.grad(ref.sum(), params)):
        torch.testing.assert_close(a.double(), b.double(), atol=1e-5, rtol=0)
    assert torch.equal(paths, crf.viterbi(e, m.sum(1)))


def test_fast_log_partition_falls_back_beyond_fp32_range():
    from zoo.nets._crf_kernels import log_partition

    crf = make_crf(len(TAGS), constraints=scheme_constraints(TAGS, "BIO"))
    e = torch.randn(2, 6, len(TAGS), generator=torch.Generator().manual_seed(0))
    e[:, 0, 2] = 1e3  # I-PER cannot start a sentence: every allowed path is ~1000 nats below the best emission
    tags = torch.zeros(2, 6, dtype=torch.long)
    lengths = torch.tensor([6, 6])
    assert not torch.isfinite(log_partition(e, lengths, *crf._potentials())).all()  # beyond the kernel's range
    fast = crf.nll(e, tags, reduction="none")  # the log-space recursion takes over
    torch.testing.assert_close(fast.double(), _log_space_nll(crf, e, tags, None).detach(), rtol=1e-6, atol=1e-3)


@pytest.mark.parametrize("numpy_backtrace", [True, False], ids=["numpy", "torch"])
@pytest.mark.parametrize("num_tags", [5, 30], ids=["K5", "K30"])
def test_fast_viterbi_equals_the_scan_viterbi(num_tags, numpy_backtrace, monkeypatch):
    monkeypatch.setattr("zoo.nets._crf_kernels._NUMPY_BACKTRACE", numpy_backtrace)
    crf = make_crf(num_tags)
    g = torch.Generator().manual_seed(0)
    e, lengths = torch.randn(16, 11, num_tags, generator=g), torch.randint(1, 12, (16,), generator=g)
    m = torch.arange(11)[None] < lengths[:, None]
    assert torch.equal(crf.decode(e, m), crf.viterbi(e, lengths))  # eager kernel vs the exportable scan


def test_fast_paths_under_autocast_and_bf16():
    crf = make_crf()
    e, m = torch.randn(4, 5, K, generator=torch.Generator().manual_seed(0)).bfloat16(), masks()
    tags = torch.zeros(4, 5, dtype=torch.long)
    want = crf.nll(e.float(), tags, m, reduction="none")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = crf.nll(e, tags, m, reduction="none")
        paths = crf.decode(e, m)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert torch.equal(paths, crf.decode(e.float(), m))


@pytest.mark.parametrize("module", [CRF, HMM])
def test_constraints_of_the_wrong_shape_are_refused(module):
    """Start and end masks of equal but wrong shapes too (the CRF's check once compared them with each other)."""
    two = torch.ones(2, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"constraints must be \(3, 3\) and \(3,\) booleans"):
        module(3, allowed_start=two, allowed_end=two)
    with pytest.raises(ValueError, match="constraints must be"):
        module(3, allowed=torch.ones(2, 2, dtype=torch.bool))
