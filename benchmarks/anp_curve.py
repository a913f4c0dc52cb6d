"""ANP's pruning curve on one zoo model: how clean accuracy and ASR move as neurons are pruned in mask order.

    python -m benchmarks.anp_curve zoo/standard-sig [--seed 0] [--max-points 40]

ANP's masks are optimised once (the paper's defaults) on the tuning part of the clean set D, drawn and split
exactly as ``benchmarks.defense_sweep`` does (a class-stratified 5% of the training images, 20% of it held out
for validation). Neurons are then pruned in increasing order of their mask, a hundredth of them at a time, and
each step is scored on the validation images (what a defender can see) and on the test set (ACC, and ASR
with the model's recorded attack, which no choice may use). The table marks the step the paper's fixed
threshold (0.2) reaches and the steps ``anp:max_drop=X`` would choose on validation accuracy. The curve
stops once validation accuracy has fallen 25 points. Results: ``results/anp-curve-MODEL-sSEED.json``, with the
pruning order, which a later run reuses instead of optimising the masks again.

``--finetune COUNT ...`` also fine-tunes the model pruned at each COUNT on the tuning images with the
``finetune`` defense's registered schedule (the NAD reference's), the pruned BatchNorm weights put back to
zero after every step, as Fine-Pruning holds its pruned channels: does fine-tuning win back the clean
accuracy that pruning cost, without the backdoor?
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import RESULTS, machine
from nad.api import model_attack, split_clean
from nad.data import load_data
from nad.data.dataset import stratified_split
from nad.defenses.anp import ANP, ANPConfig, PrunedNeurons, prune, pruning_order
from nad.defenses.settings import RunSettings, defense_config
from nad.metrics import accuracy, evaluate
from nad.models import load_model
from nad.training import train

DROPS = (1.0, 2.0, 4.0, 8.0)
STOP_DROP = 25.0


def chosen_count(curve: list[dict[str, Any]], drop: float) -> int:
    """The count ``anp:max_drop=drop`` (with ``threshold=1``) picks: the last step before validation accuracy
    first falls more than ``drop`` points below the unpruned model's."""
    base = curve[0]["val_acc"]
    chosen = 0
    for point in curve:
        if point.get("extra"):
            continue
        if point["val_acc"] < base - drop - 1e-9:
            break
        chosen = point["count"]
    return chosen


def markdown(result: dict[str, Any]) -> str:
    curve = result["curve"]
    marks: dict[int, list[str]] = {}
    marks.setdefault(result["below_0.2"], []).append("threshold 0.2 (paper)")
    for drop in DROPS:
        marks.setdefault(chosen_count(curve, drop), []).append(f"max_drop={drop:g}")
    lines = [
        "| pruned neurons | highest mask pruned | validation ACC % | test ACC % | ASR % | chosen by |",
        "|---|---|---|---|---|---|",
    ]
    for point in curve:
        lines.append(
            f"| {point['count']} | {point['mask']:.3f} | {point['val_acc']:.2f} | {point['acc']:.2f} "
            f"| {point['asr']:.2f} | {', '.join(marks.get(point['count'], []))} |"
        )
    if result.get("finetuned"):
        lines += ["", "Fine-tuned after pruning (the pruned weights held at zero):", ""]
        lines += [
            "| pruned neurons | validation ACC % | test ACC % | ASR % | RA % | wall s |",
            "|---|---|---|---|---|---|",
        ]
        for count, point in result["finetuned"].items():
            lines.append(
                f"| {count} | {point['val_acc']:.2f} | {point['acc']:.2f} | {point['asr']:.2f} | {point['ra']:.2f} "
                f"| {point['seconds']:.0f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="a zoo folder")
    parser.add_argument("--data", default="cifar10:data/cifar10")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=2000, help="mask optimisation steps (the paper's 2000)")
    parser.add_argument("--finetune", type=int, nargs="*", default=[], help="pruned counts to fine-tune")
    parser.add_argument("--table-only", action="store_true", help="print the cached result; run nothing")
    args = parser.parse_args()
    path = RESULTS / f"anp-curve-{args.model.name}-s{args.seed}.json"
    if args.table_only:
        print(markdown(json.loads(path.read_text())))
        return
    model = load_model(args.model / "model.safetensors")
    pool, test = load_data(args.data, "train"), load_data(args.data, "test")
    attack = model_attack(None, model, str(args.model / "model.safetensors"), pool)
    clean, _ = split_clean(pool, 0.05, args.seed, model.info.num_classes)
    tune_index, val_index = stratified_split(clean.y, 0.8, args.seed)
    tune, val = clean.subset(tune_index), clean.subset(val_index)
    if path.exists():  # the masks are the expensive part: reuse the recorded pruning order
        result = json.loads(path.read_text())
    else:
        result = prune_curve(model, tune, val, test, attack, args)
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")
    names = list(dict.fromkeys(name for name, _ in result["order"]))
    order = torch.tensor([[names.index(name), channel] for name, channel in result["order"]])
    finetuned = result.setdefault("finetuned", {})
    settings = RunSettings(seed=args.seed)
    for count in args.finetune:
        held = PrunedNeurons(model.clone(), names, order[:count], zero_bias=False)
        held.apply()
        pruned = held.model
        start = time.perf_counter()
        train(pruned, tune, defense_config("finetune", settings)[1], desc="finetune", quiet=True, after_step=held.apply)
        point = {"seconds": round(time.perf_counter() - start, 1), "val_acc": accuracy(pruned, val)}
        point.update({k: v for k, v in vars(evaluate(pruned, test, attack)).items() if k in ("acc", "asr", "ra")})
        finetuned[str(count)] = point
        print("finetuned", count, point, flush=True)
        path.write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result))


def prune_curve(model: Any, tune: Any, val: Any, test: Any, attack: Any, args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    names, values, _ = ANP(ANPConfig(iterations=args.iterations, seed=args.seed)).masks(model, tune, quiet=True)
    mask_seconds = time.perf_counter() - start
    order = pruning_order(values, 1.0)
    masks = sorted(float(v) for layer in values for v in layer)
    step = max(1, round(len(order) / 100))
    below = int(sum(m <= 0.2 for m in masks))
    curve: list[dict[str, Any]] = []
    for count in sorted(set(range(0, len(order) + 1, step)) | {below}):
        pruned = model.clone()
        prune(pruned, names, order[:count], zero_bias=False)
        point = {"count": count, "mask": masks[count - 1] if count else 0.0, "val_acc": accuracy(pruned, val)}
        if count % step:
            point["extra"] = True  # the paper's threshold, off the 1% grid that max_drop walks
        point.update({k: v for k, v in vars(evaluate(pruned, test, attack)).items() if k in ("acc", "asr", "ra")})
        curve.append(point)
        print(point, flush=True)
        if point["val_acc"] < curve[0]["val_acc"] - STOP_DROP:
            break
    return {
        "config": {**vars(args), "model": str(args.model), "tune": len(tune), "val": len(val)},
        "machine": machine(),
        "neurons": len(order),
        "below_0.2": below,
        "mask_seconds": round(mask_seconds, 1),
        "masks": masks,
        "order": [[names[int(layer)], int(channel)] for layer, channel in order],
        "curve": curve,
    }


if __name__ == "__main__":
    main()
