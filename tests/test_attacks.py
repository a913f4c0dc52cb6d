"""BadNets: pixel-exact triggers, seeded poisoning, the spec parser and its refusals."""

from __future__ import annotations

import pytest
import torch
from helpers import random_images

from nad.attacks import ATTACKS, BadNets, parse_attack
from nad.data.dataset import ImageData
from nad.errors import NadError

GRID = [[0, 0, 255], [0, 255, 0], [255, 0, 255]]


def test_badnets_is_registered():
    assert ATTACKS["badnets"] is BadNets


def test_grid_trigger_is_pixel_exact():
    data = random_images(6, channels=3, size=32)
    out = BadNets().apply(data.x)
    assert out.dtype == torch.uint8 and out.shape == data.x.shape
    expected = torch.tensor(GRID, dtype=torch.uint8)
    for img in out:
        for c in range(3):
            assert torch.equal(img[c, 29:32, 29:32], expected)
    mask = torch.ones(32, 32, dtype=torch.bool)
    mask[29:32, 29:32] = False
    assert torch.equal(out[:, :, mask], data.x[:, :, mask])


def test_apply_does_not_modify_its_input():
    data = random_images(4)
    before = data.x.clone()
    BadNets().apply(data.x)
    assert torch.equal(data.x, before)


def test_square_trigger_is_pixel_exact():
    data = random_images(5, channels=3, size=32)
    attack = parse_attack("badnets:pattern=square,size=4,x=27,y=27")
    out = attack.apply(data.x)
    assert (out[:, :, 27:31, 27:31] == 255).all()
    mask = torch.ones(32, 32, dtype=torch.bool)
    mask[27:31, 27:31] = False
    assert torch.equal(out[:, :, mask], data.x[:, :, mask])


def test_square_trigger_position_and_value():
    x = torch.zeros(2, 1, 16, 16, dtype=torch.uint8)
    out = BadNets(pattern="square", size=2, x=5, y=1, value=77).apply(x)
    assert torch.nonzero(out[0, 0]).tolist() == [[1, 5], [1, 6], [2, 5], [2, 6]]  # rows 1-2 (y), columns 5-6 (x)
    assert (out[:, :, 1:3, 5:7] == 77).all()


def test_default_grid_sits_in_the_bottom_right_corner_of_smaller_images():
    x = torch.full((1, 1, 16, 16), 7, dtype=torch.uint8)
    out = BadNets().apply(x)
    assert torch.equal(out[0, 0, 13:16, 13:16], torch.tensor(GRID, dtype=torch.uint8))
    assert (out[0, 0, :13] == 7).all() and (out[0, 0, :, :13] == 7).all()


@pytest.mark.parametrize(("n", "rate"), [(200, 0.1), (123, 0.1), (50, 0.3)])
def test_poisoning_counts_labels_and_untouched_images(n, rate):
    data = random_images(n, num_classes=10)
    attack = BadNets(target=3, rate=rate)
    result = attack.poison(data)
    idx = result.indices
    assert len(idx) == round(rate * n)
    assert len(torch.unique(idx)) == len(idx)
    assert torch.equal(idx, torch.sort(idx).values)
    assert (data.y[idx] != 3).all()  # all-to-one poisons only non-target images
    poisoned = result.data
    assert len(poisoned) == n and poisoned.num_classes == 10
    assert (poisoned.y[idx] == 3).all()
    assert torch.equal(poisoned.x[idx], attack.apply(data.x[idx]))
    rest = torch.ones(n, dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(poisoned.x[rest], data.x[rest])
    assert torch.equal(poisoned.y[rest], data.y[rest])
    # The input dataset is left as it was.
    assert torch.equal(data.y, torch.arange(n) % 10)


def test_poisoning_is_seeded():
    data = random_images(200)
    a = BadNets(seed=1).poison(data).indices
    b = BadNets(seed=1).poison(data).indices
    c = BadNets(seed=2).poison(data).indices
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(BadNets(seed=1).poison(data).data.x, BadNets(seed=1).poison(data).data.x)


def test_rate_one_poisons_every_non_target_image():
    data = random_images(40, num_classes=4)
    result = BadNets(target=1, rate=1.0).poison(data)
    assert torch.equal(result.indices, torch.nonzero(data.y != 1).flatten())
    assert (result.data.y == 1).all()


def test_all2all_poison_and_test_labels():
    data = random_images(100, num_classes=10)
    attack = parse_attack("badnets:mode=all2all")
    result = attack.poison(data)
    idx = result.indices
    assert len(idx) == 10
    assert torch.equal(result.data.y[idx], (data.y[idx] + 1) % 10)
    test = attack.test_set(data)
    assert len(test) == len(data)  # all-to-all keeps every class
    assert torch.equal(test.y, (data.y + 1) % 10)
    assert torch.equal(test.x, attack.apply(data.x))


def test_all2one_test_set_excludes_target_class():
    data = random_images(50, num_classes=5)
    test = BadNets(target=2).test_set(data)
    keep = data.y != 2
    assert len(test) == int(keep.sum())
    assert (test.y == 2).all()
    assert torch.equal(test.x, BadNets().apply(data.x[keep]))


def test_parse_attack_values():
    attack = parse_attack("badnets:target=5,pattern=grid")
    assert attack == BadNets(target=5, pattern="grid")
    attack = parse_attack("BadNets: target=2, rate=0.05, mode=all2all, seed=7")
    assert (attack.target, attack.rate, attack.mode, attack.seed) == (2, 0.05, "all2all", 7)
    assert parse_attack("badnets") == BadNets()
    assert parse_attack("badnets:x=none").x is None


def test_spec_round_trips():
    attack = BadNets(target=4, rate=0.2, pattern="square", size=5, x=1, y=2, seed=3)
    assert parse_attack(attack.spec()) == attack
    assert BadNets().spec() == "badnets"


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("badnets:colour=red", "unknown parameter 'colour'"),
        ("badnets:targte=1", "did you mean target"),
        ("badnet", "unknown attack 'badnet'"),
        ("badnets:rate=0", "rate"),
        ("badnets:rate=1.5", "rate"),
        ("badnets:rate=-0.1", "rate"),
        ("badnets:target=-1", "target"),
        ("badnets:target=two", "expected int"),
        ("badnets:pattern=circle", "pattern"),
        ("badnets:mode=some2some", "mode"),
        ("badnets:size=4", "grid"),
        ("badnets:pattern=square,size=0", "size"),
        ("badnets:pattern=square,value=256", "value"),
        ("badnets:target", "key=value"),
    ],
)
def test_bad_attack_specs_are_refused(spec, match):
    with pytest.raises(NadError, match=match):
        parse_attack(spec)


def test_target_outside_the_classes_is_refused():
    data = random_images(20, num_classes=10)
    attack = parse_attack("badnets:target=10")
    with pytest.raises(NadError, match="target 10"):
        attack.poison(data)
    with pytest.raises(NadError, match="target 10"):
        attack.test_set(data)
    parse_attack("badnets:target=9").check(10, (3, 32, 32))


def test_patch_outside_the_image_is_refused():
    data = random_images(10, size=16)
    with pytest.raises(NadError, match="does not fit"):
        BadNets(pattern="square", size=4, x=14, y=0).poison(data)
    with pytest.raises(NadError, match="does not fit"):
        BadNets(pattern="square", size=20).check(10, (3, 16, 16))


def test_poisoning_keeps_device_and_dtype():
    data = ImageData(torch.zeros(30, 1, 8, 8, dtype=torch.uint8), torch.arange(30) % 3, 3)
    result = BadNets(target=0, rate=0.5).poison(data)
    assert result.data.x.dtype == torch.uint8 and result.data.y.dtype == torch.int64
    assert len(result.indices) == 15
    assert (result.data.y == 0).sum() == 10 + 15
