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
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from benchmarks.common import class_rates, merged_with_committed, probe_model, report
from nad.data import load_data
from nad.data.dataset import ImageData
from nad.models.checkpoint import Classifier
from nad.scan import WARP_RATE_FLOOR, ScanConfig, forward, held_out_rates

FREQUENCIES = range(1, 13)  # periods across the image; SIG's is 6
PHASES = [i * math.pi / 4 for i in range(8)]
SEARCH = 240


def tones(h: int, w: int, amplitude: float) -> Tensor:
    """Every tone of the family, (P, 1, H, W): varying along the columns (as SIG's) and then along the rows."""
    out = []
    for n, shape in ((w, (1, 1, w)), (h, (1, h, 1))):
        j = torch.arange(n, dtype=torch.float64)
        for f in FREQUENCIES:
            for phase in PHASES:
                signal = (amplitude * torch.sin(2 * math.pi * j * f / n + phase)).float()
                out.append(signal.view(shape).expand(1, h, w))
    return torch.stack(out)


def tone_success(clf: Classifier, clean: ImageData, amplitude: float, seed: int = 0) -> tuple[list[float], list[int]]:
    """Per class t: the held-out success rate (%) of the tone that sent most drawn images of other classes to
    t, and that tone's index in :func:`tones`."""
    cfg = ScanConfig(seed=seed)
    gen = torch.Generator().manual_seed(seed)
    patterns = tones(*clean.image_shape[1:], amplitude).to(clean.device)
    index = torch.randint(len(clean), (SEARCH,), generator=gen).to(clean.device)
    x, y = clean.x[index].float().div_(255), clean.y[index]
    k = clf.info.num_classes
    others = torch.stack([y != t for t in range(k)])  # (K, N): the images whose class is not t
    with torch.no_grad():
        hits = torch.stack([forward(clf, (x + p).clamp(0, 1), cfg).argmax(1) for p in patterns])  # (P, N)
        reached = (hits[:, None, :] == torch.arange(k, device=x.device)[None, :, None]) & others[None]
        best = reached.sum(2).argmax(0)  # (K,)
        rates = held_out_rates(clf, clean, cfg, gen, lambda z, t: (z + patterns[best[t]]).clamp(0, 1))
    return rates, best.tolist()


def describe(index: int) -> str:
    """A tone's index in :func:`tones` in words, e.g. ``columns f=6 phase=0/8``."""
    per_axis = len(FREQUENCIES) * len(PHASES)
    axis = "columns" if index < per_axis else "rows"
    f, phase = divmod(index % per_axis, len(PHASES))
    return f"{axis} f={FREQUENCIES[f]} phase={phase}/8"


def probe(name: str, clean_pool: ImageData, amplitudes: list[int]) -> dict[str, Any]:
    start = time.perf_counter()
    clf, clean = probe_model(name, clean_pool)
    rows = []
    for amplitude in amplitudes:
        rates, best = tone_success(clf, clean, amplitude / 255)
        rows.append(
            {**class_rates(rates, WARP_RATE_FLOOR, amplitude=f"{amplitude}/255"), "tone_of_0": describe(best[0])}
        )
    return {"model": name, "settings": rows, "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=sorted(p.name for p in Path("zoo").iterdir() if p.is_dir()))
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
