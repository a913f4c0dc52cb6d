"""(d) Training throughput of ``nad train`` (the real loop: gather, augment, normalise, step) against the
bare training step on random tensors.

    python -m benchmarks.train --data CIFAR_ROOT [--images 10000] [--precision bf16] [--no-channels-last]
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch

from benchmarks.common import report, timed
from benchmarks.floor import rates
from nad.api import SCRATCH, train_model
from nad.attacks import parse_attack
from nad.cli import precision_args
from nad.data import load_data
from nad.models import parse_normalize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="folder holding cifar-10-batches-py")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=10_000, help="training images per timed epoch")
    precision_args(parser)  # --precision and --channels-last, as nad train and nad erase take them
    args = parser.parse_args()
    device = torch.device(args.device)
    data = load_data(f"cifar10:{args.data}:train")
    data = data.subset(torch.arange(min(args.images, len(data)))).to(device)
    cfg = replace(SCRATCH, epochs=1, precision=args.precision, channels_last=args.channels_last)
    attack = parse_attack("badnets")
    norm = parse_normalize("cifar10")
    train_model(
        data.subset(torch.arange(512, device=device)), "wrn16_1", cfg, attack, None, norm, quiet=True
    )  # warm-up
    seconds = timed(lambda: train_model(data, "wrn16_1", cfg, attack, None, norm, quiet=True), device)
    loop = len(data) / seconds
    bare = rates(device, cfg.batch_size, 20, args.precision, args.channels_last)["train_img_s"]
    name = f"train-{device.type}-{args.precision}" + ("-cl" if args.channels_last else "")
    report(
        name,
        {
            "config": vars(args),
            "nad_train_img_s": round(loop, 1),
            "bare_step_img_s": round(bare, 1),
            "ratio": round(loop / bare, 3),
        },
    )


if __name__ == "__main__":
    main()
