"""Image augmentation shared by the image DataModules (CIFAR-10, the user's own images).

One place builds the ``torchvision.transforms.v2`` pipeline from the same flags, so ``--data.hflip 0.5`` means the
same on every image DataModule, and one place validates those flags with the same messages. Inputs are uint8
tensors (C, H, W) already at the training size; outputs are normalised float32. Cutout (DeVries & Taylor 2017) runs
after normalisation, so the patch is the mean colour.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchvision.transforms import v2

__all__ = [
    "AUGMENT_ARGS",
    "Cutout",
    "augmentation",
    "check_augmentation",
    "check_cutout",
    "normalisation",
    "PADDING_MODES",
    "sample_key",
    "seeded",
]

PADDING_MODES = ("constant", "reflect", "edge", "symmetric")
# The DataModule arguments that ``augmentation`` takes, under the same names: ``{k: hparams[k] for k in ...}``.
AUGMENT_ARGS = ("hflip", "vflip", "crop_padding", "padding_mode", "rotation", "scale", "noise_std", "cutout")


class Cutout(torch.nn.Module):
    """Zero a ``size`` x ``size`` square at a uniformly random centre, clipped at the border (DeVries & Taylor 2017)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        cy, cx = torch.randint(h, ()).item(), torch.randint(w, ()).item()
        y0, y1 = max(cy - self.size // 2, 0), min(cy + (self.size + 1) // 2, h)
        x0, x1 = max(cx - self.size // 2, 0), min(cx + (self.size + 1) // 2, w)
        img = img.clone()
        img[..., y0:y1, x0:x1] = 0
        return img


def check_augmentation(
    *,
    hflip: float,
    vflip: float,
    crop_padding: int,
    padding_mode: str,
    rotation: float,
    scale: Sequence[float] | None,
    noise_std: float,
    cutout: int,
    batch_size: int,
    num_workers: int,
    size: int | None = None,
) -> None:
    """Raise ValueError, naming the flag and its allowed values, for flags the pipeline (or a DataLoader) would
    reject later or that make no sense for ``size`` x ``size`` training images (when the caller knows ``size``;
    ``augmentation`` checks the same when it builds the pipeline)."""
    for name, p in (("hflip", hflip), ("vflip", vflip)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} is a probability in [0, 1], got {p}")
    for name, v in (("crop_padding", crop_padding), ("rotation", rotation), ("noise_std", noise_std)):
        if v < 0:
            raise ValueError(f"{name} must be >= 0 (0 turns it off), got {v}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0 (0 loads in the main process), got {num_workers}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    check_cutout(cutout, size)
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be constant, reflect, edge or symmetric, got {padding_mode!r}")
    if scale is not None and not (len(scale) == 2 and 0 < scale[0] <= scale[1]):
        raise ValueError(f"scale is a range [min, max] with 0 < min <= max, got {scale}")


def check_cutout(cutout: int, size: int | None = None) -> None:
    """Refuse a negative Cutout side, or one larger than the ``size`` x ``size`` images it is cut from: clipped at
    the border, such a square blanks (nearly) every image, and the model learns from none."""
    if cutout < 0:
        raise ValueError(f"cutout must be >= 0 (the side of the square in pixels; 0 turns it off), got {cutout}")
    if size is not None and cutout > size:
        raise ValueError(
            f"cutout={cutout} is larger than the {size}x{size} training images: its square would blank (nearly) "
            f"every image. Use at most {size} pixels (DeVries & Taylor 2017 cut 16 of CIFAR-10's 32), or 0 for none"
        )


def normalisation(mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """uint8 -> float in [0, 1] -> per-channel standardised: the whole eval-time pipeline at the training size."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])


def augmentation(
    *,
    hflip: float,
    vflip: float,
    crop_padding: int,
    padding_mode: str,
    rotation: float,
    scale: Sequence[float] | None,
    noise_std: float,
    cutout: int,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> v2.Compose:
    """The training pipeline on uint8 ``size`` x ``size`` images; a flag at 0 (or None) leaves its transform out.

    Geometric transforms run on uint8 (cheaper, and exact for flips and crops), noise on [0, 1] pixels so
    ``noise_std`` does not depend on the dataset's statistics, Cutout last so the patch is the mean colour.
    """
    check_cutout(cutout, size)  # where the size is known for sure: what every image DataModule builds
    ops: list = []
    if crop_padding:
        ops.append(v2.RandomCrop(size, padding=crop_padding, padding_mode=padding_mode))
    if hflip:
        ops.append(v2.RandomHorizontalFlip(hflip))
    if vflip:
        ops.append(v2.RandomVerticalFlip(vflip))
    if rotation or scale:
        ops.append(v2.RandomAffine(degrees=rotation, scale=tuple(scale) if scale else None))
    ops.append(v2.ToDtype(torch.float32, scale=True))
    if noise_std:
        ops.append(v2.GaussianNoise(sigma=noise_std, clip=True))
    ops.append(v2.Normalize(list(mean), list(std)))
    if cutout:
        ops.append(Cutout(cutout))
    return v2.Compose(ops)


def sample_key(key: int | tuple[int, int]) -> tuple[int, int | None]:
    """A dataset key as ``(index, augmentation seed or None)``: training loaders pass ``(index, seed)``
    (``datamodules._base.EpochSampler``), other loaders and users a bare index."""
    return key if isinstance(key, tuple) else (key, None)


def seeded(transform: Callable, x: torch.Tensor, seed: int | None) -> torch.Tensor:
    """``transform(x)`` drawing from the CPU generator seeded with ``seed`` (its state restored afterwards);
    unseeded for None. The CPU generator alone: ``torch.manual_seed`` also seeds every accelerator, 100x slower."""
    if seed is None:
        return transform(x)
    g = torch.default_generator
    state = g.get_state()
    g.manual_seed(seed)
    try:
        return transform(x)
    finally:
        g.set_state(state)
