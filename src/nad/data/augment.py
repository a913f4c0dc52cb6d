"""Batched augmentation on uint8 tensors: random crop with zero padding, horizontal flip, Cutout.

These are the NAD reference code's training transforms (``RandomCrop(32, padding=4)``,
``RandomHorizontalFlip()``, ``Cutout(n_holes=1, length=3)``) done for a whole batch at once with tensor
ops, on whatever device the batch lives on.

Under data-parallel training each rank holds every ``world``-th image of a global batch; ``share=(rank,
world)`` draws the random parameters for the whole global batch and keeps that rank's rows, so every image
is augmented exactly as it would be in a single process, and the generators of all ranks stay in step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Augment:
    """Which augmentations to apply; ``Augment()`` is the NAD reference setting."""

    crop_padding: int = 4
    flip: bool = True
    cutout_holes: int = 1
    cutout_length: int = 3


NO_AUGMENT = Augment(crop_padding=0, flip=False, cutout_holes=0)

#: (rank, world): this batch is the rank-th strided share of a global batch ``world`` times its size.
Share = tuple[int, int]
ALONE: Share = (0, 1)


def draw(sample: Callable[..., Tensor], n: int, share: Share, gen: torch.Generator, *args: int) -> Tensor:
    """``sample(*args, (n, 1))`` from ``gen`` for this share's rows of the global batch (see the module doc)."""
    rank, world = share
    return sample(*args, (n * world, 1), generator=gen, device=gen.device)[rank::world]


def random_crop(x: Tensor, padding: int, gen: torch.Generator, share: Share = ALONE) -> Tensor:
    """Zero-pad by ``padding`` and crop back to the original size at a random offset per image."""
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    dy = draw(torch.randint, n, share, gen, 0, 2 * padding + 1).to(x.device)
    dx = draw(torch.randint, n, share, gen, 0, 2 * padding + 1).to(x.device)
    rows = (dy + torch.arange(h, device=x.device)).view(n, 1, h, 1)
    cols = (dx + torch.arange(w, device=x.device)).view(n, 1, 1, w)
    flat = padded.reshape(n, c, -1)
    index = (rows * (w + 2 * padding) + cols).expand(n, c, h, w).reshape(n, c, -1)
    return torch.gather(flat, 2, index).view(n, c, h, w)


def random_flip(x: Tensor, gen: torch.Generator, share: Share = ALONE) -> Tensor:
    flip = draw(torch.rand, len(x), share, gen).to(x.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


def cutout(x: Tensor, holes: int, length: int, gen: torch.Generator, share: Share = ALONE) -> Tensor:
    """Zero a square around a uniform random centre, clipped at the border, as the reference Cutout does.

    The reference (DeVries & Taylor's code, used by NAD) zeros rows ``[cy - length // 2, cy + length // 2)``,
    so ``length=3`` gives a 2x2 hole; we keep that behaviour rather than "fix" it.
    """
    n, _, h, w = x.shape
    keep = torch.ones(n, 1, h, w, dtype=torch.bool, device=x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    for _ in range(holes):
        cy = draw(torch.randint, n, share, gen, 0, h).view(n, 1, 1).to(x.device)
        cx = draw(torch.randint, n, share, gen, 0, w).view(n, 1, 1).to(x.device)
        half = length // 2
        hole = (rows >= cy - half) & (rows < cy + half) & (cols >= cx - half) & (cols < cx + half)
        keep &= ~hole.unsqueeze(1)
    return x * keep


def augment_batch(x: Tensor, aug: Augment, gen: torch.Generator, share: Share = ALONE) -> Tensor:
    if aug.crop_padding:
        x = random_crop(x, aug.crop_padding, gen, share)
    if aug.flip:
        x = random_flip(x, gen, share)
    if aug.cutout_holes:
        x = cutout(x, aug.cutout_holes, aug.cutout_length, gen, share)
    return x
