"""Blend (Chen, Liu, Li, Lu & Song, 2017: "Targeted Backdoor Attacks on Deep Learning Systems Using Data
Poisoning", the blended injection strategy).

The trigger is a whole image blended into the input: ``x' = (1 - alpha) * x + alpha * pattern``, computed
in float and rounded to uint8. A ``rate`` share of the training set (10% by default, drawn from the
non-target images) is blended and relabelled to ``target`` (0). Parameters:

- ``alpha`` (0.2): the blend ratio used to poison the training set (the paper's alpha_train = 0.2).
- ``test_alpha`` (None: the same as ``alpha``): the ratio at test time. The paper notes that a larger
  alpha_test raises the attack success rate; the NAD setting uses the same ratio for both.
- ``pattern`` (None): an image file or ``.npy`` array, resized to the image size. By default the pattern
  is uniform random noise in 0..255 drawn from ``seed``, as in the paper's random-pattern experiments.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

import torch
from torch import Tensor

from nad.attacks.base import Attack
from nad.attacks.images import load_image, map_float
from nad.attacks.registry import register_attack
from nad.errors import NadError


@lru_cache(maxsize=8)
def _pattern_from_file(path: str, shape: tuple[int, int, int]) -> Tensor:
    return load_image(path, shape)


def noise_pattern(seed: int, shape: tuple[int, int, int]) -> Tensor:
    """Uniform uint8 noise of ``shape`` (C, H, W), the same for the same seed on every device."""
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def blend(x: Tensor, pattern: Tensor, alpha: float) -> Tensor:
    """``(1 - alpha) * x + alpha * pattern`` on uint8 images, rounded; one pass in float per chunk."""
    pattern = pattern.to(x.device, torch.float32)
    return map_float(x, lambda xf, _: xf.mul_(1 - alpha).add_(pattern, alpha=alpha))


@register_attack
@dataclass(frozen=True)
class Blend(Attack):
    alpha: float = 0.2
    test_alpha: float | None = None
    pattern: str | None = None

    name: ClassVar[str] = "blend"
    path_fields: ClassVar[tuple[str, ...]] = ("pattern",)

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("alpha", "test_alpha"):
            value = getattr(self, key)
            if value is not None and not 0 < value <= 1:
                raise NadError(f"blend: {key} must lie in (0, 1], got {value}")

    def trigger(self, shape: tuple[int, int, int]) -> Tensor:
        """The blended pattern as uint8 (C, H, W)."""
        if self.pattern is None:
            return noise_pattern(self.seed, shape)
        return _pattern_from_file(self.pattern, shape)

    def check(self, num_classes: int, image_shape: tuple[int, int, int]) -> None:
        super().check(num_classes, image_shape)
        self.trigger(image_shape)  # a missing or unreadable pattern file fails here, before any work

    def poison_images(self, x: Tensor, y: Tensor) -> Tensor:
        return blend(x, self.trigger(tuple(x.shape[1:])), self.alpha)

    def apply(self, x: Tensor) -> Tensor:
        alpha = self.alpha if self.test_alpha is None else self.test_alpha
        return blend(x, self.trigger(tuple(x.shape[1:])), alpha)
