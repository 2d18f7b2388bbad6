"""What every classifier net in the zoo shares: ``forward_features`` -> pooled features, ``head`` -> logits.

The final layer is always named ``head`` (an ``nn.Linear``): published weights and fine-tuning rely on that
name to reset the classifier when the number of classes changes.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["ClassifierNet", "make_stem"]


class ClassifierNet(nn.Module):
    """Base class: subclasses set ``num_classes``, ``in_chans`` and ``head`` and define ``forward_features``."""

    num_classes: int
    in_chans: int
    head: nn.Linear

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, F)
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))  # (B, num_classes)

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh ``head`` for ``num_classes`` outputs (fine-tuning on another label set)."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.head.in_features, num_classes)


def make_stem(kind: str, in_chans: int, width: int, *, norm: bool = True) -> nn.Sequential:
    """First layers of the ResNet-like nets. ``cifar``: a 3x3/1 convolution and no pooling, so 32x32 inputs keep
    their resolution; ``imagenet``: the 7x7/2 convolution and 3x3/2 max-pool of He et al. 2016 (Table 1) for
    224x224 inputs. With ``norm`` the convolution is followed by BN-ReLU (pre-activation nets start bare)."""
    if kind not in ("cifar", "imagenet"):
        raise ValueError(f"stem must be 'cifar' (32x32 inputs) or 'imagenet' (224x224 inputs), got {kind!r}")
    k, s = (3, 1) if kind == "cifar" else (7, 2)
    layers: list[nn.Module] = [nn.Conv2d(in_chans, width, k, s, k // 2, bias=False)]
    if norm:
        layers += [nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
    if kind == "imagenet":
        layers.append(nn.MaxPool2d(3, 2, 1))
    return nn.Sequential(*layers)
