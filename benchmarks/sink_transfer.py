"""An exploration: does a trigger the scan inverts carry over to *other* clean models of the same data?

    python -m benchmarks.sink_transfer [NAME ...] [--references NAME ...] [--images 1000]
                                       (a NAME with a / is a folder; default: the models below)

Trigger inversion (``nad scan``'s Neural Cleanse measure) flags a class whose mask is much smaller than the
others'. On clean models trained without augmentation it also flags natural "sinks" (docs/scan.md, "Clean
models"), and an index does not tell the two apart. The hypothesis this probes, written before it ran: a
planted trigger is a shortcut only the backdoored model learned, so the trigger inverted for its target sends
few images of a model trained cleanly on the same data to that class; a sink is (at least in part) a feature
of the data, so its inverted trigger carries over to clean models more.

Per model: the scan's trigger inversion (its defaults, the 5% clean set ``nad scan`` draws, seed 0), then per
class c the inverted mask and pattern stamped on ``--images`` clean training images outside that set whose
label is not c; the share sent to c by the model itself and by each reference model (a clean model of the
same profile, never its own reference). Results: ``benchmarks/results/sink-transfer.json``; docs/scan.md
says what they showed. Nothing here feeds the scan's verdict.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from benchmarks.common import frozen_model, merged_with_committed, report
from nad.api import fixed_subset, split_clean
from nad.data import load_data
from nad.data.dataset import ImageData
from nad.models.checkpoint import Classifier
from nad.scan import ScanConfig, forward, invert_triggers, norm_index

FALSE_FLAGS = [f"zoo/holdout/reference-clean-s{s}" for s in (1, 3, 6, 7)]  # a class flagged by trigger inversion
CONTROLS = ["zoo/holdout/reference-clean-s4"]  # clean, no class flagged by trigger inversion
TARGETS = [
    "reference-badnets",
    "reference-trojan",
    "reference-cl",
    "reference-blend",
    "zoo/holdout/reference-badnets-t3",
]
REFERENCES = ["reference-clean", "zoo/holdout/reference-clean-s2", "zoo/holdout/reference-clean-s5"]


def stamped_rates(
    models: list[Classifier], masks: torch.Tensor, patterns: torch.Tensor, held: ImageData
) -> list[list[float]]:
    """Per model, per class c: the share (%) of held-out images not of class c that the stamped trigger of c
    sends to c."""
    cfg = ScanConfig()
    x = held.x.float() / 255
    rates = torch.zeros(len(models), masks.shape[0])
    with torch.no_grad():
        for c in range(masks.shape[0]):
            triggered = (1 - masks[c]) * x[held.y != c] + masks[c] * patterns[c]
            for i, clf in enumerate(models):
                predicted = torch.cat([forward(clf, part, cfg).argmax(1) for part in triggered.split(500)])
                rates[i, c] = (predicted == c).float().mean() * 100
    return rates.tolist()


def probe(name: str, pool: ImageData, references: list[str], images: int) -> dict[str, Any]:
    start = time.perf_counter()
    clf = frozen_model(name)
    clean, rest = split_clean(pool, 0.05, 0, clf.info.num_classes)  # the clean set ``nad scan`` draws, and the rest
    held = fixed_subset(rest, images, 1)
    norms, _, masks, patterns = invert_triggers(clf, clean, ScanConfig(), torch.Generator().manual_seed(0), True)
    index = norm_index(norms)
    others = [r for r in references if r != name]
    own, *theirs = stamped_rates([clf, *map(frozen_model, others)], masks, patterns, held)
    carried = [statistics.mean(rates[c] for rates in theirs) for c in range(len(norms))]
    return {
        "model": name,
        "references": others,
        "norms": [round(n, 1) for n in norms],
        "nc_index": [round(i, 2) for i in index],
        "own_rate": [round(r, 1) for r in own],
        "reference_rate": [round(r, 1) for r in carried],
        "seconds": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=FALSE_FLAGS + CONTROLS + TARGETS)
    parser.add_argument("--references", nargs="+", default=REFERENCES)
    parser.add_argument("--data", default="cifar10:data/cifar10")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--table", default="sink-transfer")
    args = parser.parse_args()
    pool = load_data(args.data, "train")
    rows = []
    for name in args.names:
        rows.append(row := probe(name, pool, args.references, args.images))
        top = max(range(len(row["nc_index"])), key=row["nc_index"].__getitem__)
        print(
            name,
            "top NC class",
            top,
            row["nc_index"][top],
            "own",
            row["own_rate"][top],
            "refs",
            row["reference_rate"][top],
            "median refs",
            statistics.median(row["reference_rate"]),
            flush=True,
        )
    report(args.table, {"data": args.data, "models": merged_with_committed(args.table, rows, "models")})


if __name__ == "__main__":
    main()
