"""When training blows up, the run stops with one line and the last good model is on disk."""

from __future__ import annotations

from nad.cli import main
from nad.models import load_model


def test_non_finite_loss_keeps_the_last_good_model(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--data", "digits", "--arch", "small_cnn", "--epochs", "3", "--lr", "1e12", "--quiet"]
    code = main([*argv, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "non-finite" in err and "last-good.safetensors" in err
    kept = load_model(out / "last-good.safetensors")
    assert all(p.isfinite().all() for p in kept.module.parameters())
    assert not (out / "model.safetensors").exists()  # no half-trained model passes for a finished one
