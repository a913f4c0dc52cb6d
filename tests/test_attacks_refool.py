"""Refool: clean-label reflection triggers (in focus, out of focus, ghost) from a seeded reflection pool."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import random_images
from PIL import Image

from nad.attacks import ATTACKS, parse_attack
from nad.attacks.refool import REFLECTIONS_FILE, Refool, fit_images, gaussian_blur, shift
from nad.errors import NadError


def small(n: int = 40, channels: int = 3, size: int = 16, seed: int = 0):
    return random_images(n, channels=channels, size=size, seed=seed)


def test_registered_and_parsed():
    assert ATTACKS["refool"] is Refool
    attack = parse_attack("refool:target=2,kind=blur,count=5,sigma_max=3,rate=0.5")
    assert (attack.target, attack.kind, attack.count, attack.sigma_max, attack.rate) == (2, "blur", 5, 3.0, 0.5)
    assert attack.clean_label
    assert parse_attack(attack.spec()) == attack
    assert Refool().rate == 0.4 and Refool().kind == "mix" and Refool().count == 200
    assert Refool().reflections == "photos" and Refool().select_rounds == 16 and Refool().candidates == 1000


@pytest.mark.parametrize(
    "spec",
    [
        "refool:count=5,candidates=4",
        "refool:select_share=0",
        "refool:select_eval=0",
        "refool:select_rounds=-1",
        "refool:kind=mirror",
        "refool:count=0",
        "refool:sigma_min=3,sigma_max=2",
        "refool:mode=all2all",
    ],
)
def test_bad_parameters(spec):
    with pytest.raises(NadError):
        parse_attack(spec)


def test_poisons_a_share_of_the_target_class_and_keeps_labels():
    data = small(60)
    attack = parse_attack("refool:reflections=none,target=3,rate=0.5").prepare(data)
    result = attack.poison(data)
    target_count = int((data.y == 3).sum())
    assert len(result.indices) == round(0.5 * target_count)
    assert torch.equal(result.data.y, data.y)
    assert bool((data.y[result.indices] == 3).all())
    changed = torch.nonzero((result.data.x != data.x).flatten(1).any(1)).flatten()
    assert torch.equal(changed, result.indices)


@pytest.mark.parametrize("kind", ["focus", "blur", "ghost", "mix"])
def test_every_kind_changes_every_image(kind):
    data = small(30)
    attack = parse_attack(f"refool:reflections=none,kind={kind}").prepare(data)
    x = data.x[:12]
    out = attack.apply(x)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert bool((out != x).flatten(1).any(1).all())
    assert torch.equal(attack.apply(x), out)  # the same batch gets the same triggers


def test_kinds_differ_from_each_other():
    data = small(30)
    outs = [
        parse_attack(f"refool:reflections=none,kind={k}").prepare(data).apply(data.x[:8])
        for k in ("focus", "blur", "ghost")
    ]
    assert not torch.equal(outs[0], outs[1]) and not torch.equal(outs[1], outs[2])


def test_blur_kernel_is_normalised():
    flat = torch.full((3, 2, 12, 12), 0.3)
    sigma = torch.tensor([1.0, 2.5, 5.0])
    assert torch.allclose(gaussian_blur(flat, sigma), flat, atol=1e-6)
    point = torch.zeros(2, 1, 31, 31)
    point[:, :, 15, 15] = 1
    blurred = gaussian_blur(point, torch.tensor([1.0, 3.0]))
    assert torch.allclose(blurred.sum((1, 2, 3)), torch.ones(2), atol=1e-5)
    assert blurred[1].max() < blurred[0].max()  # a wider sigma spreads the light further
    assert torch.allclose(blurred[0, 0], blurred[0, 0].T, atol=1e-7)


def test_shift_moves_each_image_by_its_own_offset():
    x = torch.arange(2 * 1 * 5 * 5, dtype=torch.float32).view(2, 1, 5, 5)
    out = shift(x, torch.tensor([[1, 2], [0, 0]]))
    assert torch.equal(out[0, 0, 1:, 2:], x[0, 0, :-1, :-2])
    assert torch.equal(out[1], x[1])


def test_deterministic_for_the_seed():
    data = small(60)
    a = parse_attack("refool:reflections=none,target=1,seed=4").prepare(data).poison(data)
    b = parse_attack("refool:reflections=none,target=1,seed=4").prepare(data).poison(data)
    c = parse_attack("refool:reflections=none,target=1,seed=5").prepare(data).poison(data)
    assert torch.equal(a.data.x, b.data.x) and torch.equal(a.indices, b.indices)
    assert not torch.equal(a.data.x, c.data.x)


def test_test_set_triggers_non_target_images_only():
    data = small(40)
    attack = parse_attack("refool:reflections=none,target=0").prepare(data)
    triggered = attack.test_set(data)
    assert len(triggered) == int((data.y != 0).sum())
    assert bool((triggered.y == 0).all())


def test_default_pool_comes_from_non_target_images():
    data = small(40)
    attack = parse_attack("refool:reflections=none,target=2,count=7").prepare(data)
    pool = attack.pool()
    assert pool.shape == (7, 3, 16, 16)
    others = data.x[data.y != 2]
    assert all(bool((others == img).flatten(1).all(1).any()) for img in pool)


def test_without_a_pool_apply_says_what_to_do():
    with pytest.raises(NadError, match="reflections="):
        parse_attack("refool:reflections=none").apply(small(4).x)


def write_pngs(folder, count: int = 3, size: int = 20, mode: str = "RGB"):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        shape = (size, size, 3) if mode == "RGB" else (size, size)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(folder / f"r{i}.png")


@pytest.mark.parametrize("prefix", ["folder:", ""])
def test_reflections_from_a_folder_of_images(tmp_path, prefix):
    write_pngs(tmp_path / "refl")
    data = small(20)
    attack = parse_attack(f"refool:reflections={prefix}{tmp_path / 'refl'},kind=focus").prepare(data)
    assert attack.pool().shape == (3, 3, 20, 20)
    out = attack.apply(data.x[:5])
    assert out.shape == (5, 3, 16, 16)  # reflections were resized to the image size
    assert bool((out != data.x[:5]).flatten(1).any(1).all())


def test_reflections_from_class_folders_and_grey_images(tmp_path):
    write_pngs(tmp_path / "refl" / "a", count=2, mode="L")
    write_pngs(tmp_path / "refl" / "b", count=2, mode="L")
    grey = small(10, channels=1)
    attack = parse_attack(f"refool:reflections=folder:{tmp_path / 'refl'},count=3").prepare(grey)
    assert len(attack.pool()) == 3  # count caps the pool
    assert attack.apply(grey.x).shape == grey.x.shape


def test_missing_reflections_path(tmp_path):
    attack = parse_attack(f"refool:reflections={tmp_path / 'nowhere'}")
    with pytest.raises(NadError, match="nowhere"):
        attack.prepare(small(10))
    with pytest.raises(NadError, match="nowhere"):
        attack.apply(small(2).x)


def test_pool_saved_in_workdir_reproduces_the_trigger(tmp_path):
    data = small(40)
    prepared = parse_attack("refool:reflections=none,count=9").prepare(data, tmp_path)
    assert prepared.reflections == REFLECTIONS_FILE
    assert (tmp_path / REFLECTIONS_FILE).is_file()
    assert prepared.spec() == f"refool:reflections={REFLECTIONS_FILE},count=9"
    reloaded = parse_attack(prepared.spec()).rebase(tmp_path)  # what nad eval does with a model's sidecar
    assert torch.equal(reloaded.pool(), prepared.pool())
    assert torch.equal(reloaded.apply(data.x[:6]), prepared.apply(data.x[:6]))


def test_ghost_offset_must_fit_the_image():
    with pytest.raises(NadError, match="offset"):
        parse_attack("refool:kind=ghost").check(10, (3, 8, 8))
    parse_attack("refool:kind=blur").check(10, (3, 8, 8))


def test_photo_pool_is_natural_crops_at_four_times_cifar_resolution(tmp_path):
    from nad.attacks.refool import PHOTO_SIDE, photo_crops

    pool = photo_crops(12, torch.Generator().manual_seed(0))
    assert pool.shape == (12, 3, PHOTO_SIDE, PHOTO_SIDE) and PHOTO_SIDE == 4 * 32
    assert torch.equal(pool, photo_crops(12, torch.Generator().manual_seed(0)))
    assert len({bytes(p.numpy()) for p in pool}) == 12  # every crop differs
    # Photographs, not noise: neighbouring pixels are close (random images differ by ~85 levels on average).
    assert float((pool[..., 1:].float() - pool[..., :-1].float()).abs().mean()) < 20
    data = small(30)
    attack = parse_attack("refool:select_rounds=0,count=12").prepare(data, tmp_path)
    assert bool((attack.apply(data.x[:4]) != data.x[:4]).flatten(1).any(1).all())
    # The pool travels at the images' size (what every blend resizes it to), and gives the same triggers.
    assert attack.reflections == REFLECTIONS_FILE and torch.equal(attack.pool(), fit_images(pool, data.image_shape))
    reloaded = parse_attack(attack.spec()).rebase(tmp_path)
    assert reloaded.pool().shape == (12, *data.image_shape)
    assert torch.equal(reloaded.apply(data.x[:6]), attack.apply(data.x[:6]))
    assert torch.equal(attack.apply(data.x[:6]), attack._with_pool(pool).apply(data.x[:6]))


@pytest.mark.slow
def test_adversarial_selection_keeps_the_best_scoring_candidates():
    from nad.attacks.refool import photo_crops, select_reflections

    data = small(80, size=16)
    attack = parse_attack("refool:target=1,count=4,candidates=12,select_rounds=2,select_epochs=1,surrogate_epochs=1")
    chosen = select_reflections(attack, photo_crops(12, torch.Generator().manual_seed(0)), data)
    candidates = photo_crops(12, torch.Generator().manual_seed(0))
    assert chosen.shape == (4, 3, 128, 128)
    assert all(bool((candidates == c).flatten(1).all(1).any()) for c in chosen)  # a subset of the candidates
    again = select_reflections(attack, candidates, data)
    assert torch.equal(chosen, again)  # seeded


def test_a_raised_attack_version_changes_the_bench_model_key():
    from nad.bench.grid import ModelSpec
    from nad.training import TrainConfig

    old = ModelSpec("cifar10:x", 0, "wrn16_1", {}, "cifar10", "refool", TrainConfig())
    assert "attack_version" not in old.to_json()  # version 1 keeps every key made before versions existed
    new = ModelSpec("cifar10:x", 0, "wrn16_1", {}, "cifar10", "refool", TrainConfig(), Refool.version)
    assert Refool.version == 2 and new.key != old.key
