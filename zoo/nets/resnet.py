"""ResNets: the CIFAR family (ResNet-20/32/44/56/110), the ImageNet family (ResNet-18/34/50) and PreAct-ResNet-18.

He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016 (sections 3.3 and 4.2);
He, Zhang, Ren, Sun, "Identity Mappings in Deep Residual Networks", ECCV 2016 (pre-activation).

**CIFAR family** (``CifarResNet``), as in the paper's CIFAR experiments (section 4.2): a 3x3 stem with 16
filters, then three stages of ``n`` basic blocks (two 3x3 convolutions each) with 16, 32 and 64 filters on
32x32, 16x16 and 8x8 maps, global average pooling and a linear classifier; depth = 6n + 2. Shortcuts are
**option A**: identity, and where the shape changes a stride-2 subsampling with zero-padded extra channels, so
shortcuts add no parameters (the paper uses option A on CIFAR). Weights use He (fan-out) initialisation;
BatchNorm weight 1, bias 0.

Not in the paper: ``zero_init_residual`` (Goyal et al. 2017) sets the last BN of each block to zero, off by
default. Global average pooling is adaptive, so the net also runs on inputs other than 32x32.

**ImageNet family** (``ResNet``: 18/34 with basic blocks, 50 with bottlenecks; Table 1 of the paper). Shortcuts
are **option B** (identity, 1x1 projection + BN where the shape changes), as the paper uses on ImageNet. A
bottleneck's stride sits on its first 1x1 convolution, as in the paper (torchvision's "v1.5" moves it to the 3x3;
FLOPs then differ). Two stems: ``stem="cifar"`` (default; a 3x3/1 convolution with 64 filters and no max-pool,
so a 32x32 image reaches the last stage at 4x4) and ``stem="imagenet"`` (the paper's 7x7/2 convolution and
3x3/2 max-pool, for 224x224 inputs). **PreAct-ResNet-18** (``ResNet`` with ``PreActBlock``) uses the full
pre-activation unit (BN-ReLU-conv twice; Fig. 4e of He et al. 2016b), a projection taken from the
pre-activated input, a bare stem convolution and a final BN-ReLU before pooling; CIFAR stem by default.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo._registry import register_model
from zoo.nets._base import ClassifierNet, make_stem

__all__ = [
    "CifarResNet",
    "ResNet",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet18",
    "resnet34",
    "resnet50",
    "preact_resnet18",
]


class _PadShortcut(nn.Module):
    """Option A shortcut: subsample by ``stride`` and zero-pad the new channels (no parameters)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.stride, self.extra = stride, out_ch - in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]  # (B, C_in, H/s, W/s)
        half = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra - half))  # (B, C_out, H/s, W/s)


def _projection(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    """Option B shortcut: 1x1 convolution with stride, then BN."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, out_ch: int, stride: int, shortcut: str = "A") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = (
                _PadShortcut(in_ch, out_ch, stride) if shortcut == "A" else _projection(in_ch, out_ch, stride)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x), inplace=True)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4); stride on the first 1x1 as in He et al. 2016."""

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int, shortcut: str = "B") -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 1, stride, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.shortcut = _projection(in_ch, out_ch, stride) if stride != 1 or in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x), inplace=True)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3


class PreActBlock(nn.Module):
    """Full pre-activation unit (He et al. 2016b, Fig. 4e): BN-ReLU-conv3x3, BN-ReLU-conv3x3, identity add."""

    expansion = 1

    def __init__(self, in_ch: int, out_ch: int, stride: int, shortcut: str = "B") -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        skip = self.shortcut(pre) if self.shortcut is not None else x  # the projection sees the pre-activated input
        out = self.conv1(pre)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2


class CifarResNet(ClassifierNet):
    def __init__(
        self, *, depth: int, num_classes: int = 10, in_chans: int = 3, zero_init_residual: bool = False
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110, ...), got {depth}")
        n = (depth - 2) // 6
        self.num_classes, self.in_chans = num_classes, in_chans
        self.stem = make_stem("cifar", in_chans, 16)
        layers, in_ch = [], 16
        for out_ch, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                layers.append(BasicBlock(in_ch, out_ch, stride if i == 0 else 1))
                in_ch = out_ch
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(64, num_classes)
        _init(self, zero_init_residual)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))  # (B, 64, H/4, W/4)
        return torch.flatten(self.pool(x), 1)  # (B, 64)


class ResNet(ClassifierNet):
    """ImageNet-style ResNet: four stages of base width 64/128/256/512, a CIFAR or an ImageNet stem. With
    ``block=PreActBlock`` it is the pre-activation ResNet (bare stem convolution, BN-ReLU before pooling)."""

    def __init__(
        self,
        *,
        block: type[nn.Module],
        layers: tuple[int, int, int, int],
        num_classes: int = 10,
        in_chans: int = 3,
        stem: str = "cifar",
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes, self.in_chans = num_classes, in_chans
        preact = block is PreActBlock
        self.stem = make_stem(stem, in_chans, 64, norm=not preact)
        stages, in_ch = [], 64
        for i, (width, n) in enumerate(zip((64, 128, 256, 512), layers)):
            for j in range(n):
                stages.append(block(in_ch, width, 2 if i > 0 and j == 0 else 1, shortcut="B"))
                in_ch = width * block.expansion
        self.layers = nn.Sequential(*stages)
        self.final = nn.Sequential(nn.BatchNorm2d(in_ch), nn.ReLU(inplace=True)) if preact else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(in_ch, num_classes)
        _init(self, zero_init_residual)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.final(self.layers(self.stem(x)))  # (B, C, H/32 or H/8, ...)
        return torch.flatten(self.pool(x), 1)  # (B, C)


def _init(net: nn.Module, zero_init_residual: bool) -> None:
    """He (fan-out) initialisation for convolutions, BN weight 1 / bias 0; optionally zero each block's last BN
    (Goyal et al. 2017) so that every residual block starts as the identity."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in net.modules():
            if hasattr(m, "last_bn"):
                nn.init.zeros_(m.last_bn().weight)


# Depths from He et al. 2016, Table 6.
@register_model(task="image")
def resnet20(**kwargs) -> CifarResNet:
    """ResNet-20 for CIFAR: 3 stages of 3 basic blocks, 16-32-64 channels, option-A shortcuts (He et al. 2016, Sec.
    4.2)."""
    return CifarResNet(depth=20, **kwargs)


@register_model(task="image")
def resnet32(**kwargs) -> CifarResNet:
    """ResNet-32 for CIFAR: 3 stages of 5 basic blocks, 16-32-64 channels (He et al. 2016, Sec. 4.2)."""
    return CifarResNet(depth=32, **kwargs)


@register_model(task="image")
def resnet44(**kwargs) -> CifarResNet:
    """ResNet-44 for CIFAR: 3 stages of 7 basic blocks, 16-32-64 channels (He et al. 2016, Sec. 4.2)."""
    return CifarResNet(depth=44, **kwargs)


@register_model(task="image")
def resnet56(**kwargs) -> CifarResNet:
    """ResNet-56 for CIFAR: 3 stages of 9 basic blocks, 16-32-64 channels (He et al. 2016, Sec. 4.2)."""
    return CifarResNet(depth=56, **kwargs)


@register_model(task="image")
def resnet110(**kwargs) -> CifarResNet:
    """ResNet-110 for CIFAR: 3 stages of 18 basic blocks, 16-32-64 channels (He et al. 2016, Sec. 4.2)."""
    return CifarResNet(depth=110, **kwargs)


# Stage depths from He et al. 2016, Table 1.
@register_model(task="image")
def resnet18(**kwargs) -> ResNet:
    """ResNet-18: basic blocks [2, 2, 2, 2], 64-512 channels (He et al. 2016, Table 1); CIFAR stem by default."""
    return ResNet(block=BasicBlock, layers=(2, 2, 2, 2), **kwargs)


@register_model(task="image")
def resnet34(**kwargs) -> ResNet:
    """ResNet-34: basic blocks [3, 4, 6, 3], 64-512 channels (He et al. 2016, Table 1); CIFAR stem by default."""
    return ResNet(block=BasicBlock, layers=(3, 4, 6, 3), **kwargs)


@register_model(task="image")
def resnet50(**kwargs) -> ResNet:
    """ResNet-50: bottleneck blocks [3, 4, 6, 3], 256-2048 channels (He et al. 2016, Table 1); CIFAR stem by default."""
    return ResNet(block=Bottleneck, layers=(3, 4, 6, 3), **kwargs)


# He et al. 2016b, Table 1 lists pre-activation ResNets; the 18-layer layout is ResNet-18's (Table 1 of 2016a).
@register_model(task="image")
def preact_resnet18(**kwargs) -> ResNet:
    """Pre-activation ResNet-18: BN-ReLU before each convolution (He et al. 2016, "Identity Mappings")."""
    return ResNet(block=PreActBlock, layers=(2, 2, 2, 2), **kwargs)
