"""SAU, FT-SAM and NAD with a purified teacher: official defaults, the pieces that make each method, and NAD's
teacher taken from another defense."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from nad.api import select_clean
from nad.data import load_data
from nad.defenses import DEFENSES, FTSAM, NAD, SAU, FTSAMConfig, NADConfig, SAUConfig
from nad.defenses.ft_sam import SharpnessAwareStep, smoothed_cross_entropy
from nad.defenses.sau import SharedAdversarialUnlearning
from nad.defenses.settings import defense_config
from nad.errors import NadError
from nad.training import TrainConfig


def test_sau_and_ft_sam_are_registered_with_the_official_defaults():
    assert DEFENSES["sau"] is SAU and DEFENSES["ft_sam"] is FTSAM
    sau = SAUConfig()
    assert (sau.bound, sau.step_size, sau.steps, sau.init) == (0.2, 0.2, 5, "max")
    assert (sau.beta_1, sau.beta_2, sau.lmd_1, sau.lmd_2, sau.lmd_3) == (0.01, 1.0, 1.0, 0.0, 1.0)
    optim = sau.train.optim
    assert (sau.train.epochs, sau.train.batch_size, optim.kind, optim.amsgrad, optim.lr) == (
        100,
        256,
        "adam",
        True,
        1e-4,
    )
    assert optim.lr_at(99.5, 100) == 1e-4 and sau.train.augment.crop_padding == 0 and not sau.train.augment.flip
    sam = FTSAMConfig()
    assert (sam.rho, sam.adaptive, sam.label_smoothing) == (2.0, True, 0.1)
    assert (sam.train.epochs, sam.train.batch_size, sam.train.optim.lr, sam.train.optim.weight_decay) == (
        100,
        256,
        0.01,
        5e-4,
    )
    with pytest.raises(NadError, match="rho"):
        FTSAMConfig(rho=-1)
    with pytest.raises(NadError, match="steps"):
        SAUConfig(steps=0)


def test_the_smoothed_loss_is_the_official_one():
    logits, targets = torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])
    target = torch.full((5, 4), 0.1 / 3).scatter_(1, targets[:, None], 0.9)
    expected = -(target * torch.log_softmax(logits, 1)).sum(1).mean()
    torch.testing.assert_close(smoothed_cross_entropy(logits, targets, 0.1), expected)


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_takes_the_gradient_at_the_perturbed_weights_and_puts_them_back(adaptive):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    loss = nn.functional.cross_entropy
    weights = [p.detach().clone() for p in net.parameters()]
    loss(net(x), y).backward()
    grads = [p.grad.clone() for p in net.parameters()]
    running = net[1].running_mean.clone()
    scaled = [g * w.abs() if adaptive else g for g, w in zip(grads, weights)]
    norm = torch.linalg.vector_norm(torch.cat([s.flatten() for s in scaled]))
    steps = [s * (w.abs() if adaptive else 1) * 0.5 / norm for s, w in zip(scaled, weights)]
    probe = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    probe.load_state_dict(net.state_dict())
    with torch.no_grad():
        for p, w, e in zip(probe.parameters(), weights, steps):
            p.copy_(w + e)
    loss(probe(x), y).backward()

    SharpnessAwareStep(net, loss, rho=0.5, adaptive=adaptive, precision="fp32")(x, y)
    for p, w, q in zip(net.parameters(), weights, probe.parameters()):
        torch.testing.assert_close(p.detach(), w)  # back at w
        torch.testing.assert_close(p.grad, q.grad)  # with the gradient taken at w + e
    torch.testing.assert_close(net[1].running_mean, running)  # the second pass left the statistics alone


def test_the_shared_search_stays_in_its_ball_and_misleads_both_models_alike():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
    x, y = torch.rand(16, 3, 2, 2), torch.randint(0, 3, (16,))
    std = torch.tensor([0.5, 0.25, 1.0])
    sau = SharedAdversarialUnlearning(net, SAUConfig(bound=0.1, step_size=0.05, steps=5), std)
    delta = sau.search(net, x, y)  # the same model twice: every perturbation that misleads one is shared
    pixel = delta * std.view(1, -1, 1, 1)
    assert pixel.abs().max() <= 0.1 + 1e-6 and pixel.abs().max() > 0.05
    terms = sau(net, x, y)
    assert set(terms) == {"ce", "sar"} and all(torch.isfinite(v) for v in terms.values())


def test_nad_takes_its_teacher_from_another_defense(demo_run):
    _, trained, _ = demo_run
    clean = select_clean(load_data("digits"), 0.1, 0)
    quick = TrainConfig(epochs=1, batch_size=32)
    _, fst_cfg = defense_config("nad:teacher=fst", params={"train.epochs": "1", "teacher_epochs": "0"})
    assert fst_cfg.teacher == "fst" and NAD(fst_cfg).fine_tuned_start() is None
    repair = NAD(replace(fst_cfg, train=quick)).repair(trained.model, clean, quiet=True)
    assert repair.log["teacher"] == "fst" and len(repair.log["teacher_history"]) == 10  # FST's own 10 epochs
    assert NAD(NADConfig()).fine_tuned_start() is not None  # the paper's teacher is the baseline fine-tune
    for bad in ("nad", "nonsense", ""):
        with pytest.raises(NadError, match="teacher"):
            NADConfig(teacher=bad)


@pytest.mark.slow
def test_sau_and_ft_sam_run_on_the_demo_model(demo_run):
    _, trained, _ = demo_run
    clean = select_clean(load_data("digits"), 0.1, 0)
    for defense in (
        SAU(SAUConfig(train=replace(SAUConfig().train, epochs=2))),
        FTSAM(FTSAMConfig(train=TrainConfig(epochs=2))),
    ):
        repair = defense.repair(trained.model, clean, quiet=True)
        assert len(repair.log["history"]) == 2 and not repair.model.module.training
        changed = any(
            not torch.equal(a, b)
            for a, b in zip(repair.model.module.state_dict().values(), trained.model.module.state_dict().values())
        )
        assert changed
