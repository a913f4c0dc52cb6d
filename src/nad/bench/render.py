"""``results.md`` and ``report.html`` from the aggregated tables: ACC / ASR per attack and defense."""

from __future__ import annotations

import html
import io
from collections import Counter
from pathlib import Path
from typing import Any

from nad.bench.config import BenchConfig
from nad.bench.grid import data_specs
from nad.bench.results import REFERENCE_NOTE, Entry, Stat, Table
from nad.io import write_text

SPREAD_RULE = (
    "A gap is *larger than the spread* when it exceeds the sum of the two standard deviations over seeds "
    "(the ±1 std intervals do not overlap); otherwise the seeds cannot tell the two defenses apart. The two "
    "defenses of one seed share the backdoored model and the clean subset, so the per-seed differences are paired: "
    "a sign that holds on every seed is weaker evidence than a gap beyond the spread, but not none."
)


NONTARGET_CAPTION = (
    "ACC on the non-target test images % / ASR %: the measure of the published reference numbers, and of papers "
    "that leave the target class out of ACC."
)


def has_nontarget(table: Table) -> bool:
    """Whether the results carry ACC on the non-target images (results from before it was recorded do not)."""
    return any(e.acc_nontarget is not None for row in table.rows for e in row.entries)


def acc_tables(table: Table) -> list[tuple[str, tuple[str, str], bool]]:
    """A study's ACC / ASR tables as (caption, metrics, with the reference rows). The published reference rows
    stand beside ACC on the non-target images, their measure, where the results carry it; else beside ACC."""
    plain = "ACC % / ASR %, mean ± std over seeds."
    if not has_nontarget(table):
        return [(plain, ("acc", "asr"), True)]
    return [(plain, ("acc", "asr"), False), (NONTARGET_CAPTION, ("acc_nontarget", "asr"), True)]


def stat_text(stat: Stat | None, digits: int = 1) -> str:
    if stat is None:
        return "–"
    return f"{stat.mean:.{digits}f}" + ("" if stat.std is None else f" ± {stat.std:.{digits}f}")


def entry_text(entry: Entry, metrics: tuple[str, str] = ("acc", "asr"), digits: int = 1) -> str:
    values = [getattr(entry, m) for m in metrics]
    if all(v is None for v in values):
        return "failed" if entry.failed else "…" if entry.pending else "–"
    text = " / ".join(stat_text(v, digits) for v in values)
    notes = [f"{n} {what}" for n, what in ((entry.failed, "failed"), (entry.pending, "pending")) if n]
    return text + (f" ({', '.join(notes)})" if notes else "")


def reference_text(pair: tuple[float, float] | None) -> str:
    return "–" if pair is None else f"{pair[0]:.2f} / {pair[1]:.2f}"


def summary_lines(cfg: BenchConfig, tables: list[Table], rows: dict[str, dict[str, Any]]) -> list[str]:
    sizes = [f"train subset of about {cfg.train_size:,} images" if cfg.train_size else "all training images"]
    sizes.append(f"test subset of about {cfg.test_size:,}" if cfg.test_size else "all test images")
    models = "one backdoored model per attack and seed" if cfg.model_per_seed else "one backdoored model per attack"
    seconds = sum(float(r.get("seconds") or 0) for r in rows.values())
    trained = sum(float(r.get("model_seconds") or 0) for r in rows.values() if r.get("model_trained"))
    grid = set().union(*(t.cells for t in tables))  # a cell shared by two studies counts once
    done, total = len(grid & set(rows)), len(grid)
    quick = [
        "- **quick run**: fewer epochs, a subset of the data and fewer seeds (the preset's `quick:` overrides); "
        "its numbers show that every cell runs, not how the defenses compare"
    ]
    return [
        *(quick if cfg.quick else []),
        f"- data: `{cfg.data}` ({', '.join(sizes)}); test: `{data_specs(cfg)[1]}`",
        *model_lines(cfg, models),
        f"- seeds: {', '.join(map(str, cfg.seeds))}; every number is the mean ± sample standard deviation over "
        "them (a seed draws the clean subset and seeds the defense's training"
        + (", and the backdoored model's" if cfg.model_per_seed else "")
        + ")",
        f"- cells: {done} of {total} finished; their wall time: {seconds:,.0f} s of defenses and scoring, "
        f"{trained:,.0f} s of model training; measured on {devices_text(rows)}",
        "- ACC: clean accuracy on the test images; ASR: triggered non-target images classified as the target; "
        "RA: triggered non-target images classified as their true label; DER = (max(0, ΔASR) − max(0, ΔACC) + 1) / 2",
    ]


def devices_text(rows: dict[str, dict[str, Any]]) -> str:
    """How many cells ran on each device (rows from before rows named theirs ran on the CPU)."""
    counts = Counter(r.get("device") or "cpu (not recorded)" for r in rows.values())
    return ", ".join(f"{name} ({n} cells)" for name, n in sorted(counts.items()))


def model_lines(cfg: BenchConfig, models: str) -> list[str]:
    """How the backdoored models trained: one line, or one per study when studies name training profiles."""
    if not any(s.profile for s in cfg.all_studies()):
        t = cfg.train
        return [
            f"- model: {cfg.arch}, trained {t.epochs} epochs (batch {t.batch_size}, "
            f"lr {t.optim.lr}, {t.optim.schedule} schedule); {models}"
        ]
    lines = []
    for study in cfg.all_studies():
        t = cfg.model_train(study)
        aug = t.augment
        augmented = (
            "crop, flip, Cutout"
            if aug.crop_padding and aug.flip and aug.cutout_holes
            else ("augmented" if aug.crop_padding or aug.flip or aug.cutout_holes else "no augmentation")
        )
        order = "shuffled" if t.shuffle else "the data's own order every epoch"
        lines.append(
            f"- model, study {study.name} (profile `{study.profile or 'bench train'}`): {cfg.arch}, {t.epochs} epochs, "
            f"batch {t.batch_size}, lr {t.optim.lr} ({t.optim.schedule} schedule), {augmented}, {order}, "
            f"{t.precision}; {models}"
        )
    return lines


def markdown(cfg: BenchConfig, tables: list[Table], rows: dict[str, dict[str, Any]]) -> str:
    title = f"# nad bench: {cfg.name}" + (" (quick)" if cfg.quick else "")
    lines = [title, "", *summary_lines(cfg, tables, rows)]
    references = False
    for table in tables:
        heading = "Attacks × defenses" if len(tables) == 1 else f"Study: {table.study}"
        lines += ["", f"## {heading}"]
        for caption, metrics, reference in acc_tables(table):
            lines += ["", caption, "", *md_table(table, metrics, reference)]
        references = references or any(r.reference for r in table.rows)
        lines += ["", "RA % / DER (Before: RA of the backdoored model).", ""]
        lines += md_table(table, ("ra", "der"), reference=False)
        if table.comparisons:
            lines += ["", *(f"- {c}" for c in table.comparisons), "", SPREAD_RULE]
    if references:
        lines += ["", REFERENCE_NOTE]
    return "\n".join(lines) + "\n"


def md_table(table: Table, metrics: tuple[str, str], reference: bool) -> list[str]:
    lines = ["| attack | " + " | ".join(table.columns) + " |", "|---" * (len(table.columns) + 1) + "|"]
    for row in table.rows:
        cells = [cell_text(e, metrics) for e in row.entries]
        lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
        if reference and row.reference:
            lines.append(f"| {row.label} (reference) | " + " | ".join(map(reference_text, row.reference)) + " |")
    return lines


def cell_text(entry: Entry, metrics: tuple[str, str]) -> str:
    """``ACC / ASR``, or ``RA / DER`` (DER, a fraction, with two decimals; the Before column has no DER)."""
    if metrics != ("ra", "der") or (entry.ra is None and entry.der is None):
        return entry_text(entry, metrics)
    ra = stat_text(entry.ra)
    return ra if entry.der is None else f"{ra} / {stat_text(entry.der, 2)}"


# -- HTML ---------------------------------------------------------------------------------------------


def chart_png(table: Table) -> bytes:
    """Grouped bars: ACC and ASR (mean, std as error bars) of every defense, per attack row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r.label for r in table.rows]
    width = 0.8 / max(len(table.columns), 1)
    fig, axes = plt.subplots(1, 2, figsize=(max(6.0, 1.1 * len(labels) * 2 + 2), 3.6), squeeze=False)
    for ax, (metric, title) in zip(axes[0], (("acc", "ACC %"), ("asr", "ASR %"))):
        for j, column in enumerate(table.columns):
            stats = [getattr(r.entries[j], metric) for r in table.rows]
            xs = [i + (j - (len(table.columns) - 1) / 2) * width for i in range(len(labels))]
            means = [s.mean if s else 0.0 for s in stats]
            errs = [s.std or 0.0 if s else 0.0 for s in stats]
            ax.bar(xs, means, width, yerr=errs, capsize=2, label=column, color=f"C{j}")
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 105)
        ax.set_title(title, fontsize=10)
    axes[0][1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def html_table(table: Table, metrics: tuple[str, str], reference: bool) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["attack", *table.columns])
    body = []
    for row in table.rows:
        cells = "".join(f"<td>{html.escape(entry_text(e, metrics))}</td>" for e in row.entries)
        body.append(f"<tr><td>{html.escape(row.label)}</td>{cells}</tr>")
        if reference and row.reference:
            ref = "".join(f"<td><i>{html.escape(reference_text(p))}</i></td>" for p in row.reference)
            body.append(f"<tr><td><i>{html.escape(row.label)} (reference)</i></td>{ref}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def report_html(cfg: BenchConfig, tables: list[Table], rows: dict[str, dict[str, Any]]) -> str:
    from nad.report import page, png_data_uri

    title = f"nad bench: {cfg.name}" + (" (quick)" if cfg.quick else "")
    parts = [f"<h1>{html.escape(title)}</h1>", "<ul>"]
    for line in summary_lines(cfg, tables, rows):
        parts.append(f"<li>{html.escape(line.removeprefix('- ').replace('`', '').replace('**', ''))}</li>")
    parts.append("</ul>")
    for table in tables:
        heading = "Attacks × defenses" if len(tables) == 1 else f"Study: {table.study}"
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        for caption, metrics, reference in acc_tables(table):
            parts += [f"<p>{html.escape(caption)}</p>", html_table(table, metrics, reference)]
        if table.rows:
            parts.append(f'<img alt="ACC and ASR per attack and defense" src="{png_data_uri(chart_png(table))}">')
        if table.comparisons:
            items = "".join(f"<li>{html.escape(c)}</li>" for c in table.comparisons)
            parts += [f"<ul>{items}</ul>", f"<p>{html.escape(SPREAD_RULE.replace('*', ''))}</p>"]
    if any(r.reference for t in tables for r in t.rows):
        parts.append(f"<p>{html.escape(REFERENCE_NOTE.replace('`', ''))}</p>")
    return page(title, "\n".join(parts))


def write_outputs(out: Path, cfg: BenchConfig, tables: list[Table], rows: dict[str, dict[str, Any]]) -> list[Path]:
    """Write ``results.md`` and ``report.html`` (each atomically); returns their paths."""
    md, report = out / "results.md", out / "report.html"
    write_text(md, markdown(cfg, tables, rows))
    write_text(report, report_html(cfg, tables, rows))
    return [md, report]
