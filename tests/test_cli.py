"""The ``nad`` command line: help, one-line errors with exit code 2, and a tiny train/eval/erase run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from nad.cli import COMMANDS, main, run
from nad.data import stratified_split
from nad.data.sources import load_digits
from nad.models import load_model

COMMAND_NAMES = ["train", "erase", "eval", "demo"]


def test_every_command_is_registered():
    assert set(COMMAND_NAMES) <= set(COMMANDS)


@pytest.mark.parametrize("argv", [["--help"], *([name, "--help"] for name in COMMAND_NAMES)])
def test_help_exits_zero(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: nad" in out


def test_missing_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("nad: error:") and "--help" in err and len(err.strip().splitlines()) == 1


def test_the_command_exits_with_mains_code(tmp_path, monkeypatch, capsys):
    """``nad`` (``run``) hands main's return code to the shell; outside torchrun it exits normally."""
    for variable in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr("sys.argv", ["nad", "eval", str(tmp_path / "nope.safetensors"), "--data", "digits"])
    with pytest.raises(SystemExit) as info:
        run()
    assert info.value.code == 2
    assert_one_line_error(capsys, "nope.safetensors")


def assert_one_line_error(capsys, *fragments: str) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("nad: error:")
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def test_missing_model_path(tmp_path, capsys):
    code = main(["eval", str(tmp_path / "nope.safetensors"), "--data", "digits:test", "--device", "cpu", "--quiet"])
    assert code == 2
    assert_one_line_error(capsys, "nope.safetensors")


def test_unknown_attack_key(tmp_path, capsys):
    argv = ["train", "--data", "digits", "--arch", "small_cnn", "--attack", "badnets:colour=red"]
    code = main([*argv, "--epochs", "1", "--out", str(tmp_path / "out"), "--quiet", "--device", "cpu"])
    assert code == 2
    assert_one_line_error(capsys, "colour")
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_unknown_arch(tmp_path, capsys):
    argv = ["train", "--data", "digits", "--arch", "small_cnnn", "--epochs", "1"]
    code = main([*argv, "--out", str(tmp_path / "out"), "--quiet", "--device", "cpu"])
    assert code == 2
    assert_one_line_error(capsys, "small_cnnn", "did you mean small_cnn")


def test_existing_non_empty_out_without_overwrite(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    argv = ["train", "--data", "digits", "--arch", "small_cnn", "--epochs", "1"]
    code = main([*argv, "--out", str(out), "--quiet", "--device", "cpu"])
    assert code == 2
    assert_one_line_error(capsys, "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_out_is_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    argv = ["train", "--data", "digits", "--arch", "small_cnn", "--epochs", "1"]
    assert main([*argv, "--out", str(tmp_path / "file"), "--quiet", "--device", "cpu"]) == 2
    assert_one_line_error(capsys, "not a directory")


def test_bad_data_spec(tmp_path, capsys):
    argv = ["train", "--data", "digits:validation", "--arch", "small_cnn", "--epochs", "1"]
    assert main([*argv, "--out", str(tmp_path / "o"), "--quiet", "--device", "cpu"]) == 2
    assert_one_line_error(capsys, "split")


def test_attack_target_outside_the_classes(tmp_path, capsys):
    argv = ["train", "--data", "digits", "--arch", "small_cnn", "--attack", "badnets:target=10", "--epochs", "1"]
    assert main([*argv, "--out", str(tmp_path / "o"), "--quiet", "--device", "cpu"]) == 2
    assert_one_line_error(capsys, "target 10")


def test_bad_device(tmp_path, capsys):
    argv = ["train", "--data", "digits", "--arch", "small_cnn", "--epochs", "1", "--device", "tpu9"]
    assert main([*argv, "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert_one_line_error(capsys, "--device")


def test_foreign_checkpoint_without_arch(tmp_path, capsys):
    from nad.models import create_model

    torch.save({"state_dict": create_model("small_cnn", 10, 1).state_dict()}, tmp_path / "m.pth")
    assert main(["eval", str(tmp_path / "m.pth"), "--data", "digits:test", "--device", "cpu"]) == 2
    assert_one_line_error(capsys, "--arch")


def test_debug_shows_the_traceback(tmp_path, capsys):
    code = main(["eval", str(tmp_path / "nope.safetensors"), "--data", "digits:test", "--device", "cpu", "--debug"])
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("nad: error:")


# -- a tiny end-to-end run --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "backdoored"
    argv = ["train", "--data", "digits", "--arch", "small_cnn", "--attack", "badnets", "--epochs", "1"]
    code = main([*argv, "--out", str(out), "--quiet", "--device", "cpu"])
    assert code == 0
    return out


def test_train_writes_model_and_results(trained_dir):
    assert (trained_dir / "model.safetensors").is_file()
    sidecar = json.loads((trained_dir / "model.json").read_text())
    assert sidecar["arch"] == "small_cnn" and sidecar["attack"] == "badnets"
    assert sidecar["input_size"] == [1, 16, 16] and sidecar["num_classes"] == 10
    assert sidecar["normalize"] == {"mean": [0.5], "std": [0.5]}
    results = json.loads((trained_dir / "results.json").read_text())
    assert results["config"]["epochs"] == 1 and results["config"]["arch"] == "small_cnn"
    assert len(results["history"]) == 1
    assert set(results["scores"]) >= {"acc", "asr"}
    clf = load_model(trained_dir)
    assert clf.info.attack == "badnets"


def test_eval_json(trained_dir, capsys):
    capsys.readouterr()
    code = main(["eval", str(trained_dir), "--data", "digits:test", "--json", "--device", "cpu", "--quiet"])
    assert code == 0
    scores = json.loads(capsys.readouterr().out)
    assert set(scores) >= {"acc", "asr"}
    assert all(0 <= scores[k] <= 100 for k in ("acc", "asr"))
    train_scores = json.loads((trained_dir / "results.json").read_text())["scores"]
    assert scores["acc"] == train_scores["acc"] and scores["asr"] == train_scores["asr"]
    # Without --json: a table.
    assert main(["eval", str(trained_dir / "model.safetensors"), "--data", "digits:test", "--device", "cpu"]) == 0
    assert "ACC %" in capsys.readouterr().out


def test_eval_with_another_attack(trained_dir, capsys):
    capsys.readouterr()
    argv = ["eval", str(trained_dir), "--data", "digits:test", "--json", "--attack", "badnets:target=3"]
    assert main([*argv, "--device", "cpu"]) == 0
    assert "asr" in json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_erase(trained_dir, tmp_path, capsys):
    out = tmp_path / "erased"
    argv = ["erase", str(trained_dir), "--clean", "digits", "--epochs", "1", "--teacher-epochs", "1"]
    code = main([*argv, "--out", str(out), "--quiet", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    assert (out / "model.safetensors").is_file() and (out / "model.json").is_file()
    results = json.loads((out / "results.json").read_text())
    assert set(results) >= {"before", "after", "finetune", "config", "seconds"}
    assert results["config"]["defense"] == "nad" and results["config"]["attack"] == "badnets"
    expected_clean = len(stratified_split(load_digits("train").y, 0.05, seed=0)[0])  # 5% of each class
    assert results["config"]["clean_size"] == expected_clean
    assert abs(expected_clean - 0.05 * 1437) <= 5
    assert results["config"]["test"] == "digits:test"
    assert results["log"]["layers"] == ["block1", "block2", "block3"]
    for key in ("before", "after", "finetune"):
        scores = results[key]
        for metric in ("acc", "asr"):
            assert isinstance(scores[metric], float) and math.isfinite(scores[metric])
            assert 0 <= scores[metric] <= 100
        # Percent, not fractions: ten balanced classes put even a poor model's accuracy well above 1.
        assert scores["acc"] > 1
    before = json.loads((trained_dir / "results.json").read_text())["scores"]
    assert results["before"]["acc"] == before["acc"] and results["before"]["asr"] == before["asr"]
    assert isinstance(results["seconds"], float) and results["seconds"] >= 0
    erased = load_model(out)
    assert erased.info.arch == "small_cnn" and erased.info.attack == "badnets"
    stdout = capsys.readouterr().out
    assert "before" in stdout and "nad" in stdout
    # The scan ran before and after, on as many held-out clean images; each flagged class has its picture.
    scan = results["scan"]
    assert scan["verdict"] in stdout and len(scan["before"]["norms"]) == len(scan["after"]["norms"]) == 10
    pictures = {p.name for p in out.glob("trigger-*.png")}
    expected = {f"trigger-{when}-class-{c}.png" for when in ("before", "after") for c in scan[when]["flagged"]}
    assert pictures == expected
    assert "Backdoor evidence" in (out / "report.html").read_text()


def test_erase_refuses_bad_layers(trained_dir, tmp_path, capsys):
    argv = ["erase", str(trained_dir), "--clean", "digits", "--layers", "block9", "--epochs", "1"]
    code = main([*argv, "--teacher-epochs", "0", "--no-baseline", "--out", str(tmp_path / "o"), "--device", "cpu"])
    assert code == 2
    assert_one_line_error(capsys, "block9")


def test_erase_refuses_mismatched_betas(trained_dir, tmp_path, capsys):
    argv = ["erase", str(trained_dir), "--clean", "digits", "--layers", "block1,block2", "--betas", "1"]
    assert main([*argv, "--out", str(tmp_path / "o"), "--device", "cpu"]) == 2
    assert_one_line_error(capsys, "beta")


def test_erase_unknown_defense(trained_dir, tmp_path, capsys):
    argv = ["erase", str(trained_dir), "--clean", "digits", "--defense", "nda"]
    assert main([*argv, "--out", str(tmp_path / "o"), "--device", "cpu"]) == 2
    assert_one_line_error(capsys, "nda", "did you mean nad")


def test_eval_refuses_data_with_more_classes(trained_dir, tmp_path, capsys):
    import numpy as np

    np.savez(tmp_path / "d.npz", x=np.zeros((3, 16, 16), np.uint8), y=np.array([0, 1, 11]))
    assert main(["eval", str(trained_dir), "--data", f"npz:{tmp_path / 'd.npz'}", "--device", "cpu"]) == 2
    assert_one_line_error(capsys, "12 classes", "--num-classes")


def test_erase_without_test_data_scores_on_held_out_clean_images(trained_dir, tmp_path, capsys):
    import numpy as np

    digits = load_digits("train")
    np.savez(tmp_path / "clean.npz", x=digits.x.squeeze(1).numpy(), y=digits.y.numpy())
    argv = ["erase", str(trained_dir), "--clean", f"npz:{tmp_path / 'clean.npz'}", "--epochs", "1", "--no-scan"]
    assert main([*argv, "--teacher-epochs", "1", "--out", str(tmp_path / "e"), "--quiet", "--device", "cpu"]) == 0
    results = json.loads((tmp_path / "e" / "results.json").read_text())
    assert results["config"]["test"].endswith("(held out of the clean set)") and results["scan"] is None
    held_out = len(digits) - results["config"]["clean_size"]
    assert 0 < results["after"]["acc"] <= 100 and results["after"]["asr"] is not None
    assert f"scored on {held_out} clean images held out" in capsys.readouterr().out


def test_scan_command_writes_its_table_and_json_and_skips_the_warp_and_tones_on_request(trained_dir, tmp_path, capsys):
    base = ["scan", str(trained_dir), "--clean", "digits", "--steps", "2", "--quiet", "--device", "cpu"]
    assert main([*base, "--out", str(tmp_path / "with")]) == 0
    stdout = capsys.readouterr().out
    full = json.loads((tmp_path / "with" / "scan.json").read_text())
    assert "warp index" in stdout and full["verdict"] in stdout
    assert len(full["warp_success"]) == len(full["norms"]) == 10 and not full["stripes_alone"]
    assert main([*base, "--no-warp", "--stripes", "--out", str(tmp_path / "without")]) == 0
    stdout = capsys.readouterr().out
    other = json.loads((tmp_path / "without" / "scan.json").read_text())
    assert "warp index" not in stdout and other["warp_success"] == [] and len(other["stripe_success"]) == 10
    assert other["stripes_alone"]
    assert other["norms"] == full["norms"]  # the other measures do not depend on the warp's
    assert len(full["tone_success"]) == 10 and "tone index" in stdout  # the tones are on by default
    assert main([*base, "--no-tones", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tone_success"] == []
