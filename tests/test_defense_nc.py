"""Neural Cleanse's unlearning: BackdoorBench's defaults, the unlearning set it builds from the scan, and an
end-to-end run on the demo's backdoored digits model."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from nad.api import select_clean
from nad.attacks import parse_attack
from nad.data import load_data
from nad.data.dataset import ImageData
from nad.defenses import DEFENSES, NCConfig, NeuralCleanse
from nad.defenses.nc import unlearning_set
from nad.errors import NadError
from nad.metrics import evaluate
from nad.scan import ScanResult
from nad.training import cross_entropy, train


def test_nc_is_registered_with_backdoorbench_defaults():
    assert DEFENSES["nc"] is NeuralCleanse
    cfg = NCConfig()
    assert (cfg.unlearning_ratio, cfg.uap) == (0.2, False)
    train = cfg.train
    assert (train.epochs, train.batch_size, train.optim.lr, train.optim.momentum) == (100, 256, 0.01, 0.9)
    assert (train.optim.weight_decay, train.optim.schedule, train.optim.nesterov) == (5e-4, "cosine", False)
    assert (train.augment.crop_padding, train.augment.flip, train.augment.cutout_holes) == (4, True, 0)
    for bad in (0, 1, 1.5):
        with pytest.raises(NadError, match="unlearning_ratio"):
            NCConfig(unlearning_ratio=bad)


def scan_result(flagged: list[int], classes: int = 3, size: int = 4, channels: int = 3) -> ScanResult:
    masks = torch.zeros(classes, 1, size, size)
    masks[:, :, :2, :2] = 1.0  # a 2x2 corner patch
    patterns = torch.ones(classes, channels, size, size)
    perturbations = torch.full((classes, channels, size, size), 8 / 255)
    zeros = [0.0] * classes
    nc_index = [5.0 if c in flagged else 0.0 for c in range(classes)]  # flagged by trigger inversion
    return ScanResult(
        zeros, [True] * classes, zeros, nc_index, zeros, flagged, 2.0, 0.0, masks, patterns, perturbations
    )


def test_a_class_flagged_by_the_neuron_perturbation_alone_is_not_unlearned():
    x = torch.full((10, 3, 4, 4), 100, dtype=torch.uint8)
    clean = ImageData(x, torch.arange(10) % 3, 3, name="toy")
    found = scan_result([1])
    found.flagged, found.neuron_index = [1, 2], [0.0, 0.0, 5.0]  # class 2: no input trigger was found
    assert found.trigger_flagged == [1]
    assert len(unlearning_set(clean, found, NCConfig())) == 10  # one stamped copy (class 1), not two


def test_the_unlearning_share_is_stamped_with_the_inverted_trigger_and_keeps_its_labels():
    x = torch.full((10, 3, 4, 4), 100, dtype=torch.uint8)
    clean = ImageData(x, torch.arange(10) % 3, 3, name="toy")
    data = unlearning_set(clean, scan_result([1]), NCConfig())
    assert len(data) == 10  # 8 kept + one stamped copy of the 2 set aside
    stamped = data.x[8:]
    assert (stamped[:, :, :2, :2] == 255).all() and (stamped[:, :, 2:, :] == 100).all()
    assert (data.x[:8] == 100).all()
    assert sorted(data.y.tolist()) == sorted(clean.y.tolist())  # true labels, no label flipped
    both = unlearning_set(clean, scan_result([0, 2]), replace(NCConfig(), uap=True))
    assert len(both) == 8 + 2 * 2 * 2  # per flagged class: the trigger copy and the perturbation copy
    assert (both.x[10:12] == 108).all()  # 100 + 8 levels: the perturbation is 8/255 of the range


def test_nothing_flagged_returns_the_model_unchanged(demo_run):
    _, trained, _ = demo_run
    clean = select_clean(load_data("digits"), 0.1, 0)
    defense = NeuralCleanse(replace(NCConfig(), scan=replace(NCConfig().scan, threshold=1e9)))
    repair = defense.repair(trained.model, clean, quiet=True)
    assert repair.log["flagged"] == [] and repair.log["unlearned"] is False
    for a, b in zip(repair.model.module.state_dict().values(), trained.model.module.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_nc_flags_the_demo_target_and_unlearning_the_true_trigger_removes_the_backdoor(demo_run):
    """The scan names the demo's target; unlearning a trigger removes the backdoor when it is the real one.

    On this 16x16 digits model the inverted trigger is 2 partial pixels of the 3x3 grid, and unlearning
    it leaves ASR above 90% (docs/defenses.md); so the unlearning stage is checked here with the true trigger.
    """
    _, trained, _ = demo_run
    clean = select_clean(load_data("digits"), 0.2, 0)
    cfg = NCConfig()
    cfg = replace(cfg, train=replace(cfg.train, epochs=30))
    repair = NeuralCleanse(cfg).repair(trained.model, clean, quiet=True)
    assert repair.log["flagged"] == [0] and repair.log["unlearned"] is True  # the demo's target class
    attack, test = parse_attack("badnets"), load_data("digits:test")
    row, col = attack.corner(16, 16)
    true = scan_result([0], classes=10, size=16, channels=1)
    true.masks.zero_()[:, :, row : row + 3, col : col + 3] = 1.0
    true.patterns.copy_(attack.apply(torch.zeros(1, 1, 16, 16, dtype=torch.uint8)).float().div(255))
    student = trained.model.clone()
    train(student, unlearning_set(clean, true, cfg), cfg.train, cross_entropy, quiet=True)
    before, after = evaluate(trained.model, test, attack), evaluate(student, test, attack)
    assert before.asr > 90 and after.asr < 10 and after.acc > 90  # plain fine-tuning on these 287 digits: 95
