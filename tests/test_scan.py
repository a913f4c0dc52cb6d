"""``nad scan``: trigger inversion and universal perturbations per class, on the demo's backdoored model."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from nad.api import select_clean, train_model
from nad.config import from_mapping, load_yaml
from nad.data import load_data
from nad.demo import DemoConfig
from nad.errors import NadError
from nad.models import parse_normalize
from nad.scan import (
    ONLY_AFTER,
    STRIPE_EPS,
    STRONG,
    ScanComparison,
    ScanConfig,
    ScanResult,
    anomaly_index,
    describe_tone,
    format_table,
    logit,
    scan,
    tones,
    universal_rates,
)


@pytest.fixture(scope="module")
def clean_model():
    """The demo's small_cnn trained on the digits exactly as the demo trains it, without an attack."""
    cfg = from_mapping(DemoConfig, load_yaml("demo"), "demo preset")
    train = load_data(cfg.data, "train")
    return train_model(train, cfg.arch, cfg.train, None, None, parse_normalize(cfg.normalize), quiet=True).model


def flagged(*classes: int, index: float = 3.0) -> ScanResult:
    """A scan of ten classes whose trigger inversion flags ``classes`` with ``index``; the others score 0."""
    nc_index = [index if c in classes else 0.0 for c in range(10)]
    return ScanResult([1.0] * 10, [True] * 10, [0.0] * 10, nc_index, [0.0] * 10, list(classes), 2.0)


def test_anomaly_index_uses_the_mad_with_a_floor():
    index = anomaly_index([10, 10, 10, 10, 1], low=True, floor=1.0)
    assert index[-1] == pytest.approx(9 / 1.0) and index[0] == 0
    spread = anomaly_index([1.0, 2.0, 3.0, 4.0, 100.0], low=False, floor=0.0)
    assert spread[-1] == pytest.approx((100 - 3) / (1.4826 * 1.0))


@pytest.mark.slow
def test_the_backdoor_target_gets_the_smallest_inverted_trigger(demo_run):
    _, trained, _ = demo_run
    clean = select_clean(load_data("digits"), 0.05, 0)
    result = scan(trained.model, clean, ScanConfig(steps=100), quiet=True)
    assert min(range(10), key=lambda c: result.norms[c]) == 0  # the demo's backdoor targets class 0
    assert result.reached[0] and result.nc_index[0] == max(result.nc_index)
    name, index = result.strongest(0)
    assert index >= STRONG and result.suspected == [0]
    assert result.flagged == [0] and result.verdict == f"backdoor suspected: class 0 ({name} {index:.2f})"
    assert json.loads(json.dumps(result.to_json()))["verdict"] == result.verdict


def test_scan_refuses_too_little_data(demo_run):
    _, trained, _ = demo_run
    tiny = select_clean(load_data("digits"), 1.0, 0).subset(torch.arange(12))
    with pytest.raises(NadError, match="too few"):
        scan(trained.model, tiny, ScanConfig(), quiet=True)


@pytest.mark.slow
def test_no_class_stands_out_on_a_clean_model(clean_model):
    clean = select_clean(load_data("digits"), 0.05, 0)
    result = scan(clean_model, clean, ScanConfig(steps=100), quiet=True)
    assert result.flagged == [] and result.verdict == "no class stands out", result.to_json()


def test_scan_leaves_the_model_as_it_was(clean_model):
    module = clean_model.module.train()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    strides = [p.stride() for p in module.parameters()]
    scan(clean_model, select_clean(load_data("digits"), 0.05, 0), ScanConfig(steps=2, uap_steps=2), quiet=True)
    assert module.training and all(p.requires_grad for p in module.parameters())
    assert [p.stride() for p in module.parameters()] == strides  # the scan's own layout is undone
    module.to(memory_format=torch.contiguous_format)
    scan(clean_model, select_clean(load_data("digits"), 0.05, 0), ScanConfig(steps=1, uap_steps=1), quiet=True)
    assert all(p.is_contiguous() for p in module.parameters())
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_indices_compare_log_norms_and_log_odds():
    assert logit(0.5) == 0 and logit(1.0) == pytest.approx(-logit(0.0)) and logit(1.0) > 5

    # Halving a mask is the same evidence at any size; 40% against a median of 20% is not 8% against 4%.
    def index(values):
        return anomaly_index([math.log(v) for v in values], low=True, floor=0.0)

    assert index([4.0, 4.0, 2.0, 4.1]) == pytest.approx(index([40.0, 40.0, 20.0, 41.0]))
    odds = [logit(p) for p in (0.2, 0.2, 0.4, 0.21)], [logit(p) for p in (0.04, 0.04, 0.08, 0.041)]
    assert anomaly_index(odds[0], False, 0.0)[2] < anomaly_index(odds[1], False, 0.0)[2]


GONE = (
    "class 0 by trigger inversion 3.00 -> 0.00; threshold 2"  # the index of the class flagged before, before -> after
)


@pytest.mark.parametrize(
    ("before", "after", "verdict"),
    [
        ((), (), "no class stands out, before or after the defense"),
        ((0,), (), f"backdoor evidence before the defense (class 0) no longer stands out after it ({GONE})"),
        (
            (0, 3),
            (3,),
            "backdoor evidence remains: class 3 still stands out after the defense (class 0 by trigger inversion "
            "3.00 -> 0.00; class 3 by trigger inversion 3.00 -> 3.00; threshold 2)",
        ),
        (
            (0,),
            (2,),
            f"backdoor evidence before the defense (class 0) no longer stands out after it ({GONE}); class 2 stands "
            f"out only after it ({ONLY_AFTER})",
        ),
        ((), (1, 4), f"no class stood out before the defense; classes 1, 4 stand out only after it ({ONLY_AFTER})"),
        (
            (0,),
            (0, 9),
            "backdoor evidence remains: class 0 still stands out after the defense (class 0 by trigger inversion "
            f"3.00 -> 3.00; threshold 2); class 9 stands out only after it ({ONLY_AFTER})",
        ),
    ],
)
def test_comparison_verdicts(before, after, verdict):
    """A class flagged only after the defense is told apart from evidence the defense left."""
    comparison = ScanComparison(flagged(*before), flagged(*after))
    assert comparison.verdict == verdict
    data = comparison.to_json()
    assert ScanComparison(*(ScanResult.from_json(data[side]) for side in ("before", "after"))).verdict == verdict
    assert data["before"]["flagged"] == list(before)
    assert data["remaining"] == sorted(set(before) & set(after))
    assert data["new"] == sorted(set(after) - set(before))


def test_comparison_of_scans_read_back_from_older_results():
    """A scan stored before a measure existed can name a class no index it holds flags (the stripes were once on
    by default): the verdict still reads, without an index for that class."""
    legacy = flagged(0)
    legacy.nc_index = [0.0] * 10
    assert (
        ScanComparison(legacy, flagged()).verdict
        == "backdoor evidence before the defense (class 0) no longer stands out after it"
    )
    assert legacy.verdict == "backdoor suspected: class 0"
    assert (
        flagged(0, 9).verdict
        == "backdoor suspected: class 0 (trigger inversion 3.00), class 9 (trigger inversion 3.00)"
    )
    before_tones = {k: v for k, v in flagged(0).to_json().items() if k not in ("tone_index", "periodic_index")}
    stored = ScanResult.from_json(before_tones)  # the verdict key is not a field; missing fields take defaults
    assert stored.flagged == [0] and stored.tone_index == [] and stored.evidence(0) == {"trigger inversion": 3.0}


def test_a_flag_under_the_strong_index_reads_as_weak_evidence():
    """Indices of 2-3 were measured on clean models too; the verdict says so rather than "backdoor suspected"."""
    weak = flagged(1, index=2.5)
    note = "an index under 3 is also seen on clean models (docs/scan.md)"
    assert weak.suspected == [] and weak.verdict == f"weak backdoor evidence: class 1 (trigger inversion 2.50); {note}"
    mixed = flagged(0, 1, index=2.5)
    mixed.nc_index[0] = 4.0
    verdict = (
        "backdoor suspected: class 0 (trigger inversion 4.00); weak backdoor evidence: class 1 (trigger inversion 2.50)"
    )
    assert mixed.suspected == [0] and mixed.verdict == verdict
    assert ScanResult.from_json(json.loads(json.dumps(mixed.to_json()))).verdict == verdict
    assert mixed.to_json()["suspected"] == [0]
    gone = ScanComparison(weak, flagged()).verdict
    assert gone == (
        "weak backdoor evidence before the defense (class 1) no longer stands out after it "
        "(class 1 by trigger inversion 2.50 -> 0.00; threshold 2)"
    )
    assert ScanComparison(flagged(1), weak).verdict.startswith("weak backdoor evidence remains: class 1 still")
    assert ScanComparison(weak, flagged(1)).verdict.startswith("backdoor evidence remains: class 1 still")
    lenient = replace(weak, strong=2.0)  # a strong index at the threshold: every flag is suspected
    assert lenient.suspected == [1] and lenient.verdict.startswith("backdoor suspected: class 1")


def test_class_neuron_noise_perturbs_only_the_images_of_its_class(clean_model):
    from nad.scan import ClassNeuronNoise

    x = clean_model.preprocess(load_data("digits").x[:6])
    clean_model.module.eval()
    with torch.no_grad():
        plain = clean_model.module(x)
    with ClassNeuronNoise(clean_model.module, 3) as noise, torch.no_grad():
        noise.group = torch.tensor([0, 0, 1, 1, 2, 2])
        assert torch.allclose(clean_model.module(x), plain, atol=1e-6)  # zero noise: the model as it is
        for n in noise.noise:
            n[1].uniform_(-0.5, 0.5)
        moved = clean_model.module(x)
    changed = (moved - plain).abs().amax(1) > 1e-4
    assert changed.tolist() == [False, False, True, True, False, False]
    with torch.no_grad():
        assert torch.equal(clean_model.module(x), plain)  # the hooks are gone


def test_a_stripe_perturbation_is_one_value_per_column_within_its_budget(clean_model):
    clean = select_clean(load_data("digits"), 0.05, 0)
    cfg = ScanConfig(uap_steps=3)
    c, _, w = clean.image_shape
    gen = torch.Generator().manual_seed(0)
    rates, delta = universal_rates(clean_model, clean, (c, 1, w), 24 / 255, 6 / 255, cfg, gen, True, "column")
    assert delta.shape == (10, c, 1, w) and delta.abs().max() <= 24 / 255 + 1e-6 and delta.abs().max() > 0
    assert len(rates) == 10 and all(0 <= r <= 100 for r in rates)


def test_the_stripe_measure_runs_last_and_changes_no_other_measure(clean_model):
    clean = select_clean(load_data("digits"), 0.05, 0)
    short = ScanConfig(steps=3, uap_steps=3, neuron_steps=2)
    on = scan(clean_model, clean, replace(short, stripe_eps=STRIPE_EPS), quiet=True)
    off = scan(clean_model, clean, short, quiet=True)  # off by default
    assert off.stripe_success == [] and off.stripe_index == [] and len(on.stripe_index) == 10
    for key in ("norms", "uap_success", "neuron_success"):  # turning it on changes no other measure
        assert getattr(on, key) == getattr(off, key)
    assert "stripe index" in format_table(on) and "stripe index" not in format_table(off)


def test_a_warp_of_one_pixel_shifts_the_image_by_one_pixel():
    from nad.scan import warp_images

    ramp = torch.arange(8.0).repeat(2, 1, 8, 1) / 8  # (2, 1, 8, 8): pixel value = its column / 8
    offsets = torch.zeros(2, 2, 4, 4)
    offsets[1, 0] = 1.0  # class 1: every pixel samples one column to its right
    moved = warp_images(ramp, offsets, torch.tensor([0, 1]))
    assert torch.allclose(moved[0], ramp[0], atol=1e-6)  # no offset, no change
    assert torch.allclose(moved[1, ..., :7], ramp[1, ..., 1:], atol=1e-6)  # shifted left by one column
    assert torch.allclose(moved[1, ..., 7], ramp[1, ..., 7], atol=1e-6)  # the edge samples itself (clamped)


def test_the_warp_measure_has_its_own_draws_and_can_be_turned_off(clean_model):
    clean = select_clean(load_data("digits"), 0.05, 0)
    short = ScanConfig(steps=3, uap_steps=3, neuron_steps=2)
    on = scan(clean_model, clean, short, quiet=True)  # on by default
    off = scan(clean_model, clean, replace(short, warp_bound=0.0), quiet=True)
    stripes = scan(clean_model, clean, replace(short, stripe_eps=STRIPE_EPS), quiet=True)
    assert off.warp_success == [] and len(on.warp_index) == 10 and all(0 <= r <= 100 for r in on.warp_success)
    for key in ("norms", "uap_success", "neuron_success"):  # turning it off changes no other measure
        assert getattr(on, key) == getattr(off, key)
    assert stripes.warp_success == on.warp_success  # nor do the stripes change it
    assert "warp index" in format_table(on) and "warp index" not in format_table(off)
    with pytest.raises(NadError, match="warp_bound"):
        ScanConfig(warp_bound=-1.0)


def test_the_tone_family_holds_sigs_trigger_once():
    """A pure tone can express SIG's trigger: the column tone of 6 periods at phase 0 is SIG's signal, and it
    is named so; on a 16-pixel image the family stops at 8 periods (above, a tone aliases a lower one)."""
    from nad.attacks.sig import sinusoid

    family = tones(32, 32, 20 / 255)
    sig = (sinusoid(32, 20.0, 6.0) / 255).expand(32, 32)
    matches = [i for i, tone in enumerate(family) if torch.allclose(tone[0], sig, atol=1e-6)]
    assert len(family) == 2 * 12 * 8 and [describe_tone(i, 32, 32) for i in matches] == ["columns f=6 phase=0/8"]
    assert len(tones(16, 16, 1.0)) == 2 * 8 * 8 and describe_tone(64, 16, 16) == "rows f=1 phase=0/8"


@pytest.mark.slow
def test_the_tones_name_the_target_of_a_sinusoid_blended_in_with_the_stripes_behind_them(tmp_path):
    """SIG's clean-label poisoning does not take on the digits (every digit is learned from its shape; ASR about
    10%), so the digits model here is backdoored with a sinusoid of 3 periods across the columns blended in at
    0.2 (Blend with that pattern, dirty labels): an additive tone of 0.1 plus a loss of contrast."""
    import numpy as np

    from nad.attacks import parse_attack

    column = 0.5 + 0.5 * np.sin(2 * np.pi * np.arange(16) * 3 / 16)
    np.save(tmp_path / "tone.npy", np.tile(column, (16, 1)).astype(np.float32))
    cfg = from_mapping(DemoConfig, load_yaml("demo"), "demo preset")
    train, normalize = load_data(cfg.data, "train"), parse_normalize(cfg.normalize)
    attack = parse_attack(f"blend:target=3,alpha=0.2,pattern={tmp_path / 'tone.npy'}")
    model = train_model(train, cfg.arch, cfg.train, attack, None, normalize, quiet=True).model
    result = scan(model, select_clean(train, 0.05, 0), ScanConfig(steps=20), quiet=True)
    assert max(range(10), key=lambda c: result.tone_index[c]) == 3 and result.tone_index[3] > 2, result.to_json()
    assert describe_tone(result.tone_best[3], 16, 16).startswith("columns")
    assert len(result.stripe_index) == 10 and result.stripe_index[3] > 2  # drawn to corroborate the tone
    assert result.periodic_index == [min(t, s) for t, s in zip(result.tone_index, result.stripe_index)]
    assert 3 in result.flagged and "tone and stripes" in result.evidence(3) and "stripes" not in result.evidence(3)


def test_the_tone_measure_has_its_own_draws_and_the_stripes_only_corroborate(clean_model):
    clean = select_clean(load_data("digits"), 0.05, 0)
    short = ScanConfig(steps=3, uap_steps=3, neuron_steps=2)
    on = scan(clean_model, clean, short, quiet=True)  # on by default
    off = scan(clean_model, clean, replace(short, tone_amplitude=0.0), quiet=True)
    assert off.tone_success == [] and off.periodic_index == [] and len(on.tone_index) == 10
    for key in ("norms", "uap_success", "neuron_success", "warp_success"):  # it changes no other measure
        assert getattr(on, key) == getattr(off, key)
    if max(on.tone_index) <= 2:  # no tone to corroborate: the stripes are not drawn, and cannot flag
        assert on.stripe_success == [] and on.periodic_index == on.tone_index
        assert "no stripes were drawn" in format_table(on)
    assert "tone index" in format_table(on) and "tone index" not in format_table(off)
    with pytest.raises(NadError, match="tone_amplitude"):
        ScanConfig(tone_amplitude=-1.0)


@pytest.mark.slow
def test_the_warp_measure_names_the_target_of_a_wanet_backdoor():
    from nad.attacks import parse_attack

    cfg = from_mapping(DemoConfig, load_yaml("demo"), "demo preset")
    train, normalize = load_data(cfg.data, "train"), parse_normalize(cfg.normalize)
    wanet = train_model(train, cfg.arch, cfg.train, parse_attack("wanet:target=3"), None, normalize, quiet=True)
    result = scan(wanet.model, select_clean(train, 0.05, 0), ScanConfig(steps=5), quiet=True)
    assert max(range(10), key=lambda c: result.warp_index[c]) == 3, result.to_json()
    assert result.warp_index[3] > 2 and result.warp_success[3] > 90 and 3 in result.flagged


def hand_made_result(**indices: list[float]) -> ScanResult:
    """A 4-class scan result with chosen anomaly indices (0 where not given) and random pictures, 8x8 images."""
    zero = [0.0] * 4
    return ScanResult(
        norms=[5.0] * 4,
        reached=[True] * 4,
        uap_success=[10.0] * 4,
        nc_index=indices.get("nc", zero),
        uap_index=indices.get("uap", zero),
        flagged=[c for c in range(4) if max(i[c] for i in indices.values()) > 2],
        threshold=2.0,
        masks=torch.rand(4, 1, 8, 8),
        patterns=torch.rand(4, 3, 8, 8),
        perturbations=(torch.rand(4, 3, 8, 8) - 0.5) / 16,
        neuron_index=indices.get("neuron", zero),
        warp_index=indices.get("warp", zero),
        warps=(torch.rand(4, 2, 4, 4) - 0.5),
        periodic_index=indices.get("periodic", zero),
        tone_best=[0, 1, 2, 3],
    )


def test_the_picture_of_a_flagged_class_shows_the_measures_that_flagged_it(tmp_path):
    from nad.viz import evidence_figure, evidence_panels

    result = hand_made_result(nc=[3.0, 0, 0, 0], uap=[0, 2.5, 0, 0], warp=[0, 0, 4.0, 0], neuron=[0, 0, 0, 3.0])
    assert result.flagged == [0, 1, 2, 3]
    periodic = hand_made_result(periodic=[0, 0, 0, 2.5])
    assert periodic.evidence(3) == {"tone and stripes": 2.5}
    assert [title for title, _ in evidence_panels(periodic, 3)] == ["tone: columns f=1 phase=3/8"]
    assert evidence_figure(periodic, 3, tmp_path / "tone.png").stat().st_size > 1000
    assert result.evidence(2) == {"warp": 4.0} and result.evidence(1) == {"universal perturbation": 2.5}
    titles = {c: [title for title, _ in evidence_panels(result, c)] for c in result.flagged}
    assert titles[0] == ["mask", "pattern", "mask x pattern"]
    assert titles[1] == ["universal perturbation"]
    assert titles[2] == ["warp"]  # not the inverted trigger, which did not stand out
    assert titles[3] == ["mask", "pattern", "mask x pattern"]  # the neuron perturbation has no picture
    for c in result.flagged:
        assert evidence_figure(result, c, tmp_path / f"class-{c}.png").stat().st_size > 1000
    assert "warps" not in result.to_json() and json.dumps(result.to_json())
