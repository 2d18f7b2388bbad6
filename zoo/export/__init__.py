"""Export for serving: the part of a model that a server runs, as an ONNX model or a ``torch.export`` program, with a
JSON sidecar, checked against PyTorch on fresh inputs (``zoo export`` on the command line).

What each family exports is in ``zoo.export._families`` (and ``_seq2seq``: the encoder and one decoder step; the
search loop stays in Python). Recurrent layers are traced through their masked path (``zoo.nets.masked_rnn``:
``torch.export`` cannot trace packing) and time loops become ``scan`` nodes (ONNX ``Scan``), so batch and length
stay dynamic. The written file is loaded again (onnxruntime for ONNX) and run on random inputs of other sizes
than the example, with ragged lengths; an output that differs from the eager model's by more than the tolerance
(1e-4 absolute; integer outputs such as tags: any difference) fails the export and removes its files.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L

from zoo._registry import get_entry
from zoo.export._families import FAMILIES, family_graphs
from zoo.export._graph import Graph, Port
from zoo.export._run import FORMATS, SUFFIX, TOLERANCE, ExportError, ParityError, compare, load, versions, write
from zoo.export._seq2seq import greedy_loop
from zoo.weights.store import sha256_of

__all__ = [
    "export_model",
    "FORMATS",
    "FAMILIES",
    "TOLERANCE",
    "ExportError",
    "ParityError",
    "Graph",
    "Port",
    "greedy_loop",
]

SIDECAR_VERSION = 1


def export_model(model: L.LightningModule, fmt: str, out_dir: str | Path, name: str, source: str | None = None) -> dict:
    """Export ``model`` (a zoo task with its net built) in ``fmt`` (``onnx`` or ``torch``) into ``out_dir`` as
    ``<name>.onnx`` / ``<name>.pt2`` (seq2seq: ``<name>.encoder.*`` and ``<name>.step.*``) and ``<name>.json``, and
    check every written file against the model. Returns the sidecar. ``source`` names where the model came from.

    Raises :class:`ExportError` for what cannot be exported here and :class:`ParityError` (files removed) when a
    written graph differs from PyTorch."""
    if fmt not in FORMATS:
        raise ExportError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if getattr(model, "net", None) is None:
        raise ExportError("the model has no net yet (its vocabularies come from data): train it, or load weights")
    arch = model.hparams.arch
    kind = get_entry(arch).kind
    tool_versions = versions(fmt)  # an ONNX export without its packages stops here, before any tracing
    model = model.cpu().eval()
    graphs, info = family_graphs(model, kind)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files, written = [], []
    try:
        for graph in graphs:
            path = out_dir / f"{name}{'.' + graph.suffix if graph.suffix else ''}{SUFFIX[fmt]}"
            written.append(path)
            extra = write(graph, fmt, path)
            parity = compare(graph, load(graph, fmt, path))
            files.append(
                {
                    "graph": graph.suffix or "model",
                    "file": path.name,
                    "sha256": sha256_of(path),
                    **extra,
                    **graph.describe(),
                    "parity": parity,
                }
            )
    except ParityError as e:
        for path in written:
            path.unlink(missing_ok=True)
        raise ParityError(f"{written[-1].name}: {e}; nothing written") from e
    sidecar = {
        "sidecar_version": SIDECAR_VERSION,
        "model": name,
        "source": source or name,
        "arch": arch,
        "task": kind,
        "format": fmt,
        "versions": tool_versions,
        "files": files,
        **info,
        "parity": {
            "passed": True,
            "tolerance": TOLERANCE,
            "against": "the PyTorch model in eval mode, on fresh random inputs (onnxruntime for ONNX)",
            "max_abs_diff": max(v for f in files for v in f["parity"]["max_abs_diff"].values()),
        },
    }
    (out_dir / f"{name}.json").write_text(json.dumps(sidecar, indent=1, ensure_ascii=False) + "\n")
    return sidecar
