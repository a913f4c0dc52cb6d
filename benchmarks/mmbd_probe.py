"""A probe, not part of ``nad scan``: would MM-BD's maximum-margin statistic name SIG's target?

    python -m benchmarks.mmbd_probe [NAME ...]   (default: standard-clean standard-sig reference-sig)

MM-BD (Wang, Xiang, Miller & Kesidis, "MM-BD: Post-Training Detection of Backdoor Attacks with Arbitrary
Backdoor Pattern Types Using a Maximum Margin Statistic", IEEE S&P 2024; official code wanghangpsu/MM-BD,
``univ_bd.py``) needs no clean data and assumes no trigger shape: for each class t, 30 uniform random images
are optimised in pixel space (clamped to [0, 1]) by 300 plain gradient steps of lr 0.01 on the summed margin
``logit_t - max_{k != t} logit_k`` (the official code builds a fresh SGD optimiser each step, so its momentum
0.2 never acts), and the class's statistic is the largest final margin. A backdoor target should have an
abnormally large one. The official test fits a gamma distribution to the other classes' statistics and flags
the top class when ``1 - F(top) ** K < 0.05``; that p-value needs scipy (not a dependency of nad, and skipped
without it); the MAD index of each class (the scan's own scale) is always reported.

Deviation: all classes are optimised in one batch and the official early stop (relative loss change under
1e-5) is left out; it rarely fires within 300 steps. Results: ``benchmarks/results/mmbd-probe.json``;
docs/scan.md says what they showed.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from torch import Tensor

from benchmarks.common import report
from nad.models.checkpoint import Classifier, load_model
from nad.scan import anomaly_index


def margins(clf: Classifier, x: Tensor, targets: Tensor) -> Tensor:
    """``logit_t - max_{k != t} logit_k`` of each image towards its target class."""
    out = clf.module(clf.preprocess_float(x.clamp(0, 1)))
    own = out.gather(1, targets[:, None])[:, 0]
    others = out.scatter(1, targets[:, None], float("-inf")).amax(1)
    return own - others


def max_margins(clf: Classifier, images: int = 30, steps: int = 300, lr: float = 1e-2, seed: int = 0) -> Tensor:
    """Per class, the largest margin reached from ``images`` random starts (MM-BD's statistic)."""
    module = clf.module.eval().requires_grad_(False)
    classes = clf.info.num_classes
    torch.manual_seed(seed)
    x = torch.rand(classes * images, *clf.info.input_size, requires_grad=True)
    targets = torch.arange(classes).repeat_interleave(images)
    for _ in range(steps):
        (grad,) = torch.autograd.grad(-margins(clf, x, targets).sum(), x)
        with torch.no_grad():
            x -= lr * grad
    with torch.no_grad():
        final = margins(clf, x, targets)
    module.requires_grad_(True)
    return final.view(classes, images).amax(1)


def gamma_p_value(stats: list[float]) -> float | None:
    """The official test: gamma fitted to all classes but the top one; None without scipy."""
    try:
        from scipy.stats import gamma
    except ImportError:
        return None
    top = max(stats)
    rest = list(stats)
    rest.remove(top)
    shape, loc, scale = gamma.fit(rest)
    return float(1 - gamma.cdf(top, a=shape, loc=loc, scale=scale) ** len(stats))


def probe(name: str) -> dict[str, Any]:
    start = time.perf_counter()
    stats = max_margins(load_model(f"zoo/{name}"))
    index = anomaly_index(stats.tolist(), low=False, floor=0.0)
    top = int(stats.argmax())
    return {
        "model": name,
        "max_margin": [round(v, 2) for v in stats.tolist()],
        "top_class": top,
        "index_of_top": round(index[top], 2),
        "index_of_0": round(index[0], 2),  # every zoo attack targets class 0
        "p_value": gamma_p_value(stats.tolist()),
        "seconds": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=["standard-clean", "standard-sig", "reference-sig"])
    args = parser.parse_args()
    report("mmbd-probe", {"models": [probe(name) for name in args.names]})


if __name__ == "__main__":
    main()
