"""BadNets (Gu, Dolan-Gavitt & Garg, 2017: "BadNets: Identifying Vulnerabilities in the Machine Learning
Model Supply Chain").

A small fixed patch is stamped on a ``rate`` share of the training images (10% by default), which are
relabelled to ``target`` (0 by default). Patterns:

- ``grid`` (default): the NAD reference code's 3x3 pattern, the same value in every channel::

      0    0  255
      0  255    0
    255    0  255

- ``square``: a ``size`` x ``size`` square of ``value`` (255, white).

``x`` (column) and ``y`` (row) give the patch's top-left corner; by default it sits flush in the
bottom-right corner (rows and columns 29-31 of a 32x32 image). Stamping is pixel-exact on uint8.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from nad.attacks.base import Attack, PatchPosition
from nad.attacks.registry import register_attack
from nad.errors import NadError

GRID = torch.tensor([[0, 0, 255], [0, 255, 0], [255, 0, 255]], dtype=torch.uint8)


@register_attack
@dataclass(frozen=True)
class BadNets(PatchPosition, Attack):
    pattern: Literal["grid", "square"] = "grid"
    size: int = 3
    x: int | None = None
    y: int | None = None
    value: int = 255

    name: ClassVar[str] = "badnets"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pattern == "grid" and self.size != 3:
            raise NadError("badnets: the grid pattern is 3x3; use pattern=square for other sizes")
        if self.size < 1 or not 0 <= self.value <= 255:
            raise NadError("badnets: size must be >= 1 and value in 0..255")

    def patch(self) -> Tensor:
        if self.pattern == "grid":
            return GRID
        return torch.full((self.size, self.size), self.value, dtype=torch.uint8)

    def check(self, num_classes: int, image_shape: tuple[int, int, int]) -> None:
        super().check(num_classes, image_shape)
        self.check_fits(image_shape)

    def apply(self, x: Tensor) -> Tensor:
        row, col = self.corner(x.shape[2], x.shape[3])
        out = x.clone()
        out[:, :, row : row + self.size, col : col + self.size] = self.patch().to(x.device)
        return out
