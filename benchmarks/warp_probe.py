"""The probe behind the scan's warp measure: does a universal *warp* name WaNet's target, and at what bound?

    python -m benchmarks.warp_probe [NAME ...] [--bound 0.5 1 2] [--clean-seed 0]
                                    (default: the zoo's WaNet and clean models; a NAME with a / is a folder)

WaNet's trigger moves pixels instead of adding to them: a smooth field, a 4 x 4 grid of offsets upsampled
bicubic to the image, displaces each pixel by under a pixel, and training in its noise mode teaches the
model that only that exact field is the trigger. Before this measure no measure of ``nad scan`` named the
target of ``zoo/reference-wanet`` (docs/scan.md). The probe runs the scan's own warp measure
(``nad.scan.warp_success``: per target class, ``k`` x ``k`` control offsets within ``bound`` pixels, 20
signed-gradient steps of a quarter of the bound on 24 random clean images per class, then the success rate
on held-out clean images of the other classes) at several bounds, and the MAD index across classes as the
scan takes it (log-odds, rates clipped to 5%, MAD floor 1.0). The clean data is the 5% subset ``nad scan``
uses (seed 0; ``--clean-seed`` draws another, e.g. to probe a model that was fine-tuned on seed 0's).
Results: ``benchmarks/results/warp-probe.json``; docs/scan.md says what they showed.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from benchmarks.common import class_rates, merged_with_committed, probe_model, report
from nad.data import load_data
from nad.data.dataset import ImageData
from nad.scan import WARP_RATE_FLOOR, ScanConfig, warp_success

DEFAULT = ["standard-clean", "standard-wanet", "reference-clean", "reference-wanet"]


def probe(name: str, clean_pool: ImageData, bounds: list[float], clean_seed: int = 0) -> dict[str, Any]:
    start = time.perf_counter()
    clf, clean = probe_model(name, clean_pool, clean_seed)
    rows = []
    for bound in bounds:
        rates, _ = warp_success(clf, clean, ScanConfig(warp_bound=bound), quiet=True)
        rows.append(class_rates(rates, WARP_RATE_FLOOR, bound_px=bound))
    return {"model": name, "clean_seed": clean_seed, "settings": rows, "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=DEFAULT)
    parser.add_argument("--data", default="cifar10:data/cifar10")
    parser.add_argument("--bound", type=float, nargs="+", default=[0.5, 1.0, 2.0], help="pixels")
    parser.add_argument("--clean-seed", type=int, default=0)
    args = parser.parse_args()
    pool = load_data(args.data, "train")
    models = []
    for name in args.names:
        models.append(probe(name, pool, args.bound, args.clean_seed))
        brief = [(r["bound_px"], r["index_of_0"], r["top_class"], r["index_of_top"]) for r in models[-1]["settings"]]
        print(name, brief, flush=True)
    report("warp-probe", {"data": args.data, "models": merged_with_committed("warp-probe", models, "models")})


if __name__ == "__main__":
    main()
