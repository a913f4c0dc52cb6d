"""``results.jsonl`` (one line per finished cell) and its aggregation into tables of mean ± std over seeds.

A line is appended with one ``write`` on an ``O_APPEND`` descriptor, then ``fsync``: a stopped run leaves at
worst a truncated last line, which reading skips and the next run cuts off before it appends. Each shard of a
sharded run appends to its own ``results-I-of-N.jsonl``; reading takes every ``results*.jsonl`` in the folder.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nad.bench.config import BenchConfig, Study
from nad.bench.grid import NONE, Cell, Shard
from nad.spec import split_spec

RESULTS = "results.jsonl"

#: Numbers the NAD reference README publishes (github.com/bboylyg/NAD): CIFAR-10, BadNets, WRN-16-1, 5% clean
#: data, as (ACC, ASR) per defense. Its ACC is measured on the non-target test images only.
REFERENCE: dict[tuple[str, str, str], dict[str, tuple[float, float]]] = {
    ("cifar10", "badnets", "wrn16_1"): {NONE: (85.65, 100.0), "finetune": (82.32, 18.13), "nad": (82.12, 3.57)},
}
REFERENCE_RATIO = 0.05
REFERENCE_NOTE = (
    "Reference: the numbers the NAD reference README (github.com/bboylyg/NAD) publishes for CIFAR-10, BadNets, "
    "WRN-16-1 and 5% clean data. Its ACC is taken on the non-target test images only, so its rows stand in the "
    "table of that measure (`acc_nontarget` in results.jsonl), not in the ACC one. Its BadNets trigger targets label 5."
)
PRETTY = {
    NONE: "Before",
    "finetune": "FT",
    "fine_pruning": "FP",
    "mcr": "MCR",
    "nad": "NAD",
    "anp": "ANP",
    "anp_ft": "ANP+FT",
    "ibau": "I-BAU",
    "fst": "FST",
    "sau": "SAU",
    "ft_sam": "FT-SAM",
    "nc": "NC",
    "auto": "Auto",
}


class ResultStore:
    """Appends this process's finished cells to its own results file."""

    def __init__(self, out: Path, shard: Shard) -> None:
        self.path = out / (RESULTS if shard.count == 1 else f"results-{shard.name}.jsonl")
        cut_partial_line(self.path)

    def ids(self) -> set[str]:
        return set(read_file(self.path))

    def append(self, row: dict[str, Any]) -> None:
        line = (json.dumps(row, separators=(",", ":")) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            view = memoryview(line)
            while view:  # one write for a regular file; the loop only guards against a short write
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)


def cut_partial_line(path: Path) -> None:
    """Remove a last line that a stopped run left without its newline, so the next append starts clean."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as fh:
            fh.truncate(data.rfind(b"\n") + 1)
            os.fsync(fh.fileno())


def read_file(path: Path) -> dict[str, dict[str, Any]]:
    """The finished cells in one results file, by id (the first line of an id wins)."""
    rows: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return rows
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a truncated last line
        if isinstance(row, dict) and isinstance(row.get("id"), str):
            rows.setdefault(row["id"], row)
    return rows


def read_rows(out: Path) -> dict[str, dict[str, Any]]:
    """Every finished cell in ``out``'s results files (``results.jsonl`` and the shards'), by id."""
    rows: dict[str, dict[str, Any]] = {}
    for path in sorted(out.glob("results*.jsonl")):
        for key, row in read_file(path).items():
            rows.setdefault(key, row)
    return rows


# -- aggregation --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation of one metric over seeds (``std`` None for a single seed)."""

    mean: float
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Stat | None:
        found = [float(v) for v in values if v is not None and math.isfinite(v)]
        if not found:
            return None
        return cls(statistics.fmean(found), statistics.stdev(found) if len(found) > 1 else None, len(found))


@dataclass(frozen=True)
class Entry:
    """One table cell: ACC, ASR, RA and DER over the seeds that finished (and ACC on the non-target test images,
    the measure of the published reference numbers); how many seeds failed or are pending."""

    acc: Stat | None = None
    asr: Stat | None = None
    ra: Stat | None = None
    der: Stat | None = None
    acc_nontarget: Stat | None = None
    failed: int = 0
    pending: int = 0
    by_seed: dict[int, dict[str, Any]] = field(default_factory=dict, compare=False)  # seed -> its row

    @classmethod
    def of(cls, scores: list[dict[str, Any]], failed: int, pending: int) -> Entry:
        def stat(key: str) -> Stat | None:
            return Stat.of(s.get(key) for s in scores)

        seeds = {int(s["seed"]): s for s in scores if s.get("seed") is not None}
        metrics = {key: stat(key) for key in ("acc", "asr", "ra", "der", "acc_nontarget")}
        return cls(**metrics, failed=failed, pending=pending, by_seed=seeds)


@dataclass(frozen=True)
class TableRow:
    label: str
    attack: str
    clean_ratio: float
    entries: list[Entry]
    reference: list[tuple[float, float] | None] | None = None  # (ACC, ASR) per column, where published


@dataclass
class Table:
    study: str
    columns: list[str]  # display labels: "Before", then the defenses
    defenses: list[str]  # the defense specs behind columns[1:]
    rows: list[TableRow] = field(default_factory=list)
    comparisons: list[str] = field(default_factory=list)
    cells: set[str] = field(default_factory=set)  # the ids of the study's cells


def defense_label(spec: str) -> str:
    name, params = split_spec(spec)
    pretty = PRETTY.get(name, name)
    return pretty + (" " + " ".join(f"{k}={v}" for k, v in params.items()) if params else "")


def attack_labels(attacks: Iterable[str]) -> dict[str, str]:
    """The attack's name where it is unique in the bench, else its whole spec."""
    attacks = list(attacks)
    names = [split_spec(a)[0] for a in attacks]
    return {a: n if names.count(n) == 1 else a for a, n in zip(attacks, names)}


def study_table(cfg: BenchConfig, study: Study, cells: list[Cell], rows: dict[str, dict[str, Any]]) -> Table:
    """The table of one study: a row per attack (and clean ratio, when it has several), a column per defense."""
    defenses = [d for d in study.defenses if split_spec(d)[0] != NONE]
    table = Table(study.name, ["Before", *map(defense_label, defenses)], defenses)
    table.cells = {c.id for c in cells}
    labels = attack_labels(dict.fromkeys(a for s in cfg.all_studies() for a in s.attacks))
    many = len(study.clean_ratios) > 1
    for attack in study.attacks:
        mine = [c for c in cells if c.attack == attack]
        before = before_scores(mine, rows)
        for ratio in study.clean_ratios:
            label = labels.get(attack, attack) + (f" @ {ratio:.0%}" if many else "")
            entries = [Entry.of(list(before.values()), 0, len(cfg.seeds) - len(before))]
            for defense in defenses:
                group = [c for c in mine if c.defense == defense and c.clean_ratio == ratio]
                found = [rows[c.id] for c in group if c.id in rows]
                ok = [r for r in found if not r.get("error")]
                entries.append(Entry.of(ok, len(found) - len(ok), len(group) - len(found)))
            row = TableRow(label, attack, ratio, entries, reference_row(cfg, attack, ratio, defenses))
            table.rows.append(row)
            table.comparisons += compare(study, row, defenses)
    return table


def before_scores(cells: list[Cell], rows: dict[str, dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The backdoored model's scores per seed, from any finished cell of that attack and seed."""
    found: dict[int, dict[str, Any]] = {}
    for cell in cells:
        row = rows.get(cell.id)
        if row is not None and row.get("before") is not None:
            found.setdefault(cell.seed, row["before"])
    return found


def reference_row(cfg: BenchConfig, attack: str, ratio: float, defenses: list[str]):
    from nad.data.sources import parse_data_spec

    kind = parse_data_spec(cfg.data)[0] if cfg.data else ""
    published = REFERENCE.get((kind, split_spec(attack)[0], cfg.arch))
    if published is None or not math.isclose(ratio, REFERENCE_RATIO):
        return None
    found = [None if split_spec(d)[1] else published.get(split_spec(d)[0]) for d in defenses]
    return [published.get(NONE), *found] if any(found) else None  # only beside a published defense


def baseline_of(study: Study) -> str | None:
    if study.baseline is not None:
        return study.baseline
    others = [d for d in study.defenses if split_spec(d)[0] != NONE]
    return "nad" if "nad" in others else (others[0] if others else None)


def compare(study: Study, row: TableRow, defenses: list[str]) -> list[str]:
    """One line per other defense: the baseline's ASR and ACC gaps, and whether each exceeds the spread."""
    base = baseline_of(study)
    if base is None or base not in defenses:
        return []
    ours = row.entries[1 + defenses.index(base)]
    parts = []
    for defense, entry in zip(defenses, row.entries[1:]):
        if defense == base:
            continue
        gaps = [gap_text("ASR", ours.asr, entry.asr), gap_text("ACC", ours.acc, entry.acc)]
        if all(gaps):
            paired = paired_text("ASR", ours, entry)
            parts.append(f"{defense_label(base)} vs {defense_label(defense)}: {gaps[0]}; {gaps[1]}{paired}")
    return [f"{row.label}: {part}" for part in parts]


def paired_text(metric: str, a: Entry, b: Entry) -> str:
    """The per-seed differences of ``metric`` where both defenses ran a seed (the same clean subset), and on
    how many seeds ``a`` was lower: a consistent sign is evidence the unpaired spread rule cannot see."""
    key = metric.lower()
    seeds = sorted(
        s for s in a.by_seed.keys() & b.by_seed.keys() if None not in (a.by_seed[s].get(key), b.by_seed[s].get(key))
    )
    if len(seeds) < 2:
        return ""
    diffs = [float(a.by_seed[s][key]) - float(b.by_seed[s][key]) for s in seeds]
    lower = sum(d < 0 for d in diffs)
    listed = ", ".join(f"{d:+.1f}" for d in diffs)
    return f"; {metric} per seed {listed} (lower on {lower} of {len(seeds)} seeds)"


def gap_text(metric: str, a: Stat | None, b: Stat | None) -> str:
    if a is None or b is None:
        return ""
    gap = a.mean - b.mean
    if a.std is None or b.std is None:
        return f"{metric} {gap:+.1f} points (one seed: spread unknown)"
    spread = a.std + b.std
    verdict = "larger" if abs(gap) > spread else "smaller"
    return f"{metric} {gap:+.1f} points, {verdict} than the spread ({spread:.1f})"
