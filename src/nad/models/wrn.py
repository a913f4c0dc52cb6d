"""Wide Residual Networks (Zagoruyko & Komodakis, BMVC 2016), WRN-d-k.

Parameter names follow the widely used WideResNet-pytorch code (``conv1``,
``block{1,2,3}.layer.{i}.{bn1,conv1,bn2,conv2,convShortcut}``, ``bn1``, ``fc``), which the NAD reference code
also uses, so checkpoints published with that naming load without conversion. WRN-16-1 is the NAD paper's
CIFAR-10 model; NAD distils the outputs of ``block1``, ``block2`` and ``block3`` with betas 500, 1000, 1000.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from nad.models.registry import register_model


class BasicBlock(nn.Module):
    """Pre-activation basic block; the shortcut is a 1x1 convolution when the shape changes."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu1(self.bn1(x))
        # When the shape changes the shortcut sees the activated input, as in the original code.
        shortcut = x if self.convShortcut is None else self.convShortcut(pre)
        out = self.relu2(self.bn2(self.conv1(pre)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return shortcut + self.conv2(out)


class NetworkBlock(nn.Module):
    """A group of ``n`` basic blocks; the first one changes width and stride."""

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(
                BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
                for i in range(n)
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(
        self,
        depth: int = 16,
        widen_factor: int = 1,
        num_classes: int = 10,
        in_channels: int = 3,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(widths[3], num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return self.fc(out)


GROUPS = ("block1", "block2", "block3")
PAPER_BETAS = (500.0, 1000.0, 1000.0)


@register_model("wrn16_1", nad_layers=GROUPS, nad_betas=PAPER_BETAS, depth=16, widen_factor=1)
@register_model("wrn16_2", nad_layers=GROUPS, nad_betas=PAPER_BETAS, depth=16, widen_factor=2)
@register_model("wrn28_10", nad_layers=GROUPS, nad_betas=PAPER_BETAS, depth=28, widen_factor=10)
@register_model("wrn", nad_layers=GROUPS, nad_betas=PAPER_BETAS)
def wide_resnet(num_classes: int = 10, in_channels: int = 3, **kwargs: object) -> WideResNet:
    """WRN-d-k; ``wrn`` takes ``depth`` and ``widen_factor`` through ``--arch-kwargs``."""
    return WideResNet(num_classes=num_classes, in_channels=in_channels, **kwargs)  # type: ignore[arg-type]
