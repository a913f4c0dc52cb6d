"""``auto``: one scan decides between Neural Cleanse unlearning and ANP+FT, and each route is that defense
unchanged (same seed, same model, bit for bit), on the demo's backdoored digits model."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from nad.api import select_clean
from nad.data import load_data
from nad.defenses import DEFENSES, ANPFineTune, Auto, AutoConfig, NeuralCleanse
from nad.defenses.settings import RunSettings, defense_config
from nad.models.checkpoint import Classifier


def same_weights(a: Classifier, b: Classifier) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.module.state_dict().values(), b.module.state_dict().values()))


def short(cfg: AutoConfig, flag_nothing: bool = False) -> AutoConfig:
    nc = replace(cfg.nc, train=replace(cfg.nc.train, epochs=2))
    if flag_nothing:  # no class can stand out: the route where no trigger is inverted
        nc = replace(nc, scan=replace(nc.scan, threshold=1e9))
    anp_ft = replace(cfg.anp_ft, iterations=20, train=replace(cfg.anp_ft.train, epochs=1))
    return AutoConfig(nc=nc, anp_ft=anp_ft)


def test_auto_is_registered_and_passes_run_settings_to_both_routes():
    assert DEFENSES["auto"] is Auto
    _, cfg = defense_config("auto:anp_ft.max_drop=2", RunSettings(seed=4, precision="bf16", epochs=3))
    assert (cfg.nc.train.seed, cfg.nc.train.precision, cfg.nc.train.epochs) == (4, "bf16", 3)
    assert (cfg.anp_ft.seed, cfg.anp_ft.train.seed, cfg.anp_ft.train.epochs, cfg.anp_ft.max_drop) == (4, 4, 3, 2.0)


@pytest.mark.slow
def test_auto_unlearns_where_the_scan_inverts_a_trigger(demo_run):
    _, trained, _ = demo_run
    clean = select_clean(load_data("digits"), 0.1, 0)
    cfg = short(AutoConfig())
    chosen = Auto(cfg).repair(trained.model, clean, quiet=True)
    assert chosen.log["route"] == "nc" and chosen.log["flagged"] == [0]  # the demo's target class
    alone = NeuralCleanse(cfg.nc).repair(trained.model, clean, quiet=True)
    assert same_weights(chosen.model, alone.model) and not same_weights(chosen.model, trained.model)


@pytest.mark.slow
def test_auto_prunes_and_fine_tunes_where_no_trigger_is_inverted(demo_run):
    _, trained, _ = demo_run
    clean = select_clean(load_data("digits"), 0.1, 0)
    cfg = short(AutoConfig(), flag_nothing=True)
    chosen = Auto(cfg).repair(trained.model, clean, quiet=True)
    assert chosen.log["route"] == "anp_ft" and chosen.log["scan"]["flagged"] == []
    assert set(chosen.log["seconds"]) >= {"scan", "masks", "finetune"}
    alone = ANPFineTune(cfg.anp_ft).repair(trained.model, clean, quiet=True)
    assert same_weights(chosen.model, alone.model) and not same_weights(chosen.model, trained.model)
