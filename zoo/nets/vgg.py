"""VGG-11/13/16/19, with and without batch normalisation.

Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition", ICLR 2015.

The convolutional part is the paper's (configurations A, B, D, E of Table 1: 3x3 convolutions, padding 1,
five 2x2 max-pools). The ``_bn`` variants add BatchNorm after every convolution (Ioffe & Szegedy 2015; not in
the paper, which predates it). The classifier has two forms:

- ``classifier="cifar"`` (default): global average pooling of the last 512 maps (1x1 at 32x32 input) and one
  linear layer 512 -> classes, the form used for CIFAR (e.g. Liu et al. 2017, "Network Slimming"). The paper's
  4096-4096 MLP would hold 120M parameters on top of 1x1 maps, and over-fits 50k images.
- ``classifier="imagenet"``: the paper's head: adaptive average pooling to 7x7 (the map size at 224x224),
  FC-4096, ReLU, dropout, FC-4096, ReLU, dropout, FC-classes. With 1000 classes the parameter counts are the
  paper's Table 2 (133M, 133M, 138M, 144M).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from zoo._registry import register_model
from zoo.nets._base import ClassifierNet

__all__ = ["VGG", "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"]

# Filters per 3x3 convolution, "M" = 2x2 max-pool. Simonyan & Zisserman 2015, Table 1.
CONFIGS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],  # A
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],  # B
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],  # D
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],  # E
}


class VGG(ClassifierNet):
    def __init__(
        self,
        *,
        depth: int,
        batch_norm: bool = False,
        num_classes: int = 10,
        in_chans: int = 3,
        classifier: str = "cifar",
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if depth not in CONFIGS:
            raise ValueError(f"VGG depth must be one of {sorted(CONFIGS)}, got {depth}")
        if classifier not in ("cifar", "imagenet"):
            raise ValueError(f"classifier must be 'cifar' or 'imagenet', got {classifier!r}")
        self.num_classes, self.in_chans = num_classes, in_chans
        layers: list[nn.Module] = []
        ch = in_chans
        for v in CONFIGS[depth]:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            layers.append(nn.Conv2d(ch, v, 3, padding=1, bias=not batch_norm))  # BN makes a bias redundant
            layers += [nn.BatchNorm2d(v), nn.ReLU(inplace=True)] if batch_norm else [nn.ReLU(inplace=True)]
            ch = v
        self.features = nn.Sequential(*layers)
        if classifier == "cifar":
            self.pool, self.pre_logits, width = nn.AdaptiveAvgPool2d(1), nn.Identity(), 512
        else:
            self.pool, width = nn.AdaptiveAvgPool2d(7), 4096
            self.pre_logits = nn.Sequential(
                nn.Linear(512 * 7 * 7, 4096),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
                nn.Linear(4096, 4096),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
            )
        self.head = nn.Linear(width, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)  # the paper's N(0, 1e-2)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))  # (B, 512, 1, 1) or (B, 512, 7, 7)
        return self.pre_logits(torch.flatten(x, 1))  # (B, 512) or (B, 4096)


@register_model(task="image")
def vgg11(**kwargs) -> VGG:
    """VGG-11 (configuration A of Simonyan & Zisserman 2015, Table 1), without batch norm."""
    return VGG(depth=11, **kwargs)


@register_model(task="image")
def vgg13(**kwargs) -> VGG:
    """VGG-13 (configuration B of Simonyan & Zisserman 2015, Table 1), without batch norm."""
    return VGG(depth=13, **kwargs)


@register_model(task="image")
def vgg16(**kwargs) -> VGG:
    """VGG-16 (configuration D of Simonyan & Zisserman 2015, Table 1), without batch norm."""
    return VGG(depth=16, **kwargs)


@register_model(task="image")
def vgg19(**kwargs) -> VGG:
    """VGG-19 (configuration E of Simonyan & Zisserman 2015, Table 1), without batch norm."""
    return VGG(depth=19, **kwargs)


@register_model(task="image")
def vgg11_bn(**kwargs) -> VGG:
    """VGG-11 (configuration A of Simonyan & Zisserman 2015) with batch norm after each convolution."""
    return VGG(depth=11, batch_norm=True, **kwargs)


@register_model(task="image")
def vgg13_bn(**kwargs) -> VGG:
    """VGG-13 (configuration B of Simonyan & Zisserman 2015) with batch norm after each convolution."""
    return VGG(depth=13, batch_norm=True, **kwargs)


@register_model(task="image")
def vgg16_bn(**kwargs) -> VGG:
    """VGG-16 (configuration D of Simonyan & Zisserman 2015) with batch norm after each convolution."""
    return VGG(depth=16, batch_norm=True, **kwargs)


@register_model(task="image")
def vgg19_bn(**kwargs) -> VGG:
    """VGG-19 (configuration E of Simonyan & Zisserman 2015) with batch norm after each convolution."""
    return VGG(depth=19, batch_norm=True, **kwargs)
