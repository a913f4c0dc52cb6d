"""FST, SAU, FT-SAM and NAD with an FST teacher on the digits demo's backdoored small CNN, beside NAD and
fine-tuning: a quick look at what each does before the CIFAR-10 grid.

    python -m benchmarks.defenses_digits DEMO_DIR [--epochs 20]

DEMO_DIR is the output of ``nad demo`` (its ``backdoored.safetensors``). Each defense runs twice: on a
class-stratified 20% of the 1,438 training digits (seed 0) and on all of them; SAU and FT-SAM with
``--epochs`` instead of their official 100 (the rest of their defaults kept), to stay within minutes on a
CPU. Scores on the 359 test digits (ASR on the triggered non-target ones). Writes
``results/defenses-digits.json``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from benchmarks.common import report
from nad.api import select_clean
from nad.attacks import parse_attack
from nad.data import load_data
from nad.defenses import FST, FTSAM, NAD, SAU, FineTune, FTSAMConfig, NADConfig, SAUConfig
from nad.metrics import evaluate
from nad.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("demo", type=Path)
    parser.add_argument("--epochs", type=int, default=20, help="SAU rounds and FT-SAM epochs")
    args = parser.parse_args()
    model = load_model(args.demo / "backdoored.safetensors")
    attack, test, digits = parse_attack("badnets"), load_data("digits:test"), load_data("digits")
    defenses = {
        "finetune": FineTune(),
        "nad": NAD(),
        "fst": FST(),
        "nad:teacher=fst": NAD(NADConfig(teacher="fst")),
        f"sau ({args.epochs} rounds)": SAU(SAUConfig(train=replace(SAUConfig().train, epochs=args.epochs))),
        f"ft_sam ({args.epochs} epochs)": FTSAM(FTSAMConfig(train=replace(FTSAMConfig().train, epochs=args.epochs))),
    }
    rows = [{"defense": "before", **vars(evaluate(model, test, attack))}]
    for share in (0.2, 1.0):
        clean = select_clean(digits, share, 0) if share < 1 else digits
        for name, defense in defenses.items():
            start = time.perf_counter()
            purified = defense.repair(model, clean, quiet=True).model
            scores = vars(evaluate(purified, test, attack))
            rows.append({"defense": name, "clean": len(clean), **scores, "seconds": time.perf_counter() - start})
            print(rows[-1], flush=True)
    report("defenses-digits", {"config": {"demo": str(args.demo), "epochs": args.epochs}, "rows": rows})


if __name__ == "__main__":
    main()
