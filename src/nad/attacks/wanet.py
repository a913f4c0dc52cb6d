"""WaNet (Nguyen & Tran, ICLR 2021: "WaNet -- Imperceptible Warping-based Backdoor Attack").

The trigger is a fixed, smooth random warping field. A ``k`` x ``k`` grid of random offsets in [-1, 1],
normalised by its mean absolute value, is upsampled (bicubic) to the image size and added, scaled by
``s / H``, to the identity sampling grid; ``grid_sample`` (bilinear) then warps the image. The poisoned
images are rounded back to uint8.

Poisoning follows the paper's *noise mode*: a ``rate`` share of the training set (10%, from the non-target
images) is warped and relabelled to ``target``, and a further ``cross_ratio * rate`` share (20%) is warped
with the trigger field plus independent per-image random noise and keeps its labels. These "cross"
samples teach the network that only the exact warp is the trigger. Parameters (the paper's CIFAR-10
values): ``k`` = 4, ``s`` = 0.5, ``cross_ratio`` = 2, ``grid_rescale`` = 1; ``seed`` draws the field, the
poisoned and the cross images.

Deviation: the paper re-draws the poisoned and cross samples (and the cross noise) in every batch during
training; here the training set is poisoned once, like every other attack, so that the poisoned indices
are fixed and recorded. The warp itself is the paper's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from nad.attacks.base import Attack, PoisonResult
from nad.attacks.images import map_float
from nad.attacks.registry import register_attack
from nad.data.dataset import ImageData
from nad.errors import NadError

CHUNK = 2048


def identity_grid(height: int, width: int) -> Tensor:
    """The sampling grid (1, H, W, 2) of ``grid_sample`` that returns the image unchanged (x first)."""
    ys = torch.linspace(-1, 1, height)
    xs = torch.linspace(-1, 1, width)
    rows, cols = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((cols, rows), dim=-1)[None]


def noise_field(k: int, height: int, width: int, seed: int) -> Tensor:
    """The paper's smooth random field (1, H, W, 2): k x k offsets, mean |offset| = 1, upsampled bicubic."""
    gen = torch.Generator().manual_seed(seed)
    offsets = torch.rand(1, 2, k, k, generator=gen) * 2 - 1
    offsets = offsets / offsets.abs().mean()
    field = F.interpolate(offsets, size=(height, width), mode="bicubic", align_corners=True)
    return field.permute(0, 2, 3, 1)


def warp(x: Tensor, grid: Tensor) -> Tensor:
    """Warp uint8 images with a (1 or N, H, W, 2) grid; bilinear, rounded back to uint8, in chunks."""

    def one_chunk(xf: Tensor, rows: slice) -> Tensor:
        g = grid if len(grid) == 1 else grid[rows]
        return F.grid_sample(xf, g.expand(len(xf), -1, -1, -1), mode="bilinear", align_corners=True)

    return map_float(x, one_chunk, chunk=CHUNK)


@register_attack
@dataclass(frozen=True)
class WaNet(Attack):
    k: int = 4
    s: float = 0.5
    cross_ratio: float = 2.0
    grid_rescale: float = 1.0

    name: ClassVar[str] = "wanet"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.k < 2 or self.s <= 0 or self.cross_ratio < 0 or self.grid_rescale <= 0:
            raise NadError("wanet: need k >= 2, s > 0, cross_ratio >= 0 and grid_rescale > 0")

    def check(self, num_classes: int, image_shape: tuple[int, int, int]) -> None:
        super().check(num_classes, image_shape)
        if self.rate * (1 + self.cross_ratio) > 1:
            raise NadError(f"wanet: rate * (1 + cross_ratio) = {self.rate * (1 + self.cross_ratio):.2f} exceeds 1")

    def grid(self, height: int, width: int, device: torch.device | str = "cpu") -> Tensor:
        """The trigger's sampling grid (1, H, W, 2), clamped to the image."""
        field = noise_field(self.k, height, width, self.seed)
        grid = (identity_grid(height, width) + self.s * field / height) * self.grid_rescale
        return grid.clamp(-1, 1).to(device)

    def apply(self, x: Tensor) -> Tensor:
        return warp(x, self.grid(x.shape[2], x.shape[3], x.device))

    def cross_grids(self, count: int, height: int, width: int, gen: torch.Generator) -> Tensor:
        """Noise-mode grids: the trigger grid plus independent uniform noise of up to one pixel per image."""
        noise = (torch.rand(count, height, width, 2, generator=gen) * 2 - 1) / height
        return (self.grid(height, width) + noise).clamp(-1, 1)

    def poison(self, data: ImageData) -> PoisonResult:
        """Warp and relabel ``rate`` of the set; warp ``cross_ratio * rate`` more with noise, labels kept."""
        self.check(data.num_classes, data.image_shape)
        gen = torch.Generator().manual_seed(self.seed)
        chosen = self.choose(data, gen)
        result = self.poison_at(data, chosen)
        rest = torch.ones(len(data), dtype=torch.bool)
        rest[chosen] = False
        others = torch.nonzero(rest).flatten()
        cross_count = min(len(others), round(self.cross_ratio * len(chosen)))
        cross = torch.sort(others[torch.randperm(len(others), generator=gen)[:cross_count]]).values
        _, h, w = data.image_shape
        x = result.data.x  # a copy owned by ``result``: the noise-mode images are warped into it in place
        cross = cross.to(x.device)
        x[cross] = warp(x[cross], self.cross_grids(cross_count, h, w, gen).to(x.device))
        return result
