"""Defense settings compared on one zoo model, with a validation split of the clean set for choosing among them.

    python -m benchmarks.defense_sweep zoo/standard-badnets "fst" "fst:alpha=0.01" ... [--seed 0] [--scan]

The defense's clean set D is drawn as ``nad erase`` draws it (a class-stratified 5% of the CIFAR-10 training
images, ``--seed``); a stratified ``--val`` share of D (default 20%) is then held out, and every setting is
tuned on the rest. The validation accuracy (and, with ``--scan``, the backdoor scan's evidence on the
validation images) is what a user without the trigger can see, so it is the only thing a setting may be
*chosen* by; the test ACC/ASR beside it are reported, never used for choosing. Each finished setting is
cached in ``results/defense-sweep-MODEL-sSEED.json``, so an interrupted sweep resumes; the whole sweep is
printed at the end as a Markdown table (``--table-only``: just print it).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS
from nad.api import model_attack, split_clean
from nad.data import load_data
from nad.data.dataset import stratified_split
from nad.defenses.registry import defense_class
from nad.defenses.settings import RunSettings, defense_config
from nad.errors import NadError
from nad.metrics import accuracy, evaluate
from nad.models import load_model
from nad.scan import ScanConfig, scan


def scores(model: Any, val: Any, test: Any, attack: Any, with_scan: bool, seed: int) -> dict[str, Any]:
    row = {"val_acc": accuracy(model, val), **vars(evaluate(model, test, attack))}
    if with_scan:
        row["scan"] = scan(model, val, ScanConfig(seed=seed), quiet=True).to_json()
    return row


def markdown(rows: dict[str, Any]) -> str:
    """The sweep as a Markdown table: what may choose (validation ACC, scan) beside what may not (test)."""
    lines = [
        "| defense (spec) | validation ACC % | test ACC % | ASR % | RA % | scan on validation images | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for spec, row in rows.items():
        verdict = row["scan"]["verdict"] if "scan" in row else "–"
        seconds = f"{row['seconds']:.0f}" if "seconds" in row else "–"
        lines.append(
            f"| `{spec}` | {row['val_acc']:.2f} | {row['acc']:.2f} | {row['asr']:.2f} | {row['ra']:.2f} | {verdict} "
            f"| {seconds} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="a zoo folder")
    parser.add_argument("specs", nargs="+", help="defense specs, as nad erase --defense takes them")
    parser.add_argument("--data", default="cifar10:data/cifar10")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clean-ratio", type=float, default=0.05)
    parser.add_argument("--val", type=float, default=0.2, help="share of the clean set held out for choosing")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--scan", action="store_true", help="also scan each result on the validation images")
    parser.add_argument("--table-only", action="store_true", help="print the cached results; run nothing")
    args = parser.parse_args()
    settings = RunSettings(seed=args.seed, precision=args.precision)
    try:  # every spec is checked before anything runs
        configs = {spec: defense_config(spec, settings) for spec in args.specs}
    except NadError as error:
        parser.error(str(error))
    path = RESULTS / f"defense-sweep-{args.model.name}-s{args.seed}.json"
    if args.table_only:
        print(markdown(json.loads(path.read_text())["rows"]))
        return
    model = load_model(args.model / "model.safetensors")
    pool, test = load_data(args.data, "train"), load_data(args.data, "test")
    attack = model_attack(None, model, str(args.model / "model.safetensors"), pool)
    clean, _ = split_clean(pool, args.clean_ratio, args.seed, model.info.num_classes)
    tune_index, val_index = stratified_split(clean.y, 1 - args.val, args.seed)
    tune, val = clean.subset(tune_index, name="tune"), clean.subset(val_index, name="validation")
    done: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    done.setdefault("config", {**vars(args), "model": str(args.model), "tune": len(tune), "val": len(val)})
    done["config"]["specs"] = sorted(set(done["config"].get("specs", [])) | set(args.specs))
    rows = done.setdefault("rows", {})
    if "before" not in rows:
        rows["before"] = scores(model, val, test, attack, args.scan, args.seed)
    print("before", rows["before"], flush=True)
    for spec, (name, config) in configs.items():
        if spec in rows and ("scan" in rows[spec] or not args.scan):
            print(spec, rows[spec], "(cached)", flush=True)
            continue
        start = time.perf_counter()
        purified = defense_class(name)(config).repair(model, tune, quiet=True).model
        rows[spec] = {"seconds": round(time.perf_counter() - start, 1)}
        rows[spec].update(scores(purified, val, test, attack, args.scan, args.seed))
        print(spec, rows[spec], flush=True)
        RESULTS.mkdir(exist_ok=True)
        path.write_text(json.dumps(done, indent=1, default=str) + "\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
