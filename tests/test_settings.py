"""One path from a user's parameters to a defense's configuration (``nad.defenses.settings``), the same for
``nad erase`` and ``nad bench``; and the committed bench tables re-render from their results unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nad.bench.config import load_bench
from nad.bench.grid import resolve_defense
from nad.bench.render import write_outputs
from nad.bench.results import read_rows, study_table
from nad.cli import build_parser
from nad.commands import defense_from_args
from nad.defenses import DEFENSES
from nad.defenses.anp import ANPConfig
from nad.defenses.settings import (
    RunSettings,
    apply_settings,
    config_seed,
    defense_config,
    nested_defenses,
    schedules,
)
from nad.errors import NadError
from nad.training import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def erase_defense(*flags: str):
    args = build_parser().parse_args(["erase", "model", "--clean", "digits", "--out", "o", *flags])
    return defense_from_args(args)


def test_seed_reaches_every_schedule_of_mcr():
    config = erase_defense("--defense", "mcr", "--seed", "3").config
    assert config.train.seed == 3 and config.curve.seed == 3


@pytest.mark.parametrize("name", sorted(DEFENSES))
def test_bf16_reaches_every_loop_or_is_refused(name):
    try:
        config = erase_defense("--defense", name, "--precision", "bf16").config
    except NadError as exc:
        assert name in ("anp", "ibau") and "fp32" in str(exc)
        return
    configs = [config, *(getattr(config, key) for key in nested_defenses(config))]  # auto: nc's and anp_ft's
    found = [(c, key) for c in configs for key in schedules(c)]
    assert found, f"{name} took --precision but has no schedule to run it in"
    for c, key in found:
        assert (c if key == "" else getattr(c, key)).precision == "bf16"


def test_flags_a_defense_cannot_honour_are_refused():
    for flags in (["--defense", "anp", "--epochs", "3"], ["--defense", "ibau", "--no-channels-last"]):
        with pytest.raises(NadError, match="does not apply"):
            erase_defense(*flags)


@pytest.mark.parametrize("spec", ["nad:p=4", "mcr:curve.epochs=5", "anp:iterations=10", "finetune", "ibau"])
def test_erase_and_bench_build_the_same_config(spec):
    cfg = load_bench("paper-cifar10", data="digits")
    assert resolve_defense(spec, cfg, 2)[1] == defense_config(spec, RunSettings(seed=2))[1]
    assert erase_defense("--defense", spec, "--seed", "2").config == defense_config(spec, RunSettings(seed=2))[1]


def test_the_baseline_of_a_defense_without_a_schedule_runs_with_its_seed():
    assert config_seed(ANPConfig(seed=3)) == 3
    assert config_seed(TrainConfig(seed=4)) == 4
    assert apply_settings(ANPConfig(), RunSettings(seed=5), "anp").seed == 5


def test_committed_bench_tables_rerender_unchanged(tmp_path):
    """docs/bench/paper-cifar10 holds results.jsonl and the tables rendered from it: same bytes again."""
    folder = ROOT / "docs" / "bench" / "paper-cifar10"
    rows = read_rows(folder)
    data = next(iter(rows.values()))["config"]["data"].rsplit(":", 1)[0]  # the path the grid ran with
    cfg = load_bench("paper-cifar10", data=data)
    from nad.bench.grid import expand, study_cells

    cells = {c.id for c in expand(cfg)}
    tables = [study_table(cfg, s, study_cells(cfg, s), rows) for s in cfg.all_studies()]
    write_outputs(tmp_path, cfg, tables, {k: v for k, v in rows.items() if k in cells})
    for name in ("results.md", "report.html"):
        assert (tmp_path / name).read_bytes() == (folder / name).read_bytes(), name
    assert json.loads((folder / "bench.json").read_text())["cells"] > 0
