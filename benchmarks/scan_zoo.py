"""The scan on the zoo: the verdict before and after NAD for every model in ``zoo/``, against the known target.

    python -m benchmarks.scan_zoo [--data cifar10:data/cifar10] [--out runs/scan-zoo] [--defense SPEC] [NAME ...]

For each zoo model this runs, as a practitioner would (defaults; no fine-tuning baseline, to save time)::

    nad erase zoo/NAME --clean cifar10:data/cifar10 --no-baseline --defense SPEC --out OUT/NAME[--SPEC]

whose results hold the scan before and after the defense, and the ASR the known attack allows measuring.
A model already done in ``OUT`` is read back, not rerun; ``--rescan`` makes both scans of such a model again with
the current scan (the defended model from ``OUT``, the images ``nad erase`` scans), the defense left as it was.
The table goes to ``benchmarks/results/scan-zoo.json``
(``scan-zoo-SPEC.json`` for a defense other than the default ``nad``) and, as Markdown, to stdout
(``docs/scan.md`` carries it).

``--scan-only`` runs ``nad scan zoo/NAME --clean DATA --out OUT/NAME--scan`` instead (no defense): the verdict
and the index of the target class by each measure (``benchmarks/results/scan-default.json``; with ``--stripes``,
``nad scan --stripes`` and ``scan-only.json``; ``--table NAME`` names another). A NAME with a ``/`` is a model
folder outside the zoo; its target is read from the attack it was trained with (``results.json``).

Rows accumulate: a run over some models replaces their rows in the committed table and keeps the others (a
model added to the zoo is scanned alone, not the whole zoo again); the table is in the zoo's name order.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import merged_with_committed, report

ZOO = Path("zoo")


def slug(defense: str) -> str:
    """The defense spec as a file-name part: ``nc:train.epochs=20`` -> ``nc-train.epochs-20``."""
    return "".join(c if c.isalnum() or c in "._" else "-" for c in defense)


def erase_folder(name: str, out: Path, defense: str) -> Path:
    base = Path(name).name
    return out / (base if defense == "nad" else f"{base}--{slug(defense)}")


def erase(name: str, data: str, out: Path, defense: str = "nad") -> dict[str, Any]:
    folder = erase_folder(name, out, defense)
    if not (folder / "results.json").is_file():
        command = [sys.executable, "-m", "nad", "erase", str(model_folder(name)), "--clean", data, "--no-baseline"]
        command += ["--defense", defense]
        subprocess.run([*command, "--out", str(folder), "--quiet", "--overwrite"], check=True)
    return json.loads((folder / "results.json").read_text())


def model_folder(name: str) -> Path:
    """A zoo model by name, or (a name with a ``/``) a model folder anywhere."""
    return Path(name) if "/" in name else ZOO / name


def attack_target(name: str) -> int | None:
    """The target class of the attack the model was trained with (its ``results.json``); None for a clean one."""
    from nad.attacks import parse_attack

    spec = json.loads((model_folder(name) / "results.json").read_text())["config"].get("attack")
    return parse_attack(spec).target if spec else None


def scan_only(name: str, data: str, out: Path, stripes: bool = False) -> dict[str, Any]:
    from nad.scan import ScanResult

    folder = out / (f"{Path(name).name}--scan" + ("-stripes" if stripes else ""))
    if not (folder / "scan.json").is_file():
        command = [sys.executable, "-m", "nad", "scan", str(model_folder(name)), "--clean", data, "--quiet"]
        command += ["--stripes"] * stripes
        subprocess.run([*command, "--out", str(folder)], check=True)
    scan = json.loads((folder / "scan.json").read_text())
    target, result = attack_target(name), ScanResult.from_json(scan)
    return {
        "model": name,
        "target": target,
        "flagged": scan["flagged"],
        "indices_of_target": {  # of class 0 for a clean model, as for the zoo's attacks
            key: round(scan[key][target or 0], 2)
            for key in ("nc_index", "uap_index", "neuron_index", "stripe_index", "warp_index", "tone_index")
            if scan.get(key)  # a measure that did not run, or scans made before it
        },
        "top_tone": max(range(len(scan["norms"])), key=lambda c: scan["tone_index"][c])
        if scan.get("tone_index")
        else None,
        "max_tone_index": round(max(scan["tone_index"]), 2) if scan.get("tone_index") else None,
        "periodic_flagged": [c for c in result.flagged if "tone and stripes" in result.evidence(c)],
        "seconds": round(scan["seconds"], 1),
        "verdict": result.verdict,  # the current wording (the stored one may predate it)
    }


MEASURES = {"nc_index": "NC", "uap_index": "UAP", "neuron_index": "ANP", "warp_index": "warp", "tone_index": "tone"}


def rescan(name: str, data: str, out: Path, defense: str) -> dict[str, Any]:
    """The results of an earlier ``erase`` run with both scans made again by the current ``nad scan`` defaults,
    on the images ``nad erase`` scans (the defended model is the one that run saved): for a measure added
    after the run, without running the defense again."""
    from nad.api import scan_images, split_clean
    from nad.data import load_data
    from nad.models import load_model
    from nad.scan import ScanComparison, ScanConfig, scan

    folder = erase_folder(name, out, defense)
    results = json.loads((folder / "results.json").read_text())
    original, defended = load_model(model_folder(name)), load_model(folder)
    clean, rest = split_clean(load_data(data, "train"), 0.05, 0, original.info.num_classes)
    images, cfg = scan_images(clean, rest, 0), ScanConfig(seed=0)
    comparison = ScanComparison(scan(original, images, cfg, quiet=True), scan(defended, images, cfg, quiet=True))
    return {**results, "scan": comparison.to_json()}


def scan_markdown(rows: list[dict[str, Any]]) -> str:
    """The verdict per model, and the target's index by each measure (class 0 for a clean model; "–" where the
    measure did not run: the stripes, drawn only to corroborate a tone, or a measure newer than the scan)."""
    heads = [*MEASURES.values(), "stripe"]
    lines = [
        "| model | target | flagged | " + " | ".join(f"{h} index" for h in heads) + " | named? |",
        "|---|---|---|" + "---|" * len(heads) + "---|",
    ]
    for r in rows:
        if r["target"] is None:
            named = "**false alarm**" if r["flagged"] else "no flag (right)"
        else:
            named = "yes" if r["target"] in r["flagged"] else "**no**"
        i = r.get("indices_of_target") or r["indices_of_0"]  # the key of rows made before targets other than 0
        cells = [f"{i[key]:.2f}" if key in i else "–" for key in [*MEASURES, "stripe_index"]]
        target = "–" if r["target"] is None else str(r["target"])
        flagged = ", ".join(map(str, r["flagged"])) or "none"
        lines.append(f"| `{r['model']}` | {target} | {flagged} | " + " | ".join(cells) + f" | {named} |")
    return "\n".join(lines)


def row(name: str, results: dict[str, Any]) -> dict[str, Any]:
    scan, before, after = results["scan"], results["before"], results["after"]
    target = attack_target(name)

    def of_target(measure: str) -> list[float] | None:
        """The target's index by ``measure`` before and after; None for a clean model, or where the measure
        did not run (the opt-in stripes, or the warp in scans made before it)."""
        ran = all(scan[w].get(f"{measure}_index") for w in ("before", "after"))
        return (
            [scan[w][f"{measure}_index"][target] for w in ("before", "after")] if target is not None and ran else None
        )

    return {
        "model": name,
        "target": target,
        "asr_before": before["asr"],
        "asr_after": after["asr"],
        "acc_before": before["acc"],
        "acc_after": after["acc"],
        "flagged_before": scan["before"]["flagged"],
        "flagged_after": scan["after"]["flagged"],
        **{
            f"{measure}_index_target": of_target(measure)
            for measure in ("nc", "uap", "stripe", "warp", "tone", "periodic")
        },
        "scan_seconds": [round(scan[w]["seconds"], 1) for w in ("before", "after")],
        "verdict": current_verdict(scan),
    }


def current_verdict(scan: dict[str, Any]) -> str:
    """The verdict the current wording gives the two stored scans (the run's own may predate it)."""
    from nad.scan import ScanComparison, ScanResult

    return ScanComparison(ScanResult.from_json(scan["before"]), ScanResult.from_json(scan["after"])).verdict


def markdown(rows: list[dict[str, Any]], defense: str = "nad") -> str:
    def pct(v: float | None) -> str:
        return "–" if v is None else f"{v:.1f}"

    def idx(pair: list[float] | None) -> str:
        return "–" if pair is None else f"{pair[0]:.1f} / {pair[1]:.1f}"

    lines = [
        f"| model | target | ASR before / after {'NAD' if defense == 'nad' else f'`{defense}`'} | flagged before | "
        "flagged after | target's NC index | UAP index | stripe index | warp index | tone index |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        target = "–" if r["target"] is None else str(r["target"])
        lines.append(
            f"| `{r['model']}` | {target} | {pct(r['asr_before'])} / {pct(r['asr_after'])} | "
            f"{', '.join(map(str, r['flagged_before'])) or 'none'} | "
            f"{', '.join(map(str, r['flagged_after'])) or 'none'} | "
            f"{idx(r['nc_index_target'])} | {idx(r['uap_index_target'])} | {idx(r.get('stripe_index_target'))} | "
            f"{idx(r.get('warp_index_target'))} | {idx(r.get('tone_index_target'))} |"
        )
    return "\n".join(lines)


def merged(name: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` over the committed table ``name``'s rows of other models, in the zoo's order."""
    return sorted(merged_with_committed(name, rows, "rows"), key=lambda r: zoo_order(r["model"]))


def zoo_order(model: str) -> tuple[str, bool, str]:
    """Profile, then clean models before the attacks (``standard-clean`` and its other seeds head the
    ``standard`` rows)."""
    profile, _, attack = Path(model).name.partition("-")
    return profile, not attack.startswith("clean"), attack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="zoo models (default: all)")
    parser.add_argument("--data", default="cifar10:data/cifar10")
    parser.add_argument("--out", type=Path, default=Path("runs/scan-zoo"))
    parser.add_argument("--defense", default="nad", help="the defense between the two scans (nad erase --defense)")
    parser.add_argument("--scan-only", action="store_true", help="nad scan each model; no defense")
    parser.add_argument("--stripes", action="store_true", help="with --scan-only: nad scan --stripes")
    parser.add_argument("--rescan", action="store_true", help="scan the models OUT holds again, before and after")
    parser.add_argument(
        "--table",
        help="the results' name (default scan-zoo[-SPEC]; with --scan-only scan-default, or scan-only with --stripes)",
    )
    args = parser.parse_args()
    names = args.names or sorted(p.name for p in ZOO.iterdir() if (p / "model.safetensors").is_file())
    if args.scan_only:
        table = args.table or ("scan-only" if args.stripes else "scan-default")
        rows = merged(table, [scan_only(name, args.data, args.out, args.stripes) for name in names])
        report(table, {"data": args.data, "stripes": args.stripes, "rows": rows})
        print(scan_markdown(rows))
        return
    name = args.table or ("scan-zoo" if args.defense == "nad" else f"scan-zoo-{slug(args.defense)}")
    run = rescan if args.rescan else erase
    rows = merged(name, [row(model, run(model, args.data, args.out, args.defense)) for model in names])
    report(name, {"data": args.data, "defense": args.defense, "rows": rows})
    print(markdown(rows, args.defense))


if __name__ == "__main__":
    main()
