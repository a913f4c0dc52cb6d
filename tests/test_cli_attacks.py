"""``nad attacks``: list the registered attacks with their parameters, and draw one on images (``show``)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from nad.attacks import ATTACKS
from nad.cli import main


def one_line_error(capsys, *fragments: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nad: error:"), err
    for fragment in fragments:
        assert fragment in err[0]
    return err[0]


@pytest.fixture
def npz(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "tiny.npz"
    np.savez(path, x=rng.integers(0, 256, (20, 16, 16, 3), dtype=np.uint8), y=np.arange(20) % 4)
    return path


@pytest.mark.parametrize("argv", [["attacks"], ["attacks", "list"]])
def test_lists_every_attack_with_its_parameters(argv, capsys):
    assert main(argv) == 0
    out = capsys.readouterr().out
    for name in ATTACKS:
        assert f"\n{name}: " in f"\n{out}"
    assert "badnets: BadNets (Gu" in out
    assert "refool: Refool (Liu, Ma, Bailey & Lu, ECCV 2020" in out
    refool = out[out.index("refool: ") :].split("\n\n")[0]
    for row in ("target", "rate", "kind", "reflections", "count", "sigma_max"):
        assert f"\n    {row} " in refool
    assert "0.4" in refool and "'mix'" in refool
    assert "pattern" in out[out.index("badnets: ") :].split("\n\n")[0]


def test_help(capsys):
    with pytest.raises(SystemExit) as info:
        main(["attacks", "--help"])
    assert info.value.code == 0
    assert "show" in capsys.readouterr().out


@pytest.mark.parametrize("spec", ["badnets", "refool:kind=ghost"])
def test_show_writes_a_png(spec, npz, tmp_path, capsys):
    out = tmp_path / "pics" / "x.png"
    out.parent.mkdir()
    argv = ["attacks", "show", spec, "--data", f"npz:{npz}", "--out", str(out), "--count", "3", "--device", "cpu"]
    assert main(argv) == 0
    assert str(out) in capsys.readouterr().out
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size[0] > 0 and img.size[1] > 0
    assert [p.name for p in out.parent.iterdir()] == ["x.png"]  # no temporary file left behind


def test_show_unknown_attack(npz, tmp_path, capsys):
    out = tmp_path / "x.png"
    assert main(["attacks", "show", "badnest", "--data", f"npz:{npz}", "--out", str(out), "--device", "cpu"]) == 2
    one_line_error(capsys, "badnest", "did you mean badnets")
    assert not out.exists()


def test_show_refuses_an_out_in_a_missing_folder(npz, tmp_path, capsys):
    out = tmp_path / "missing" / "x.png"
    assert main(["attacks", "show", "badnets", "--data", f"npz:{npz}", "--out", str(out), "--device", "cpu"]) == 2
    one_line_error(capsys, "does not exist")
    assert not out.parent.exists()


@pytest.mark.parametrize(
    "argv",
    [["attacks", "show", "badnets"], ["attacks", "show"], ["attacks", "list", "badnets"]],
)
def test_show_needs_its_arguments(argv, capsys):
    assert main(argv) == 2
    one_line_error(capsys)


def test_show_bad_attack_parameter(npz, tmp_path, capsys):
    argv = ["attacks", "show", "badnets:colour=red", "--data", f"npz:{npz}", "--out", str(tmp_path / "x.png")]
    assert main(argv) == 2
    one_line_error(capsys, "colour")
