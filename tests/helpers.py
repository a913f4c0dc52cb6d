"""Helpers shared by the test modules (imported as ``helpers``; pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch

from nad.data.dataset import ImageData


def random_images(n: int, channels: int = 3, size: int = 32, num_classes: int = 10, seed: int = 0) -> ImageData:
    """A random uint8 dataset with balanced labels ``i % num_classes``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=gen)
    y = torch.arange(n) % num_classes
    return ImageData(x, y, num_classes, "random")


class Evil:
    """Unpickling this runs ``os.system("touch MARKER")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def cifar_arrays(n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, size=n)]
    return data, labels


def write_cifar(root: Path, n: int = 6, protocol: int = 2) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Write a synthetic ``cifar-10-batches-py`` folder under ``root``; returns what each batch holds."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data, labels = cifar_arrays(n, seed=i)
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data, b"filenames": [b"x.png"] * n}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        written[name] = (data, labels)
    return written
