"""The two pictures of the text families that ``wandb.plot`` cannot draw: an attention heatmap (source tokens on x,
target tokens on y) and gradient norms through time on a log axis, one line per training step. Drawn with
matplotlib's object API on an Agg canvas (no ``pyplot``: no global figure state, no GUI backend picked behind the
user's back) and handed to W&B as pixels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["attention_heatmap", "gradient_curves", "to_pixels"]

MAX_TICKS = 40  # token labels on an axis; longer sentences label every k-th token


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def to_pixels(fig) -> np.ndarray:
    """The figure rendered to an (H, W, 3) uint8 array (what ``wandb.Image`` stores as a PNG)."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def _ticks(axis_set, labels: Sequence[str]) -> None:
    step = max(1, -(-len(labels) // MAX_TICKS))
    positions = list(range(0, len(labels), step))
    axis_set(positions, [labels[i] for i in positions])


def attention_heatmap(weights, source: Sequence[str], target: Sequence[str], title: str = ""):
    """A figure of ``weights`` (len(target), len(source)): row ``t`` is where target token ``t`` looked."""
    weights = np.asarray(weights, dtype=np.float32)
    rows, cols = weights.shape
    fig = _figure(min(2.0 + 0.35 * cols, 14.0), min(1.5 + 0.3 * rows, 14.0))
    ax = fig.add_subplot()
    image = ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    _ticks(lambda p, labels: ax.set_xticks(p, labels, rotation=60, ha="right", fontsize=8), list(source)[:cols])
    _ticks(lambda p, labels: ax.set_yticks(p, labels, fontsize=8), list(target)[:rows])
    ax.set_xlabel("source")
    ax.set_ylabel("output")
    if title:
        ax.set_title(title, fontsize=9, loc="left")
    fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
    return fig


def gradient_curves(curves: Sequence[tuple[int, Sequence[float]]], title: str = ""):
    """A figure of ``||dL/dh_t||`` against t on a log axis, one line per ``(step, norms)``: older steps darker,
    so a curve that flattens (or steepens) as training goes on shows as the lines' drift."""
    from matplotlib import colormaps

    fig = _figure(7.0, 4.0)
    ax = fig.add_subplot()
    colours = colormaps["viridis"](np.linspace(0.0, 0.9, max(len(curves), 1)))
    for (step, norms), colour in zip(curves, colours):
        norms = np.asarray(norms, dtype=np.float64)
        ax.plot(np.arange(len(norms)), np.clip(norms, 1e-30, None), color=colour, label=f"step {step}")
    ax.set_yscale("log")
    ax.set_xlabel("time step t")
    ax.set_ylabel("||dL/dh_t||")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncols=1 + len(curves) // 12, loc="best")
    if title:
        ax.set_title(title, fontsize=9, loc="left")
    return fig
