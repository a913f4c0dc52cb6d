"""When training blows up, the run stops with one line and the last good model is on disk."""

from __future__ import annotations

import torch

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


def test_erase_runs_every_registered_defense(tmp_path):
    """Every defense goes through ``api.erase`` (its pre-training check included), with tiny budgets."""
    from dataclasses import replace

    from nad.api import erase, select_clean
    from nad.data import load_data
    from nad.defenses import DEFENSES
    from nad.defenses.settings import nested_defenses
    from nad.models import build_classifier
    from nad.models.checkpoint import ModelInfo
    from nad.training import TrainConfig

    torch.manual_seed(0)
    model = build_classifier(ModelInfo("small_cnn", 10, (1, 16, 16)))
    clean = select_clean(load_data("digits"), 0.05, 0)
    short = TrainConfig(epochs=1, batch_size=32)

    def tiny(cfg):  # every schedule short, in the defense's own config and in those of defenses it runs
        for field_name, value in vars(cfg).items():
            if isinstance(value, TrainConfig):
                cfg = replace(cfg, **{field_name: short})
            elif field_name in nested_defenses(cfg):
                cfg = replace(cfg, **{field_name: tiny(value)})
        for field_name, small in (("teacher_epochs", 1), ("iterations", 2), ("rounds", 1)):
            if hasattr(cfg, field_name):
                cfg = replace(cfg, **{field_name: small})
        return cfg

    for name, cls in DEFENSES.items():
        result = erase(model, clean, cls(tiny(cls.Config())), baseline=False, quiet=True)
        assert result.model is not model, name
