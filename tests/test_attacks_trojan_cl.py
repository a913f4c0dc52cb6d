"""Trojan (a trigger generated from a model) and the label-consistent attack (PGD + four corner patterns)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import random_images

from nad.attacks import ATTACKS, parse_attack
from nad.attacks.badnets import GRID
from nad.attacks.cl import LabelConsistent
from nad.attacks.images import to_float
from nad.attacks.trojan import TRIGGER_FILE, NeuronReader, Trojan
from nad.errors import NadError
from nad.models import ModelInfo, build_classifier, load_model, save_model

SHAPE = (3, 16, 16)
MIRRORED = GRID.flip(1)


def tiny_model(tmp_path, num_classes=4):
    """A randomly initialised, narrow small_cnn for 3x16x16 inputs, saved under tmp_path/model."""
    torch.manual_seed(0)
    clf = build_classifier(ModelInfo("small_cnn", num_classes, SHAPE, {"width": 4}))
    save_model(clf, tmp_path / "model")
    return tmp_path / "model"


def fc_inputs(clf, x):
    """The penultimate features (the input of the final Linear) for uint8 images, read independently."""
    seen = []
    handle = clf.module.fc.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    clf.module.eval()
    with torch.no_grad():
        clf(x)
    handle.remove()
    return seen[0]


# -- registration and specs ----------------------------------------------------------------------------
def test_registered_and_parsed():
    assert ATTACKS["trojan"] is Trojan
    assert ATTACKS["cl"] is LabelConsistent
    attack = parse_attack("cl:eps=8,steps=3,alpha=2,amplitude=0.25,target=2,rate=1,random_start=false")
    assert attack == LabelConsistent(
        target=2, rate=1.0, eps=8.0, steps=3, alpha=2.0, amplitude=0.25, random_start=False
    )
    assert attack.clean_label and attack.step_size == 2.0
    assert LabelConsistent(eps=16, steps=20).step_size == pytest.approx(2.0)  # 2.5 * eps / steps
    trojan = parse_attack("trojan:size=4,x=1,y=2,neurons=2,layer=block3,trigger=t.npy,steps=5,lr=0.05")
    assert (trojan.size, trojan.x, trojan.y, trojan.neurons, trojan.layer) == (4, 1, 2, 2, "block3")
    assert (trojan.trigger, trojan.steps, trojan.lr, trojan.rate) == ("t.npy", 5, 0.05, 0.1)
    for a in (attack, trojan, Trojan(), LabelConsistent()):
        assert parse_attack(a.spec()) == a
    assert Trojan().spec() == "trojan" and LabelConsistent().spec() == "cl"


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("cl:mode=all2all", "all2one"),
        ("cl:eps=300", "eps"),
        ("cl:eps=nan", "eps"),
        ("cl:amplitude=0", "amplitude"),
        ("cl:alpha=0", "alpha"),
        ("cl:steps=-1", "steps"),
        ("trojan:size=0", "size"),
        ("trojan:neurons=0", "neurons"),
        ("trojan:lr=0", "lr"),
        ("trojan:activation=nan", "activation"),
    ],
)
def test_bad_specs_are_refused(spec, match):
    with pytest.raises(NadError, match=match):
        parse_attack(spec)


# -- trojan: a ready trigger -----------------------------------------------------------------------------
def test_trojan_ready_trigger_is_pixel_exact_inside_the_mask(tmp_path):
    trigger = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    np.save(tmp_path / "t.npy", trigger.numpy())
    data = random_images(6, size=32)
    attack = parse_attack(f"trojan:trigger={tmp_path / 't.npy'},size=5,x=3,y=20")
    attack.check(10, (3, 32, 32))
    before = data.x.clone()
    out = attack.apply(data.x)
    assert torch.equal(data.x, before)
    assert torch.equal(out[:, :, 20:25, 3:8], trigger[:, 20:25, 3:8].expand(6, -1, -1, -1))
    mask = torch.ones(32, 32, dtype=torch.bool)
    mask[20:25, 3:8] = False
    assert torch.equal(out[:, :, mask], data.x[:, :, mask])
    assert attack.prepare(data) is attack  # a ready trigger needs nothing generated


def test_trojan_patch_sized_trigger_goes_in_the_bottom_right_corner(tmp_path):
    patch = np.arange(3 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4)
    np.save(tmp_path / "p.npy", patch)
    data = random_images(3, size=16)
    out = Trojan(size=4, trigger=str(tmp_path / "p.npy")).apply(data.x)
    assert torch.equal(out[:, :, 12:, 12:], torch.from_numpy(patch).expand(3, -1, -1, -1))
    assert torch.equal(out[:, :, :12], data.x[:, :, :12]) and torch.equal(out[:, :, :, :12], data.x[:, :, :, :12])


def test_trojan_refusals(tmp_path):
    with pytest.raises(NadError, match="trigger="):
        Trojan().apply(random_images(2).x)
    with pytest.raises(NadError, match="does not fit"):
        Trojan(size=5, x=14).check(10, SHAPE)
    np.save(tmp_path / "bad.npy", np.zeros((3, 7, 7), dtype=np.uint8))
    with pytest.raises(NadError, match="patch"):
        Trojan(size=4, trigger=str(tmp_path / "bad.npy")).check(10, SHAPE)
    with pytest.raises(NadError, match="no layer named"):
        Trojan(layer="nope", steps=1).generate(random_images(8, size=16), load_model(tiny_model(tmp_path)))


def test_trojan_test_set_triggers_non_target_images(tmp_path):
    np.save(tmp_path / "t.npy", np.full(SHAPE, 200, dtype=np.uint8))
    data = random_images(20, size=16, num_classes=4)
    attack = Trojan(target=1, size=3, trigger=str(tmp_path / "t.npy"))
    test = attack.test_set(data)
    assert len(test) == 15 and (test.y == 1).all()
    assert (test.x[:, :, 13:, 13:] == 200).all()
    result = attack.poison(data)
    assert len(result.indices) == 2 and (result.data.y[result.indices] == 1).all()


# -- trojan: generating the trigger ------------------------------------------------------------------------
def test_trojan_generates_a_trigger_that_drives_the_selected_neuron(tmp_path):
    path = tiny_model(tmp_path)
    clf = load_model(path)
    data = random_images(48, size=16, num_classes=4)
    attack = Trojan(size=4, steps=25, model=str(path))
    generated = attack.generate(data, clf)
    assert generated.pixels.dtype == torch.uint8 and generated.pixels.shape == SHAPE
    assert (generated.pixels[:, :12] == 0).all() and (generated.pixels[:, :, :12] == 0).all()
    assert generated.end > generated.start
    (neuron,) = generated.neurons.tolist()
    # Independently: the neuron's activation on non-target images is higher with the trigger than with
    # any of several random patches in the same place.
    x = data.x[data.y != 0]
    ours = fc_inputs(clf, attack._with_pixels(generated.pixels, None).apply(x))[:, neuron].mean()
    gen = torch.Generator().manual_seed(5)
    for _ in range(5):
        noise = torch.randint(0, 256, SHAPE, dtype=torch.uint8, generator=gen)
        other = fc_inputs(clf, attack._with_pixels(noise, None).apply(x))[:, neuron].mean()
        assert ours > other


def test_trojan_neuron_selection_is_deterministic_and_ranks_connections(tmp_path):
    clf = load_model(tiny_model(tmp_path))
    data = random_images(16, size=16, num_classes=4)
    attack = Trojan(size=4, neurons=3)
    mask = attack.mask(16, 16)
    reader = NeuronReader(clf, None, data.x[:2])
    x = to_float(data.x)
    first = attack.select_neurons(reader, x, mask)
    assert torch.equal(first, attack.select_neurons(reader, x, mask))
    assert len(first) == 3 and len(set(first.tolist())) == 3
    # The top neuron has the largest summed |gradient| over the mask.
    x = x.clone().requires_grad_(True)
    act = reader(x)
    scores = [
        float(torch.autograd.grad(act[:, j].sum(), x, retain_graph=True)[0].abs().mul(mask).sum()) for j in range(16)
    ]
    assert first[0] == int(np.argmax(scores))
    with pytest.raises(NadError, match="only 16"):
        Trojan(neurons=17).select_neurons(reader, x.detach(), mask)


def test_trojan_layer_by_name_uses_channels(tmp_path):
    clf = load_model(tiny_model(tmp_path))
    data = random_images(4, size=16)
    reader = NeuronReader(clf, "block2", data.x[:2])
    assert reader(to_float(data.x)).shape == (4, 8)  # width 4: block2 has 8 channels


def test_trojan_prepare_writes_the_trigger_and_names_it(tmp_path):
    path = tiny_model(tmp_path)
    data = random_images(40, size=16, num_classes=4)
    attack = Trojan(size=4, steps=10, model=str(path), seed=3)
    run = tmp_path / "run"
    prepared = attack.prepare(data, run)
    assert prepared.trigger == TRIGGER_FILE and f"trigger={TRIGGER_FILE}" in prepared.spec()
    saved = np.load(run / TRIGGER_FILE)
    assert saved.dtype == np.uint8 and saved.shape == SHAPE
    expected = attack.generate(data).pixels
    assert torch.equal(torch.from_numpy(saved), expected)
    triggered = prepared.apply(data.x)  # works before rebase: the trigger is kept in memory
    assert torch.equal(triggered[:, :, 12:, 12:], expected[:, 12:, 12:].expand(40, -1, -1, -1))
    # Read back from the recorded spec, the relative name resolves against the run's folder.
    again = parse_attack(prepared.spec())
    with pytest.raises(NadError, match="no such file"):
        again.apply(data.x)
    rebased = again.rebase(run)
    assert rebased.trigger == str(run / TRIGGER_FILE)
    assert torch.equal(rebased.apply(data.x), triggered)
    # Seeded: the same seed gives the same trigger, another seed another one.
    assert torch.equal(attack.prepare(data).pixels(SHAPE), expected)
    assert not torch.equal(Trojan(size=4, steps=10, model=str(path), seed=4).generate(data).pixels, expected)


def test_trojan_prepare_reuses_a_trigger_left_by_a_resumed_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    stored = np.full(SHAPE, 9, dtype=np.uint8)
    np.save(run / TRIGGER_FILE, stored)
    data = random_images(12, size=16, num_classes=4)
    prepared = Trojan(size=3, model=str(tmp_path / "missing")).prepare(data, run)  # no model is read
    assert prepared.trigger == TRIGGER_FILE
    assert (prepared.apply(data.x)[:, :, 13:, 13:] == 9).all()


def test_trojan_surrogate_without_a_model_leaves_the_global_rng_alone():
    data = random_images(32, size=16, num_classes=4)
    state = torch.get_rng_state()
    prepared = Trojan(size=3, steps=2, surrogate_epochs=1).prepare(data)
    assert torch.equal(torch.get_rng_state(), state)
    assert prepared.trigger is None and prepared.pixels(SHAPE).shape == SHAPE
    assert prepared.spec() == Trojan(size=3, steps=2, surrogate_epochs=1).spec()


def test_trojan_through_train_model(tmp_path):
    from nad.api import train_model
    from nad.training import TrainConfig

    path = tiny_model(tmp_path)
    data = random_images(40, size=16, num_classes=4)
    result = train_model(
        data,
        "small_cnn",
        TrainConfig(epochs=1, batch_size=20),
        Trojan(size=3, steps=3, model=str(path)),
        arch_kwargs={"width": 4},
        quiet=True,
        workdir=tmp_path / "run",
    )
    assert result.attack.trigger == TRIGGER_FILE and (tmp_path / "run" / TRIGGER_FILE).is_file()
    assert f"trigger={TRIGGER_FILE}" in result.model.info.attack
    assert len(result.poisoned) == 4


# -- label-consistent ------------------------------------------------------------------------------------
def corners(x):
    return x[..., :3, :3], x[..., :3, -3:], x[..., -3:, :3], x[..., -3:, -3:]


def outside_corners(h=16, w=16):
    mask = torch.ones(h, w, dtype=torch.bool)
    for rows in (slice(0, 3), slice(-3, None)):
        for cols in (slice(0, 3), slice(-3, None)):
            mask[rows, cols] = False
    return mask


def test_cl_apply_places_only_the_four_corner_patterns():
    data = random_images(5, size=16)
    out = LabelConsistent().apply(data.x)
    top_left, top_right, bottom_left, bottom_right = corners(out)
    assert (top_right == GRID).all() and (bottom_right == GRID).all()
    assert (top_left == MIRRORED).all() and (bottom_left == MIRRORED).all()
    keep = outside_corners()
    assert torch.equal(out[:, :, keep], data.x[:, :, keep])


def test_cl_reduced_amplitude_adds_and_subtracts():
    x = torch.full((2, 1, 8, 8), 100, dtype=torch.uint8)
    out = LabelConsistent(amplitude=0.25).apply(x)  # +-63.75 levels
    signs = GRID.float() / 255 * 2 - 1
    assert torch.equal(out[0, 0, -3:, -3:], (100 + 63.75 * signs).round().to(torch.uint8))
    assert (out[:, :, 3:5] == 100).all()


def test_cl_poisons_only_the_target_class_within_eps(tmp_path):
    path = tiny_model(tmp_path)
    data = random_images(60, size=16, num_classes=4)
    attack = LabelConsistent(target=2, rate=0.5, eps=8, steps=3, model=str(path))
    result = attack.poison(data)
    idx = result.indices
    assert len(idx) == round(0.5 * 15)
    assert (data.y[idx] == 2).all()
    assert torch.equal(result.data.y, data.y)  # clean label: no label changes
    rest = torch.ones(60, dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(result.data.x[rest], data.x[rest])
    poisoned = result.data.x[idx]
    keep = outside_corners()
    diff = (poisoned.int() - data.x[idx].int())[:, :, keep]
    assert diff.abs().max() <= 8 and diff.abs().max() > 0
    top_left, top_right, bottom_left, bottom_right = corners(poisoned)
    assert (top_right == GRID).all() and (bottom_right == GRID).all()
    assert (top_left == MIRRORED).all() and (bottom_left == MIRRORED).all()
    # Determinism by seed; another seed picks other images and another random start.
    assert torch.equal(attack.poison(data).data.x, result.data.x)
    other = LabelConsistent(target=2, rate=1.0, eps=8, steps=3, model=str(path), seed=1).poison(data)
    same = LabelConsistent(target=2, rate=1.0, eps=8, steps=3, model=str(path), seed=0).poison(data)
    assert not torch.equal(other.data.x, same.data.x)


def test_cl_pgd_raises_the_loss_of_the_true_label(tmp_path):
    from torch.nn import functional as F

    path = tiny_model(tmp_path)
    data = random_images(24, size=16, num_classes=4)
    attack = LabelConsistent(eps=16, steps=5, model=str(path)).prepare(data)
    clf = load_model(path)
    clf.module.eval()
    adv = attack.perturb(data.x, data.y)
    with torch.no_grad():
        assert F.cross_entropy(clf(adv), data.y) > F.cross_entropy(clf(data.x), data.y)
    assert (adv.int() - data.x.int()).abs().max() <= 16


def test_cl_surrogate_prepare_and_refusals(tmp_path):
    data = random_images(32, size=16, num_classes=4)
    with pytest.raises(NadError, match="prepare"):
        LabelConsistent().poison_images(data.x[:2], data.y[:2])
    state = torch.get_rng_state()
    prepared = LabelConsistent(steps=1, surrogate_epochs=1).prepare(data)
    assert torch.equal(torch.get_rng_state(), state)
    assert prepared == LabelConsistent(steps=1, surrogate_epochs=1) and prepared._model is not None
    assert len(prepared.poison(data).indices) == 4
    with pytest.raises(NadError, match="classes"):
        LabelConsistent(model=str(tiny_model(tmp_path, num_classes=3))).prepare(data)
    with pytest.raises(NadError, match="6x6"):
        LabelConsistent().check(10, (3, 5, 5))


def test_cl_through_train_model():
    from nad.api import train_model
    from nad.training import TrainConfig

    data = random_images(40, size=16, num_classes=4)
    attack = LabelConsistent(steps=2, surrogate_epochs=1)
    result = train_model(
        data, "small_cnn", TrainConfig(epochs=1, batch_size=20), attack, arch_kwargs={"width": 4}, quiet=True
    )
    assert len(result.poisoned) == 5 and result.model.info.attack == attack.spec()


def test_cl_version_2_attacks_a_wrn_surrogate_and_has_its_own_bench_key():
    from nad.bench.grid import ModelSpec
    from nad.training import TrainConfig

    assert LabelConsistent().surrogate == "wrn16_1" and LabelConsistent.version == 2
    old = ModelSpec("cifar10:x", 0, "wrn16_1", {}, "cifar10", "cl", TrainConfig())
    new = ModelSpec("cifar10:x", 0, "wrn16_1", {}, "cifar10", "cl", TrainConfig(), LabelConsistent.version)
    assert new.key != old.key


def test_cl_keeps_its_surrogate_in_the_run_folder_for_a_resumed_run(tmp_path, monkeypatch):
    import nad.attacks.surrogate

    data = random_images(32, size=16, num_classes=4)
    attack = LabelConsistent(steps=2, surrogate_epochs=1, surrogate="small_cnn")
    first = attack.prepare(data, tmp_path)
    assert (tmp_path / "cl-surrogate.safetensors").is_file() and (tmp_path / "cl-surrogate.json").is_file()
    assert first.spec() == attack.spec()  # the recorded spec does not name the file

    def no_training(*args, **kwargs):
        raise AssertionError("the surrogate was trained again")

    monkeypatch.setattr(nad.attacks.surrogate, "train", no_training)
    resumed = attack.prepare(data, tmp_path)
    x, y = data.x[:8], data.y[:8]
    assert torch.equal(resumed.poison_images(x, y), first.poison_images(x, y))
