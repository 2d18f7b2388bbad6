"""LeNet-5 for 3x32x32 images.

LeCun, Bottou, Bengio, Haffner, "Gradient-based learning applied to document recognition", Proc. IEEE 1998.

Adapted to CIFAR-10 as follows (layer sizes otherwise as in the paper, Fig. 2):

- C1 takes ``in_chans`` (3) input planes instead of 1; the input is already 32x32, as in the paper.
- Activations are ReLU instead of the scaled tanh ``1.7159 tanh(2x/3)``.
- S2 and S4 are 2x2 max-pooling instead of trainable average subsampling (coefficient + bias + sigmoid).
- C3 connects every S2 map to every C3 map (the paper's Table I connects each C3 map to a subset).
- C5 is a 5x5 convolution over the 5x5 S4 maps, i.e. a fully connected layer 400 -> 120, as in the paper.
  Inputs larger than 32x32 are average-pooled to 5x5 maps before C5 (adaptive pooling, a no-op at 32x32), so
  the net runs at any size >= 32x32, though LeNet-5 is meant for small images.
- The output layer is a linear layer with softmax cross-entropy, not Euclidean RBF units.

With 3 input channels and 10 classes the net has 62,006 parameters (the 1998 net: ~60k).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from zoo._registry import register_model
from zoo.nets._base import ClassifierNet

__all__ = ["LeNet5", "lenet5"]


class LeNet5(ClassifierNet):
    def __init__(self, *, num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        self.num_classes, self.in_chans = num_classes, in_chans
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 6, 5),  # C1: (B, 6, 28, 28)
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # S2: (B, 6, 14, 14)
            nn.Conv2d(6, 16, 5),  # C3: (B, 16, 10, 10)
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # S4: (B, 16, 5, 5)
            # (B, 400); the adaptive pool is a no-op at 32x32 and gives 5x5 maps from larger inputs
            nn.Sequential(nn.AdaptiveAvgPool2d(5), nn.Flatten()),
            nn.Linear(16 * 5 * 5, 120),  # C5
            nn.ReLU(inplace=True),
            nn.Linear(120, 84),  # F6
            nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(84, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < 32:
            raise ValueError(f"LeNet-5 takes inputs of at least 32x32, got {tuple(x.shape[-2:])}; resize the images")
        return self.features(x)  # (B, 84)


@register_model(task="image")
def lenet5(**kwargs) -> LeNet5:
    """LeNet-5 (LeCun et al. 1998) for colour images: two 5x5 convolutions with max-pooling, 120-84-head, ReLU."""
    return LeNet5(**kwargs)
