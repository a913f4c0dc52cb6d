"""What a new user meets first: presets found by name, the clean set and the verdict said out loud, --config."""

from __future__ import annotations

import json

import pytest
from test_cli import assert_one_line_error

from nad.cli import main
from nad.config import load_yaml
from nad.errors import NadError
from nad.report import erase_report, erase_verdict


def test_a_preset_name_wins_over_a_folder_of_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()  # what `nad demo --out demo` creates
    assert load_yaml("demo")["arch"]
    (tmp_path / "nad-paper").write_text("teacher_epochs: 3\n")
    with pytest.raises(NadError, match="both a preset and a file"):
        load_yaml("nad-paper")
    assert load_yaml("./nad-paper") == {"teacher_epochs": 3}
    with pytest.raises(NadError, match="no preset named 'nad-papr'"):
        load_yaml("nad-papr")


def scores(acc: float, asr: float | None = None) -> dict:
    return {"acc": acc, "asr": asr, "ra": None}


def test_the_verdict_compares_with_finetuning_and_warns_on_damage():
    summary = {
        "config": {"defense": "nad"},
        "before": scores(90, 99),
        "after": scores(88, 2),
        "finetune": scores(89, 7),
    }
    lines = erase_verdict(summary, 10)
    assert lines == [
        "clean accuracy: 90.00 before, nad 88.00; finetune 89.00",
        "attack success: 99.00 before, nad 2.00; finetune 7.00",
    ]
    summary["after"] = scores(12, 0)
    warnings = [line for line in erase_verdict(summary, 10) if line.startswith("WARNING")]
    assert len(warnings) == 2 and "lost 78.0 points" in warnings[0] and "near chance" in warnings[1]
    summary["scan"] = {
        "verdict": "backdoor evidence remains: class 0 still stands out after the defense",
        "before": {"flagged": [0]},
        "after": {"flagged": [0, 9]},
    }
    lines = erase_verdict(summary, 10)
    assert lines[-2].endswith("class 0 still stands out after the defense")
    assert lines[-1].startswith("hint: class 0 still stands out; --defense auto ")
    for chosen in ("nc:train.epochs=20", "auto"):  # already the defense the hint names
        assert not erase_verdict({**summary, "config": {"defense": chosen}}, 10)[-1].startswith("hint")
    summary["scan"]["after"] = {"flagged": [9]}  # a new class after the defense is no evidence left behind
    assert not erase_verdict(summary, 10)[-1].startswith("hint")
    page = erase_report({**summary, "scan": None, "verdict": erase_verdict(summary, 10)}, {}, None)
    assert 'class="warning"' in page and "<b>ASR</b> (attack success rate)" in page


@pytest.fixture(scope="module")
def backdoored(tmp_path_factory):
    out = tmp_path_factory.mktemp("contact") / "backdoored"
    argv = ["train", "--data", "digits", "--arch", "small_cnn", "--attack", "badnets", "--epochs", "1"]
    assert main([*argv, "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    return out


def test_erase_says_how_many_clean_images_and_takes_a_config(backdoored, tmp_path, capsys):
    config = tmp_path / "nad.yaml"
    config.write_text("teacher_epochs: 1\ntrain: {epochs: 1}\n")
    argv = ["erase", str(backdoored), "--clean", "digits", "--config", str(config), "--no-scan", "--no-baseline"]
    assert main([*argv, "--out", str(tmp_path / "e"), "--quiet", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "clean set: 70 of the 1438 images of digits; --clean-ratio 0.05, stratified by class" in out
    results = json.loads((tmp_path / "e" / "results.json").read_text())
    assert results["config"]["teacher_epochs"] == 1 and results["config"]["train"]["epochs"] == 1
    assert results["verdict"][0].startswith("clean accuracy: ")
    assert results["config"]["test_size"] == 359


def test_erase_takes_a_preset_config_and_refuses_a_bad_one(backdoored, tmp_path, capsys):
    argv = ["erase", str(backdoored), "--clean", "digits", "--no-scan", "--no-baseline", "--device", "cpu"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher_epochs: ten\n")
    assert main([*argv, "--config", str(bad), "--out", str(tmp_path / "b")]) == 2
    assert_one_line_error(capsys, "teacher_epochs", "expected int")
    assert main([*argv, "--config", "nad-papr", "--out", str(tmp_path / "c")]) == 2
    assert_one_line_error(capsys, "no preset named")
    argv += ["--config", "nad-paper", "--epochs", "1", "--teacher-epochs", "1", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "d")]) == 0
