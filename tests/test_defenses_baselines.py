"""The baseline defenses (fine-tuning, Fine-Pruning, MCR, NAD, ANP, ANP+FT, I-BAU) on a BadNets small_cnn on the digits.

One backdoored model is trained per module (the demo preset's schedule, ~30 s on 2 CPU cores). Each defense runs
with a smaller budget than its paper's where the paper's would take long (fewer epochs or iterations; the
defaults themselves are checked against the papers in ``test_defaults_follow_the_papers``), and must keep clean
accuracy within 10 points; all but plain fine-tuning must bring the attack success rate below 50 %.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace

import pytest
import torch

from nad.api import select_clean, train_model
from nad.attacks import Attack, parse_attack
from nad.cli import build_parser, main
from nad.commands import defense_from_args
from nad.config import from_mapping, load_yaml
from nad.data import Augment, ImageData, load_data
from nad.data.dataset import stratified_split
from nad.defenses import (
    ANP,
    DEFENSES,
    IBAU,
    MCR,
    NAD,
    ANPConfig,
    ANPFineTune,
    ANPFineTuneConfig,
    FinePruning,
    FinePruningConfig,
    FineTune,
    IBAUConfig,
    MCRConfig,
    Repair,
)
from nad.defenses.fine_pruning import last_conv
from nad.defenses.ibau import fixed_point_hypergradient
from nad.defenses.mcr import CURVE_TRAIN
from nad.demo import DemoConfig
from nad.errors import NadError
from nad.metrics import Scores, accuracy, evaluate
from nad.models import Classifier, build_classifier, load_model, save_model
from nad.models.checkpoint import ModelInfo
from nad.training import TrainConfig

pytestmark = pytest.mark.slow

#: Digits-sized settings, as in the demo preset: 2-pixel crops, no flips (digits are not symmetric).
DIGITS_AUG = Augment(crop_padding=2, flip=False, cutout_holes=0)
#: Fine-tuning as the demo's NAD student (20 epochs, batches of 16 so that 70 images give enough steps, Cutout).
FT = TrainConfig(epochs=20, batch_size=16, augment=replace(DIGITS_AUG, cutout_holes=1, cutout_length=3))
#: The configurations under test: the papers' methods, with smaller budgets where theirs would take long.
CONFIGS = {
    "finetune": lambda: FineTune(FT),
    "fine_pruning": lambda: FinePruning(FinePruningConfig(train=FT)),
    "mcr": lambda: MCR(MCRConfig(train=FT, curve=replace(CURVE_TRAIN, epochs=20, batch_size=16, augment=DIGITS_AUG))),
    "nad": lambda: NAD(replace(from_mapping(DemoConfig, load_yaml("demo")).nad, teacher_epochs=5)),
    # ANP at 200 iterations ends anywhere from 14 % to 88 % ASR here, by seed and float summation order; 400 is
    # below 50 % for each seed tried (25 %, 31 %). The paper runs 2,000.
    "anp": lambda: ANP(ANPConfig(iterations=400, batch_size=32, augment=DIGITS_AUG)),
    # anp_ft's default, the paper's threshold (max_drop would hold out 14 of the 70 images: 7 points a mistake).
    "anp_ft": lambda: ANPFineTune(ANPFineTuneConfig(iterations=400, batch_size=32, augment=DIGITS_AUG, train=FT)),
    "ibau": lambda: IBAU(IBAUConfig()),
}
#: Measured on this model (demo preset, seed 0): these two fall short of the bar on the digits. Not tuned away.
SHORT_OF_THE_BAR = {
    "mcr": "at the paper's t=0.3 the curve is still backdoored (ASR 56-70 % on this model with 100-500 curve steps, "
    "100 % on a sibling model) although its t=1 end (plain fine-tuning) has ASR ~1 %; it drops below 50 % from t=0.4",
    "ibau": "with 70 clean images each round is one inner and one outer step: clean accuracy falls ~20 points "
    "(77-81 %) and ASR ends at 10-99 % depending on the seed",
}


@dataclass
class Setup:
    model: Classifier
    clean: ImageData
    test: ImageData
    attack: Attack
    before: Scores
    state: dict[str, torch.Tensor]


@pytest.fixture(scope="module")
def setup() -> Setup:
    torch.manual_seed(0)
    demo = from_mapping(DemoConfig, load_yaml("demo"), "demo preset")
    train = load_data("digits", "train")
    test = load_data("digits", "test")
    attack = parse_attack(demo.attack)
    from nad.models import parse_normalize

    trained = train_model(train, demo.arch, demo.train, attack, test, parse_normalize(demo.normalize), quiet=True)
    assert trained.scores is not None and trained.scores.asr > 90 and trained.scores.acc > 95
    clean = select_clean(train, demo.clean_ratio, seed=0)
    state = {k: v.clone() for k, v in trained.model.module.state_dict().items()}
    return Setup(trained.model, clean, test, attack, trained.scores, state)


_REPAIRS: dict[str, Repair] = {}


def repaired(setup: Setup, name: str) -> Repair:
    """Each defense runs once per module; the tests below share its result."""
    if name not in _REPAIRS:
        torch.manual_seed(0)
        _REPAIRS[name] = CONFIGS[name]().repair(setup.model, setup.clean, quiet=True)
    return _REPAIRS[name]


def test_registry_names_and_configs() -> None:
    assert {"finetune", "fine_pruning", "mcr", "nad", "anp", "ibau"} <= set(DEFENSES)
    for name, cls in DEFENSES.items():
        assert cls.name == name
        assert dataclasses.is_dataclass(cls.Config)
        cls.Config()  # every parameter has a default


def test_defaults_follow_the_papers() -> None:
    anp = ANPConfig()
    assert (anp.eps, anp.steps, anp.alpha, anp.mask_lr, anp.iterations, anp.threshold) == (0.4, 1, 0.2, 0.2, 2000, 0.2)
    assert anp.batch_size == 128
    ibau = IBAUConfig()
    assert (ibau.rounds, ibau.K, ibau.batch_size, ibau.lr, ibau.norm_bound) == (5, 5, 100, 0.001, 10.0)
    mcr = MCRConfig()
    assert (mcr.t, mcr.curve.epochs, mcr.curve.batch_size, mcr.curve.optim.lr, mcr.l2) == (0.3, 100, 128, 0.01, 1e-4)
    assert mcr.train == TrainConfig()
    fp = FinePruningConfig()
    assert (fp.layer, fp.max_drop, fp.max_ratio) == ("", 4.0, 1.0)


def test_last_conv_of_wrn_is_block3_last_conv2() -> None:
    wrn = build_classifier(ModelInfo("wrn16_1", 10, (3, 32, 32)))
    assert last_conv(wrn.module) == "block3.layer.1.conv2"


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=pytest.mark.xfail(reason=SHORT_OF_THE_BAR[name], strict=False))
        if name in SHORT_OF_THE_BAR
        else name
        for name in CONFIGS
    ],
)
def test_defense_keeps_accuracy_and_cuts_asr(setup: Setup, name: str) -> None:
    repair = repaired(setup, name)
    assert not any(m.training for m in repair.model.module.modules())  # handed back ready for inference
    after = evaluate(repair.model, setup.test, setup.attack)
    print(f"{name}: ACC {setup.before.acc:.1f} -> {after.acc:.1f}, ASR {setup.before.asr:.1f} -> {after.asr:.1f}")
    for key, value in setup.model.module.state_dict().items():  # the input model is left untouched
        assert torch.equal(value, setup.state[key]), key
    assert repair.model.module is not setup.model.module
    assert after.acc >= setup.before.acc - 10
    if name != "finetune":
        assert after.asr < 50


def _zero_rows(t: torch.Tensor, rows: list[int]) -> bool:
    return bool((t[rows] == 0).all())


def test_fine_pruning_mask_survives_save_and_load(setup: Setup, tmp_path) -> None:
    repair = repaired(setup, "fine_pruning")
    log = repair.log
    assert log["layer"] == "block3.3" and log["bn"] == "block3.4"
    pruned = log["pruned_channels"]
    assert 0 < len(pruned) < log["channels"]
    save_model(repair.model, tmp_path)
    loaded = load_model(tmp_path)
    modules = dict(loaded.module.named_modules())
    conv, bn = modules["block3.3"], modules["block3.4"]
    assert _zero_rows(conv.weight, pruned) and _zero_rows(bn.weight, pruned) and _zero_rows(bn.bias, pruned)
    kept = [c for c in range(log["channels"]) if c not in pruned]
    assert bool((bn.weight[kept] != 0).any())
    seen = {}
    handle = bn.register_forward_hook(lambda _m, _i, out: seen.setdefault("out", out))
    loaded.module.eval()
    repair.model.module.eval()  # compare both in eval mode, whichever tests ran (and left the model) before
    with torch.no_grad():
        logits = loaded(setup.test.x[:32])
    handle.remove()
    assert bool((seen["out"][:, pruned] == 0).all())
    with torch.no_grad():
        assert torch.allclose(logits, repair.model(setup.test.x[:32]), atol=1e-5)


def test_anp_pruning_persists_in_the_state_dict(setup: Setup, tmp_path) -> None:
    repair = repaired(setup, "anp")
    assert repair.log["pruned"] > 0
    save_model(repair.model, tmp_path)
    loaded = load_model(tmp_path)
    original = dict(setup.model.module.named_modules())
    zeroed = 0
    for name, module in loaded.module.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            now_zero = (module.weight == 0) & (original[name].weight != 0)
            zeroed += int(now_zero.sum())
    assert zeroed == repair.log["pruned"]


def test_anp_max_drop_prunes_as_many_neurons_as_the_held_out_accuracy_allows(setup: Setup) -> None:
    # threshold=1 lifts the paper's cap, so only the held-out accuracy stops the pruning.
    cfg = ANPConfig(iterations=100, batch_size=32, augment=DIGITS_AUG, threshold=1.0, max_drop=5.0)
    repair = ANP(cfg).repair(setup.model, setup.clean, quiet=True)
    log = repair.log
    curve = log["val_acc_curve"]
    assert curve[0][0] == 0 and 0 < log["pruned"] < log["below_threshold"] == log["neurons"]
    kept = [acc for count, acc in curve if count <= log["pruned"]]
    assert min(kept) >= curve[0][1] - 5.0
    assert curve[-1][1] < curve[0][1] - 5.0  # it stopped at the first count that cost more
    val_idx, _ = stratified_split(setup.clean.y, cfg.val_ratio, cfg.seed)
    val = setup.clean.subset(val_idx)
    assert accuracy(repair.model, val) == pytest.approx(dict(map(tuple, curve))[log["pruned"]])
    assert log["val_size"] == len(val)


def test_anp_ft_fine_tunes_with_the_pruned_neurons_held_at_zero(setup: Setup, tmp_path) -> None:
    repair = repaired(setup, "anp_ft")
    log = repair.log
    assert log["pruned"] > 0 and len(log["history"]) == FT.epochs
    save_model(repair.model, tmp_path)
    loaded = load_model(tmp_path)
    original = dict(setup.model.module.named_modules())
    zeroed, moved = 0, 0
    for name, module in loaded.module.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            zeroed += int(((module.weight == 0) & (original[name].weight != 0)).sum())
            moved += int((module.weight != original[name].weight).sum())
    assert zeroed == log["pruned"]  # still pruned after fine-tuning with momentum and weight decay
    assert moved > zeroed  # and the rest of the network was tuned


def test_mcr_curve_ends_are_the_end_models(setup: Setup) -> None:
    cfg = MCRConfig(train=replace(FT, epochs=2), curve=replace(CURVE_TRAIN, epochs=3, augment=DIGITS_AUG))
    end = FineTune(cfg.train).repair(setup.model, setup.clean, quiet=True).model
    mcr = MCR(cfg)
    curve, _ = mcr.fit(setup.model, setup.clean, quiet=True, end=end)
    start_params = dict(mcr.at(curve, 0.0, setup.clean).module.named_parameters())
    end_params = dict(mcr.at(curve, 1.0, setup.clean).module.named_parameters())
    middle = dict(mcr.at(curve, 0.5, setup.clean).module.named_parameters())
    for name, p in setup.model.module.named_parameters():
        assert torch.equal(start_params[name], p), name
        assert torch.equal(end_params[name], dict(end.module.named_parameters())[name]), name
    assert any(not torch.equal(middle[n], p) for n, p in setup.model.module.named_parameters())
    # The returned point is a plain model of the original architecture: it saves and loads like any other.
    fresh = build_classifier(setup.model.info)
    fresh.module.load_state_dict(mcr.at(curve, 0.3, setup.clean).module.state_dict())


def test_fixed_point_hypergradient_matches_the_implicit_gradient() -> None:
    """Inner: delta* = argmin 0.5 a (delta - theta)^2 = theta; outer: L = delta^2 + theta; dL*/dtheta = 2 theta + 1."""
    theta = torch.nn.Parameter(torch.tensor([0.7]))
    delta = theta.detach().clone().requires_grad_(True)  # at the inner optimum
    a, lr = 2.0, 0.25
    inner = 0.5 * a * (delta - theta).pow(2).sum()
    (g,) = torch.autograd.grad(inner, delta, create_graph=True)
    fp_map = delta - lr * g
    outer = delta.pow(2).sum() + theta.sum()
    (hyper,) = fixed_point_hypergradient([theta], delta, outer, fp_map, K=60)
    assert torch.allclose(hyper, 2 * theta.detach() + 1, atol=1e-6)


def _erase_args(defense: str, *extra: str):
    return build_parser().parse_args(
        ["erase", "m.safetensors", "--clean", "digits", "--out", "x", "--defense", defense, *extra]
    )


def test_erase_builds_every_defense_config() -> None:
    for name in ("finetune", "fine_pruning", "mcr", "nad", "anp", "anp_ft", "ibau", "fst"):
        defense = defense_from_args(_erase_args(name, "--seed", "3"))
        assert type(defense) is DEFENSES[name]
    assert defense_from_args(_erase_args("finetune", "--epochs", "4")).config.epochs == 4
    assert defense_from_args(_erase_args("nad")).config.train.channels_last
    assert not defense_from_args(_erase_args("nad", "--no-channels-last")).config.train.channels_last
    mcr = defense_from_args(_erase_args("mcr:t=0.4,curve.epochs=7", "--seed", "2", "--epochs", "5")).config
    assert (mcr.t, mcr.curve.epochs, mcr.curve.batch_size, mcr.train.epochs, mcr.train.seed) == (0.4, 7, 128, 5, 2)
    anp = defense_from_args(_erase_args("anp:iterations=50,augment.flip=false")).config
    assert (anp.iterations, anp.augment.flip, anp.eps) == (50, False, 0.4)
    with pytest.raises(NadError, match="--epochs does not apply to anp"):
        defense_from_args(_erase_args("anp", "--epochs", "3"))
    anp_ft = defense_from_args(_erase_args("anp_ft:max_drop=2", "--epochs", "3", "--seed", "5")).config
    assert (anp_ft.max_drop, anp_ft.train.epochs, anp_ft.train.seed, anp_ft.seed) == (2.0, 3, 5, 5)
    with pytest.raises(NadError, match="--betas does not apply"):
        defense_from_args(_erase_args("ibau", "--betas", "1"))
    with pytest.raises(NadError, match="unknown parameter"):
        defense_from_args(_erase_args("anp:iters=3"))


def test_defenses_command_lists_parameters(capsys) -> None:
    assert main(["defenses"]) == 0
    out = capsys.readouterr().out
    for name in ("finetune", "fine_pruning", "mcr", "nad", "anp", "ibau", "fst"):
        assert f"\n{name}: " in "\n" + out
    assert "train.epochs" in out and "iterations" in out and "threshold" in out and "ICLR 2022" in out


def test_anp_ft_prunes_every_neuron_under_the_threshold_by_default(setup: Setup) -> None:
    """anp_ft follows ANP's own rule unless max_drop is set: nothing is held out, no count is chosen."""
    assert ANPFineTuneConfig().max_drop is None
    log = repaired(setup, "anp_ft").log
    assert log["pruned"] == log["below_threshold"] > 0
    assert "val_acc_curve" not in log
