"""AlexNet, in its original single-column form, with a CIFAR or an ImageNet stem.

Krizhevsky, Sutskever, Hinton, "ImageNet Classification with Deep Convolutional Neural Networks", NIPS 2012.

As in the paper (section 3.5, Fig. 2): five convolutions with 96, 256, 384, 384, 256 filters; ReLU; local
response normalisation (k=2, n=5, alpha=1e-4, beta=0.75) after the first two; overlapping 3x3/2 max-pooling after
the first, second and fifth; the second, fourth and fifth convolutions grouped in two (the paper's two GPUs, kept
because they halve those layers' parameters); dropout 0.5 before the two hidden fully connected layers.

- ``stem="imagenet"``: the paper's 11x11/4 first convolution for 224x224 input; 6x6 maps reach the classifier
  (adaptive pooling), hidden layers of 4096: 61M parameters with 1000 classes (the paper: "60 million").
- ``stem="cifar"`` (default): the first convolution is 5x5/1 (an 11x11/4 filter would leave a 32x32 image 7x7
  after one layer), 3x3 maps reach the classifier and its hidden layers have ``hidden`` = 1024 units, which
  keeps 3.4M parameters in the classifier instead of the 26M that 4096 units would need for 10 classes.
- The response normalisation is computed in float32 when the net runs in float16 or bfloat16 (``16-true``,
  ``bf16-true``): see :class:`LocalResponseNorm`.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from zoo._registry import register_model
from zoo.nets._base import ClassifierNet

__all__ = ["AlexNet", "LocalResponseNorm", "alexnet"]


class LocalResponseNorm(nn.LocalResponseNorm):
    """``nn.LocalResponseNorm`` computed in float32 for float16/bfloat16 input, returned in the input's dtype. Its
    sum of squares overflows float16 once activations pass 256 (65,504 is float16's largest number), dividing
    those by infinity; and on CPU torch has no float16/bfloat16 kernel for the average pooling it sums with
    (``avg_pool3d``), so ``16-true`` and ``bf16-true`` failed there. No parameters: weights load as before."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.float16, torch.bfloat16):
            return super().forward(x.float()).to(x.dtype)
        return super().forward(x)


class AlexNet(ClassifierNet):
    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_chans: int = 3,
        stem: str = "cifar",
        hidden: int | None = None,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"stem must be 'cifar' (32x32 inputs) or 'imagenet' (224x224 inputs), got {stem!r}")
        self.num_classes, self.in_chans = num_classes, in_chans
        first = nn.Conv2d(in_chans, 96, 11, 4, 2) if stem == "imagenet" else nn.Conv2d(in_chans, 96, 5, 1, 2)
        out_size, hidden = (6, hidden or 4096) if stem == "imagenet" else (3, hidden or 1024)
        self.features = nn.Sequential(
            first,  # (B, 96, 55, 55) at 224 / (B, 96, 32, 32) at 32
            nn.ReLU(inplace=True),
            LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0),
            nn.MaxPool2d(3, 2),  # overlapping pooling: (B, 96, 27, 27) / (B, 96, 15, 15)
            nn.Conv2d(96, 256, 5, padding=2, groups=2),
            nn.ReLU(inplace=True),
            LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0),
            nn.MaxPool2d(3, 2),  # (B, 256, 13, 13) / (B, 256, 7, 7)
            nn.Conv2d(256, 384, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, 3, padding=1, groups=2),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1, groups=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),  # (B, 256, 6, 6) / (B, 256, 3, 3)
        )
        self.pool = nn.AdaptiveAvgPool2d(out_size)
        self.pre_logits = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(256 * out_size * out_size, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(hidden, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))  # (B, 256, s, s)
        return self.pre_logits(torch.flatten(x, 1))  # (B, hidden)


@register_model(task="image")
def alexnet(**kwargs) -> AlexNet:
    """AlexNet (Krizhevsky et al. 2012): five convolutions with LRN, two hidden layers with dropout; CIFAR stem
    by default."""
    return AlexNet(**kwargs)
