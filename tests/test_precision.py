"""The precision matrix: every registered model x every Lightning precision, one step on a tiny batch through a
real Trainer (weights change, stay finite), or a refusal at fit start that says what to use instead; real float16
autocast with a GradScaler (which Lightning never runs on CPU for ``16-mixed``) with its skipped steps announced;
the recurrent models under bf16-mixed on an AVX2-only oneDNN; and the fixes the matrix needed, at their mechanism.

Cells of the large nets under float16 and float64 are ``slow`` (CPU fp16 kernels are 10-100x slower than fp32:
those cells took 1.5-26 s each here); ``make test`` runs the rest of the matrix.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn as nn

import zoo
from zoo._registry import get_entry
from zoo.nets.alexnet import AlexNet
from zoo.tasks import _optim
from zoo.tasks._optim import build_optimizer
from zoo.tasks._precision import PrecisionRefused, SkippedSteps, refusal

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from precision_matrix import FP16_AMP, LARGE, PRECISIONS, ToyData, run_cell, tiny_model  # noqa: E402

COLUMNS = [*PRECISIONS, FP16_AMP]
SLOW_PRECISIONS = ("16-true", "64-true", FP16_AMP)
TEXT_MODELS = [n for n in zoo.list_models() if get_entry(n).kind != "image"]  # every one has a recurrent net


def _cells():
    for name in zoo.list_models():
        for precision in COLUMNS:
            slow = LARGE.get(name) == "all" or (name in LARGE and precision in SLOW_PRECISIONS)
            yield pytest.param(name, precision, id=f"{name}-{precision}", marks=[pytest.mark.slow] if slow else [])


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> ToyData:
    return ToyData(tmp_path_factory.mktemp("precision"))


@pytest.mark.parametrize("name,precision", list(_cells()))
def test_cell(name, precision, toy):
    cell = run_cell(name, precision, toy)
    assert cell.status in ("pass", "refused"), cell.short
    if cell.status == "refused":  # at fit start, naming what to use instead
        assert "--trainer.precision" in cell.detail, cell.detail


# -- float16 autocast with a GradScaler: the skipped steps are said, once ------------------------------------------
def test_skipped_scaler_steps_are_announced_once(toy):
    """The tagger's first float16 step overflows at the scaler's initial scale (2**16): the step is skipped, the
    scale halves, and the run says so once, when a step goes through."""
    cell = run_cell("bilstm_crf", FP16_AMP, toy)
    assert cell.status == "pass" and cell.skipped >= 1, cell.short
    said = [n for n in cell.notes if "skipped" in n]
    assert len(said) == 1 and f"the first {cell.skipped} optimiser step(s) were skipped" in said[0], cell.notes


@pytest.mark.parametrize("name", ["bilstm_crf", "gru_lm"])  # clipped by Lightning's hook; by a manual step
def test_scaled_fp16_gradients_are_clipped_with_an_unfused_optimiser(name, toy, monkeypatch):
    """Under a GradScaler Lightning unscales the gradients before it clips them, which a fused optimiser (it
    unscales inside its own step) refuses: on CUDA, where the zoo fuses, every recipe that clips (the text
    families) failed its first float16 step ("AdamW does not allow for gradient clipping"; seen by
    benchmarks/gpu_check.py on an H200). The fused choice is mocked here, since the zoo fuses on CUDA only."""
    monkeypatch.setattr(_optim, "_device_types", lambda module: {"cuda"})
    cell = run_cell(name, FP16_AMP, toy)
    assert cell.status == "pass", cell.short


def test_skipped_steps_counted_from_the_scale():
    s = SkippedSteps()
    assert s.observe(65536.0, 32768.0) is None  # skipped (the scale halved)
    assert s.observe(32768.0, 16384.0) is None
    message = s.observe(16384.0, 16384.0)  # went through: the back-off is announced now
    assert "first 2 optimiser step(s) were skipped" in message and "65536 to 16384" in message
    assert s.observe(16384.0, 16384.0) is None and s.summary() is None  # said once; nothing more to say
    s.observe(16384.0, 8192.0)  # a later overflow: said at the end of the run
    assert s.skipped == 3 and "1 of 5 optimiser steps were skipped after the first one that went through" in s.summary()
    never = SkippedSteps()
    for scale in (65536.0, 32768.0):
        never.observe(scale, scale / 2)
    assert "all 2 optimiser step(s) of this run were skipped" in never.summary()


# -- refusals ----------------------------------------------------------------------------------------------------
def test_refusal_rules():
    assert refusal("64-true", torch.device("mps")).endswith("(or train on CPU in float64)")
    assert all(refusal(p, torch.device("cpu")) is None for p in COLUMNS)


def test_bf16_refused_on_a_gpu_without_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    message = refusal("bf16-mixed", torch.device("cuda", 0))
    assert "Tesla V100, sm_70" in message and "--trainer.precision 16-mixed" in message
    assert refusal("16-mixed", torch.device("cuda", 0)) is None


def test_a_refused_precision_stops_fit_before_any_step(toy, monkeypatch):
    """Every task refuses at fit start (its PrecisionGuard), before a step changes a weight."""
    monkeypatch.setattr("zoo.tasks._precision.refusal", lambda precision, device: "use --trainer.precision 32-true")
    cell = run_cell("gru_classifier", "bf16-true", toy)
    assert cell.status == "refused" and cell.detail == (
        "--trainer.precision bf16-true on cpu: use --trainer.precision 32-true"
    )
    with pytest.raises(PrecisionRefused):
        L.Trainer(max_steps=1, logger=False, enable_checkpointing=False).fit(tiny_model("lenet5"), _loader())


@pytest.mark.parametrize("native", [True, False], ids=["native-bf16", "avx2-only"])
def test_emulated_bf16_on_a_cpu_is_warned_once_and_still_trains(native, monkeypatch, recwarn):
    """bf16 on a CPU without bfloat16 kernels trains (correctly) but many times slower: said when fit starts,
    with what to pass instead; a CPU with them, or float32, hears nothing."""
    monkeypatch.setattr("zoo.tasks._precision._cpu_has_bf16", lambda: native)
    for precision in ("bf16-mixed", "32-true"):
        trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, precision=precision)
        trainer.fit(tiny_model("lenet5"), _loader())
        assert trainer.global_step == 1
    said = [str(w.message) for w in recwarn if "emulated" in str(w.message)]
    expected = (
        "--trainer.precision bf16-mixed on this CPU (no bfloat16 kernels: AVX2 only, no AVX-512 or AMX) is "
        "emulated, 4-16x slower than float32 in our measurements: pass --trainer.precision 32-true"
    )
    assert said == ([] if native else [expected])


def _loader():
    return torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(2, 3, 32, 32), torch.tensor([0, 1])), batch_size=2
    )


# -- the mechanisms ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_alexnet_local_response_norm_in_low_precision(dtype):
    """LRN runs on CPU in float16/bfloat16 (torch has no such avg_pool3d kernel there) and, computed in float32,
    does not overflow on activations whose squares float16 cannot hold (> 256)."""
    lrn = AlexNet().features[2]
    x = torch.rand(2, 96, 5, 5) * 600  # ReLU outputs up to 600: squares up to 360,000 > float16's 65,504
    out = lrn(x.to(dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), lrn(x), rtol=1e-2, atol=1e-2)


def test_adamw_on_float16_weights_stays_finite():
    """PyTorch's AdamW eps (1e-8) is 0 in float16: a weight with no gradient gets 0/0 = NaN. The optimiser takes
    the smallest normal number of the weights' dtype instead when 1e-8 is below it."""
    net = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 2)).half()
    opt = build_optimizer(net, "adamw", lr=1e-3, weight_decay=0.01, momentum=0.9)
    assert {g["eps"] for g in opt.param_groups} == {torch.finfo(torch.float16).tiny}
    loss = net[1](net[0](torch.tensor([1, 2]))).float().sum()  # rows 0, 3, 4 of the embedding get zero gradients
    loss.backward()
    opt.step()
    assert all(torch.isfinite(p).all() for p in net.parameters())
    fp32 = build_optimizer(nn.Linear(2, 2), "adamw", lr=1e-3, weight_decay=0.0, momentum=0.9)
    assert {g["eps"] for g in fp32.param_groups} == {1e-8}  # unchanged where 1e-8 is representable


# -- recurrent models under bf16-mixed on a CPU without AVX-512 (oneDNN's bf16 LSTM needs it) ------------------------
AVX2_SCRIPT = """
import json, sys, torch
sys.path.insert(0, sys.argv[1])
assert not torch.ops.mkldnn._is_mkldnn_bf16_supported(), "ONEDNN_MAX_CPU_ISA=AVX2 did not take effect"
from precision_matrix import ToyData, run_cell
import zoo
from zoo._registry import get_entry
names = [n for n in zoo.list_models() if get_entry(n).kind != "image"]
cells = [run_cell(n, "bf16-mixed", ToyData(sys.argv[2])) for n in names]
print(json.dumps({c.model: c.short for c in cells}))
"""


def test_recurrent_models_under_bf16_mixed_on_an_avx2_cpu(tmp_path):
    """ONEDNN_MAX_CPU_ISA=AVX2 is read when oneDNN loads: a fresh process, which first checks that bf16 is off."""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-c", AVX2_SCRIPT, str(ROOT / "benchmarks"), str(tmp_path)]
    res = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    cells = json.loads(res.stdout.strip().splitlines()[-1])
    assert sorted(cells) == TEXT_MODELS
    assert all(v == "pass" for v in cells.values()), cells


def test_real_fp16_autocast_on_cpu_through_train_py(cifar_dir, tmp_path, monkeypatch, recwarn):
    """Lightning runs ``--trainer.precision 16-mixed`` as bf16 on CPU; the README's plugin flags give real float16
    autocast with a GradScaler through train.py: ResNet-20 overflows float16 in its first steps, and the skipped
    steps are announced."""
    from conftest import FIXTURE_ARGS

    from zoo.cli.train import main

    monkeypatch.setenv("ZOO_RUN_DIR", "")
    monkeypatch.setattr("sys.argv", ["train.py"])
    plugin = ["--trainer.plugins", "lightning.pytorch.plugins.MixedPrecision", "--trainer.plugins.precision"]
    plugin += ["16-mixed", "--trainer.plugins.device", "cpu"]
    data = ["--data", "cifar10", "--data.data_dir", str(cifar_dir), *FIXTURE_ARGS, "--data.batch_size", "4"]
    quiet = ["--trainer.fast_dev_run", "3", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
    assert main(["fit", "--model", "resnet20", *data, *plugin, *quiet, "--run_root", str(tmp_path / "runs")]) == 0
    said = [str(w.message) for w in recwarn if "were skipped" in str(w.message)]
    assert len(said) == 1 and "float16 gradients overflowed" in said[0], said  # said once, at the end here
    assert not any("Using `precision='bf16-mixed'` instead" in str(w.message) for w in recwarn)
