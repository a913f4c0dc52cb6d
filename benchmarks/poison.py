"""(c) Poisoning throughput: each registered attack poisons all 50,000 CIFAR-10 training images.

    python -m benchmarks.poison --data CIFAR_ROOT [--repeat 3]

Attacks whose trigger must first be generated or optimised against a model (``cl``'s PGD, ``trojan``'s
trigger search) are timed on the stamping alone, and say so.
"""

from __future__ import annotations

import argparse
import time

from benchmarks.common import report
from nad.attacks import ATTACKS, parse_attack
from nad.data import load_data

SLOW_SETUP = {"cl", "trojan"}


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
        attack = parse_attack(name)
        best = float("inf")
        for _ in range(args.repeat):
            start = time.perf_counter()
            attack.poison(data)
            best = min(best, time.perf_counter() - start)
        figures[name] = {"seconds": round(best, 3), "images_per_s": round(len(data) / best)}
    report("poison", {"images": len(data), "attacks": figures})


if __name__ == "__main__":
    main()
