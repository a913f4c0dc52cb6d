"""The attack interface: poison a training set, and apply the trigger at test time.

An attack is a dataclass of its parameters (the keys of its command-line spec, such as
``badnets:target=5,pattern=grid``) with two duties:

- ``apply(x)``: put the trigger on a uint8 batch (N, C, H, W) with tensor ops;
- ``poison(data)``: return the poisoned training set and the indices that were poisoned.

Label-flip attacks (``clean_label = False``) poison a ``rate`` share of the non-target images and relabel
them; clean-label attacks override ``poison_candidates`` to poison only target-class images and keep labels.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from nad.data.dataset import ImageData
from nad.errors import NadError


@dataclass(frozen=True)
class PoisonResult:
    data: ImageData
    indices: Tensor  # which training images carry the trigger


@dataclass(frozen=True)
class Attack:
    """Common parameters: ``target`` label, poisoning ``rate`` (share of the training set), ``mode``
    (``all2one``: every triggered image goes to ``target``; ``all2all``: label y goes to y + 1 mod K) and
    the ``seed`` that picks the poisoned images."""

    target: int = 0
    rate: float = 0.1
    mode: Literal["all2one", "all2all"] = "all2one"
    seed: int = 0

    name: ClassVar[str] = ""
    clean_label: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if not 0 < self.rate <= 1:
            raise NadError(f"{self.name}: rate must lie in (0, 1], got {self.rate}")
        if self.target < 0:
            raise NadError(f"{self.name}: target must be >= 0, got {self.target}")

    # -- what each attack defines -------------------------------------------------------------------
    def apply(self, x: Tensor) -> Tensor:
        """Return a copy of the uint8 batch ``x`` with the trigger applied."""
        raise NotImplementedError

    def check(self, num_classes: int, image_shape: tuple[int, int, int]) -> None:
        """Refuse parameters that do not fit the data (a target >= K, a trigger outside the image)."""
        if self.target >= num_classes:
            raise NadError(f"{self.name}: target {self.target} is not a class of this data (0..{num_classes - 1})")

    # -- shared behaviour -------------------------------------------------------------------------
    def spec(self) -> str:
        fields = [f for f in dataclasses.fields(self) if f.init]
        changed = [f"{f.name}={getattr(self, f.name)}" for f in fields if getattr(self, f.name) != f.default]
        return self.name + (":" + ",".join(changed) if changed else "")

    def target_labels(self, y: Tensor, num_classes: int) -> Tensor:
        if self.mode == "all2all":
            return (y + 1) % num_classes
        return torch.full_like(y, self.target)

    def poison_candidates(self, data: ImageData) -> Tensor:
        """Indices eligible for poisoning: non-target images (all2one) or all images (all2all)."""
        if self.mode == "all2all":
            return torch.arange(len(data))
        return torch.nonzero(data.y.cpu() != self.target).flatten()

    def poison_count(self, data: ImageData, candidates: Tensor) -> int:
        return min(len(candidates), round(self.rate * len(data)))

    def poison(self, data: ImageData) -> PoisonResult:
        """Poison the training set: trigger (and, for label-flip attacks, relabel) a seeded random subset."""
        self.check(data.num_classes, data.image_shape)
        candidates = self.poison_candidates(data)
        gen = torch.Generator().manual_seed(self.seed)
        count = self.poison_count(data, candidates)
        chosen = torch.sort(candidates[torch.randperm(len(candidates), generator=gen)[:count]]).values
        x, y = data.x.clone(), data.y.clone()
        chosen_dev = chosen.to(x.device)
        x[chosen_dev] = self.apply(x[chosen_dev])
        if not self.clean_label:
            y[chosen_dev] = self.target_labels(y[chosen_dev], data.num_classes)
        return PoisonResult(data.with_images(x, y, name=f"{data.name}+{self.name}"), chosen)

    def test_set(self, data: ImageData) -> ImageData:
        """Triggered test images and the labels the attacker wants: for all2one only non-target images."""
        self.check(data.num_classes, data.image_shape)
        keep = (
            torch.arange(len(data)) if self.mode == "all2all" else torch.nonzero(data.y.cpu() != self.target).flatten()
        )
        subset = data.subset(keep.to(data.x.device))
        return subset.with_images(
            self.apply(subset.x),
            self.target_labels(subset.y, data.num_classes),
            name=f"{data.name}+{self.name}",
        )
