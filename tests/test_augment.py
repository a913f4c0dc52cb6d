"""Batched uint8 augmentation: random crop with zero padding, horizontal flip and Cutout."""

from __future__ import annotations

import pytest
import torch

from nad.data.augment import NO_AUGMENT, Augment, augment_batch, cutout, random_crop, random_flip


def positive_batch(n: int = 16, c: int = 3, h: int = 12, w: int = 10) -> torch.Tensor:
    """Random images with no zero pixel, so zero fill and Cutout holes are recognisable."""
    return torch.randint(1, 256, (n, c, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("aug", [Augment(), NO_AUGMENT, Augment(crop_padding=2, flip=False, cutout_holes=3)])
def test_dtype_and_shape_preserved(aug):
    x = positive_batch()
    out = augment_batch(x, aug, gen())
    assert out.dtype == torch.uint8 and out.shape == x.shape


def test_deterministic_for_the_same_generator_seed():
    x = positive_batch()
    a = augment_batch(x, Augment(), gen(7))
    b = augment_batch(x, Augment(), gen(7))
    c = augment_batch(x, Augment(), gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_input_is_not_modified():
    x = positive_batch()
    before = x.clone()
    augment_batch(x, Augment(), gen())
    assert torch.equal(x, before)


def test_no_augment_is_identity():
    x = positive_batch()
    assert torch.equal(augment_batch(x, NO_AUGMENT, gen()), x)


def test_crop_with_zero_padding_is_identity():
    x = positive_batch()
    assert torch.equal(random_crop(x, 0, gen()), x)


@pytest.mark.parametrize("padding", [1, 2, 4])
def test_crops_are_shifted_copies_with_zero_fill(padding):
    x = positive_batch(n=24)
    out = random_crop(x, padding, gen(1))
    _, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    offsets = set()
    for i in range(len(x)):
        matches = [
            (dy, dx)
            for dy in range(2 * padding + 1)
            for dx in range(2 * padding + 1)
            if torch.equal(out[i], padded[i, :, dy : dy + h, dx : dx + w])
        ]
        assert len(matches) == 1, f"image {i} is not a shifted copy"
        offsets.add(matches[0])
        dy, dx = matches[0]
        # Zero fill appears exactly where the window leaves the image.
        zero_rows = abs(dy - padding) * w
        zero_cols = abs(dx - padding) * h
        overlap = abs(dy - padding) * abs(dx - padding)
        assert int((out[i, 0] == 0).sum()) == zero_rows + zero_cols - overlap
    assert len(offsets) > 1  # offsets differ between images


def test_flip_flips_some_and_keeps_others():
    x = positive_batch(n=32)
    out = random_flip(x, gen(2))
    flipped = [torch.equal(out[i], x[i].flip(2)) for i in range(len(x))]
    kept = [torch.equal(out[i], x[i]) for i in range(len(x))]
    assert all(f or k for f, k in zip(flipped, kept))
    assert any(flipped) and any(kept)
    # A flipped image has its columns reversed.
    i = flipped.index(True)
    assert torch.equal(out[i, :, :, 0], x[i, :, :, -1])


@pytest.mark.parametrize("length", [3, 4, 6])
def test_cutout_zeroes_a_square_of_at_most_length(length):
    x = positive_batch(n=32, h=16, w=16)
    out = cutout(x, 1, length, gen(4))
    assert out.dtype == torch.uint8
    changed = out != x
    assert (out[changed] == 0).all()
    assert (changed.any(1) == changed.all(1)).all()  # the same hole in every channel
    sizes = []
    for i in range(len(x)):
        rows, cols = torch.nonzero(changed[i, 0], as_tuple=True)
        if len(rows) == 0:
            sizes.append(0)
            continue
        height = int(rows.max() - rows.min()) + 1
        width = int(cols.max() - cols.min()) + 1
        assert height <= length and width <= length
        assert len(rows) == height * width  # a filled rectangle
        sizes.append(len(rows))
    assert max(sizes) > 0
    assert max(sizes) <= length * length


def test_cutout_several_holes_and_zero_holes():
    x = positive_batch(n=8, h=16, w=16)
    assert torch.equal(cutout(x, 0, 4, gen()), x)
    out = cutout(x, 3, 4, gen(5))
    zeros = (out[:, 0] == 0).flatten(1).sum(1)
    assert (zeros <= 3 * 16).all() and zeros.sum() > 0


def test_augment_works_on_single_channel_images():
    x = positive_batch(n=4, c=1, h=16, w=16)
    out = augment_batch(x, Augment(crop_padding=2, flip=False, cutout_holes=1, cutout_length=3), gen())
    assert out.shape == x.shape and out.dtype == torch.uint8
