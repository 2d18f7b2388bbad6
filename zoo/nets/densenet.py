"""DenseNet-BC for CIFAR (L=100 k=12, L=250 k=24) and DenseNet-121 with a CIFAR or ImageNet stem.

Huang, Liu, van der Maaten, Weinberger, "Densely Connected Convolutional Networks", CVPR 2017.

Each layer of a dense block sees the concatenation of every earlier map of the block and adds ``growth_rate``
(k) maps. "BC" = Bottleneck layers (BN-ReLU-conv1x1 to 4k maps, then BN-ReLU-conv3x3 to k) and Compression
(a transition keeps ``compression`` = 0.5 of the maps: BN-ReLU-conv1x1, 2x2 average pool).

- CIFAR nets (section 3, "Implementation Details"): a 3x3 convolution with 2k filters, three dense blocks of
  (L - 4) / 6 bottleneck layers on 32x32, 16x16 and 8x8 maps, BN-ReLU, global average pooling, linear.
- DenseNet-121 (Table 1: k = 32, blocks of 6/12/24/16 layers, 64 stem filters). ``stem="imagenet"`` is the
  paper's 7x7/2 convolution, BN-ReLU and 3x3/2 max-pool for 224x224 input; ``stem="cifar"`` (default) a 3x3/1
  convolution with no pooling, so that a 32x32 image reaches the last block at 4x4.

Options: ``drop_rate`` (dropout after each convolution; the paper uses 0.2 only without data augmentation) and
``memory_efficient`` (recompute each bottleneck's concatenation-BN-ReLU-conv1x1 in the backward pass instead of
storing it, as in Pleiss et al. 2017, "Memory-Efficient Implementation of DenseNets": memory grows linearly
instead of quadratically with depth, at the cost of some extra compute).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from zoo._registry import register_model
from zoo.nets._base import ClassifierNet, make_stem

__all__ = ["DenseNet", "densenet_bc_100_12", "densenet_bc_250_24", "densenet121"]


class DenseLayer(nn.Module):
    def __init__(self, in_ch: int, growth_rate: int, bn_size: int, drop_rate: float, memory_efficient: bool) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, bn_size * growth_rate, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)
        self.drop_rate, self.memory_efficient = drop_rate, memory_efficient

    def _bottleneck(self, *features: torch.Tensor) -> torch.Tensor:
        x = features[0] if len(features) == 1 else torch.cat(features, 1)
        out = self.conv1(F.relu(self.norm1(x)))  # (B, bn_size * k, H, W)
        return F.dropout(out, self.drop_rate, self.training) if self.drop_rate else out

    def checkpointing(self) -> bool:
        """Whether this call recomputes the bottleneck in the backward pass instead of storing it."""
        return self.memory_efficient and self.training and torch.is_grad_enabled()

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        if self.checkpointing():
            out = checkpoint(self._bottleneck, *features, use_reentrant=False)
        else:
            out = self._bottleneck(*features)
        out = self.conv2(F.relu(self.norm2(out)))  # (B, k, H, W)
        return F.dropout(out, self.drop_rate, self.training) if self.drop_rate else out


class DenseBlock(nn.ModuleList):
    """Dense layers; the output is the input followed by every layer's k maps.

    By default the concatenation grows by one layer's maps at a time, and each layer reads the whole of it: the
    backward pass then adds one gradient per layer instead of one per pair of layers: 1.30x faster training with
    bf16 autocast and channels_last on CPU, about even (0.94x) in fp32 NCHW (1 thread, ``python
    benchmarks/densenet_concat.py [--bf16]``). The memory-efficient layers instead take the list of maps
    and concatenate inside their checkpoint, so that no concatenation is kept for the backward pass.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self) and self[0].checkpointing():  # the layers share the flag
            features = [x]
            for layer in self:
                features.append(layer(features))
            return torch.cat(features, 1)  # (B, C_in + n * k, H, W)
        for layer in self:
            x = torch.cat([x, layer([x])], 1)
        return x


def _transition(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.BatchNorm2d(in_ch), nn.ReLU(inplace=True), nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.AvgPool2d(2)
    )


class DenseNet(ClassifierNet):
    def __init__(
        self,
        *,
        growth_rate: int,
        block_config: tuple[int, ...],
        num_init_features: int,
        bn_size: int = 4,
        compression: float = 0.5,
        drop_rate: float = 0.0,
        num_classes: int = 10,
        in_chans: int = 3,
        stem: str = "cifar",
        memory_efficient: bool = False,
    ) -> None:
        super().__init__()
        if not 0 < compression <= 1 or not 0 <= drop_rate < 1 or growth_rate < 1 or bn_size < 1:
            raise ValueError(
                "need 0 < compression <= 1, 0 <= drop_rate < 1, growth_rate >= 1, bn_size >= 1; got "
                f"compression={compression}, drop_rate={drop_rate}, growth_rate={growth_rate}, bn_size={bn_size}"
            )
        self.num_classes, self.in_chans = num_classes, in_chans
        # Three-block CIFAR nets start with a bare convolution (the first dense layer begins with BN-ReLU);
        # DenseNet-121's stem has BN-ReLU (Table 1), kept for the CIFAR form too.
        self.stem = make_stem(stem, in_chans, num_init_features, norm=len(block_config) == 4 or stem == "imagenet")
        stages: list[nn.Module] = []
        ch = num_init_features
        for i, n in enumerate(block_config):
            layers = [
                DenseLayer(ch + j * growth_rate, growth_rate, bn_size, drop_rate, memory_efficient) for j in range(n)
            ]
            stages.append(DenseBlock(layers))
            ch += n * growth_rate
            if i < len(block_config) - 1:
                out = int(ch * compression)
                stages.append(_transition(ch, out))
                ch = out
        self.features = nn.Sequential(*stages, nn.BatchNorm2d(ch), nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.stem(x))  # (B, C, H', W')
        return torch.flatten(self.pool(x), 1)  # (B, C)


def _densenet_bc_cifar(depth: int, growth_rate: int, **kwargs) -> DenseNet:
    """CIFAR DenseNet-BC of ``depth`` L: three blocks of (L - 4) / 6 bottleneck layers, 2k stem filters."""
    if (depth - 4) % 6:
        raise ValueError(f"DenseNet-BC depth must be 6n+4, got {depth}")
    kwargs.setdefault("num_init_features", 2 * growth_rate)
    return DenseNet(growth_rate=growth_rate, block_config=((depth - 4) // 6,) * 3, **kwargs)


# Huang et al. 2017, Table 2 (CIFAR) and Table 1 (ImageNet).
@register_model(task="image")
def densenet_bc_100_12(**kwargs) -> DenseNet:
    """DenseNet-BC for CIFAR, depth 100, growth rate 12: bottleneck layers and compression 0.5 (Huang et al. 2017)."""
    return _densenet_bc_cifar(100, 12, **kwargs)


@register_model(task="image")
def densenet_bc_250_24(**kwargs) -> DenseNet:
    """DenseNet-BC for CIFAR, depth 250, growth rate 24 (Huang et al. 2017, Table 2)."""
    return _densenet_bc_cifar(250, 24, **kwargs)


@register_model(task="image")
def densenet121(**kwargs) -> DenseNet:
    """DenseNet-121: dense blocks [6, 12, 24, 16], growth rate 32 (Huang et al. 2017, Table 1); CIFAR stem by
    default."""
    kwargs.setdefault("num_init_features", 64)
    return DenseNet(growth_rate=32, block_config=(6, 12, 24, 16), **kwargs)
