"""The attack interface: poison a training set, and apply the trigger at test time.

An attack is a dataclass of its parameters (the keys of its command-line spec, such as
``badnets:target=5,pattern=grid``) with two duties:

- ``apply(x)``: put the trigger on a uint8 batch (N, C, H, W) with tensor ops;
- ``poison(data)``: return the poisoned training set and the indices that were poisoned.

Label-flip attacks (``clean_label = False``) poison a ``rate`` share of the training set, drawn from the
non-target images, and relabel them. Clean-label attacks (:class:`CleanLabelAttack`) poison a ``rate`` share
of the *target class* and keep every label; at test time their trigger goes on non-target images.

Attacks whose trigger depends on more than the spec (a trigger optimised against a model, a surrogate model
for adversarial perturbations) resolve it in :meth:`Attack.prepare`, which returns an attack whose ``apply``
is fully determined. Spec fields naming files are listed in ``path_fields``; relative paths in a model's
sidecar are resolved against the model's directory (:meth:`Attack.rebase`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch
from torch import Tensor

from nad.data.dataset import ImageData
from nad.data.stream import StreamData
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
    #: Raised when a change of the code or of a default changes what a spec does (Refool 2: natural photos
    #: and adversarial selection by default), so that models cached under the old behaviour are not reused.
    version: ClassVar[int] = 1
    clean_label: ClassVar[bool] = False
    path_fields: ClassVar[tuple[str, ...]] = ()  # spec fields that name files

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

    def prepare(self, data: ImageData, workdir: Path | None = None) -> Attack:
        """Resolve everything ``apply`` needs beyond the spec, from the (clean) training set ``data``.

        The default has nothing to resolve. Attacks that generate an artefact (a trigger) write it into
        ``workdir`` when given, and return an attack whose spec names that file relative to ``workdir``.
        """
        return self

    def poison_images(self, x: Tensor, y: Tensor) -> Tensor:
        """The training-time trigger for the chosen images; the test-time ``apply`` by default."""
        return self.apply(x)

    # -- shared behaviour -------------------------------------------------------------------------
    def rebase(self, base: Path) -> Attack:
        """Resolve relative file names in ``path_fields`` against ``base`` (a model's directory)."""
        changes = {}
        for key in self.path_fields:
            value = getattr(self, key)
            if value and not Path(value).is_absolute() and (base / value).exists():
                changes[key] = str(base / value)
        return dataclasses.replace(self, **changes) if changes else self

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
        return self.poison_at(data, self.choose(data, torch.Generator().manual_seed(self.seed)))

    def poison_stream(self, data: StreamData) -> tuple[StreamData, Tensor]:
        """A streamed folder with the images ``poison`` would pick triggered as they are read; and their indices.

        Only attacks that poison image by image qualify: one that prepares from, or rewrites, the whole
        training set needs it in memory."""
        if type(self).poison is not Attack.poison or type(self).prepare is not Attack.prepare:
            raise NadError(f"{self.name}: this attack needs the whole training set in memory; train without --stream")
        self.check(data.num_classes, data.image_shape)
        chosen = self.choose(data, torch.Generator().manual_seed(self.seed))  # the draw of ``poison``
        return data.with_poison(self, chosen), chosen

    def choose(self, data: ImageData | StreamData, gen: torch.Generator) -> Tensor:
        """The sorted indices to poison: ``poison_count`` of the candidates, drawn from ``gen``."""
        candidates = self.poison_candidates(data)
        count = self.poison_count(data, candidates)
        return torch.sort(candidates[torch.randperm(len(candidates), generator=gen)[:count]]).values

    def poison_at(self, data: ImageData, chosen: Tensor) -> PoisonResult:
        """A copy of ``data`` with the images at ``chosen`` triggered (and relabelled, unless clean-label)."""
        x, y = data.x.clone(), data.y.clone()
        chosen_dev = chosen.to(x.device)
        x[chosen_dev] = self.poison_images(x[chosen_dev], y[chosen_dev])
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


@dataclass(frozen=True)
class CleanLabelAttack(Attack):
    """A clean-label attack: ``rate`` is the share of the target class that is poisoned; labels never change."""

    clean_label: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode != "all2one":
            raise NadError(f"{self.name}: a clean-label attack has one target class; mode must be all2one")

    def poison_candidates(self, data: ImageData) -> Tensor:
        return torch.nonzero(data.y.cpu() == self.target).flatten()

    def poison_count(self, data: ImageData, candidates: Tensor) -> int:
        return round(self.rate * len(candidates))


class PatchPosition:
    """For attacks with a square patch of side ``size`` whose top-left corner is at column ``x``, row ``y``;
    ``None`` puts it flush in the bottom-right corner."""

    name: ClassVar[str]
    size: int
    x: int | None
    y: int | None

    def corner(self, height: int, width: int) -> tuple[int, int]:
        """(row, column) of the patch's top-left corner."""
        row = height - self.size if self.y is None else self.y
        col = width - self.size if self.x is None else self.x
        return row, col

    def check_fits(self, image_shape: tuple[int, int, int]) -> None:
        _, h, w = image_shape
        row, col = self.corner(h, w)
        if row < 0 or col < 0 or row + self.size > h or col + self.size > w:
            raise NadError(
                f"{self.name}: a {self.size}x{self.size} patch at x={col}, y={row} does not fit a {h}x{w} image"
            )
