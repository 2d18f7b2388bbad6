"""A generated folder of labelled images: what ``make demo`` fine-tunes on where CIFAR-10 is neither on disk nor
downloadable. Four classes of 32x32 shapes (circle, cross, square, triangle), each of a random colour, size and place
on a background of another random colour, with pixel noise, written as PNG files in the layout that
``datamodules.images.ImageFolderDataModule`` reads (``root/train|val|test/<class>/*.png``). The same seed writes the
same images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["CLASSES", "draw_shape", "write_shapes"]

CLASSES = ("circle", "cross", "square", "triangle")
SPLITS = {"train": 150, "val": 25, "test": 50}  # images per class


def draw_shape(shape: str, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """One ``size`` x ``size`` RGB image of ``shape`` (one of :data:`CLASSES`)."""
    background, colour = rng.integers(0, 256, (2, 3))
    while np.abs(background - colour).sum() < 150:  # a shape that stands out from its background
        colour = rng.integers(0, 256, 3)
    image = Image.new("RGB", (size, size), tuple(int(c) for c in background))
    pen = ImageDraw.Draw(image)
    r = rng.uniform(0.2, 0.4) * size  # half the shape's extent
    cx, cy = rng.uniform(r, size - r, 2)
    box = [cx - r, cy - r, cx + r, cy + r]
    fill = tuple(int(c) for c in colour)
    if shape == "circle":
        pen.ellipse(box, fill=fill)
    elif shape == "square":
        pen.rectangle(box, fill=fill)
    elif shape == "triangle":
        pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    elif shape == "cross":
        w = max(2.0, r / 2.5)
        pen.rectangle([cx - r, cy - w / 2, cx + r, cy + w / 2], fill=fill)
        pen.rectangle([cx - w / 2, cy - r, cx + w / 2, cy + r], fill=fill)
    else:
        raise ValueError(f"shape must be one of {', '.join(CLASSES)}; got {shape!r}")
    noisy = np.asarray(image, dtype=np.int16) + rng.integers(-20, 21, (size, size, 3))
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def write_shapes(root: str | Path, seed: int = 0, splits: dict[str, int] | None = None) -> Path:
    """Write the image folder under ``root`` (``splits``: images per class in each split, default
    :data:`SPLITS`) and return ``root``. Files already there are overwritten with the same images."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, n in (splits or SPLITS).items():
        for shape in CLASSES:
            folder = root / split / shape
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                draw_shape(shape, rng).save(folder / f"{i:04d}.png")
    return root
