"""Reading image files: the one place ``nad`` decodes them (datasets, GTSRB, streamed folders, attack
patterns, Refool's reflections). Sizes are checked from the header before anything is decoded, so a small
file that claims a huge image (a decompression bomb) is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nad.errors import NadError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".gif", ".tif", ".tiff", ".webp"}
#: The largest image nad decodes (64 megapixels): nad's images are small.
MAX_IMAGE_PIXELS = 64_000_000


def read_image(file: Path, size: tuple[int, int] | None = None, mode: str = "RGB") -> np.ndarray:
    """One image as uint8 (H, W, 3) for ``mode`` RGB, (H, W) for L, resized (bilinear) to ``size`` = (W, H)
    when given and different. The one place nad decodes image files: sizes are checked before decoding."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as img:
                width, height = img.size
                if width * height > MAX_IMAGE_PIXELS or min(width, height) < 1:
                    raise NadError(
                        f"{file}: {width}x{height} pixels, outside what nad reads (1 to {MAX_IMAGE_PIXELS:,} pixels)"
                    )
                img = img.convert(mode)
                return np.asarray(img if size is None or img.size == size else img.resize(size, Image.BILINEAR))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, Warning) as exc:
        raise NadError(f"{file}: unreadable image ({exc})") from None
