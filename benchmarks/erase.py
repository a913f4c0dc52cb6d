"""(b) ``nad erase`` end to end with paper defaults on a CIFAR-10 WRN-16-1, 5% clean data, timed by phase,
against the floor of the same work measured in the same process.

    python -m benchmarks.erase MODEL_DIR --data CIFAR_ROOT [--precision bf16] [--no-channels-last]
                               [--seed N] [--baseline] [--device cuda]

Phases: load (data and model), teacher (10 epochs), NAD (20 epochs with the teacher's forward passes),
evaluation (once before, once after), and, with ``--baseline``, the fine-tuning baseline (20 epochs).

The floor (``benchmarks.floor``) is measured first, for fp32 in both layouts and for the run's own precision
and layout; ``ratio_fp32`` divides the end-to-end time by the faster fp32 floor, the stricter of the two.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import report, sync
from benchmarks.floor import erase_floor, rates
from nad.api import erase, select_clean
from nad.attacks import parse_attack
from nad.cli import precision_args
from nad.data import load_data
from nad.defenses import NAD, NADConfig
from nad.models import load_model
from nad.training import TrainConfig


def floors(device: torch.device, precision: str, channels_last: bool) -> dict[str, float]:
    """Seconds of the erase workload at bare rates: fp32 in each layout, and the run's own setting."""
    settings = {"fp32": ("fp32", False), "fp32_channels_last": ("fp32", True), "run": (precision, channels_last)}
    return {name: round(erase_floor(rates(device, 64, 30, *setting)), 1) for name, setting in settings.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--data", required=True, help="folder holding cifar-10-batches-py")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    precision_args(parser)  # --precision and --channels-last, as nad train and nad erase take them
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline", action="store_true", help="also run the fine-tuning baseline")
    args = parser.parse_args()
    device = torch.device(args.device)
    floor_s = floors(device, args.precision, args.channels_last)

    start = time.perf_counter()
    model = load_model(args.model).to(device)
    train = load_data(f"cifar10:{args.data}:train").to(device)
    test = load_data(f"cifar10:{args.data}:test").to(device)
    attack = parse_attack(model.info.attack or "badnets")
    clean = select_clean(train, 0.05, seed=args.seed)
    sync(device)
    load_s = time.perf_counter() - start

    schedule = TrainConfig(precision=args.precision, channels_last=args.channels_last, seed=args.seed)
    defense = NAD(NADConfig(train=schedule))
    result = erase(model, clean, defense, test, attack, baseline=args.baseline, quiet=True)
    seconds = result.log["seconds"]
    phases = {
        "load": load_s,
        "teacher": seconds["teacher"],
        "nad": seconds["student"],
        "finetune_baseline": seconds.get("finetune_baseline", 0.0),
    }
    phases["evaluation"] = result.seconds - sum(v for k, v in phases.items() if k != "load")
    total = load_s + result.seconds
    layout = "" if args.channels_last else "-contiguous"
    report(
        f"erase-{device.type}-{args.precision}{layout}-seed{args.seed}" + ("-baseline" if args.baseline else ""),
        {
            "config": vars(args),
            "seconds": {k: round(v, 1) for k, v in phases.items()},
            "total_s": round(total, 1),
            "floor_s": floor_s,
            "ratio_fp32": round(total / min(floor_s["fp32"], floor_s["fp32_channels_last"]), 3),
            "ratio_run": round(total / floor_s["run"], 3),
            "before": result.before.to_json() if result.before else None,
            "after": result.after.to_json() if result.after else None,
            "finetune": result.finetune.to_json() if result.finetune else None,
        },
    )


if __name__ == "__main__":
    main()
