"""Batched augmentation on the device: a split held as one uint8 tensor where the model runs, batches drawn by
the seeded per-epoch permutation of the per-image path, and every random transform applied to the whole batch
with tensor ops there.

The per-image path (``datamodules._augment.augmentation`` in a DataLoader) spends more time per image than a
small net's training step: LeNet-5 trains several times faster on a resident batch than from that loader, and on a
GPU a CPU loader cannot keep the device busy. Here a batch is one gather from the resident tensor.

The transforms draw what ``augmentation`` draws, from the same distributions and in the same order: crop (pad by
``crop_padding`` in ``padding_mode``, a uniform offset in ``[0, 2 * crop_padding]`` per axis), horizontal and
vertical flips, an affine zoom/rotation (uniform angle and scale, nearest pixel, zero fill), Gaussian noise on
[0, 1] pixels (clipped), normalisation, Cutout last (a uniform centre, the square clipped at the border, the mean
colour). Crop, padding and flips are one gather per batch: each output pixel's source row and column are computed
(the padding modes are index maps) instead of padding and slicing image by image.

The draws of a batch come from a generator on the device seeded by (run seed, epoch, process rank, batch), not
from a stream that runs through the epoch: batch ``k`` is augmented the same whether the run got there unbroken or
resumed mid-epoch at it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DistributedSampler

from datamodules._augment import check_cutout
from datamodules._base import unpadded_share

__all__ = ["BatchAugment", "ResidentBatches", "affine", "batch_seed"]


def batch_seed(seed: int, epoch: int, rank: int, batch: int) -> int:
    """The generator seed of one training batch: distinct for every (run seed, epoch, process, batch)."""
    return (((seed * 1_000_003 + epoch) * 1_009 + rank) * 1_000_003 + batch) % 2**63


class BatchAugment:
    """``augmentation``'s pipeline for a batch: uint8 ``(B, C, H, W)`` -> normalised float32, drawing from ``g``.

    With every flag off it is the evaluation pipeline (``normalisation``) and draws nothing."""

    def __init__(
        self,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        hflip: float = 0.0,
        vflip: float = 0.0,
        crop_padding: int = 0,
        padding_mode: str = "constant",
        rotation: float = 0.0,
        scale: Sequence[float] | None = None,
        noise_std: float = 0.0,
        cutout: int = 0,
        size: int | None = None,
    ) -> None:
        check_cutout(cutout, size)
        self.hflip, self.vflip, self.pad, self.padding_mode = hflip, vflip, crop_padding, padding_mode
        self.rotation, self.scale, self.noise_std, self.cutout = rotation, scale, noise_std, cutout
        self.mean, self.std = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)

    def to(self, device: torch.device) -> BatchAugment:
        """The normalisation statistics on ``device``, where the batches will be (once, not at every batch)."""
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        return self

    @property
    def random(self) -> bool:
        return bool(
            self.hflip or self.vflip or self.pad or self.rotation or self.scale or self.noise_std or self.cutout
        )

    def __call__(self, x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        if self.pad or self.hflip or self.vflip:
            x = self._crop_and_flip(x, g)
        x = x.float().div_(255)
        if self.rotation or self.scale:
            x = self._affine(x, g)
        if self.noise_std:
            x = x.add_(torch.randn(x.shape, generator=g, device=x.device), alpha=self.noise_std).clamp_(0, 1)
        x = x.sub_(self.mean).div_(self.std)
        if self.cutout:
            x = x.masked_fill_(self._cutout_mask(x, g), 0.0)
        return x

    # -- the transforms --------------------------------------------------------------------------------------------
    def _crop_and_flip(self, x: torch.Tensor, g) -> torch.Tensor:
        """Crop from the padded image at a random offset, then flip: one gather of each output pixel's source."""
        B, C, H, W = x.shape
        rows, keep_r = self._sources(B, H, self.vflip, g, x.device)
        cols, keep_c = self._sources(B, W, self.hflip, g, x.device)
        flat = (rows[:, :, None] * W + cols[:, None, :]).view(B, 1, H * W).expand(B, C, H * W)
        out = x.reshape(B, C, H * W).gather(2, flat).view(B, C, H, W)
        if keep_r is not None:  # constant padding: what falls outside the image is 0
            out = out * (keep_r[:, :, None] & keep_c[:, None, :]).unsqueeze(1)
        return out

    def _sources(self, B: int, n: int, flip: float, g, device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per image, the source index of each of the ``n`` output positions along one axis (``(B, n)``), and for
        constant padding which of them fall inside the image."""
        p = self.pad
        offset = torch.randint(0, 2 * p + 1, (B, 1), generator=g, device=device) if p else None
        pos = torch.arange(n, device=device).expand(B, n)
        if flip:  # a flip after the crop reads the crop's columns backwards
            flipped = torch.rand(B, 1, generator=g, device=device) < flip
            pos = torch.where(flipped, n - 1 - pos, pos)
        if offset is None:
            return pos, None
        src = pos + offset - p  # in the image's coordinates: -p .. n - 1 + p
        mode = self.padding_mode
        if mode == "constant":
            return src.clamp(0, n - 1), (src >= 0) & (src < n)
        if mode == "edge":
            return src.clamp(0, n - 1), None
        if mode == "reflect":  # -1 -> 1, n -> n - 2
            return torch.where(src < 0, -src, torch.where(src >= n, 2 * (n - 1) - src, src)), None
        return torch.where(src < 0, -src - 1, torch.where(src >= n, 2 * n - 1 - src, src)), None  # symmetric

    def _affine(self, x: torch.Tensor, g) -> torch.Tensor:
        """A rotation by a uniform angle in [-rotation, rotation] degrees and a zoom by a uniform factor in
        ``scale`` about the centre, nearest pixel, zeros outside: ``RandomAffine(degrees, scale=scale)``."""
        B = x.shape[0]
        angle = (torch.rand(B, generator=g, device=x.device) * 2 - 1) * self.rotation
        lo, hi = self.scale or (1.0, 1.0)
        zoom = lo + torch.rand(B, generator=g, device=x.device) * (hi - lo)
        return affine(x, angle, zoom)

    def _cutout_mask(self, x: torch.Tensor, g) -> torch.Tensor:
        """``(B, 1, H, W)`` True inside each image's square: centre uniform over the pixels, clipped at the border."""
        B, _, H, W = x.shape
        s = self.cutout

        def span(n: int) -> torch.Tensor:
            centre = torch.randint(0, n, (B, 1), generator=g, device=x.device)
            pos = torch.arange(n, device=x.device)
            return (pos >= centre - s // 2) & (pos < centre + (s + 1) // 2)

        rows, cols = span(H), span(W)
        return (rows[:, :, None] & cols[:, None, :]).unsqueeze(1)


class ResidentBatches:
    """A loader over images held as one uint8 tensor on ``device``: batches of ``(images, labels)`` there.

    Training (``shuffle=True``): this process's share of the permutation seeded by ``(seed, epoch)`` -- the
    indices, in the same order, that the per-image path's ``EpochSampler`` gives -- in batches of ``batch_size``
    (the ragged last one dropped when the share holds more than a batch), each augmented on the device by
    ``transform`` from a generator seeded by :func:`batch_seed`. ``sampler`` is that permutation's
    ``DistributedSampler``, so Lightning calls ``set_epoch`` on it. ``state_dict`` counts the batches handed out
    this epoch, as ``ResumableLoader`` does, and a run resumed mid-epoch goes on at the next batch.

    Evaluation (``shuffle=False``): every example once, in order; under DDP every ``world``-th from ``rank``.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        transform: BatchAugment,
        batch_size: int,
        *,
        shuffle: bool,
        device: torch.device | str = "cpu",
        seed: int = 0,
        world: int = 1,
        rank: int = 0,
    ) -> None:
        self.device = torch.device(device)
        self.images, self.labels = images.to(self.device), labels.to(self.device)
        self.transform, self.batch_size, self.seed, self.rank = transform.to(self.device), batch_size, seed, rank
        n = len(labels)
        if shuffle:
            self.sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed)
            self.drop_last = self.sampler.num_samples > batch_size
        else:
            self.sampler, self.drop_last, self._share = None, False, unpadded_share(n, world, rank)
        self.batch_sampler = None  # what Lightning reads beside ``sampler`` (whether a loader shuffles)
        self._resume: dict | None = None
        self._handed_out = 0

    @property
    def _epoch(self) -> int:
        return self.sampler.epoch if self.sampler is not None else 0

    def __len__(self) -> int:
        n = self.sampler.num_samples if self.sampler is not None else len(self._share)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        # A generator, so nothing is drawn before the first batch is asked for: a resuming Lightning calls iter()
        # before it calls set_epoch.
        resume, self._resume = self._resume, None
        start = (
            resume["batches"] if resume and resume["epoch"] == self._epoch and 0 < resume["batches"] < len(self) else 0
        )
        order = list(self.sampler) if self.sampler is not None else self._share
        order = torch.as_tensor(order, dtype=torch.long, device=self.device)
        g = torch.Generator(device=self.device) if self.transform.random else None
        self._handed_out = start
        for b in range(start, len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            if g is not None:
                g.manual_seed(batch_seed(self.seed, self._epoch, self.rank, b))
            x = self.transform(self.images.index_select(0, idx), g)
            self._handed_out = b + 1
            yield x, self.labels.index_select(0, idx)

    def state_dict(self) -> dict:
        return {"epoch": self._epoch, "batches": self._handed_out}

    def load_state_dict(self, state: dict) -> None:
        self._resume = dict(state)


def affine(x: torch.Tensor, degrees: torch.Tensor, zoom: torch.Tensor) -> torch.Tensor:
    """Each image of ``x`` (B, C, H, W) rotated counter-clockwise by ``degrees[b]`` and zoomed by ``zoom[b]`` about
    its centre (torchvision's ``affine`` convention), nearest pixel, zeros outside."""
    a = torch.deg2rad(degrees.to(x.dtype))
    # affine_grid maps output to input coordinates, in [-1, 1] with y down: the inverse rotation, shrunk by the zoom
    cos, sin = torch.cos(a) / zoom, torch.sin(a) / zoom
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, sin, zero], 1), torch.stack([-sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
