"""A probe for SIG's trigger family: does one pure tone, a single sinusoid over the image, name SIG's target
without naming other classes?

    python -m benchmarks.tone_probe [NAME ...] [--amplitude 16 20 24]   (default: every model of ``zoo/``)

SIG's trigger is ``delta * sin(2 pi j f / W)`` added to every pixel of column j (delta 20/255, f 6). The
scan's free universal perturbation cannot single it out (at the budgets it needs, every class is reachable),
and the stripe perturbations (``nad scan --stripes``, 96 free numbers) name it but also flag other classes
higher (docs/scan.md). A pure tone has three numbers (orientation, frequency, phase) at a fixed amplitude, so
it can express SIG's trigger and little else. Per model and amplitude, this probe draws 240 clean images
(the scan's count for one class and step, times ten), adds each of 192 tones (columns or rows; frequency
1-12 periods across the image; phase in eighths of a turn; the same in every channel) and, per target class t,
keeps the tone that sends most of the drawn images of other classes to t; its success rate on held-out clean
images of other classes (the scan's ``held_out_rates``, 256 drawn per class) is t's score, and the MAD index
across classes is taken as the scan takes the universal perturbation's (log-odds, rates clipped to 5% as the
warp measure's, MAD floor 1.0). The clean data is the 5% subset ``nad scan`` uses (seed 0). Results:
``benchmarks/results/tone-probe.json``; docs/scan.md says what they showed (in short: SIG's targets score
highest on both SIG models, but a natural "sink" class of several other models, reached by one tone on
50-76% of images, crosses the threshold too, so it did not become a measure of the scan).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from benchmarks.common import class_rates, merged_with_committed, probe_model, report
from nad.data import load_data
from nad.data.dataset import ImageData
from nad.models.checkpoint import Classifier
from nad.scan import WARP_RATE_FLOOR, ScanConfig, describe_tone, tone_success


def tone_rates(clf: Classifier, clean: ImageData, amplitude: float, seed: int = 0) -> tuple[list[float], list[int]]:
    """The scan's tone measure at ``amplitude``: per class, the held-out success rate (%) and the tone."""
    return tone_success(clf, clean, ScanConfig(seed=seed, tone_amplitude=amplitude), quiet=True)


def probe(name: str, clean_pool: ImageData, amplitudes: list[int]) -> dict[str, Any]:
    start = time.perf_counter()
    clf, clean = probe_model(name, clean_pool)
    rows = []
    for amplitude in amplitudes:
        rates, best = tone_rates(clf, clean, amplitude / 255)
        tone_of_0 = describe_tone(best[0], *clean.image_shape[1:])
        rows.append({**class_rates(rates, WARP_RATE_FLOOR, amplitude=f"{amplitude}/255"), "tone_of_0": tone_of_0})
    return {"model": name, "settings": rows, "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "names", nargs="*", default=sorted(p.parent.name for p in Path("zoo").glob("*/model.safetensors"))
    )
    parser.add_argument("--data", default="cifar10:data/cifar10")
    parser.add_argument("--amplitude", type=int, nargs="+", default=[16, 20, 24], help="in 1/255")
    args = parser.parse_args()
    pool = load_data(args.data, "train")
    models = []
    for name in args.names:
        models.append(probe(name, pool, args.amplitude))
        brief = [(r["amplitude"], r["index_of_0"], r["top_class"], r["index_of_top"]) for r in models[-1]["settings"]]
        print(name, brief, flush=True)
    report("tone-probe", {"data": args.data, "models": merged_with_committed("tone-probe", models, "models")})


if __name__ == "__main__":
    main()
