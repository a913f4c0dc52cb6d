"""Pixel helpers shared by the attacks: float/uint8 conversion and reading a trigger image from a file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from nad.data.images import read_image
from nad.errors import NadError


def to_float(x: Tensor) -> Tensor:
    """uint8 [0, 255] -> float32 [0, 1]."""
    return x.float().div_(255)


def to_uint8(x: Tensor) -> Tensor:
    """float [0, 1] -> uint8, rounded to the nearest level and clamped."""
    return x.mul(255).round_().clamp_(0, 255).to(torch.uint8)


def map_float(x: Tensor, fn: Callable[[Tensor, slice], Tensor], chunk: int = 4096) -> Tensor:
    """Apply ``fn`` to float copies of uint8 images (0..255) in chunks; round and clamp back to uint8.

    ``fn(xf, rows)`` gets the float chunk and the slice of ``x`` it came from (for per-image parameters).
    Chunking keeps the float intermediate a few MB, so memory does not grow with the dataset.
    """
    out = torch.empty_like(x)
    for start in range(0, len(x), chunk):
        rows = slice(start, start + chunk)
        out[rows] = fn(x[rows].float(), rows).round_().clamp_(0, 255)
    return out


def load_image(path: str | Path, shape: tuple[int, int, int]) -> Tensor:
    """Read ``path`` (.npy, or an image PIL can open) as a uint8 (C, H, W) tensor of ``shape``.

    ``.npy`` arrays may be (H, W), (H, W, C) or (C, H, W), uint8 or float in [0, 1]; they must already have
    the image size. Image files are converted to the channel count and resized (bilinear) to (H, W).
    """
    path = Path(path)
    if not path.is_file():
        raise NadError(f"{path}: no such file")
    array = _read_npy(path, shape) if path.suffix.lower() == ".npy" else _read_picture(path, shape)
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if tuple(tensor.shape) != shape:
        raise NadError(f"{path}: expected an image of shape {shape} (C, H, W), got {tuple(tensor.shape)}")
    return tensor


def _read_npy(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise NadError(f"{path}: not a plain numpy array ({exc})") from None
    channels = shape[0]
    if array.ndim == 2:
        array = np.repeat(array[None], channels, axis=0)
    elif array.ndim == 3 and array.shape[-1] == channels and array.shape[0] != channels:
        array = array.transpose(2, 0, 1)
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating) or array.min() < 0 or array.max() > 1:
            raise NadError(f"{path}: expected uint8, or float values in [0, 1]")
        array = np.rint(array * 255).astype(np.uint8)
    return array


def _read_picture(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    channels, height, width = shape
    array = read_image(path, (width, height), "L" if channels == 1 else "RGB")
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
