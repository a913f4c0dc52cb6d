"""The scan on the zoo: the verdict before and after NAD for every model in ``zoo/``, against the known target.

    python -m benchmarks.scan_zoo [--data cifar10:data/cifar10] [--out runs/scan-zoo] [--defense SPEC] [NAME ...]

For each zoo model this runs, as a practitioner would (defaults; no fine-tuning baseline, to save time)::

    nad erase zoo/NAME --clean cifar10:data/cifar10 --no-baseline --defense SPEC --out OUT/NAME[--SPEC]

whose results hold the scan before and after the defense, and the ASR the known attack allows measuring.
A model already done in ``OUT`` is read back, not rerun. The table goes to ``benchmarks/results/scan-zoo.json``
(``scan-zoo-SPEC.json`` for a defense other than the default ``nad``) and, as Markdown, to stdout
(``docs/scan.md`` carries it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import report

ZOO = Path("zoo")


def slug(defense: str) -> str:
    """The defense spec as a file-name part: ``nc:train.epochs=20`` -> ``nc-train.epochs-20``."""
    return "".join(c if c.isalnum() or c in "._" else "-" for c in defense)


def erase(name: str, data: str, out: Path, defense: str = "nad") -> dict[str, Any]:
    folder = out / (name if defense == "nad" else f"{name}--{slug(defense)}")
    if not (folder / "results.json").is_file():
        command = [sys.executable, "-m", "nad", "erase", str(ZOO / name), "--clean", data, "--no-baseline"]
        command += ["--defense", defense]
        subprocess.run([*command, "--out", str(folder), "--quiet", "--overwrite"], check=True)
    return json.loads((folder / "results.json").read_text())


def row(name: str, results: dict[str, Any]) -> dict[str, Any]:
    scan, before, after = results["scan"], results["before"], results["after"]
    target = 0 if results["config"]["attack"] else None  # every zoo attack targets class 0
    return {
        "model": name,
        "target": target,
        "asr_before": before["asr"],
        "asr_after": after["asr"],
        "acc_before": before["acc"],
        "acc_after": after["acc"],
        "flagged_before": scan["before"]["flagged"],
        "flagged_after": scan["after"]["flagged"],
        "nc_index_target": [scan[w]["nc_index"][0] for w in ("before", "after")] if target is not None else None,
        "uap_index_target": [scan[w]["uap_index"][0] for w in ("before", "after")] if target is not None else None,
        "scan_seconds": [round(scan[w]["seconds"], 1) for w in ("before", "after")],
        "verdict": scan["verdict"],
    }


def markdown(rows: list[dict[str, Any]], defense: str = "nad") -> str:
    def pct(v: float | None) -> str:
        return "–" if v is None else f"{v:.1f}"

    def idx(pair: list[float] | None) -> str:
        return "–" if pair is None else f"{pair[0]:.1f} / {pair[1]:.1f}"

    lines = [
        f"| model | ASR before / after {'NAD' if defense == 'nad' else f'`{defense}`'} | flagged before | "
        "flagged after | NC index of 0 | UAP index of 0 |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['model']}` | {pct(r['asr_before'])} / {pct(r['asr_after'])} | "
            f"{', '.join(map(str, r['flagged_before'])) or 'none'} | "
            f"{', '.join(map(str, r['flagged_after'])) or 'none'} | "
            f"{idx(r['nc_index_target'])} | {idx(r['uap_index_target'])} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="zoo models (default: all)")
    parser.add_argument("--data", default="cifar10:data/cifar10")
    parser.add_argument("--out", type=Path, default=Path("runs/scan-zoo"))
    parser.add_argument("--defense", default="nad", help="the defense between the two scans (nad erase --defense)")
    args = parser.parse_args()
    names = args.names or sorted(p.name for p in ZOO.iterdir() if (p / "model.safetensors").is_file())
    rows = [row(name, erase(name, args.data, args.out, args.defense)) for name in names]
    name = "scan-zoo" if args.defense == "nad" else f"scan-zoo-{slug(args.defense)}"
    report(name, {"data": args.data, "defense": args.defense, "rows": rows})
    print(markdown(rows, args.defense))


if __name__ == "__main__":
    main()
