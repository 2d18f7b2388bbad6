"""GoogLeNet (Inception v1), with a CIFAR or an ImageNet stem.

Szegedy et al., "Going Deeper with Convolutions", CVPR 2015.

Nine Inception modules with the filter counts of the paper's Table 1; each module concatenates a 1x1 branch, a
1x1-reduce then 3x3 branch, a 1x1-reduce then **5x5** branch (as in the paper; some ports use 3x3 there), and a
3x3/1 max-pool then 1x1 projection branch. Global average pooling, dropout 0.4, linear classifier.

Differs from the paper:
- ``batch_norm=True`` (default) puts BatchNorm after every convolution (Ioffe & Szegedy 2015, "Inception-v2"),
  which lets the net train from scratch with large learning rates and without the two auxiliary classifiers;
  ``batch_norm=False`` gives the paper's plain ReLU convolutions. The auxiliary classifiers and the LRN layers of
  the stem are left out (the paper's Table 1 parameter total does not count the auxiliary heads either).
- ``stem="imagenet"``: the paper's 7x7/2 convolution, 3x3/2 max-pool, 1x1 (64) and 3x3 (192) convolutions and a
  second 3x3/2 max-pool (224 -> 28). ``stem="cifar"`` (default): one 3x3/1 convolution with 192 filters and no
  pooling, so that a 32x32 image enters inception 3a at 32x32 (as the 224 image enters at 28x28).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from zoo._registry import register_model
from zoo.nets._base import ClassifierNet

__all__ = ["GoogLeNet", "googlenet"]

# (in, 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj) per module; "M" = 3x3/2 max-pool. Szegedy et al. 2015,
# Table 1.
INCEPTIONS: list[tuple[int, ...] | str] = [
    (192, 64, 96, 128, 16, 32, 32),  # 3a
    (256, 128, 128, 192, 32, 96, 64),  # 3b
    "M",
    (480, 192, 96, 208, 16, 48, 64),  # 4a
    (512, 160, 112, 224, 24, 64, 64),  # 4b
    (512, 128, 128, 256, 24, 64, 64),  # 4c
    (512, 112, 144, 288, 32, 64, 64),  # 4d
    (528, 256, 160, 320, 32, 128, 128),  # 4e
    "M",
    (832, 256, 160, 320, 32, 128, 128),  # 5a
    (832, 384, 192, 384, 48, 128, 128),  # 5b
]


def _conv(in_ch: int, out_ch: int, k: int, batch_norm: bool, stride: int = 1) -> nn.Sequential:
    conv = nn.Conv2d(in_ch, out_ch, k, stride, k // 2, bias=not batch_norm)  # BN makes a bias redundant
    norm = [nn.BatchNorm2d(out_ch)] if batch_norm else []
    return nn.Sequential(conv, *norm, nn.ReLU(inplace=True))


class Inception(nn.Module):
    def __init__(self, in_ch: int, c1: int, r3: int, c3: int, r5: int, c5: int, proj: int, batch_norm: bool) -> None:
        super().__init__()
        self.b1 = _conv(in_ch, c1, 1, batch_norm)
        self.b3 = nn.Sequential(_conv(in_ch, r3, 1, batch_norm), _conv(r3, c3, 3, batch_norm))
        self.b5 = nn.Sequential(_conv(in_ch, r5, 1, batch_norm), _conv(r5, c5, 5, batch_norm))
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), _conv(in_ch, proj, 1, batch_norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], 1)  # (B, c1 + c3 + c5 + proj, H, W)


class GoogLeNet(ClassifierNet):
    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_chans: int = 3,
        stem: str = "cifar",
        batch_norm: bool = True,
        dropout: float = 0.4,
    ) -> None:
        super().__init__()
        self.num_classes, self.in_chans = num_classes, in_chans
        if stem == "cifar":
            self.stem = _conv(in_chans, 192, 3, batch_norm)
        elif stem == "imagenet":
            self.stem = nn.Sequential(
                _conv(in_chans, 64, 7, batch_norm, stride=2),  # (B, 64, 112, 112)
                nn.MaxPool2d(3, 2, 1),  # (B, 64, 56, 56)
                _conv(64, 64, 1, batch_norm),
                _conv(64, 192, 3, batch_norm),
                nn.MaxPool2d(3, 2, 1),  # (B, 192, 28, 28)
            )
        else:
            raise ValueError(f"stem must be 'cifar' (32x32 inputs) or 'imagenet' (224x224 inputs), got {stem!r}")
        self.inceptions = nn.Sequential(
            *(nn.MaxPool2d(3, 2, 1) if row == "M" else Inception(*row, batch_norm=batch_norm) for row in INCEPTIONS)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(1024, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inceptions(self.stem(x))  # (B, 1024, H/4, W/4) at 32 or (B, 1024, 7, 7) at 224
        return self.dropout(torch.flatten(self.pool(x), 1))  # (B, 1024)


@register_model(task="image")
def googlenet(**kwargs) -> GoogLeNet:
    """GoogLeNet (Inception v1): nine inception modules, without the auxiliary classifiers (Szegedy et al. 2015)."""
    return GoogLeNet(**kwargs)
