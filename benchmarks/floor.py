"""(a) The floor: WRN-16-1's bare training step and forward pass on random tensors, and what the NAD
workload would cost at those rates.

    python -m benchmarks.floor [--device cpu|cuda] [--batch 64] [--steps 30] [--precision fp32|bf16]

The workload of ``nad erase`` with defaults (no fine-tuning baseline): 10 teacher epochs and 20 NAD epochs
on 2,500 images at batch 64, a teacher forward pass for each NAD step, and one evaluation before and one
after (10,000 clean and 9,000 triggered CIFAR-10 test images each).
"""

from __future__ import annotations

import argparse
import contextlib

import torch
from torch.nn import functional as F

from benchmarks.common import report, timed
from nad.models import create_model

CLEAN, TEACHER_EPOCHS, NAD_EPOCHS, EVAL_IMAGES = 2500, 10, 20, 2 * (10_000 + 9_000)


def rates(
    device: torch.device, batch: int, steps: int, precision: str, channels_last: bool, compile: bool = False
) -> dict[str, float]:
    """Images per second of the bare training step, forward pass and evaluation forward; with ``compile``,
    of ``torch.compile``'s model, plus the seconds its first calls took (compilation included)."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = create_model("wrn16_1", 10).to(device, memory_format=fmt)
    if compile:
        model = torch.compile(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,), device=device)
    big = torch.randn(1000, 3, 32, 32, device=device).contiguous(memory_format=fmt)

    def cast() -> contextlib.AbstractContextManager:
        return torch.autocast(device.type, torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()

    def train_steps(n: int) -> None:
        model.train()
        for _ in range(n):
            with cast():
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    @torch.inference_mode()
    def forwards(n: int, inputs: torch.Tensor) -> None:
        model.eval()
        for _ in range(n):
            with cast():
                model(inputs)

    warm_s = timed(lambda: (train_steps(5), forwards(3, x), forwards(1, big)), device)
    train_s = timed(lambda: train_steps(steps), device) / steps
    fwd_s = timed(lambda: forwards(steps, x), device) / steps
    eval_s = timed(lambda: forwards(3, big), device) / 3
    per_second = {"train_img_s": batch / train_s, "forward_img_s": batch / fwd_s, "eval_img_s": 1000 / eval_s}
    return {**per_second, "warm_up_s": warm_s}


def erase_floor(r: dict[str, float]) -> float:
    """Seconds the NAD workload would take at the bare rates ``r`` (from :func:`rates`)."""
    train_images = CLEAN * (TEACHER_EPOCHS + NAD_EPOCHS)
    return train_images / r["train_img_s"] + CLEAN * NAD_EPOCHS / r["forward_img_s"] + EVAL_IMAGES / r["eval_img_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (warm_up_s: compile time)")
    args = parser.parse_args()
    device = torch.device(args.device)
    r = rates(device, args.batch, args.steps, args.precision, args.channels_last, args.compile)
    floor = erase_floor(r)
    name = f"floor-{device.type}-{args.precision}" + ("-cl" if args.channels_last else "")
    name += "-compiled" if args.compile else ""
    report(name, {"config": vars(args), **{k: round(v, 1) for k, v in r.items()}, "erase_floor_s": round(floor, 1)})


if __name__ == "__main__":
    main()
