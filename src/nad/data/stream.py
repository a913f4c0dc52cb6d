"""Image folders too large for memory: decoded batch by batch by DataLoader workers.

``ImageData`` holds a whole dataset as one uint8 tensor. For a ``folder:PATH`` whose decoded pixels exceed
``STREAM_BYTES`` (or with ``nad train --stream``), :func:`open_train_data` returns a :class:`StreamData`
instead: the file list and labels only. ``training.train`` then reads each batch through a DataLoader whose
workers decode the images (PIL -> RGB -> the first image's size -> uint8 CHW, as ``load_folder`` does), and
crops, flips and normalises them on the device exactly as it does in-memory batches. The batch sampler is
the in-memory loop's own (a seeded shuffle shared by all ranks, split across them), so a streamed run sees
the same batches, in the same order, as an in-memory one.

Poisoning happens in the workers: the images to poison are drawn exactly as ``Attack.poison`` draws them,
and get their trigger (and target label) as they are read. Attacks that need the whole training set
(``prepare`` that learns from the data, or their own ``poison``) are refused.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from nad.data.dataset import ImageData
from nad.data.images import read_image
from nad.data.sources import load_data, parse_data_spec, scan_folder
from nad.data.trigger import Trigger
from nad.errors import NadError

#: Above this many bytes of decoded uint8 pixels, a training folder is streamed instead of loaded.
STREAM_BYTES = 8 * 2**30
CPU = torch.device("cpu")


class FolderImages(Dataset):
    """Item ``i``: the decoded image ``files[i]`` as uint8 (3, H, W), triggered if chosen, and its label."""

    def __init__(
        self,
        files: list[Path],
        labels: Tensor,
        size: tuple[int, int],
        num_classes: int,
        attack: Trigger | None = None,
        poisoned: Tensor | None = None,
    ) -> None:
        self.files = files
        self.labels = labels
        self.size = size
        self.num_classes = num_classes
        self.attack = attack
        self.poisoned = poisoned if poisoned is not None else torch.zeros(len(files), dtype=torch.bool)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        i = int(i)
        x = torch.from_numpy(read_image(self.files[i], self.size).transpose(2, 0, 1).copy())
        if self.poisoned[i]:
            x = self.attack.poison_images(x[None], self.labels[i : i + 1])[0]
        return x, self.target(i)

    def target(self, i: int) -> Tensor:
        """The training label: the attack's target for a poisoned image of a label-flip attack."""
        y = self.labels[i : i + 1]
        if self.poisoned[i] and not self.attack.clean_label:
            y = self.attack.target_labels(y, self.num_classes)
        return y[0]


@dataclass(frozen=True)
class StreamData:
    """An image folder read from disk during training; the parts of ``ImageData``'s interface training needs."""

    images: FolderImages
    num_classes: int
    name: str
    classes: tuple[str, ...]
    device: torch.device = CPU
    workers: int = 4

    def __len__(self) -> int:
        return len(self.images)

    @property
    def y(self) -> Tensor:
        """The clean labels (CPU): what attacks pick the images to poison by."""
        return self.images.labels

    @property
    def image_shape(self) -> tuple[int, int, int]:
        width, height = self.images.size
        return (3, height, width)

    def to(self, device: torch.device | str) -> StreamData:
        """Batches will be moved to ``device``; nothing is loaded."""
        return replace(self, device=torch.device(device))

    def with_poison(self, attack: Trigger, chosen: Tensor) -> StreamData:
        """This data with ``attack``'s trigger (and labels) on the images at ``chosen``, applied as they are
        read; ``Attack.poison_stream`` chooses the images."""
        mask = torch.zeros(len(self), dtype=torch.bool)
        mask[chosen] = True
        images = FolderImages(self.images.files, self.y, self.images.size, self.num_classes, attack, mask)
        return replace(self, images=images, name=f"{self.name}+{attack.name}")

    def loader(self, batch_sampler: Iterable[Tensor]) -> DataLoader:
        """A DataLoader yielding (uint8 images, labels) on the CPU for the index batches of ``batch_sampler``."""
        return DataLoader(
            self.images,
            batch_sampler=batch_sampler,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=self.workers > 0,
        )


def default_workers() -> int:
    """Decoding workers per training process: the machine's cores shared among its processes, at most 8."""
    per_machine = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return max(1, min(8, (os.cpu_count() or 1) // per_machine - 1))


def open_folder_stream(path: str | Path, workers: int | None = None) -> StreamData:
    files, labels, classes = scan_folder(path)
    first = read_image(files[0])
    size = (first.shape[1], first.shape[0])
    images = FolderImages(files, torch.tensor(labels, dtype=torch.int64), size, len(classes))
    workers = default_workers() if workers is None else workers
    return StreamData(images, len(classes), Path(path).name, classes, workers=workers)


def open_train_data(spec: str, stream: bool = False) -> ImageData | StreamData:
    """The training set of ``spec``: streamed for a large (or ``stream``) image folder, else loaded whole."""
    kind, location, _ = parse_data_spec(spec, "train")
    if kind != "folder":
        if stream:
            raise NadError(f"--stream reads image folders (folder:PATH); {kind} data is loaded into memory")
        return load_data(spec, "train")
    data = open_folder_stream(location)
    height, width = data.image_shape[1:]
    if stream or len(data) * 3 * height * width > STREAM_BYTES:
        return data
    return load_data(spec, "train")
