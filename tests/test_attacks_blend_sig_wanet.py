"""Blend, SIG and WaNet: exact pixels, clean-label poisoning, seeding, and the warp's bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import random_images
from PIL import Image

from nad.attacks import ATTACKS, SIG, Blend, WaNet, parse_attack
from nad.attacks.wanet import identity_grid, noise_field, warp
from nad.errors import NadError


@pytest.mark.parametrize(("name", "cls"), [("blend", Blend), ("sig", SIG), ("wanet", WaNet)])
def test_registered_and_spec_round_trips(name, cls):
    assert ATTACKS[name] is cls
    assert parse_attack(name) == cls()
    attack = cls(target=3, seed=5)
    assert parse_attack(attack.spec()) == attack


# -- Blend ------------------------------------------------------------------------------------------------
def test_blend_pixels_match_the_formula():
    data = random_images(8)
    attack = Blend(alpha=0.2)
    pattern = attack.trigger((3, 32, 32)).float()
    expected = (0.8 * data.x.float() + 0.2 * pattern).round().clamp(0, 255).to(torch.uint8)
    out = attack.apply(data.x)
    assert out.dtype == torch.uint8
    assert (out.int() - expected.int()).abs().max() <= 1  # float rounding of the two-term sum


def test_blend_noise_pattern_is_seeded_and_uniform():
    a, b, c = Blend(seed=1).trigger((3, 32, 32)), Blend(seed=1).trigger((3, 32, 32)), Blend(seed=2).trigger((3, 32, 32))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert 100 < a.float().mean() < 155 and a.min() < 10 and a.max() > 245


def test_blend_test_alpha_is_used_at_test_time_only():
    data = random_images(6)
    attack = Blend(alpha=0.2, test_alpha=0.5)
    pattern = attack.trigger((3, 32, 32)).float()
    train = attack.poison_images(data.x, data.y)
    test = attack.apply(data.x)
    assert (train.int() - (0.8 * data.x + 0.2 * pattern).round().int()).abs().max() <= 1
    assert (test.int() - (0.5 * data.x + 0.5 * pattern).round().int()).abs().max() <= 1


def test_blend_label_flip_poisoning():
    data = random_images(200)
    result = Blend(target=1, rate=0.1).poison(data)
    assert len(result.indices) == 20 and (data.y[result.indices] != 1).all()
    assert (result.data.y[result.indices] == 1).all()


def test_blend_pattern_from_an_image_file(tmp_path):
    picture = np.zeros((8, 8, 3), dtype=np.uint8)
    picture[:, :4] = 255  # left half white
    Image.fromarray(picture).save(tmp_path / "p.png")
    attack = parse_attack(f"blend:pattern={tmp_path / 'p.png'},alpha=1")
    out = attack.apply(torch.zeros(2, 3, 16, 16, dtype=torch.uint8))
    assert (out[:, :, :, :7] == 255).all() and (out[:, :, :, 9:] == 0).all()


def test_blend_pattern_from_npy_and_rebase(tmp_path):
    np.save(tmp_path / "p.npy", np.full((3, 16, 16), 0.5, dtype=np.float32))
    attack = Blend(pattern="p.npy", alpha=1).rebase(tmp_path)
    assert attack.pattern == str(tmp_path / "p.npy")
    assert (attack.apply(torch.zeros(1, 3, 16, 16, dtype=torch.uint8)) == 128).all()


@pytest.mark.parametrize(
    ("spec", "match"), [("blend:alpha=0", "alpha"), ("blend:alpha=1.5", "alpha"), ("blend:test_alpha=2", "test_alpha")]
)
def test_blend_bad_parameters(spec, match):
    with pytest.raises(NadError, match=match):
        parse_attack(spec)


def test_blend_missing_pattern_is_one_line_error(tmp_path):
    with pytest.raises(NadError, match="no such file"):
        parse_attack(f"blend:pattern={tmp_path / 'nope.png'}").check(10, (3, 32, 32))


# -- SIG --------------------------------------------------------------------------------------------------
def test_sig_signal_is_the_papers_sinusoid():
    x = torch.full((2, 3, 32, 32), 100, dtype=torch.uint8)
    out = SIG().apply(x)
    expected = [round(100 + 20 * math.sin(2 * math.pi * j * 6 / 32)) for j in range(32)]
    assert out[0, 0, 0].tolist() == expected
    assert (out == out[:, :, :1, :]).all()  # the same in every row and channel: a horizontal signal


def test_sig_clips_to_the_pixel_range():
    out = SIG(delta=50).apply(torch.full((1, 1, 4, 32), 250, dtype=torch.uint8))
    assert out.max() == 255 and out.min() == 250 - 50 + 0  # sin reaches -1 at j = 8k + 6 for f = 6, m = 32


def test_sig_poisons_only_the_target_class_and_keeps_labels():
    data = random_images(300, num_classes=10)  # 30 per class
    result = SIG(target=2, rate=0.8).poison(data)
    idx = result.indices
    assert len(idx) == 24 and (data.y[idx] == 2).all()
    assert torch.equal(result.data.y, data.y)
    changed = (result.data.x != data.x).flatten(1).any(1)
    assert set(torch.nonzero(changed).flatten().tolist()) <= set(idx.tolist())
    test = SIG(target=2).test_set(data)
    assert len(test) == 270 and (test.y == 2).all()


def test_sig_test_delta_and_mode_refusal():
    x = torch.full((1, 1, 1, 32), 128, dtype=torch.uint8)
    assert (SIG(test_delta=30).apply(x).int() - 128).abs().max() == 30
    assert (SIG(test_delta=30).poison_images(x, torch.zeros(1)).int() - 128).abs().max() == 20
    with pytest.raises(NadError, match="all2one"):
        parse_attack("sig:mode=all2all")


# -- WaNet ------------------------------------------------------------------------------------------------
def test_wanet_field_is_normalised_and_seeded():
    field = noise_field(4, 32, 32, seed=0)
    assert field.shape == (1, 32, 32, 2)
    assert torch.equal(field, noise_field(4, 32, 32, seed=0))
    assert not torch.equal(field, noise_field(4, 32, 32, seed=1))
    knots = noise_field(4, 31, 31, seed=0)[0, ::10, ::10]  # on a 31-pixel side the 4 x 4 knots sit on pixels
    assert knots.shape == (4, 4, 2)
    assert knots.abs().mean().item() == pytest.approx(1.0, abs=1e-5)


def test_wanet_grid_is_not_the_identity_but_stays_within_bounds():
    attack = WaNet()
    grid, ident = attack.grid(32, 32), identity_grid(32, 32)
    shift = (grid - ident).abs()
    assert shift.max() > 0.001  # a real warp
    field = noise_field(4, 32, 32, attack.seed)
    assert shift.max() <= attack.s * field.abs().max() / 32 + 1e-6  # at most s * |field| / H
    assert grid.abs().max() <= 1


def test_identity_grid_leaves_images_unchanged():
    data = random_images(4, size=16)
    assert torch.equal(warp(data.x, identity_grid(16, 16)), data.x)


def test_wanet_apply_matches_grid_sample():
    data = random_images(5)
    attack = WaNet(seed=3)
    expected = F.grid_sample(data.x.float(), attack.grid(32, 32).expand(5, -1, -1, -1), align_corners=True)
    out = attack.apply(data.x)
    assert torch.equal(out, expected.round().clamp(0, 255).to(torch.uint8))
    assert (out != data.x).any()


def test_wanet_noise_mode_poisoning():
    data = random_images(500, num_classes=10)
    attack = WaNet(target=0, rate=0.1, cross_ratio=2)
    result = attack.poison(data)
    idx = result.indices
    assert len(idx) == 50 and (data.y[idx] != 0).all() and (result.data.y[idx] == 0).all()
    assert torch.equal(result.data.x[idx], attack.apply(data.x[idx]))
    changed = torch.nonzero((result.data.x != data.x).flatten(1).any(1)).flatten()
    cross = sorted(set(changed.tolist()) - set(idx.tolist()))
    assert 90 <= len(cross) <= 100  # 100 cross images; a rare one may round back to itself
    assert torch.equal(result.data.y[cross], data.y[cross])  # cross samples keep their labels
    assert not torch.equal(result.data.x[cross], attack.apply(data.x[cross]))  # ... and get a different warp


def test_wanet_poisoning_is_seeded():
    data = random_images(200)
    a, b = WaNet(seed=4).poison(data), WaNet(seed=4).poison(data)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.data.x, b.data.x)
    assert not torch.equal(a.data.x, WaNet(seed=5).poison(data).data.x)


def test_wanet_refuses_too_many_poisoned_images():
    with pytest.raises(NadError, match="exceeds 1"):
        WaNet(rate=0.5, cross_ratio=2).check(10, (3, 32, 32))


# -- trigger files ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "array",
    [
        np.full((16, 16), 7, dtype=np.uint8),  # (H, W): copied into every channel
        np.full((16, 16, 3), 7, dtype=np.uint8),  # (H, W, C)
        np.full((3, 16, 16), 7, dtype=np.uint8),  # (C, H, W)
        np.full((3, 16, 16), 7 / 255, dtype=np.float64),  # float in [0, 1]
    ],
)
def test_load_image_accepts_npy_layouts(tmp_path, array):
    from nad.attacks.images import load_image

    np.save(tmp_path / "t.npy", array)
    out = load_image(tmp_path / "t.npy", (3, 16, 16))
    assert out.dtype == torch.uint8 and out.shape == (3, 16, 16) and (out == 7).all()


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.zeros((3, 8, 8), dtype=np.uint8), "expected an image of shape"),
        (np.full((3, 16, 16), 2.0), "float values in"),
        (np.array([{"a": 1}], dtype=object), "not a plain numpy array"),
    ],
)
def test_load_image_refuses_bad_arrays(tmp_path, array, match):
    from nad.attacks.images import load_image

    np.save(tmp_path / "t.npy", array, allow_pickle=True)
    with pytest.raises(NadError, match=match):
        load_image(tmp_path / "t.npy", (3, 16, 16))


def test_load_image_refuses_a_non_image(tmp_path):
    from nad.attacks.images import load_image

    (tmp_path / "t.png").write_text("not a picture")
    with pytest.raises(NadError, match="unreadable image"):
        load_image(tmp_path / "t.png", (3, 16, 16))
