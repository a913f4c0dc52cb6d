"""(b) ``nad erase`` end to end with paper defaults on a CIFAR-10 WRN-16-1, 5% clean data, timed by phase.

    python -m benchmarks.erase MODEL_DIR --data CIFAR_ROOT [--precision bf16] [--baseline] [--device cuda]

Phases: load (data and model), teacher (10 epochs), NAD (20 epochs with the teacher's forward passes),
evaluation (once before, once after), and, with ``--baseline``, the fine-tuning baseline (20 epochs).
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import report, sync
from nad.api import erase, select_clean
from nad.attacks import parse_attack
from nad.data import load_data
from nad.defenses import NAD, NADConfig
from nad.models import load_model
from nad.training import TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--data", required=True, help="folder holding cifar-10-batches-py")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--baseline", action="store_true", help="also run the fine-tuning baseline")
    args = parser.parse_args()
    device = torch.device(args.device)

    start = time.perf_counter()
    model = load_model(args.model).to(device)
    train = load_data(f"cifar10:{args.data}:train").to(device)
    test = load_data(f"cifar10:{args.data}:test").to(device)
    attack = parse_attack(model.info.attack or "badnets")
    clean = select_clean(train, 0.05, seed=0)
    sync(device)
    load_s = time.perf_counter() - start

    defense = NAD(NADConfig(train=TrainConfig(precision=args.precision)))
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
    report(
        f"erase-{device.type}-{args.precision}" + ("-baseline" if args.baseline else ""),
        {
            "config": vars(args),
            "seconds": {k: round(v, 1) for k, v in phases.items()},
            "total_s": round(total, 1),
            "before": result.before.to_json() if result.before else None,
            "after": result.after.to_json() if result.after else None,
            "finetune": result.finetune.to_json() if result.finetune else None,
        },
    )


if __name__ == "__main__":
    main()
