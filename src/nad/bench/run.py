"""The bench loop: run every cell of this shard that has no result yet, then write ``results.md`` and
``report.html`` from every result in the folder (all shards).

A cell loads (or trains, once, into the cache) its backdoored model, draws its clean subset with its seed,
runs its defense and scores the result. Its line in ``results.jsonl`` is appended only when it is complete,
so a stopped run loses at most the cell it was in; started again, it skips every finished cell.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from nad.api import select_clean
from nad.bench.cache import CachedModel, ModelCache
from nad.bench.config import BenchConfig
from nad.bench.grid import Cell, CellFilter, Shard, expand, resolve_attack, study_cells
from nad.bench.render import write_outputs
from nad.bench.results import ResultStore, attack_labels, defense_label, read_rows, study_table
from nad.data import ImageData, load_data, stratified_split
from nad.device import describe
from nad.errors import NadError
from nad.io import write_json
from nad.metrics import Scores, defense_effectiveness, evaluate
from nad.models import Classifier
from nad.training import NonFiniteLoss


@dataclass
class Outcome:
    cells: int  # in this shard
    skipped: int  # already finished before this run
    ran: list[str] = field(default_factory=list)  # ids of the cells this run finished
    failed: list[str] = field(default_factory=list)  # ids of cells whose defense diverged
    trained: int = 0  # backdoored models trained by this run
    seconds: float = 0.0
    files: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class BenchData:
    train: ImageData
    test: ImageData


def subset(data: ImageData, size: int) -> ImageData:
    """A fixed (seed 0), class-stratified subset of about ``size`` images; all of them for 0."""
    if not size or size >= len(data):
        return data
    chosen, _ = stratified_split(data.y, size / len(data), seed=0)
    return data.subset(chosen, name=f"{data.name} ({len(chosen)} images)")


def load_bench_data(cfg: BenchConfig, device: torch.device | str) -> BenchData:
    from nad.data.sources import default_test_spec

    train = subset(load_data(cfg.data or "", "train"), cfg.train_size)
    test = subset(load_data(default_test_spec(cfg.data or "", cfg.test) or "", "test"), cfg.test_size)
    for spec in dict.fromkeys(a for s in cfg.all_studies() for a in s.attacks):
        resolve_attack(spec, cfg).check(train.num_classes, train.image_shape)  # refuse a misfit before training
    return BenchData(train.to(device), test.to(device))


def measure(clf: Classifier, test: ImageData, attack: Any) -> dict[str, float | None]:
    """ACC, ASR, RA and ACC on the non-target images, as ``nad.metrics.evaluate`` gives them (unrounded)."""
    scores = evaluate(clf, test, attack)
    acc_nontarget = scores.acc if attack is None else scores.acc_nontarget
    return {"acc": scores.acc, "asr": scores.asr, "ra": scores.ra, "acc_nontarget": acc_nontarget}


def as_scores(measured: dict[str, float | None]) -> Scores:
    return Scores(measured["acc"] or 0.0, measured["asr"], measured["ra"])


def rounded(measured: dict[str, float | None] | None) -> dict[str, float | None] | None:
    return None if measured is None else {k: None if v is None else round(v, 4) for k, v in measured.items()}


class Runner:
    """Runs cells against one data set, keeping the current backdoored model and its scores in memory."""

    def __init__(self, cfg: BenchConfig, data: BenchData, cache: ModelCache, quiet: bool) -> None:
        self.cfg, self.data, self.cache, self.quiet = cfg, data, cache, quiet
        self.current: CachedModel | None = None
        self.before: dict[str, dict[str, float | None]] = {}

    def model(self, cell: Cell) -> CachedModel:
        if self.current is None or self.current.key != cell.model.key:
            self.current = self.cache.get(cell.model, self.data.train, self.quiet)
        return self.current

    def run(self, cell: Cell, phase: Callable[[str], None] = lambda name: None) -> dict[str, Any]:
        """Run one cell and return its results line; ``phase`` is told as each phase of the cell begins."""
        start = time.perf_counter()
        phase("backdoored model" if self.cache.has(cell.model) else "training the backdoored model")
        cached = self.model(cell)
        trained_now, cached.trained_now = cached.trained_now, False  # count a model's training in one cell only
        model_time = time.perf_counter() - start if trained_now else 0.0
        if cached.key not in self.before:
            phase("scoring the backdoored model")
            self.before[cached.key] = measure(cached.model, self.data.test, cached.attack)
        before = self.before[cached.key]
        after: dict[str, float | None] | None = before
        error, clean_size, decisions = None, None, {}
        if cell.defense_config is not None:
            phase(cell.defense_name)
            clean = select_clean(self.data.train, cell.clean_ratio or 0.0, cell.seed)
            clean_size = len(clean)
            defense = cell.make_defense()
            defense.check(cached.model, clean)
            try:
                repair = defense.repair(cached.model, clean, quiet=self.quiet)
                decisions = {k: repair.log[k] for k in DECISIONS if k in repair.log}
                phase("scoring")
                after = measure(repair.model, self.data.test, cached.attack)
            except NonFiniteLoss as exc:  # a diverging configuration is a result, not a crash of the grid
                after, error = None, str(exc)
        der = None
        if after is not None and cell.defense_config is not None:
            der = defense_effectiveness(as_scores(before), as_scores(after))
        return {
            "id": cell.id,
            "study": cell.study,
            "attack": cell.attack,
            "defense": cell.defense,
            "clean_ratio": cell.clean_ratio,
            "seed": cell.seed,
            **(rounded(after) or {"acc": None, "asr": None, "ra": None, "acc_nontarget": None}),
            "der": None if der is None else round(der, 4),
            "before": rounded(before),
            "error": error,
            "seconds": round(time.perf_counter() - start - model_time, 2),
            "device": describe(self.data.test.x.device),
            "model": cached.key,
            "model_seconds": cached.seconds,
            "model_trained": trained_now,
            "clean_size": clean_size,
            "decisions": decisions,
            "config": self.config_of(cell),
        }

    def config_of(self, cell: Cell) -> dict[str, Any]:
        defense = dataclasses.asdict(cell.defense_config) if cell.defense_config is not None else None
        return {
            **cell.model.to_json(),
            "test": cell.test,
            "test_size": cell.test_size,
            "defense": cell.defense_name,
            "defense_config": defense,
            "quick": self.cfg.quick,
        }


#: What a defense decided on its own, kept in a cell's row from its log: ``auto``'s route, the classes the scan
#: flagged and whether ``nc`` unlearned, how many neurons ANP pruned.
DECISIONS = ("route", "flagged", "unlearned", "pruned", "below_threshold", "val_size")


def clock(seconds: float) -> str:
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """The grid's bar, with an estimate of the time left, and below it one bar per cell, through its phases
    (backdoored model, defense, scoring), above the training bars of the phase running.

    The estimate counts model training apart: (models still to train) x (mean training time so far) plus,
    for every cell left, the mean time of the finished cells of its defense (of all cells, for a defense not
    yet seen). "So far" includes the ``finished`` rows of earlier runs, so a resumed grid shows an estimate
    from its first cell on.
    """

    def __init__(
        self,
        cells: list[Cell],
        todo: list[Cell],
        cache: ModelCache,
        quiet: bool,
        finished: Iterable[dict[str, Any]] = (),
    ) -> None:
        self.bar = tqdm(
            total=len(cells),
            initial=len(cells) - len(todo),
            desc="bench",
            disable=quiet,
            dynamic_ncols=True,
            bar_format="{desc}: {n_fmt}/{total_fmt} cells |{bar}| {elapsed}{postfix}",
        )
        self.todo = list(todo)
        self.untrained = {c.model.key for c in todo if not cache.has(c.model)}
        self.cell_times: dict[str, list[float]] = {}
        self.model_times: list[float] = []
        self.labels = attack_labels(dict.fromkeys(c.attack for c in cells))
        self.cell_bar: tqdm | None = None
        for row in finished:
            self.learn(row)

    def learn(self, row: dict[str, Any]) -> None:
        """Add a finished cell's wall time (and its model's, if the cell trained it) to the estimate."""
        self.cell_times.setdefault(row["defense"], []).append(row["seconds"])
        if row["model_trained"]:
            self.model_times.append(row["model_seconds"])

    def start(self, cell: Cell) -> Callable[[str], None]:
        """Open the cell's bar; returns the function that moves it on to a named phase."""
        ratio = "" if cell.clean_ratio is None else f" {cell.clean_ratio:.0%}"
        label = f"{self.labels[cell.attack]} / {defense_label(cell.defense)}{ratio} / seed {cell.seed}"
        self.bar.set_postfix_str(f"left {self.eta()}")
        cell_bar = tqdm(desc=label, disable=self.bar.disable, leave=False, bar_format="{desc}{postfix} | {elapsed}")
        self.cell_bar = cell_bar
        return cell_bar.set_postfix_str

    def finish(self, cell: Cell, row: dict[str, Any]) -> None:
        if self.cell_bar is not None:
            self.cell_bar.close()
        self.todo.remove(cell)
        self.learn(row)
        self.untrained.discard(cell.model.key)
        self.bar.update()
        self.bar.set_postfix_str(f"left {self.eta()}")

    def eta(self) -> str:
        every = [t for times in self.cell_times.values() for t in times]
        if not every:
            return "?"
        mean = sum(every) / len(every)
        left = sum(
            sum(self.cell_times[c.defense_name]) / len(self.cell_times[c.defense_name])
            if c.defense_name in self.cell_times
            else mean
            for c in self.todo
        )
        if self.untrained:
            if not self.model_times:
                return "?"
            left += len(self.untrained) * sum(self.model_times) / len(self.model_times)
        return clock(left)

    def close(self) -> None:
        if self.cell_bar is not None:
            self.cell_bar.close()
        self.bar.close()


def render(cfg: BenchConfig, out: Path, cells: list[Cell]) -> list[Path]:
    """Write ``results.md`` and ``report.html`` from every finished cell in ``out``; pending ones marked."""
    rows = read_rows(out)
    tables = [study_table(cfg, study, study_cells(cfg, study), rows) for study in cfg.all_studies()]
    grid = {c.id for c in cells}
    return write_outputs(out, cfg, tables, {k: v for k, v in rows.items() if k in grid})


def run_bench(
    cfg: BenchConfig,
    out: Path,
    shard: Shard | None = None,
    quiet: bool = False,
    device: torch.device | str = "cpu",
    report_only: bool = False,
    zoo: Path | None = None,
    only: CellFilter | None = None,
) -> Outcome:
    """Run this shard's unfinished cells of ``cfg`` into ``out``, rendering the tables after each one.

    With ``report_only``, run nothing: render what has finished (e.g. while another process runs the grid).
    ``zoo``: a folder of trained models (``nad train`` outputs) that fills the model cache where one matches.
    ``only``: run just the cells it matches (the shard is then taken of those); the tables still show them all.
    """
    start = time.perf_counter()
    shard = shard or Shard()
    cells = expand(cfg)
    mine = shard.select((only or CellFilter()).select(cells))
    if report_only:
        if not (out / "bench.json").is_file():
            raise NadError(f"--out {out}: no bench has run there yet, so there is nothing to report")
        rows = read_rows(out)
        outcome = Outcome(len(mine), sum(c.id in rows for c in mine), files=render(cfg, out, cells))
        outcome.seconds = time.perf_counter() - start
        return outcome
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "bench.json", {"config": dataclasses.asdict(cfg), "cells": len(cells)})
    store = ResultStore(out, shard)
    rows = read_rows(out)
    if shard.count == 1:  # gather what shards finished into results.jsonl, so that it holds every cell
        own = store.ids()
        for cell in cells:
            if cell.id in rows and cell.id not in own:
                store.append(rows[cell.id])
    todo = [c for c in mine if c.id not in rows]
    outcome = Outcome(len(mine), len(mine) - len(todo))
    cache = ModelCache(out / "models", zoo)
    if todo:
        runner = Runner(cfg, load_bench_data(cfg, device), cache, quiet)
        progress = Progress(mine, todo, cache, quiet, finished=(rows[c.id] for c in mine if c.id in rows))
        try:
            for cell in list(todo):
                row = runner.run(cell, progress.start(cell))
                store.append(row)
                outcome.ran.append(cell.id)
                if row["error"]:
                    outcome.failed.append(cell.id)
                progress.finish(cell, row)
                render(cfg, out, cells)  # the tables follow a long run cell by cell
        finally:
            progress.close()
    outcome.trained = cache.trained
    outcome.files = render(cfg, out, cells)
    outcome.seconds = time.perf_counter() - start
    return outcome
