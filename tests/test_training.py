"""The training loop: schedules, batching, NaN rollback, and bit-exact reproducibility on the CPU."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.nn import functional as F

from nad.api import select_clean, train_model
from nad.attacks import BadNets
from nad.data.augment import NO_AUGMENT, Augment
from nad.data.dataset import ImageData
from nad.errors import NadError
from nad.models import ModelInfo, Normalization, build_classifier
from nad.training import NonFiniteLoss, OptimConfig, TrainConfig, batches, cross_entropy, freeze, train


def tiny_data(n: int = 48, size: int = 8, num_classes: int = 4, seed: int = 0) -> ImageData:
    """Class c is a brighter image for larger c: learnable in a few steps."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % num_classes
    base = (y * 60).view(-1, 1, 1, 1).float()
    noise = torch.randint(0, 30, (n, 1, size, size), generator=gen).float()
    return ImageData((base + noise).clamp(0, 255).to(torch.uint8), y, num_classes, "tiny")


def tiny_classifier(seed: int = 0, channels: int = 1, size: int = 8, classes: int = 4):
    torch.manual_seed(seed)
    info = ModelInfo("small_cnn", classes, (channels, size, size), {"width": 4}, Normalization((0.5,), (0.5,)))
    return build_classifier(info)


def state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return copy.deepcopy(module.state_dict())


CFG = TrainConfig(epochs=3, batch_size=8, optim=OptimConfig(lr=0.05), augment=NO_AUGMENT, seed=1)


def test_lr_schedules():
    step = OptimConfig(lr=0.1, milestones=(2, 4), gamma=0.1)
    assert step.lr_at(0, 10) == pytest.approx(0.1)
    assert step.lr_at(1.99, 10) == pytest.approx(0.1)
    assert step.lr_at(2, 10) == pytest.approx(0.01)
    assert step.lr_at(5, 10) == pytest.approx(0.001)
    cosine = OptimConfig(lr=0.2, schedule="cosine")
    assert cosine.lr_at(0, 10) == pytest.approx(0.2)
    assert cosine.lr_at(5, 10) == pytest.approx(0.1)
    assert cosine.lr_at(10, 10) == pytest.approx(0.0, abs=1e-12)


def test_batches_cover_every_index_once_and_drop_a_trailing_single():
    idx = torch.cat(list(batches(10, 4, torch.Generator().manual_seed(0))))
    assert sorted(idx.tolist()) == list(range(10))
    parts = list(batches(9, 4, torch.Generator().manual_seed(0)))
    assert [len(p) for p in parts] == [4, 4]  # the last batch of one is dropped (BatchNorm needs two)
    assert [len(p) for p in batches(1, 4, torch.Generator().manual_seed(0))] == [1]


def test_train_config_refusals():
    with pytest.raises(NadError):
        TrainConfig(epochs=-1)
    with pytest.raises(NadError):
        TrainConfig(batch_size=0)


def test_training_reduces_the_loss_and_records_history():
    clf = tiny_classifier()
    seen = []
    history = train(clf, tiny_data(), CFG, quiet=True, on_epoch=lambda e, m: seen.append((e, m["ce"])))
    assert len(history.epochs) == 3 and all(set(e) == {"ce"} for e in history.epochs)
    assert [e for e, _ in seen] == [0, 1, 2]
    assert history.epochs[-1]["ce"] < history.epochs[0]["ce"]
    assert all(math.isfinite(e["ce"]) for e in history.epochs)


def test_zero_epochs_changes_nothing():
    clf = tiny_classifier()
    before = snapshot(clf.module)
    history = train(clf, tiny_data(), TrainConfig(epochs=0), quiet=True)
    assert history.epochs == []
    assert state_equal(before, clf.module.state_dict())


def test_non_finite_loss_rolls_back_to_the_last_good_epoch():
    data = tiny_data(n=32)
    cfg = TrainConfig(epochs=4, batch_size=8, optim=OptimConfig(lr=0.05), augment=NO_AUGMENT, seed=2)
    steps_per_epoch = 4
    calls = {"n": 0}

    def nan_in_epoch_two(module, inputs, targets):
        terms = cross_entropy(module, inputs, targets)
        calls["n"] += 1
        if calls["n"] > steps_per_epoch:  # every step of the second epoch
            terms["ce"] = terms["ce"] * float("nan")
        return terms

    clf = tiny_classifier()
    at_end_of_epoch_one = {}

    def on_epoch(epoch, _means):
        if epoch == 0:
            at_end_of_epoch_one.update(snapshot(clf.module))

    initial = snapshot(clf.module)
    with pytest.raises(NonFiniteLoss, match="epoch 2") as info:
        train(clf, data, cfg, nan_in_epoch_two, quiet=True, on_epoch=on_epoch)
    assert isinstance(info.value, NadError)
    assert info.value.epoch == 1
    assert calls["n"] == 2 * steps_per_epoch  # stopped at the end of the bad epoch
    assert at_end_of_epoch_one and not state_equal(at_end_of_epoch_one, initial)
    assert state_equal(clf.module.state_dict(), at_end_of_epoch_one)
    assert all(torch.isfinite(v.float()).all() for v in clf.module.state_dict().values())


def test_inf_in_the_first_epoch_restores_the_initial_weights():
    clf = tiny_classifier()
    initial = snapshot(clf.module)

    def inf_loss(module, inputs, targets):
        return {"ce": F.cross_entropy(module(inputs), targets), "bad": torch.tensor(float("inf"))}

    with pytest.raises(NonFiniteLoss, match="epoch 1"):
        train(clf, tiny_data(), CFG, inf_loss, quiet=True)
    assert state_equal(clf.module.state_dict(), initial)


@pytest.mark.parametrize("augment", [NO_AUGMENT, Augment(crop_padding=2, flip=True, cutout_holes=1)])
def test_same_seed_gives_bit_identical_weights(augment):
    cfg = TrainConfig(epochs=2, batch_size=8, optim=OptimConfig(lr=0.05), augment=augment, seed=3)
    runs = []
    for _ in range(2):
        clf = tiny_classifier(seed=5)
        torch.manual_seed(123)  # global RNG state must not matter: train() uses its own generators
        train(clf, tiny_data(), cfg, quiet=True)
        runs.append(snapshot(clf.module))
    assert state_equal(runs[0], runs[1])
    other = tiny_classifier(seed=5)
    train(other, tiny_data(), TrainConfig(**{**vars(cfg), "seed": 4}), quiet=True)
    assert not state_equal(runs[0], other.module.state_dict())


def test_train_model_is_reproducible_and_scores():
    data, test = tiny_data(n=64, seed=0), tiny_data(n=32, seed=1)
    cfg = TrainConfig(epochs=2, batch_size=16, optim=OptimConfig(lr=0.05), augment=NO_AUGMENT, seed=0)
    attack = BadNets(target=0, rate=0.25)
    a = train_model(data, "small_cnn", cfg, attack, test, arch_kwargs={"width": 4}, quiet=True)
    b = train_model(data, "small_cnn", cfg, attack, test, arch_kwargs={"width": 4}, quiet=True)
    assert state_equal(a.model.module.state_dict(), b.model.module.state_dict())
    assert a.scores == b.scores
    assert a.scores is not None and a.scores.asr is not None
    assert 0 <= a.scores.acc <= 100 and 0 <= a.scores.asr <= 100
    assert torch.equal(a.poisoned, BadNets(target=0, rate=0.25).poison(data).indices)
    assert a.model.info.attack == attack.spec()
    assert a.model.info.num_classes == 4 and a.model.info.input_size == (1, 8, 8)
    assert len(a.history.epochs) == 2


def test_freeze():
    clf = tiny_classifier()
    clf.module.train()
    freeze(clf.module)
    assert not clf.module.training
    assert not any(p.requires_grad for p in clf.module.parameters())


def test_select_clean():
    pool = tiny_data(n=40)
    clean = select_clean(pool, 0.3, seed=0)
    assert len(clean) == 12  # round(0.3 * 10) per class
    assert clean.class_counts().tolist() == [3, 3, 3, 3]
    assert torch.equal(select_clean(pool, 0.3, seed=0).x, clean.x)
    empty = pool.subset(torch.tensor([], dtype=torch.long))
    with pytest.raises(NadError, match="empty"):
        select_clean(empty, 0.5, seed=0)
    one_class = pool.subset(torch.nonzero(pool.y == 2).flatten())
    with pytest.raises(NadError, match="1 class"):
        select_clean(one_class, 1.0, seed=0)
    with pytest.raises(NadError, match="holds 4 image"):
        select_clean(pool, 0.1, seed=0)  # one image per class: too few to learn from
    three_classes = pool.subset(torch.nonzero(pool.y != 3).flatten())
    with pytest.warns(UserWarning, match=r"no image of 1 of the model's 4 classes \(3\)"):
        select_clean(three_classes, 1.0, seed=0)
