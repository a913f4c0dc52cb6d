"""``nad bench``: grid expansion and shards, the model cache, resuming, the rendered tables and report, the
GTSRB loader and the presets. Everything trains on a few hundred digits for one epoch (a few seconds)."""

from __future__ import annotations

import base64
import html.parser
import io
import itertools
import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nad.bench import BenchConfig, Shard, expand, load_bench, run_bench
from nad.bench.config import Study
from nad.bench.grid import CellFilter, resolve_defense, study_cells
from nad.bench.render import NONTARGET_CAPTION, markdown, report_html
from nad.bench.results import RESULTS, read_rows, study_table
from nad.bench.run import clock
from nad.cli import COMMANDS, main
from nad.config import preset_names
from nad.data import load_data
from nad.errors import NadError
from nad.metrics import evaluate

DIGITS_YAML = """
name: digits-bench
data: digits
arch: small_cnn
train_size: 300
test_size: 150
train: {epochs: 1, batch_size: 32, augment: {crop_padding: 2, flip: false, cutout_holes: 0}}
attacks: ["badnets:target=0,pattern=grid"]
defenses: [none, finetune]
defense_params:
  finetune: {epochs: 1, batch_size: 16}
  nad: {teacher_epochs: 1, train: {epochs: 1, batch_size: 16}}
clean_ratios: [0.1]
seeds: [0, 1]
quick:
  seeds: [0]
"""


def digits_config(tmp_path: Path, text: str = DIGITS_YAML, **changes) -> BenchConfig:
    path = tmp_path / "bench.yaml"
    path.write_text(text)
    cfg = load_bench(path)
    return replace(cfg, **changes) if changes else cfg


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """One finished digits grid (1 attack x {none, finetune} x 2 seeds = 4 cells, 2 models): (cfg, out, outcome)."""
    tmp = tmp_path_factory.mktemp("bench")
    cfg = digits_config(tmp)
    out = tmp / "out"
    outcome = run_bench(cfg, out, quiet=True)
    return cfg, out, outcome


def test_a_cell_keeps_what_the_defense_decided(tmp_path):
    """ANP's pruned count (chosen by its threshold) is kept in the row, not only its scores."""
    text = DIGITS_YAML.replace("defenses: [none, finetune]", "defenses: [anp]")
    cfg = digits_config(tmp_path, text.replace("  finetune: {epochs: 1, batch_size: 16}", "  anp: {iterations: 2}"))
    run_bench(replace(cfg, seeds=(0,)), tmp_path / "out", quiet=True)
    (row,) = lines_of(tmp_path / "out" / RESULTS)
    assert set(row["decisions"]) == {"pruned", "below_threshold"}
    assert 0 <= row["decisions"]["pruned"] == row["decisions"]["below_threshold"]  # no max_drop: all of them


def copy_run(bench_run, tmp_path: Path, results: bool = True) -> Path:
    _, out, _ = bench_run
    target = tmp_path / "out"
    shutil.copytree(out, target, ignore=None if results else shutil.ignore_patterns("results*"))
    return target


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- the grid ---------------------------------------------------------------------------------------


def test_grid_expansion_ids_and_shards(tmp_path):
    cfg = digits_config(tmp_path, defenses=("none", "finetune", "nad"), clean_ratios=(0.05, 0.1), seeds=(0, 1, 2))
    cells = expand(cfg)
    assert len(cells) == 1 * 3 * (1 + 2 * 2)  # attacks x seeds x (none + defenses x ratios)
    ids = [c.id for c in cells]
    assert len(set(ids)) == len(ids)
    assert ids == [c.id for c in expand(cfg)]  # stable
    assert {c.clean_ratio for c in cells if c.defense == "none"} == {None}
    assert len({c.model.key for c in cells}) == 3  # one model per seed
    assert len({c.model.key for c in expand(replace(cfg, model_per_seed=False))}) == 1
    for n in range(1, 6):
        shards = [Shard(i, n).select(cells) for i in range(1, n + 1)]
        assert sorted(c.id for s in shards for c in s) == sorted(ids)  # union = grid, nothing twice
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
    # cells of one model are adjacent, so contiguous shards split few models
    keys = [c.model.key for c in cells]
    assert sum(a != b for a, b in itertools.pairwise(keys)) == 2


def test_cell_ids_follow_the_configuration_not_the_labels(tmp_path):
    cfg = digits_config(tmp_path, defenses=("none", "finetune"))
    changed = replace(cfg, defense_params={"finetune": {"epochs": 2}})
    assert {c.id for c in expand(cfg)} & {c.id for c in expand(changed)} == {
        c.id for c in expand(cfg) if c.defense == "none"
    }
    # the same defense under two spellings and in two studies runs once
    studies = (Study("a", ("none", "finetune")), Study("b", ("finetune:epochs=1",)))
    both = replace(cfg, studies=studies)
    assert len(expand(both)) == len(expand(cfg))


def test_a_purified_teacher_gets_the_bench_parameters_of_its_own_defense(tmp_path):
    cfg = digits_config(tmp_path, defense_params={"fst": {"train": {"epochs": 2}}, "nad": {"teacher_epochs": 1}})
    assert resolve_defense("nad:teacher=fst", cfg, seed=0)[1].teacher == "fst:train.epochs=2"
    assert resolve_defense("nad", cfg, seed=0)[1].teacher == "finetune"  # the paper's: NAD's own teacher_epochs
    # the teacher spec's own parameters come last, as a spec's always do
    spelled = "nad:teacher=fst:train.epochs=5"
    assert resolve_defense(spelled, cfg, seed=0)[1].teacher == "fst:train.epochs=5"
    # no parameters for the teacher's defense: its spec is left as written, and so is the cell id
    plain = digits_config(tmp_path, defenses=("nad:teacher=fst",))
    assert resolve_defense("nad:teacher=fst", plain, seed=0)[1].teacher == "fst"


def test_shard_parse():
    assert Shard.parse("2/4") == Shard(2, 4)
    assert Shard.parse(None) == Shard(1, 1)
    for bad in ("0/4", "5/4", "x/2", "3", "1/0"):
        with pytest.raises(NadError, match="--shard"):
            Shard.parse(bad)


def test_only_selects_cells_by_study_attack_defense_and_seed(tmp_path):
    cfg = digits_config(tmp_path, defenses=("none", "finetune", "nad"), clean_ratios=(0.05, 0.1), seeds=(0, 1, 2))
    cells = expand(cfg)
    nad_seed_1 = CellFilter.parse(["defense=nad", "seed=1"]).select(cells)
    assert len(nad_seed_1) == 2 and {(c.defense, c.seed) for c in nad_seed_1} == {("nad", 1)}
    assert len(CellFilter.parse(["defense=nad,finetune", "clean_ratio=0.1"]).select(cells)) == 2 * 3
    assert CellFilter.parse(None).select(cells) == cells
    for bad in (["defense"], ["colour=red"], ["seed="]):
        with pytest.raises(NadError, match="--only"):
            CellFilter.parse(bad)
    with pytest.raises(NadError, match="no cell"):
        CellFilter.parse(["defense=anp"]).select(cells)


def test_only_runs_the_matching_cells_and_reports_them_all(bench_run, tmp_path):
    cfg, _, _ = bench_run
    out = copy_run(bench_run, tmp_path, results=False)
    outcome = run_bench(cfg, out, quiet=True, only=CellFilter.parse(["defense=none"]))
    assert outcome.cells == 2 and len(outcome.ran) == 2  # the two seeds' "Before" cells, nothing else
    assert len(lines_of(out / "results.jsonl")) == 2


# -- running, caching, resuming ---------------------------------------------------------------------


def test_run_writes_every_cell_once(bench_run):
    cfg, out, outcome = bench_run
    cells = expand(cfg)
    assert outcome.trained == 2 and len(outcome.ran) == 4 and outcome.skipped == 0
    rows = lines_of(out / RESULTS)
    assert sorted(r["id"] for r in rows) == sorted(c.id for c in cells)
    for row in rows:
        assert {"acc", "asr", "ra", "der", "seconds", "config", "before", "acc_nontarget"} <= set(row)
        assert 0 <= row["acc"] <= 100 and 0 <= row["asr"] <= 100 and row["seconds"] >= 0
        assert (row["der"] is None) == (row["defense"] == "none")
        assert row["decisions"] == {}  # fine-tuning decides nothing of its own
        assert row["device"] == f"cpu ({torch.get_num_threads()} threads)"  # where its wall time was measured
    assert f"measured on cpu ({torch.get_num_threads()} threads) (4 cells)" in (out / "results.md").read_text()
    assert len(list((out / "models").glob("*/model.safetensors"))) == 2
    assert not list((out / "models").glob(".partial-*"))


def test_models_are_cached_and_reused(bench_run, tmp_path, monkeypatch):
    import nad.bench.cache

    out = copy_run(bench_run, tmp_path, results=False)
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("models/*/model.safetensors")}
    calls = []
    real = nad.bench.cache.train_model
    monkeypatch.setattr(nad.bench.cache, "train_model", lambda *a, **k: calls.append(1) or real(*a, **k))
    outcome = run_bench(bench_run[0], out, quiet=True)
    assert len(outcome.ran) == 4 and outcome.trained == 0 and calls == []
    assert {p: p.stat().st_mtime_ns for p in out.glob("models/*/model.safetensors")} == mtimes
    before = {r["id"]: r["before"] for r in lines_of(bench_run[1] / RESULTS)}
    assert {r["id"]: r["before"] for r in lines_of(out / RESULTS)} == before  # the same models, the same scores


def test_resume_runs_only_the_missing_cell(bench_run, tmp_path):
    cfg = bench_run[0]
    out = copy_run(bench_run, tmp_path)
    lines = (out / RESULTS).read_text().splitlines(keepends=True)
    dropped = json.loads(lines.pop(1))["id"]
    # a stopped run: one cell never written, and a half-written line at the end
    (out / RESULTS).write_text("".join(lines) + lines[0][: len(lines[0]) // 2])
    assert dropped not in read_rows(out)
    outcome = run_bench(cfg, out, quiet=True)
    assert outcome.ran == [dropped] and outcome.skipped == 3 and outcome.trained == 0
    ids = [r["id"] for r in lines_of(out / RESULTS)]  # every line parses: the torn line was cut off
    assert sorted(ids) == sorted(c.id for c in expand(cfg))
    again = run_bench(cfg, out, quiet=True)
    assert again.ran == [] and again.skipped == 4


def test_a_resumed_grid_estimates_the_time_left_from_the_cells_already_finished(bench_run):
    from nad.bench.cache import ModelCache
    from nad.bench.run import Progress

    cfg, out, _ = bench_run
    cells, rows = expand(cfg), read_rows(out)
    done, todo = cells[:3], cells[3:]
    fresh = Progress(cells, todo, ModelCache(out / "models"), quiet=True)
    assert fresh.eta() == "?"  # nothing measured in this process yet
    resumed = Progress(cells, todo, ModelCache(out / "models"), quiet=True, finished=(rows[c.id] for c in done))
    same_defense = [rows[c.id]["seconds"] for c in done if c.defense_name == todo[0].defense_name]
    assert resumed.eta() == clock(sum(same_defense) / len(same_defense))
    assert resumed.model_times == [rows[c.id]["model_seconds"] for c in done if rows[c.id]["model_trained"]]


def test_shards_share_the_grid_and_merge(bench_run, tmp_path):
    cfg = bench_run[0]
    out = copy_run(bench_run, tmp_path, results=False)
    first = run_bench(cfg, out, Shard(1, 2), quiet=True)
    second = run_bench(cfg, out, Shard(2, 2), quiet=True)
    assert len(first.ran) == len(second.ran) == 2 and not set(first.ran) & set(second.ran)
    assert not (out / RESULTS).exists()
    assert len(lines_of(out / "results-1-of-2.jsonl")) == len(lines_of(out / "results-2-of-2.jsonl")) == 2
    assert "| badnets |" in (out / "results.md").read_text()
    merged = run_bench(cfg, out, quiet=True)  # an unsharded run gathers the shards' lines, runs nothing
    assert merged.ran == []
    assert sorted(r["id"] for r in lines_of(out / RESULTS)) == sorted(c.id for c in expand(cfg))


def test_report_only_renders_a_partial_grid_and_runs_nothing(bench_run, tmp_path, capsys):
    cfg = bench_run[0]
    out = copy_run(bench_run, tmp_path)
    lines = (out / RESULTS).read_text().splitlines(keepends=True)
    (out / RESULTS).write_text("".join(lines[:3]))  # as if the run were still on its last cell
    (out / "results.md").unlink()
    outcome = run_bench(cfg, out, quiet=True, report_only=True)
    assert outcome.ran == [] and outcome.skipped == 3 and outcome.trained == 0
    assert len(lines_of(out / RESULTS)) == 3
    assert "3 of 4 finished" in (out / "results.md").read_text()
    with pytest.raises(NadError, match="nothing to report"):
        run_bench(cfg, tmp_path / "empty", quiet=True, report_only=True)


def test_measure_matches_evaluate(bench_run):
    from nad.bench.cache import ModelCache
    from nad.bench.run import measure

    cfg, out, _ = bench_run
    cell = expand(cfg)[0]
    cached = ModelCache(out / "models").load(cell.model, "cpu")
    test = load_data("digits:test")
    scores = evaluate(cached.model, test, cached.attack)
    measured = measure(cached.model, test, cached.attack)
    assert measured["acc"] == pytest.approx(scores.acc)
    assert measured["asr"] == pytest.approx(scores.asr)
    assert measured["ra"] == pytest.approx(scores.ra)
    keep = test.y != cached.attack.target
    assert measured["acc_nontarget"] == pytest.approx(evaluate(cached.model, test.subset(keep)).acc)


# -- results.md and report.html ---------------------------------------------------------------------


def synthetic_rows(cfg: BenchConfig) -> dict[str, dict]:
    """Made-up results for every cell: NAD clearly below FT in ASR, ACC within the seeds' spread."""
    asr = {"none": 100.0, "finetune": 20.0, "nad": 4.0}
    rows = {}
    for cell in expand(cfg):
        jitter = 0.5 * cell.seed
        before = {"acc": 85.0 + jitter, "asr": 100.0, "ra": 0.0, "acc_nontarget": 84.0 + jitter}
        scores = {"acc": 82.0 + 2 * jitter, "asr": asr[cell.defense] + jitter, "ra": 70.0, "der": 0.9}
        scores["acc_nontarget"] = scores["acc"] - 1.0
        rows[cell.id] = {"id": cell.id, **scores, "before": before, "seconds": 1.0, "error": None}
    return rows


def test_results_md_table_spread_and_reference(tmp_path):
    cfg = digits_config(
        tmp_path, data="cifar10:/nowhere", arch="wrn16_1", attacks=("badnets", "blend"), seeds=(0, 1, 2)
    )
    cfg = replace(cfg, defenses=("none", "finetune", "nad"), clean_ratios=(0.05,))
    rows = synthetic_rows(cfg)
    tables = [study_table(cfg, s, study_cells(cfg, s), rows) for s in cfg.all_studies()]
    text = markdown(cfg, tables, rows)
    header = next(line for line in text.splitlines() if line.startswith("| attack |"))
    assert header == "| attack | Before | FT | NAD |"
    assert "| badnets | 85.5 ± 0.5 / 100.0 ± 0.0 | 83.0 ± 1.0 / 20.5 ± 0.5 | 83.0 ± 1.0 / 4.5 ± 0.5 |" in text
    reference = "| badnets (reference) | 85.65 / 100.00 | 82.32 / 18.13 | 82.12 / 3.57 |"
    # the reference's ACC leaves the target class out: its row stands beside ours measured the same way
    acc_part, nontarget_part = text.split(NONTARGET_CAPTION)
    assert reference not in acc_part and reference in nontarget_part
    assert "| badnets | 84.5 ± 0.5 / 100.0 ± 0.0 | 82.0 ± 1.0 / 20.5 ± 0.5 | 82.0 ± 1.0 / 4.5 ± 0.5 |" in nontarget_part
    assert "| blend (reference)" not in text  # published numbers exist for BadNets only
    assert "badnets: NAD vs FT: ASR -16.0 points, larger than the spread (1.0); ACC +0.0 points, smaller" in text
    assert "0.90" in text  # DER
    older = {k: {**v, "acc_nontarget": None, "before": {**v["before"], "acc_nontarget": None}} for k, v in rows.items()}
    tables = [study_table(cfg, s, study_cells(cfg, s), older) for s in cfg.all_studies()]
    text = markdown(cfg, tables, older)  # results recorded before ACC on the non-target images was
    assert NONTARGET_CAPTION not in text and reference in text
    partial = {k: v for i, (k, v) in enumerate(rows.items()) if i % 2}
    tables = [study_table(cfg, s, study_cells(cfg, s), partial) for s in cfg.all_studies()]
    assert "pending" in markdown(cfg, tables, partial)


class Checker(html.parser.HTMLParser):
    """Checks that tags are balanced (void elements aside) and collects the images."""

    VOID = frozenset({"meta", "img", "br", "hr", "link", "input"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        elif tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack.pop() == tag, f"unbalanced </{tag}>"


def check_report(text: str) -> None:
    checker = Checker()
    checker.feed(text)
    checker.close()
    assert checker.stack == []
    assert checker.images and all(src.startswith("data:image/png;base64,") for src in checker.images)
    for src in checker.images:
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as img:
            img.verify()


def test_report_html_parses_with_inlined_chart(bench_run, tmp_path):
    _, out, outcome = bench_run
    assert sorted(p.name for p in outcome.files) == ["report.html", "results.md"]
    text = (out / "report.html").read_text()
    check_report(text)
    assert "<table>" in text and "Before" in text and "badnets" in text
    cfg = digits_config(tmp_path, data="cifar10:/nowhere", arch="wrn16_1", attacks=("badnets",))
    cfg = replace(cfg, defenses=("none", "finetune", "nad"), seeds=(0, 1, 2), clean_ratios=(0.05,))
    rows = synthetic_rows(cfg)
    report = report_html(cfg, [study_table(cfg, s, study_cells(cfg, s), rows) for s in cfg.all_studies()], rows)
    check_report(report)
    assert "82.12 / 3.57" in report


# -- GTSRB ------------------------------------------------------------------------------------------


def write_gtsrb(root: Path) -> dict[str, list[int]]:
    """A tiny GTSRB in the official layout: 3 classes x 2 training images, 4 test images, various sizes."""
    rng = np.random.default_rng(0)
    header = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n"

    def ppm(path: Path, w: int, h: int) -> None:
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, format="PPM")

    labels: dict[str, list[int]] = {"train": [], "test": []}
    for c in (0, 1, 2):
        folder = root / "Final_Training" / "Images" / f"{c:05d}"
        folder.mkdir(parents=True)
        rows = []
        for i, (w, h) in enumerate([(29, 30), (41, 37)]):
            name = f"00000_{i:05d}.ppm"
            ppm(folder / name, w, h)
            rows.append(f"{name};{w};{h};5;5;{w - 5};{h - 5};{c}\n")
            labels["train"].append(c)
        (folder / f"GT-{c:05d}.csv").write_text(header + "".join(rows))
    test = root / "Final_Test" / "Images"
    test.mkdir(parents=True)
    rows = []
    for i, c in enumerate([2, 0, 1, 2]):
        ppm(test / f"{i:05d}.ppm", 33 + i, 31)
        rows.append(f"{i:05d}.ppm;{33 + i};31;5;5;25;25;{c}\n")
        labels["test"].append(c)
    (test / "GT-final_test.csv").write_text(header + "".join(rows))
    return labels


def test_gtsrb_loader(tmp_path):
    from nad.data.sources import DEFAULT_NORMALIZE, default_test_spec
    from nad.models import parse_normalize

    labels = write_gtsrb(tmp_path / "GTSRB")
    for root in (tmp_path, tmp_path / "GTSRB"):  # the archive's GTSRB/ folder or the folder inside it
        train = load_data(f"gtsrb:{root}")
        assert train.x.shape == (6, 3, 32, 32) and train.x.dtype == torch.uint8
        assert train.y.tolist() == labels["train"] and train.num_classes == 43
        test = load_data(f"gtsrb:{root}:test")
        assert test.x.shape == (4, 3, 32, 32) and test.y.tolist() == labels["test"]
    assert load_data(str(tmp_path)).y.tolist() == labels["train"]  # a bare path is recognised
    assert default_test_spec(f"gtsrb:{tmp_path}", None) == f"gtsrb:{tmp_path}:test"
    assert parse_normalize(DEFAULT_NORMALIZE["gtsrb"]) is not None
    (tmp_path / "GTSRB" / "Final_Test" / "Images" / "GT-final_test.csv").unlink()
    with pytest.raises(NadError, match=r"GT-final_test\.csv"):
        load_data(f"gtsrb:{tmp_path}:test")
    with pytest.raises(NadError, match="no GTSRB here"):
        load_data(f"gtsrb:{tmp_path / 'GTSRB' / 'Final_Test'}")


# -- presets and configuration errors ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["paper-cifar10", "ablation-cifar10", "paper-gtsrb"])
def test_presets_load_and_expand(name):
    assert name in preset_names()
    data = "gtsrb:/nowhere" if "gtsrb" in name else "cifar10:/nowhere"
    full, quick = load_bench(name, data=data), load_bench(name, quick=True, data=data)
    assert full.arch == "wrn16_1" and full.seeds == (0, 1, 2) and not full.quick
    assert quick.quick and quick.train_size and quick.test_size
    cells = expand(quick)
    assert max(c.model.train.epochs for c in cells) < min(c.model.train.epochs for c in expand(full))
    assert {c.attack for c in cells} == set(quick.attacks)
    if name.startswith("paper"):
        assert quick.attacks == ("badnets", "trojan", "blend", "cl", "sig", "refool", "wanet")
        paper = {"none", "finetune", "fine_pruning", "mcr", "nad"}
        studies = full.all_studies()
        # the paper's columns on all seven attacks in every study but cosine, a check on two of nad train's models
        assert all(paper <= set(s.defenses) and len(s.attacks) == 7 for s in studies if s.name != "cosine")
        assert {c.defense for c in cells} == set().union(*(s.defenses for s in studies))
        profiles = {s.profile for s in studies}
        assert len(cells) == len(quick.seeds) * sum(len(s.attacks) * len(s.defenses) for s in studies)
        assert full.clean_ratios == (0.05,)
        if name == "paper-cifar10":
            assert profiles == {"standard", "reference", "cosine"}
    else:
        assert [s.name for s in full.studies] == ["clean-ratio", "attention", "layers", "teacher", "betas"]
        ratios = {c.clean_ratio for c in expand(full) if c.study == "clean-ratio"}
        assert ratios == {None, 0.01, 0.05, 0.1, 0.2}
    expected = "gtsrb" if "gtsrb" in name else "cifar10"
    assert {c.model.normalize for c in cells} == {expected}


def bench_error(capsys, tmp_path, text: str, *extra: str) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    code = main(["bench", str(path), "--out", str(tmp_path / "out"), "--quiet", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("nad: error:"), err
    return err[0]


def test_config_errors_are_one_line(capsys, tmp_path):
    assert "unknown key 'epochz'" in bench_error(capsys, tmp_path, DIGITS_YAML + "epochz: 3\n")
    line = bench_error(capsys, tmp_path, DIGITS_YAML.replace("  seeds: [0]", "  seedz: [0]"))
    assert "quick" in line and "unknown key 'seedz'" in line
    typo = DIGITS_YAML.replace("teacher_epochs: 1", "teacher_epoch: 1").replace("[none, finetune]", "[none, nad]")
    assert "teacher_epoch" in bench_error(capsys, tmp_path, typo)
    assert "unknown defense 'nda'" in bench_error(capsys, tmp_path, DIGITS_YAML.replace("[none, finetune]", "[nda]"))
    assert "--shard" in bench_error(capsys, tmp_path, DIGITS_YAML, "--shard", "3/2")
    assert "no training data" in bench_error(capsys, tmp_path, DIGITS_YAML.replace("data: digits", "data: null"))
    assert not (tmp_path / "out").exists()


def test_cli_bench_quick(tmp_path, capsys):
    assert "bench" in COMMANDS
    path = tmp_path / "bench.yaml"
    path.write_text(DIGITS_YAML)
    out = tmp_path / "out"
    assert main(["bench", str(path), "--quick", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"2 cells run, 0 already done, of 2; 1 models trained", printed)
    assert "(quick)" in (out / "results.md").read_text()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("")
    bench_error(capsys, tmp_path, DIGITS_YAML, "--out", str(tmp_path / "other"))


def test_a_diverging_defense_is_recorded_as_failed(bench_run, tmp_path):
    cfg = replace(bench_run[0], defenses=("none", "finetune:optim.lr=1e30"), seeds=(0,))
    out = copy_run(bench_run, tmp_path, results=False)
    outcome = run_bench(cfg, out, quiet=True)
    assert outcome.trained == 0 and len(outcome.failed) == 1
    failed = next(r for r in lines_of(out / RESULTS) if r["error"])
    assert "non-finite" in failed["error"] and failed["acc"] is None and failed["der"] is None
    assert "| failed |" in (out / "results.md").read_text()
    assert run_bench(cfg, out, quiet=True).ran == []  # a failure is a result: not run again


def test_paired_differences_name_each_seed():
    from nad.bench.results import Entry, paired_text

    def entry(asrs: dict[int, float]) -> Entry:
        return Entry.of([{"seed": s, "acc": 80.0, "asr": v} for s, v in asrs.items()], 0, 0)

    nad, ft = entry({0: 30.0, 1: 60.0, 2: 50.0}), entry({0: 50.0, 1: 80.0, 2: 45.0, 3: 10.0})
    assert paired_text("ASR", nad, ft) == "; ASR per seed -20.0, -20.0, +5.0 (lower on 2 of 3 seeds)"
    assert paired_text("ASR", entry({0: 1.0}), ft) == ""  # one shared seed: nothing to pair
