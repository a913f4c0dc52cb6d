"""A defense's repair on WRN-16-1, timed against the floor of the model passes it must make.

    python -m benchmarks.defense_floor NAME [--epochs E] [--device cpu|cuda] [--precision fp32|bf16]

NAME is ``fst``, ``ft_sam``, ``sau``, ``nc`` or ``anp_ft``, run with its defaults on 2,500 CIFAR-sized uint8
images (5% of CIFAR-10; random pixels, as the cost does not depend on them) and a fresh WRN-16-1, except
``--epochs`` (SAU's rounds) and ``--iterations`` (ANP's mask steps), which keep a CPU run short: the floor
scales with them, so the ratio does not. The floor counts the passes at the bare rates of the same process,
at the defense's own batch size:

- ``fst``: one training step per image and epoch;
- ``ft_sam``: two (SAM's second forward and backward, at the perturbed weights);
- ``sau``: per image and round, ``steps`` PGD steps that each run both models forward and backward to the
  input (measured as such: eval mode, gradient for the input only), one forward pass of each model on the
  clean images, one training step on the clean image and one on its perturbed copy, and two forward passes
  of the frozen reference;
- ``nc``: the scan's passes (per step of trigger inversion and of universal perturbation, the classes' batch
  of images forward and backward to the input; the held-out images forward), then one training step per image
  of its unlearning set and epoch. So that the unlearning runs on a random model, the scan's threshold is set
  to 1e-9, which flags every class with a positive anomaly index (the floor counts the images it really built).
- ``anp_ft``: per mask iteration, three passes of the batch forward and backward to the perturbed neurons
  (the noise's ascent step, then the natural and the perturbed loss for the masks), counted at the
  input-gradient rate at ANP's batch size; one forward pass of the held-out images per pruning count tried;
  then one training step per image and epoch of the fine-tuning.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from torch.nn import functional as F

from benchmarks.common import report, timed
from nad.data.dataset import ImageData
from nad.defenses import DEFENSES
from nad.defenses.settings import RunSettings, defense_config
from nad.models import ModelInfo, build_classifier, parse_normalize

IMAGES = 2500


def bare_rates(device: torch.device, batch: int, precision: str, steps: int = 10) -> dict[str, float]:
    """Images per second of WRN-16-1's bare training step, forward pass, and input-gradient pass (eval mode)."""
    torch.manual_seed(0)
    model = build_classifier(ModelInfo("wrn16_1", 10, (3, 32, 32))).module.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)

    def cast() -> contextlib.AbstractContextManager:
        return torch.autocast(device.type, torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()

    def train_step() -> None:
        model.train()
        with cast():
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def input_grad() -> None:
        model.eval()
        inputs = x.clone().requires_grad_(True)
        with cast():
            loss = F.cross_entropy(model(inputs), y)
        torch.autograd.grad(loss, inputs)

    @torch.no_grad()
    def forward() -> None:
        model.eval()
        with cast():
            model(x)

    rates = {}
    for name, fn in (("train", train_step), ("input_grad", input_grad), ("forward", forward)):
        timed(lambda fn=fn: [fn() for _ in range(3)], device)  # warm-up
        rates[name] = batch * steps / timed(lambda fn=fn: [fn() for _ in range(steps)], device)
    return rates


def floor_seconds(name: str, config: object, rates_at: dict[int, dict[str, float]], log: dict) -> float:
    rates = rates_at[config.train.batch_size]  # type: ignore[attr-defined]
    epochs = config.train.epochs  # type: ignore[attr-defined]
    images = IMAGES * epochs
    if name == "nc":
        scan, classes = config.scan, 10  # type: ignore[attr-defined]
        searched = (scan.steps + scan.uap_steps) * scan.batch * classes / rates["input_grad"]
        return (
            searched
            + scan.holdout * classes / rates["forward"]
            + log.get("unlearning_images", 0) * epochs / rates["train"]
        )
    if name == "anp_ft":
        anp_rates = rates_at[config.batch_size]  # type: ignore[attr-defined]
        masks = 3 * config.iterations * config.batch_size / anp_rates["input_grad"]  # type: ignore[attr-defined]
        counts = log["val_size"] * len(log["val_acc_curve"]) / anp_rates["forward"]
        return masks + counts + images / rates["train"]
    if name == "fst":
        return images / rates["train"]
    if name == "ft_sam":
        return 2 * images / rates["train"]
    steps = config.steps  # type: ignore[attr-defined]
    per_image = 2 * steps / rates["input_grad"] + 2 / rates["forward"] + 2 / rates["train"] + 2 / rates["forward"]
    return images * per_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=["fst", "ft_sam", "sau", "nc", "anp_ft"])
    parser.add_argument("--epochs", type=int, help="epochs (SAU: rounds); default: the defense's own")
    parser.add_argument("--iterations", type=int, help="anp_ft: ANP's mask steps; default: its own (2000)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    args = parser.parse_args()
    device = torch.device(args.device)
    params = {"scan.threshold": "1e-9"} if args.name == "nc" else None  # see the module doc
    if args.iterations is not None:
        params = {**(params or {}), "iterations": str(args.iterations)}
    settings = RunSettings(seed=0, precision=args.precision, epochs=args.epochs)
    _, config = defense_config(args.name, settings, params=params)
    batches = {config.train.batch_size, getattr(config, "batch_size", config.train.batch_size)}
    rates_at = {batch: bare_rates(device, batch, args.precision) for batch in batches}

    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (IMAGES, 3, 32, 32), dtype=torch.uint8, generator=gen)
    clean = ImageData(x, torch.arange(IMAGES) % 10, 10, "random").to(device)
    info = ModelInfo("wrn16_1", 10, (3, 32, 32), normalize=parse_normalize("cifar10"))
    model = build_classifier(info)
    model.module.to(device)
    start = time.perf_counter()
    log = DEFENSES[args.name](config).repair(model, clean, quiet=True).log
    seconds = time.perf_counter() - start
    floor = floor_seconds(args.name, config, rates_at, log)
    figures = {
        "config": vars(args),
        "epochs": config.train.epochs,
        "batch_size": config.train.batch_size,
        "rates_img_s": {b: {k: round(v, 1) for k, v in r.items()} for b, r in rates_at.items()},
        "seconds": round(seconds, 1),
        "floor_s": round(floor, 1),
        "ratio": round(seconds / floor, 2),
    }
    if args.name == "anp_ft":
        figures.update(iterations=config.iterations, pruned=log["pruned"], seconds_by_phase=log["seconds"])
    if args.name == "nc":
        figures.update(flagged=log["flagged"], unlearning_images=log.get("unlearning_images", 0))
    report(f"defense-floor-{args.name}-{device.type}-{args.precision}", figures)


if __name__ == "__main__":
    main()
