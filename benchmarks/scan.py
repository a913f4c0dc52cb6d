"""`nad scan` against its floor: one scan of a 10-class model, and what its image passes cost at bare rates.

    python -m benchmarks.scan [--model zoo/reference-badnets] [--data cifar10:data/cifar10]
                              [--precision fp32|bf16] [--device cpu|cuda] [--stripes]

The scan's work with defaults: ``steps`` (150) trigger-inversion steps, ``uap_steps`` (20) universal-perturbation
steps, 20 more for the warp (and for each of the column and row stripes, with ``--stripes`` or where a tone
stands out) and ``neuron_steps`` (5) neuron-perturbation steps, each a forward and a backward pass (to the input
or the BatchNorm noise only: the weights are frozen) of ``batch`` (24) images per class, then ``holdout`` (256)
forward passes per class for each perturbation; and the tones' search, a forward pass of ``batch`` images per
class for each of 192 tones. The floor is that many passes at the rates of
the same model's bare forward+backward and forward on random tensors of the scan's batch size.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks.common import report, timed
from nad.api import select_clean
from nad.data import load_data
from nad.models import load_model
from nad.scan import STRIPE_EPS, ScanConfig, forward, scan, tones

DEFAULT_MODEL = "zoo/reference-badnets"


def bare_rates(clf, cfg: ScanConfig, batch: int, device: torch.device, steps: int = 10) -> tuple[float, float]:
    """Images per second of a forward+backward to the input, and of a forward, at ``batch`` images."""
    clf.module.eval().to(memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
    for p in clf.module.parameters():
        p.requires_grad_(False)
    x = torch.rand(batch, *clf.info.input_size, device=device, requires_grad=True)

    def backward_steps() -> None:
        for _ in range(steps):
            forward(clf, x, cfg).sum().backward()

    def forward_steps() -> None:
        with torch.no_grad():
            for _ in range(steps):
                forward(clf, x, cfg)

    backward_steps(), forward_steps()  # warm-up
    return batch * steps / timed(backward_steps, device), batch * steps / timed(forward_steps, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--data", default="cifar10:data/cifar10")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--stripes", action="store_true", help="with the opt-in stripe measure")
    args = parser.parse_args()
    device = torch.device(args.device)
    cfg = ScanConfig(precision=args.precision, stripe_eps=STRIPE_EPS if args.stripes else 0.0)
    clf = load_model(args.model).to(device)
    k = clf.info.num_classes
    clean = select_clean(load_data(args.data, "train").to(device), 0.05, 0, k)
    result = scan(clf, clean, cfg, quiet=True)
    backward_rate, forward_rate = bare_rates(clf, cfg, k * cfg.batch, device)
    # the free one, the warp, and the column and row stripes (when drawn): each its steps, then its held-out passes
    perturbations = 1 + (cfg.warp_bound > 0) + 2 * bool(result.stripe_success)
    passes = (cfg.steps + perturbations * cfg.uap_steps + cfg.neuron_steps) * k * cfg.batch
    held_out = (perturbations + 1 + bool(result.tone_success)) * k * cfg.holdout  # the neuron's and the tones' too
    tone_search = len(tones(*clean.image_shape[1:], cfg.tone_amplitude)) * k * cfg.batch if result.tone_success else 0
    floor = passes / backward_rate + (held_out + tone_search) / forward_rate
    report(
        f"scan-{device.type}-{args.precision}"
        + ("-stripes" if args.stripes else "")
        + ("" if args.model == DEFAULT_MODEL else f"-{Path(args.model).name}"),
        {
            "config": {"model": args.model, "data": args.data, "clean_size": len(clean), **vars(cfg)},
            "seconds": round(result.seconds, 1),
            "floor_s": round(floor, 1),
            "backward_img_s": round(backward_rate, 1),
            "forward_img_s": round(forward_rate, 1),
            "verdict": result.verdict,
            "nc_index": [round(v, 2) for v in result.nc_index],
            "uap_index": [round(v, 2) for v in result.uap_index],
            "stripe_index": [round(v, 2) for v in result.stripe_index],
            "warp_index": [round(v, 2) for v in result.warp_index],
            "tone_index": [round(v, 2) for v in result.tone_index],
            "periodic_index": [round(v, 2) for v in result.periodic_index],
        },
    )


if __name__ == "__main__":
    main()
