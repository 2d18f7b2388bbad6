"""ResNets for CIFAR-10 (ResNet-20/32/44/56/110).

He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016, section 4.2.

As in the paper's CIFAR experiments: a 3x3 stem with 16 filters, then three stages of ``n`` basic blocks
(two 3x3 convolutions each) with 16, 32 and 64 filters on 32x32, 16x16 and 8x8 maps, global average pooling
and a linear classifier; depth = 6n + 2. Shortcuts are **option A**: identity, and where the shape changes a
stride-2 subsampling with zero-padded extra channels, so shortcuts add no parameters (the paper uses option A
on CIFAR). Weights use He (fan-out) initialisation; BatchNorm weight 1, bias 0.

Not in the paper: ``zero_init_residual`` (Goyal et al. 2017) sets the last BN of each block to zero, off by
default. Global average pooling is adaptive, so the net also runs on inputs other than 32x32.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo._registry import register_model

__all__ = ["CifarResNet", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]


class _PadShortcut(nn.Module):
    """Option A shortcut: subsample by ``stride`` and zero-pad the new channels (no parameters)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.stride, self.extra = stride, out_ch - in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]  # (B, C_in, H/s, W/s)
        half = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra - half))  # (B, C_out, H/s, W/s)


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = _PadShortcut(in_ch, out_ch, stride) if stride != 1 or in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x), inplace=True)


class CifarResNet(nn.Module):
    def __init__(
        self, *, depth: int, num_classes: int = 10, in_chans: int = 3, zero_init_residual: bool = False
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110, ...), got {depth}")
        n = (depth - 2) // 6
        self.num_classes, self.in_chans = num_classes, in_chans
        self.stem = nn.Sequential(nn.Conv2d(in_chans, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(True))
        layers, in_ch = [], 16
        for out_ch, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                layers.append(BasicBlock(in_ch, out_ch, stride if i == 0 else 1))
                in_ch = out_ch
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))  # (B, 64, H/4, W/4)
        return torch.flatten(self.pool(x), 1)  # (B, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))  # (B, num_classes)

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.head.in_features, num_classes)


# Depths from He et al. 2016, Table 6.
@register_model(task="image")
def resnet20(**kwargs) -> CifarResNet:
    return CifarResNet(depth=20, **kwargs)


@register_model(task="image")
def resnet32(**kwargs) -> CifarResNet:
    return CifarResNet(depth=32, **kwargs)


@register_model(task="image")
def resnet44(**kwargs) -> CifarResNet:
    return CifarResNet(depth=44, **kwargs)


@register_model(task="image")
def resnet56(**kwargs) -> CifarResNet:
    return CifarResNet(depth=56, **kwargs)


@register_model(task="image")
def resnet110(**kwargs) -> CifarResNet:
    return CifarResNet(depth=110, **kwargs)
