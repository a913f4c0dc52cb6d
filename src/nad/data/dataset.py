"""The in-memory dataset: uint8 images (N, C, H, W) and int64 labels, on any device."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from nad.errors import NadError


@dataclass(frozen=True)
class ImageData:
    """Images as a uint8 tensor of shape (N, C, H, W) and labels as int64 of shape (N,)."""

    x: Tensor
    y: Tensor
    num_classes: int
    name: str = "data"
    classes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.x.dtype != torch.uint8 or self.x.ndim != 4:
            raise NadError(f"{self.name}: images must be uint8 (N, C, H, W), got {self.x.dtype} {tuple(self.x.shape)}")
        if self.y.ndim != 1 or len(self.y) != len(self.x):
            raise NadError(f"{self.name}: {len(self.x)} images but labels of shape {tuple(self.y.shape)}")
        if len(self.y) and (int(self.y.min()) < 0 or int(self.y.max()) >= self.num_classes):
            raise NadError(
                f"{self.name}: labels must lie in [0, {self.num_classes}), got {int(self.y.min())}..{int(self.y.max())}"
            )

    def __len__(self) -> int:
        return len(self.y)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    @property
    def device(self) -> torch.device:
        return self.x.device

    def subset(self, index: Tensor, name: str | None = None) -> ImageData:
        return replace(self, x=self.x[index], y=self.y[index], name=name or self.name)

    def to(self, device: torch.device | str) -> ImageData:
        return replace(self, x=self.x.to(device), y=self.y.to(device))

    def with_images(self, x: Tensor, y: Tensor | None = None, name: str | None = None) -> ImageData:
        return replace(self, x=x, y=self.y if y is None else y, name=name or self.name)

    def class_counts(self) -> Tensor:
        return torch.bincount(self.y.cpu(), minlength=self.num_classes)


def fingerprint(data: ImageData) -> str:
    """A short SHA-256 of the images, labels and class count: which data a model was trained on, wherever
    it lies on disk (two copies of CIFAR-10 decoded differently get different fingerprints)."""
    import hashlib

    h = hashlib.sha256()
    h.update(f"{tuple(data.x.shape)}:{data.num_classes}:".encode())
    h.update(data.x.cpu().contiguous().numpy().tobytes())
    h.update(data.y.cpu().to(torch.int64).numpy().tobytes())
    return h.hexdigest()[:16]


def stratified_split(y: Tensor, ratio: float, seed: int) -> tuple[Tensor, Tensor]:
    """Pick ``round(ratio * n_c)`` (at least one) indices of every class c, reproducibly from ``seed``.

    Returns ``(chosen, rest)``, both sorted. With ``ratio >= 1`` everything is chosen.
    """
    if not 0 < ratio <= 1:
        raise NadError(f"clean ratio must lie in (0, 1], got {ratio}")
    y = y.cpu()
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for c in torch.unique(y).tolist():
        members = torch.nonzero(y == c).flatten()
        take = max(1, round(ratio * len(members)))
        chosen.append(members[torch.randperm(len(members), generator=gen)[:take]])
    picked = torch.sort(torch.cat(chosen)).values
    mask = torch.ones(len(y), dtype=torch.bool)
    mask[picked] = False
    return picked, torch.nonzero(mask).flatten()
