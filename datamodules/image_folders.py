"""A folder of labelled images, listed and checked: its layout (one pool of class folders, or train/ with optional
val/ and test/), the class folders and their image files, files PIL cannot parse, and the stratified split of a
pool (``datamodules.images`` describes the layouts). Hidden files and folders and other extensions are skipped.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from datamodules import DatasetError

__all__ = ["IMAGE_EXTENSIONS", "find_splits", "scan_classes", "split_per_class", "check_classes", "check_image"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SPLIT_NAMES = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}
LAYOUT = "root/<class>/*.jpg (or root/train/<class>/*.jpg with optional root/val/ and root/test/)"
SHOW_FILES = 5  # bad files named in a message; the rest are counted


def hidden(name: str) -> bool:
    return name.startswith(".") or name.startswith("__")


def subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not hidden(p.name))


def image_files(folder: Path) -> tuple[list[Path], int]:
    """Image files under ``folder`` (recursive, sorted, hidden parts skipped) and the number of other files."""
    images, others = [], 0
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not hidden(d)]  # pruned in place: os.walk does not descend
        for name in filenames:
            if hidden(name):
                continue
            if name.lower().endswith(IMAGE_EXTENSIONS):
                images.append(Path(dirpath) / name)
            else:
                others += 1
    return sorted(images), others


def find_splits(root: Path) -> dict[str, Path]:
    """``{"train": ..., "val": ..., "test": ...}`` (those present) for the split layout; ``{"pool": root}`` else."""
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist (or is not a folder); expected {LAYOUT}")
    dirs = {p.name: p for p in subdirs(root)}
    if "train" not in dirs:
        return {"pool": root}
    found: dict[str, Path] = {}
    for split, names in SPLIT_NAMES.items():
        hits = [n for n in names if n in dirs]
        if len(hits) > 1:
            raise DatasetError(f"{root} has {' and '.join(h + '/' for h in hits)}: keep one {split} folder")
        if hits:
            found[split] = dirs[hits[0]]
    other = sorted(set(dirs) - {p.name for p in found.values()})
    if other:
        raise DatasetError(
            f"{root} has train/ next to {', '.join(o + '/' for o in other)}: put every class folder under train/ "
            f"(and val/, test/), or rename train/ if it is a class; expected {LAYOUT}"
        )
    return found


def scan_classes(folder: Path) -> dict[str, list[Path]]:
    """Class name -> sorted image files; a folder without class folders, or a class without images, is an error."""
    classes = subdirs(folder)
    if not classes:
        files = sorted(p.name for p in folder.iterdir() if not hidden(p.name))
        found = f"{len(files)} files ({', '.join(files[:SHOW_FILES])}{', ...' if len(files) > SHOW_FILES else ''})"
        raise DatasetError(
            f"{folder} holds no class folders, only {found if files else 'nothing'}; expected {LAYOUT}, "
            "one folder per class"
        )
    out, empty = {}, []
    for c in classes:
        out[c.name], others = image_files(c)
        if not out[c.name]:
            empty.append(f"{c.name}/ ({others} other files)" if others else f"{c.name}/ (empty)")
    if empty:
        raise DatasetError(f"{folder}: class folders without images ({' '.join(IMAGE_EXTENSIONS)}): {', '.join(empty)}")
    return out


def check_classes(folder: Path, classes: list[str]) -> list[str]:
    """``classes``, the class folders found in ``folder``, if there are at least two: with one, every image has the
    same label and there is nothing to learn (a classifier's metrics are not even defined)."""
    if len(classes) < 2:
        raise DatasetError(
            f"{folder} has {len(classes)} class folder ({', '.join(c + '/' for c in classes)}): a classifier needs "
            f"at least 2 classes. Add a folder of images for each other class next to it (expected {LAYOUT})"
        )
    return classes


def check_image(path: Path) -> str | None:
    """None if PIL can parse the file; else why not. ``verify`` reads the structure without decoding pixels."""
    try:
        with Image.open(path) as im:
            im.verify()
    except Exception as e:  # noqa: BLE001 (PIL raises OSError, SyntaxError, struct.error, ... for broken files)
        return f"{type(e).__name__}: {e}"
    return None


def split_per_class(
    per_class: Sequence[list[Path]], fractions: dict[str, float], seed: int
) -> dict[str, list[tuple[Path, int]]]:
    """Split each class's files by a seeded permutation into ``train`` and the splits in ``fractions``.

    Each split gets round(n * fraction) of a class's n images, but train always keeps at least one, so a class
    too small for every split appears in train only (val first gets what is left, then test). Its own
    permutation (torch's generator), not ``text_classification.stratified_split``'s: each keeps the splits it
    has drawn for runs and checkpoints already made.
    """
    g = torch.Generator().manual_seed(seed)
    out: dict[str, list[tuple[Path, int]]] = {"train": [], **{s: [] for s in fractions}}
    for label, files in enumerate(per_class):
        n = len(files)
        perm = torch.randperm(n, generator=g).tolist()
        start = 0
        for split, fraction in fractions.items():
            k = min(int(n * fraction + 0.5), n - 1 - start)
            out[split] += [(files[i], label) for i in perm[start : start + k]]
            start += k
        out["train"] += [(files[i], label) for i in perm[start:]]
    return out
