"""The probe behind ``nad scan --stripes``: does a universal perturbation that varies along one image axis
only name SIG's target?

    python -m benchmarks.stripe_probe [NAME ...] [--eps 16 24 32]   (default: the zoo's SIG and clean models)

The scan's universal perturbation is free in every pixel, and at the budgets SIG's sinusoid needs (20/255 at
training) every class of these models is reachable that way (docs/scan.md), so class 0 has no contrast. This
probe restricts the perturbation to *stripes*: one value per column and channel, the same down every row
(``(C, 1, W)``, 96 numbers for CIFAR), or one per row. SIG's trigger ``20/255 * sin(2 pi j f / W)`` is such a
stripe, and a family of 96 numbers cannot express the fine-grained directions that make any class reachable.
It assumes no frequency and no sign, but it does assume an axis-aligned, one-dimensional trigger, so what it
finds says something about that family of triggers only.

Per model, class and axis: 20 signed-gradient steps of ``eps / 4`` on 24 random clean images per class (the
scan's UAP settings), then the success rate on held-out images of other classes, and the MAD index across
classes on the log-odds scale with the scan's floor (1.0). The clean data is the 5% subset ``nad scan`` uses
(seed 0). Results: ``benchmarks/results/stripe-probe.json``; docs/scan.md says what they showed.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from benchmarks.common import class_rates, merged_with_committed, probe_model, report
from nad.data import load_data
from nad.data.dataset import ImageData
from nad.models.checkpoint import Classifier
from nad.scan import ScanConfig, universal_rates

DEFAULT = ["standard-clean", "standard-sig", "reference-clean", "reference-sig"]
AXES = {"columns": lambda c, h, w: (c, 1, w), "rows": lambda c, h, w: (c, h, 1)}


def stripe_success(clf: Classifier, clean: ImageData, eps: float, axis: str, seed: int = 0) -> list[float]:
    """Per class t: the held-out success rate (%) of one stripe perturbation within ``eps`` towards t."""
    gen = torch.Generator().manual_seed(seed)
    shape = AXES[axis](*clean.image_shape)
    return universal_rates(clf, clean, shape, eps, eps / 4, ScanConfig(seed=seed), gen, True, axis)[0]


def probe(name: str, clean_pool: ImageData, budgets: list[int]) -> dict[str, Any]:
    start = time.perf_counter()
    clf, clean = probe_model(name, clean_pool)
    rows = []
    for axis in AXES:
        for budget in budgets:
            rates = stripe_success(clf, clean, budget / 255, axis)
            rows.append(class_rates(rates, axis=axis, eps=f"{budget}/255"))
    return {"model": name, "settings": rows, "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=DEFAULT)
    parser.add_argument("--data", default="cifar10:data/cifar10")
    parser.add_argument("--eps", type=int, nargs="+", default=[16, 24, 32], help="budgets in 1/255")
    args = parser.parse_args()
    pool = load_data(args.data, "train")
    models = [probe(name, pool, args.eps) for name in args.names]
    report("stripe-probe", {"data": args.data, "models": merged_with_committed("stripe-probe", models, "models")})


if __name__ == "__main__":
    main()
