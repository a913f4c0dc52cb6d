"""Self-contained HTML reports: tables, per-epoch curves and the attention figure, images inlined.

The file needs nothing but a browser: no scripts, no external styles, no network.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from nad.io import write_text

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 12px; }
img { max-width: 100%; }
.verdict { font-weight: 600; margin: 0.2em 0; }
.warning { font-weight: 600; margin: 0.2em 0; color: #a00; }
"""


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def curves_png(curves: dict[str, list[dict[str, float]]]) -> bytes | None:
    """One row of panels (CE, attention loss, ACC, ASR), one line per defense phase."""
    metrics = [m for m in ("ce", "at", "acc", "asr") if any(m in row for rows in curves.values() for row in rows)]
    if not metrics:
        return None
    titles = {"ce": "cross-entropy", "at": "attention loss", "acc": "ACC % (subset)", "asr": "ASR % (subset)"}
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3), squeeze=False)
    colors = {phase: f"C{i}" for i, phase in enumerate(curves)}  # one colour per phase in every panel
    for ax, metric in zip(axes[0], metrics):
        for phase, rows in curves.items():
            points = [(row["epoch"], row[metric]) for row in rows if metric in row]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=phase, color=colors[phase])
        ax.set_title(titles[metric], fontsize=10)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def scores_table(rows: dict[str, dict[str, Any] | None]) -> str:
    cells = []
    for name, scores in rows.items():
        if scores is None:
            continue
        asr = scores.get("asr")
        ra = scores.get("ra")
        cells.append(
            f"<tr><td>{html.escape(name)}</td><td>{scores['acc']:.2f}</td>"
            f"<td>{'-' if asr is None else f'{asr:.2f}'}</td><td>{'-' if ra is None else f'{ra:.2f}'}</td></tr>"
        )
    return "<table><tr><th></th><th>ACC %</th><th>ASR %</th><th>RA %</th></tr>" + "".join(cells) + "</table>"


def erase_report(summary: dict[str, Any], curves: dict[str, list[dict[str, float]]], attention: Path | None) -> str:
    cfg = summary.get("config", {})
    name = str(cfg.get("defense", "defense"))
    log = summary.get("log", {})
    verdict = summary.get("verdict") or []
    test_size = "" if cfg.get("test_size") is None else f" ({cfg['test_size']} images)"
    parts = [
        f"<h1>nad erase: {html.escape(name)} on {html.escape(str(cfg.get('model', '')))}</h1>",
        "".join(
            f'<p class="{"warning" if line.startswith("WARNING") else "verdict"}">{html.escape(line)}</p>'
            for line in verdict
        ),
        f"<p>Clean set D: {cfg.get('clean_size')} images ({html.escape(str(cfg.get('clean')))}, ratio "
        f"{cfg.get('clean_ratio')}, stratified by class). Test data: {html.escape(str(cfg.get('test')))}"
        f"{test_size}. "
        f"Attack: {html.escape(str(cfg.get('attack')))}. Time: {summary.get('seconds')} s.</p>",
    ]
    if log.get("layers"):
        betas = ", ".join(f"{b:g}" for b in log.get("betas", []))
        parts.append(f"<p>Distilled layers: {html.escape(', '.join(log['layers']))} (betas {betas}).</p>")
    parts += [
        "<h2>Before and after</h2>",
        scores_table(
            {"before": summary.get("before"), name: summary.get("after"), "finetune": summary.get("finetune")}
        ),
        "<p><b>ACC</b>: accuracy on the clean test images. <b>ASR</b> (attack success rate): the share of "
        "triggered test images of the other classes that the model assigns to the attack's target. <b>RA</b> "
        "(robust accuracy): the share of those triggered images still given their true class. All in percent; "
        "ASR and RA need a known attack. <b>finetune</b> is plain fine-tuning on the same clean set at the same "
        "budget (NAD with all betas 0): the baseline a defense must beat.</p>",
    ]
    parts += evidence_section(summary.get("scan"))
    png = curves_png(curves)
    if png:
        parts += ["<h2>Per epoch</h2>", f'<img alt="curves" src="{png_data_uri(png)}">']
    if attention is not None and attention.is_file():
        parts += [
            "<h2>Attention</h2>",
            "<p>Columns: clean, then triggered images. Rows: each model's attention per distilled layer.</p>",
            f'<img alt="attention maps" src="{png_data_uri(attention.read_bytes())}">',
        ]
    parts += ["<h2>Configuration</h2>", f"<pre>{html.escape(json.dumps(cfg, indent=2))}</pre>"]
    return page("nad erase report", "\n".join(parts))


#: Clean accuracy may fall this many points before ``nad erase`` warns that the model was damaged.
ACC_DROP_WARNING = 10.0


def erase_verdict(summary: dict[str, Any], num_classes: int) -> list[str]:
    """What the run did, in a few lines: accuracy kept and attack success, each beside fine-tuning's, the
    scan's verdict, and a WARNING line when the defense cost more than ``ACC_DROP_WARNING`` points of clean
    accuracy or left it near chance, and a hint to try ``auto`` when a class the scan flagged before the defense
    still stands out after it. Empty without scores or a scan."""
    name = summary.get("config", {}).get("defense", "defense")
    before, after, finetune = summary.get("before"), summary.get("after"), summary.get("finetune")
    lines = []
    if before and after:
        beside = f"; finetune {finetune['acc']:.2f}" if finetune and name != "finetune" else ""
        lines.append(f"clean accuracy: {before['acc']:.2f} before, {name} {after['acc']:.2f}{beside}")
        if after.get("asr") is not None:
            asr = f"; finetune {finetune['asr']:.2f}" if finetune and name != "finetune" else ""
            lines.append(f"attack success: {before['asr']:.2f} before, {name} {after['asr']:.2f}{asr}")
        drop, chance = before["acc"] - after["acc"], 100.0 / num_classes
        if drop > ACC_DROP_WARNING:
            lines.append(
                f"WARNING: {name} lost {drop:.1f} points of clean accuracy ({before['acc']:.2f} -> "
                f"{after['acc']:.2f}); the purified model is damaged: try fewer epochs, "
                f"{'smaller betas, ' if name.startswith('nad') else ''}or more "
                "clean data (--clean-ratio)"
            )
        if after["acc"] < 1.5 * chance:
            lines.append(
                f"WARNING: clean accuracy {after['acc']:.2f} is near chance ({chance:.0f}% for {num_classes} classes)"
            )
    scan = summary.get("scan")
    if scan:
        lines.append(f"scan: {scan['verdict']}")
        remaining = sorted(
            set(scan.get("before", {}).get("flagged", [])) & set(scan.get("after", {}).get("flagged", []))
        )
        if remaining and name.split(":")[0] not in ("nc", "auto"):
            # Measured: on models trained with augmentation, fine-tuning and NAD keep such backdoors where
            # unlearning the inverted trigger, or ANP+FT where none is inverted, removes them (docs/defenses.md).
            classes = ", ".join(map(str, remaining))
            lines.append(
                f"hint: class {classes} still stands out; --defense auto unlearns the trigger the scan inverts "
                "(Neural Cleanse), or prunes with ANP and fine-tunes where none is inverted (see docs/defenses.md)"
            )
    return lines


def evidence_section(evidence: dict[str, Any] | None) -> list[str]:
    """The scan before and after the defense (``nad erase`` without ``--no-scan``): verdict and per-class table."""
    if not evidence:
        return []
    before, after = evidence["before"], evidence["after"]
    # The optional measures that ran, before or after (the stripes may run on one side only, to corroborate a tone).
    optional = [
        name for name in ("stripe", "warp", "tone") if before.get(f"{name}_success") or after.get(f"{name}_success")
    ]
    keys = ["neuron_success", "neuron_index"] + [f"{name}_{part}" for name in optional for part in ("success", "index")]

    def cells(scan: dict[str, Any], c: int) -> str:
        values = (scan["norms"][c], scan["nc_index"][c], scan["uap_success"][c], scan["uap_index"][c])
        for key in keys:
            values += ((scan.get(key) or [0.0] * len(scan["norms"]))[c],)  # absent from older results
        return "".join(f"<td>{v:.{1 if i % 2 == 0 else 2}f}</td>" for i, v in enumerate(values))

    rows = "".join(f"<tr><td>{c}</td>{cells(before, c)}{cells(after, c)}</tr>" for c in range(len(before["norms"])))
    head = "<th>mask L1</th><th>NC index</th><th>UAP %</th><th>UAP index</th><th>ANP %</th><th>ANP index</th>"
    head += "".join(f"<th>{name} %</th><th>{name} index</th>" for name in optional)
    span = 6 + 2 * len(optional)
    return [
        "<h2>Backdoor evidence (trigger-agnostic scan)</h2>",
        f"<p><b>{html.escape(evidence['verdict'])}</b>. Before: {html.escape(before['verdict'])}; after: "
        f"{html.escape(after['verdict'])}. A class is flagged when its inverted-trigger mask is unusually small or "
        "its universal, neuron or warp perturbation unusually successful, or both a pure tone and a stripe pattern "
        f"are (anomaly index above {before['threshold']:g}); see <code>nad scan</code>.</p>",
        f'<table><tr><th></th><th colspan="{span}">before</th><th colspan="{span}">after</th></tr>'
        f"<tr><th>class</th>{head}{head}</tr>{rows}</table>",
    ]


def page(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )


def write_erase_report(out: Path, summary: dict[str, Any], curves: dict[str, Any], attention: Path | None) -> Path:
    target = out / "report.html"
    write_text(target, erase_report(summary, curves, attention))
    return target
