"""Writing a graph in a format (``torch.export`` program, ONNX) and running the written file again, for the parity
check: the file's outputs on fresh inputs against the eager module's."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from zoo.export._graph import Graph, dynamic_shapes

__all__ = ["FORMATS", "SUFFIX", "ExportError", "ParityError", "write", "load", "compare", "TOLERANCE", "versions"]

FORMATS = ("onnx", "torch")
SUFFIX = {"onnx": ".onnx", "torch": ".pt2"}
TOLERANCE = 1e-4  # absolute, on fp32 outputs; integer outputs (tags) must be equal
EXTRA = "pip install 'lightning-zoo[export]'"


class ExportError(ValueError):
    """An export that cannot be made here (a missing package, a model without preprocessing ...)."""


class ParityError(RuntimeError):
    """The written graph's outputs differ from PyTorch's on fresh inputs."""


def _onnx_modules():
    """onnx, onnxscript (torch.onnx's exporter needs both) and onnxruntime, or one line that says how to get them."""
    try:
        return tuple(importlib.import_module(m) for m in ("onnx", "onnxscript", "onnxruntime"))
    except ImportError as e:
        raise ExportError(f"ONNX export needs onnx, onnxscript and onnxruntime ({e.name} is missing): {EXTRA}") from e


def versions(fmt: str) -> dict:
    out = {"torch": torch.__version__}
    if fmt == "onnx":
        onnx, onnxscript, ort = _onnx_modules()
        out |= {"onnx": onnx.__version__, "onnxscript": onnxscript.__version__, "onnxruntime": ort.__version__}
    return out


@torch.no_grad()  # inference graphs: no autograd through the recurrences' loops (and a faster trace)
def write(graph: Graph, fmt: str, path: Path) -> dict:
    """Trace ``graph`` with dynamic axes and write it to ``path``. Returns what the sidecar records of the format."""
    shapes = dynamic_shapes(graph.inputs, graph.module)
    if fmt == "torch":
        program = torch.export.export(graph.module, graph.example, dynamic_shapes=shapes)
        torch.export.save(program, path)
        return {}
    onnx, _, _ = _onnx_modules()
    program = torch.onnx.export(
        graph.module,
        graph.example,
        dynamo=True,
        dynamic_shapes=shapes,
        input_names=[p.name for p in graph.inputs],
        output_names=[p.name for p in graph.outputs],
        verbose=False,
    )
    program.save(str(path))
    model = onnx.load(str(path), load_external_data=False)
    return {"opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))}


def load(graph: Graph, fmt: str, path: Path) -> Callable[..., tuple[np.ndarray, ...]]:
    """The written file as a function of the graph's inputs (tensors) returning its outputs (numpy arrays): the
    program's module for ``torch``, an onnxruntime session for ``onnx``."""
    if fmt == "torch":
        module = torch.export.load(path).module()

        def run(*inputs: torch.Tensor):
            with torch.no_grad():
                out = module(*inputs)
            return tuple(o.numpy() for o in (out if isinstance(out, (tuple, list)) else (out,)))

        return run
    _, _, ort = _onnx_modules()
    options = ort.SessionOptions()
    options.log_severity_level = 3  # no warnings about the shapes inferred at export
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [p.name for p in graph.inputs]
    return lambda *inputs: tuple(session.run(None, {n: x.numpy() for n, x in zip(names, inputs)}))


def difference(expected: np.ndarray, got: np.ndarray) -> float:
    """The largest absolute difference (equal infinities count as equal; a shape or dtype mismatch as infinite)."""
    if expected.shape != got.shape:
        return float("inf")
    if expected.dtype.kind in "biu" or got.dtype.kind in "biu":
        return float(np.count_nonzero(expected != got.astype(expected.dtype)) and np.inf)
    with np.errstate(invalid="ignore"):  # inf - inf
        diff = np.abs(expected.astype(np.float64) - got.astype(np.float64))
    diff[expected == got] = 0.0  # -inf == -inf (log-probabilities of PAD and BOS)
    return float(np.nan_to_num(diff, nan=np.inf).max(initial=0.0))


@torch.no_grad()
def compare(graph: Graph, run: Callable, tolerance: float = TOLERANCE) -> dict:
    """Run the eager module and the written file on every fresh input. Returns the largest difference per output
    and the shapes tried; raises :class:`ParityError` when one exceeds ``tolerance`` (integers: when any differs)."""
    graph.module.eval()
    worst = {p.name: 0.0 for p in graph.outputs}
    tried = []
    for inputs in graph.fresh:
        expected = graph.module(*inputs)
        got = run(*inputs)
        tried.append(" ".join("x".join(map(str, x.shape)) for x in inputs))
        for port, e, g in zip(graph.outputs, expected, got):
            worst[port.name] = max(worst[port.name], difference(e.numpy(), g))
            if worst[port.name] > tolerance:
                exact = "must be equal" if e.dtype in (torch.long, torch.bool) else f"tolerance {tolerance:g}"
                raise ParityError(
                    f"output {port.name!r} of the exported graph differs from PyTorch by {worst[port.name]:.3g} "
                    f"({exact}) on inputs of shapes {tried[-1]}"
                )
    return {"max_abs_diff": worst, "inputs": tried, "tolerance": tolerance, "passed": True}
