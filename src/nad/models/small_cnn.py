"""A small three-stage CNN for the embedded demo data (16x16 digits) and quick tests.

Each stage is conv-BN-ReLU twice; stages 2 and 3 halve the resolution. NAD distils the three stages
(``block1``, ``block2``, ``block3``) with betas 125, 250, 250: the paper's 500, 1000, 1000 divided by 4,
because on 16x16 inputs its maps have 4x fewer pixels than WRN-16-1's on CIFAR-10, and the MSE between
two unit-norm maps grows as 1 / pixels. With the paper's betas the attention term swamps the
cross-entropy and clean accuracy collapses.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nad.models.registry import register_model


def _stage(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        self.block1 = _stage(in_channels, width, 1)
        self.block2 = _stage(width, 2 * width, 2)
        self.block3 = _stage(2 * width, 4 * width, 2)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.block3(self.block2(self.block1(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))


@register_model("small_cnn", nad_layers=("block1", "block2", "block3"), nad_betas=(125.0, 250.0, 250.0))
def small_cnn(num_classes: int = 10, in_channels: int = 3, width: int = 16) -> SmallCNN:
    return SmallCNN(num_classes, in_channels, width)
