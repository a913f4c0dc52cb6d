"""Training profiles: the reference code's recipe, the augmented one, and nad train's default."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from nad.api import SCRATCH
from nad.attacks import parse_attack
from nad.bench.config import Study, load_bench
from nad.bench.grid import ModelSpec, key_dict
from nad.cli import main
from nad.data.augment import NO_AUGMENT
from nad.errors import NadError
from nad.training import batches, load_profile, profile_names


def test_profiles_are_listed_and_unknown_ones_refused():
    assert {"reference", "standard", "cosine"} <= set(profile_names())
    with pytest.raises(NadError, match="did you mean reference"):
        load_profile("referense")


def test_reference_profile_is_train_badnet_py():
    ref = load_profile("reference")
    assert ref.epochs == 19  # range(1, 20)
    assert ref.batch_size == 64 and not ref.shuffle and ref.augment == NO_AUGMENT
    assert ref.optim.nesterov and ref.optim.momentum == 0.9 and ref.optim.weight_decay == 1e-4
    assert all(ref.optim.lr_at(e, ref.epochs) == pytest.approx(0.1) for e in range(ref.epochs))
    assert ref.optim.lr_at(20, 30) == pytest.approx(0.001)  # the reference's epoch 21


def test_cosine_profile_is_nad_trains_default():
    assert load_profile("cosine") == SCRATCH


def test_unshuffled_batches_keep_the_data_order():
    gen = torch.Generator().manual_seed(0)
    assert torch.cat(list(batches(10, 4, gen, shuffle=False))).tolist() == list(range(10))


def test_standard_profile_keeps_the_committed_paper_grid_keys():
    """The paper-cifar10 grid ran before profiles existed; its model key must not change with them."""
    cfg = load_bench("paper-cifar10")
    spec = ModelSpec("d", 0, "wrn16_1", {}, "cifar10", "badnets", load_profile("standard"))
    assert "shuffle" not in key_dict(spec)["train"]
    unshuffled = ModelSpec("d", 0, "wrn16_1", {}, "cifar10", "badnets", load_profile("reference"))
    assert key_dict(unshuffled)["train"]["shuffle"] is False
    standard = next(s for s in cfg.all_studies() if s.profile == "standard")
    assert cfg.model_train(standard) == load_profile("standard")


def test_the_cosine_study_takes_the_zoo_models_trained_in_bf16():
    """``cosine``'s models are ``nad train``'s default recipe in bf16 (the zoo's ``--precision bf16``)."""
    cfg = load_bench("paper-cifar10")
    cosine = next(s for s in cfg.all_studies() if s.name == "cosine")
    assert cfg.model_train(cosine) == replace(load_profile("cosine"), precision="bf16")
    assert cosine.attacks == ("badnets", "blend")
    with pytest.raises(NadError, match="precision"):
        Study("x", ("nad",), profile="cosine", precision="fp16")


def test_nad_train_profile_and_overrides_are_recorded(tmp_path):
    out = tmp_path / "m"
    args = ["train", "--data", "digits", "--arch", "small_cnn", "--profile", "reference", "--epochs", "1"]
    assert main([*args, "--attack", "badnets", "--out", str(out), "--quiet"]) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["config"]["profile"] == "reference"
    assert result["config"]["epochs"] == 1 and result["config"]["shuffle"] is False
    assert result["config"]["precision"] == "bf16"  # the profile's, as no --precision was given
    assert len(result["data_fingerprint"]) == 16
    assert main([*args, "--profile", "nope", "--out", str(tmp_path / "x"), "--quiet"]) == 2


BENCH = """
name: zoo-test
data: digits
arch: small_cnn
attacks: [badnets]
defenses: [none]
seeds: [0]
model_per_seed: false
model_epochs: 1
studies:
  - {name: reference, profile: reference, defenses: [none]}
"""


def test_bench_takes_a_zoo_model_trained_as_it_asks(tmp_path, capsys):
    zoo = tmp_path / "zoo"
    train = ["train", "--data", "digits", "--arch", "small_cnn", "--attack", "badnets", "--epochs", "1", "--quiet"]
    assert main([*train, "--profile", "reference", "--out", str(zoo / "reference-badnets")]) == 0
    assert main([*train, "--profile", "standard", "--out", str(zoo / "standard-badnets")]) == 0
    (tmp_path / "b.yaml").write_text(BENCH)
    out = tmp_path / "bench"
    args = ["bench", str(tmp_path / "b.yaml"), "--out", str(out), "--quiet", "--device", "cpu"]
    assert main([*args, "--zoo", str(zoo)]) == 0
    assert "0 models trained" in capsys.readouterr().out  # the reference one was taken from the zoo
    row = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    taken = json.loads((zoo / "reference-badnets" / "results.json").read_text())["scores"]
    assert row["acc"] == pytest.approx(taken["acc"], abs=0.01) and row["asr"] == pytest.approx(taken["asr"], abs=0.01)
    assert "profile `reference`" in (out / "results.md").read_text()


def test_bench_trains_when_no_zoo_model_matches(tmp_path, capsys):
    zoo = tmp_path / "zoo"
    train = ["train", "--data", "digits", "--arch", "small_cnn", "--attack", "badnets", "--epochs", "1", "--quiet"]
    assert main([*train, "--profile", "standard", "--out", str(zoo / "standard-badnets")]) == 0
    (tmp_path / "b.yaml").write_text(BENCH)
    args = ["bench", str(tmp_path / "b.yaml"), "--out", str(tmp_path / "bench"), "--quiet", "--device", "cpu"]
    assert main([*args, "--zoo", str(zoo)]) == 0
    assert "1 models trained" in capsys.readouterr().out


def test_bench_takes_a_zoo_trojan_although_training_recorded_its_generated_trigger(tmp_path, capsys):
    trojan = "trojan:size=3,steps=2,surrogate_epochs=1"
    zoo = tmp_path / "zoo"
    train = ["train", "--data", "digits", "--arch", "small_cnn", "--attack", trojan, "--epochs", "1", "--quiet"]
    assert main([*train, "--profile", "reference", "--out", str(zoo / "reference-trojan")]) == 0
    config = json.loads((zoo / "reference-trojan" / "results.json").read_text())["config"]
    assert "trigger=trojan-trigger.npy" in config["attack"] and config["attack_asked"] == parse_attack(trojan).spec()
    (tmp_path / "b.yaml").write_text(BENCH.replace("[badnets]", f'["{trojan}"]'))
    args = ["bench", str(tmp_path / "b.yaml"), "--out", str(tmp_path / "bench"), "--quiet", "--device", "cpu"]
    assert main([*args, "--zoo", str(zoo)]) == 0
    assert "0 models trained" in capsys.readouterr().out
