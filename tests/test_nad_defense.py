"""NAD's configuration, layer resolution and training on a tiny model (the full run is in test_demo.py)."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
from torch import nn

from nad.api import erase
from nad.attacks import BadNets
from nad.data.augment import NO_AUGMENT, Augment
from nad.data.dataset import ImageData
from nad.defenses import DEFENSES, NAD, FineTune, NADConfig, defense_class
from nad.defenses.nad import default_betas, resolve_layers
from nad.errors import NadError
from nad.metrics import evaluate
from nad.models import Classifier, ModelInfo, build_classifier
from nad.training import OptimConfig, TrainConfig


def tiny_clean(n: int = 32, num_classes: int = 4, seed: int = 0) -> ImageData:
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % num_classes
    x = ((y * 60).view(-1, 1, 1, 1) + torch.randint(0, 30, (n, 1, 8, 8), generator=gen)).to(torch.uint8)
    return ImageData(x, y, num_classes, "tiny")


def tiny_model() -> Classifier:
    torch.manual_seed(0)
    return build_classifier(ModelInfo("small_cnn", 4, (1, 8, 8), {"width": 4}))


TRAIN = TrainConfig(epochs=2, batch_size=8, optim=OptimConfig(lr=0.05), augment=NO_AUGMENT, seed=0)


def states_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"layers": ("a", "b"), "betas": (1.0,)}, "one beta per layer"),
        ({"betas": (-1.0,)}, "betas must be finite and >= 0"),
        ({"betas": (float("nan"),)}, "betas must be finite and >= 0"),
        ({"p": 0.0}, "p must be finite and > 0"),
        ({"teacher_epochs": -1}, "teacher_epochs must be >= 0"),
    ],
)
def test_nad_config_refusals(kwargs, match):
    with pytest.raises(NadError, match=match):
        NADConfig(**kwargs)


def test_defense_registry():
    assert defense_class("nad") is NAD and defense_class("finetune") is FineTune
    with pytest.raises(NadError, match="did you mean"):
        defense_class("finetun")


def test_resolve_layers_registered_configured_and_automatic():
    clf = tiny_model()
    sample = torch.randn(2, 1, 8, 8)
    assert resolve_layers(clf, sample, NADConfig()) == (("block1", "block2", "block3"), (125.0, 250.0, 250.0))
    assert resolve_layers(clf, sample, NADConfig(layers=("block2",))) == (("block2",), (1000.0,))
    assert resolve_layers(clf, sample, NADConfig(layers=("block1.0", "block2"), betas=(1.0, 2.0))) == (
        ("block1.0", "block2"),
        (1.0, 2.0),
    )
    user = Classifier(
        nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.Conv2d(4, 4, 3, stride=2, padding=1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4, 4),
        ),
        ModelInfo("my.py:Net", 4, (1, 8, 8)),
    )
    assert resolve_layers(user, sample, NADConfig()) == (("0", "1"), default_betas(2))
    assert default_betas(3) == (500.0, 1000.0, 1000.0) and default_betas(1) == (1000.0,)
    with pytest.raises(NadError, match="'block9'"):
        resolve_layers(clf, sample, NADConfig(layers=("block9",)))


def test_nad_leaves_the_input_model_untouched_and_logs():
    clf = tiny_model()
    before = copy.deepcopy(clf.module.state_dict())
    repair = NAD(NADConfig(train=TRAIN, teacher_epochs=1)).repair(clf, tiny_clean(), quiet=True)
    assert all(torch.equal(before[k], v) for k, v in clf.module.state_dict().items())
    assert repair.model.module is not clf.module
    assert not states_equal(repair.model.module, clf.module)
    assert repair.model.info == clf.info
    log = repair.log
    assert log["layers"] == ["block1", "block2", "block3"] and log["betas"] == [125.0, 250.0, 250.0]
    assert len(log["history"]) == 2 and all(set(e) == {"ce", "at"} for e in log["history"])
    assert all(e["at"] >= 0 for e in log["history"])
    assert all(p.requires_grad for p in repair.model.module.parameters())
    assert all(len(m._forward_hooks) == 0 for m in repair.model.module.modules())


def test_nad_with_zero_betas_is_plain_fine_tuning():
    """With every beta 0 the attention term adds nothing: NAD's student is bit-identical to fine-tuning."""
    clean = tiny_clean()
    nad = NAD(NADConfig(train=TRAIN, teacher_epochs=0, betas=(0.0, 0.0, 0.0))).repair(tiny_model(), clean, quiet=True)
    ft = FineTune(TRAIN).repair(tiny_model(), clean, quiet=True)
    assert states_equal(nad.model.module, ft.model.module)


def test_identical_teacher_gives_zero_attention_loss():
    """Distilling a BatchNorm-free model towards an identical copy with lr 0: the attention loss is exactly 0."""

    def net() -> Classifier:
        torch.manual_seed(0)
        module = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(4, 4, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4, 4),
        )
        return Classifier(module, ModelInfo("user.py:Net", 4, (1, 8, 8)))

    cfg = NADConfig(train=TrainConfig(epochs=1, batch_size=16, optim=OptimConfig(lr=0.0), augment=NO_AUGMENT))
    repair = NAD(cfg).repair(net(), tiny_clean(), quiet=True, fine_tuned=net())
    assert repair.log["layers"] == ["0", "2"]
    assert repair.log["history"][0]["at"] == 0.0
    assert repair.log["history"][0]["ce"] > 0
    assert "teacher_history" not in repair.log
    # With a different teacher the loss is positive.
    other = net()
    with torch.no_grad():
        other.module[0].weight.mul_(-1.0).add_(0.5)
    repair = NAD(cfg).repair(net(), tiny_clean(), quiet=True, fine_tuned=other)
    assert repair.log["history"][0]["at"] > 0


# -- nad.api.erase ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DEFENSES))
def test_every_registered_defense_accepts_the_monitor_that_erase_passes(name):
    """``api.erase`` calls ``defense.repair(model, clean, quiet=..., monitor=...)`` for every defense."""
    assert "monitor" in inspect.signature(DEFENSES[name].repair).parameters


def test_erase_shares_the_teacher_with_the_baseline_without_changing_the_result():
    clean = tiny_clean()
    test = tiny_clean(n=16, seed=1)
    attack = BadNets(target=0)
    train_cfg = TrainConfig(
        epochs=2,
        batch_size=8,
        optim=OptimConfig(lr=0.05, schedule="step", milestones=(1,)),
        augment=Augment(crop_padding=1, flip=True, cutout_holes=1, cutout_length=2),
        seed=3,
    )
    cfg = NADConfig(train=train_cfg, teacher_epochs=1)
    model = tiny_model()
    result = erase(model, clean, NAD(cfg), test, attack, baseline=True, quiet=True, curve_subset=8)
    assert result.log["teacher_from_baseline"] is True
    alone = NAD(cfg).repair(model, clean, quiet=True)
    assert states_equal(result.model.module, alone.model.module)
    finetuned = FineTune(train_cfg).repair(model, clean, quiet=True).model
    assert result.finetune == evaluate(finetuned, test, attack)
    assert result.before == evaluate(model, test, attack)
    assert result.after == evaluate(alone.model, test, attack)
    assert result.clean_size == len(clean)
    student_curve = result.curves["student"]
    assert [row["epoch"] for row in student_curve] == [1, 2]
    assert all({"ce", "at", "acc", "asr"} <= set(row) for row in student_curve)


def test_erase_without_test_data_or_baseline():
    result = erase(
        tiny_model(), tiny_clean(), NAD(NADConfig(train=TRAIN, teacher_epochs=1)), baseline=False, quiet=True
    )
    assert result.before is None and result.after is None and result.finetune is None
    assert "finetune_baseline" not in result.log["seconds"]
