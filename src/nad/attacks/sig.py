"""SIG (Barni, Kallas & Tondi, 2019: "A New Backdoor Attack in CNNs by Training Set Corruption Without
Label Poisoning").

A clean-label attack: a horizontal sinusoidal signal

    v(i, j) = delta * sin(2 * pi * j * f / m),   j = column, m = image width,

is added (in pixel levels, then clipped to 0..255) to a ``rate`` share of the *target-class* training
images, whose labels stay unchanged. At test time the signal is added to non-target images. Parameters:

- ``delta`` (20) and ``f`` (6): the paper's sinusoid for training.
- ``test_delta`` (None: the same as ``delta``): the amplitude at test time. The paper raises it at test
  time in some experiments to increase the success rate; the default keeps the training signal.
- ``rate`` (0.8): share of the target class poisoned. The paper varies it; 0.8 is the share used for the
  clean-label attacks in later defense papers. This default is our choice, not a value the NAD paper
  states.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from nad.attacks.base import CleanLabelAttack
from nad.attacks.images import map_float
from nad.attacks.registry import register_attack
from nad.errors import NadError


def sinusoid(width: int, delta: float, f: float, device: torch.device | str = "cpu") -> Tensor:
    """The signal for one row, ``delta * sin(2 pi j f / width)`` for j in 0..width-1 (float32)."""
    j = torch.arange(width, dtype=torch.float64)
    return (delta * torch.sin(2 * math.pi * j * f / width)).float().to(device)


@register_attack
@dataclass(frozen=True)
class SIG(CleanLabelAttack):
    rate: float = 0.8
    delta: float = 20.0
    f: float = 6.0
    test_delta: float | None = None

    name: ClassVar[str] = "sig"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.delta <= 0 or self.f <= 0 or (self.test_delta is not None and self.test_delta <= 0):
            raise NadError("sig: delta, test_delta and f must be positive")

    def _add(self, x: Tensor, delta: float) -> Tensor:
        signal = sinusoid(x.shape[3], delta, self.f, x.device)
        return map_float(x, lambda xf, _: xf.add_(signal))

    def poison_images(self, x: Tensor, y: Tensor) -> Tensor:
        return self._add(x, self.delta)

    def apply(self, x: Tensor) -> Tensor:
        return self._add(x, self.delta if self.test_delta is None else self.test_delta)
