"""benchmarks/gpu_check.py runs: its quick CPU mode (a few models of the precision matrix, the image step timing,
the published translator and tagger decoding, a short ResNet-20 run) prints every table and passes."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_check  # noqa: E402
from conftest import N_TEST, N_TRAIN  # noqa: E402


def test_quick_mode_on_cpu(tmp_path, capsys, cifar_dir):
    out = tmp_path / "check.md"
    cifar = ["--data-dir", str(cifar_dir), "--num-images", str(N_TRAIN), str(N_TEST)]
    assert gpu_check.main(["--device", "cpu", "--quick", "--out", str(out), *cifar]) == 0
    report = capsys.readouterr().out
    assert out.read_text(encoding="utf-8").strip() == report.strip()
    titles = ("## Precision matrix (42 cells", "## Training step of every image net", "## Decoding", "## ResNet-20")
    assert all(title in report for title in titles), report
    matrix = report.split("## Precision matrix")[1].split("##")[0]
    rows = [line for line in matrix.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == len(gpu_check.QUICK_MODELS) and all("fail" not in row for row in rows)
    assert "| translate, beam 5 | 2/2 |" in report and "| tag (CRF Viterbi) | 3/3 |" in report
    resnet = report.split("## ResNet-20")[1]  # both feeding paths of CIFAR-10, trained through the Trainer
    assert "| CIFAR-10 160/40, per-image loader | 32-true | 1 | 10 |" in resnet
    assert "| CIFAR-10 160/40, batched on the device | 32-true | 1 | 10 |" in resnet


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_cuda_asked_for_without_a_gpu(capsys):
    assert gpu_check.main([]) == 2
    assert "no CUDA device here" in capsys.readouterr().out


def test_fp16_mixed_on_cuda_trains_until_the_scaler_lets_a_step_through():
    """Lightning runs ``16-mixed`` on CUDA with a GradScaler, whose first steps overflow float16 and are skipped: a
    one-step cell there changed no weight of the ResNets and the VGGs with BN (seen on an H200), so those cells train
    on as the CPU's ``FP16_AMP`` ones do; on CPU ``16-mixed`` is bf16 and needs no scaler."""
    from precision_matrix import FP16_AMP, scaled

    assert scaled("16-mixed", "cuda") and scaled(FP16_AMP, "cpu")
    assert not scaled("16-mixed", "cpu") and not scaled("bf16-mixed", "cuda")
