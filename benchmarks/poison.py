"""(c) Poisoning throughput on the 50,000 CIFAR-10 training images, per registered attack.

    python -m benchmarks.poison --data CIFAR_ROOT [--repeat 3]

Two figures per attack, best of ``--repeat``: ``poison`` is ``attack.poison(train_set)`` at the attack's
default rate (what ``nad train`` does), ``apply_all`` puts the test-time trigger on all 50,000 images.
Attacks whose poisoning needs a model (``cl``'s PGD, ``trojan``'s trigger search) are left out.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from benchmarks.common import report
from nad.attacks import ATTACKS, parse_attack
from nad.data import load_data

SLOW_SETUP = {"cl", "trojan"}


def best_of(repeat: int, fn: Callable[[Any], object], arg: Any) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn(arg)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="folder holding cifar-10-batches-py")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    data = load_data(f"cifar10:{args.data}:train")
    figures = {}
    for name in sorted(ATTACKS):
        if name in SLOW_SETUP:
            continue
        attack = parse_attack(name).prepare(data)
        poison = best_of(args.repeat, attack.poison, data)
        apply_all = best_of(args.repeat, attack.apply, data.x)
        figures[name] = {"poison_s": round(poison, 3), "apply_all_s": round(apply_all, 3)}
    report("poison", {"images": len(data), "attacks": figures})


if __name__ == "__main__":
    main()
