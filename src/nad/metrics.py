"""Clean accuracy (ACC), attack success rate (ASR), robust accuracy (RA) and DER, in percent.

ASR follows each attack's own test-time definition (``Attack.test_set``): for all-to-one attacks, the share
of triggered test images whose true label is not the target that the model assigns to the target; for
all-to-all, the share of triggered images classified as label + 1 mod K.

Under torchrun, ``evaluate`` splits the test set across the ranks (every ``world``-th image) and sums the
counts, so every rank returns the same scores for the whole set.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nad import distributed
from nad.data.dataset import ImageData
from nad.data.trigger import Trigger
from nad.models.checkpoint import Classifier


@torch.inference_mode()
def predict(clf: Classifier, x: Tensor, batch_size: int = 1000) -> Tensor:
    clf.module.eval()
    preds = [clf(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)]
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long, device=x.device)


def accuracy(clf: Classifier, data: ImageData) -> float:
    """Percentage of ``data`` classified as its labels."""
    if len(data) == 0:
        return float("nan")
    return 100.0 * float((predict(clf, data.x) == data.y).float().mean())


@dataclass(frozen=True)
class Scores:
    """ACC on all test images; with an attack, ASR and RA on its triggered non-target images, and ACC on the
    non-target images alone (``acc_nontarget``: the measure of the NAD reference's published numbers)."""

    acc: float
    asr: float | None = None
    ra: float | None = None
    acc_nontarget: float | None = None

    def to_json(self) -> dict[str, float | None]:
        rounded = {k: None if v is None else round(v, 2) for k, v in vars(self).items()}
        return {k: v for k, v in rounded.items() if k in ("acc", "asr") or v is not None}


def percent_correct(clf: Classifier, x: Tensor, *labels: Tensor) -> list[float]:
    """For each labelling of ``x``, the percentage of ``x`` classified so; sharded across ranks under torchrun."""
    rank, world = distributed.rank(), distributed.world_size()
    preds = predict(clf, x[rank::world])
    counts = [len(preds)] + [int((preds == y[rank::world]).sum()) for y in labels]
    total, *correct = distributed.all_reduce_sum(torch.tensor(counts, dtype=torch.int64)).tolist()
    return [100.0 * c / total if total else float("nan") for c in correct]


def evaluate(clf: Classifier, test: ImageData, attack: Trigger | None = None) -> Scores:
    """ACC on the whole test set; with an attack, ASR and RA on its triggered non-target images."""
    if distributed.world_size() > 1:
        return evaluate_sharded(clf, test, attack)
    if len(test) == 0:
        return Scores(float("nan"))
    correct = predict(clf, test.x) == test.y
    acc = 100.0 * float(correct.float().mean())
    if attack is None:
        return Scores(acc)
    keep = non_target(test, attack)
    triggered = attack.test_set(test)
    preds = predict(clf, triggered.x)
    asr = 100.0 * float((preds == triggered.y).float().mean())
    ra = 100.0 * float((preds == test.y[keep]).float().mean())
    return Scores(acc, asr, ra, 100.0 * float(correct[keep].float().mean()))


def non_target(test: ImageData, attack: Trigger) -> Tensor:
    """The test images an attack's ASR is measured on: those outside the target class (all2one), or all."""
    return test.y != attack.target if attack.mode == "all2one" else torch.ones_like(test.y, dtype=torch.bool)


def evaluate_sharded(clf: Classifier, test: ImageData, attack: Trigger | None = None) -> Scores:
    """``evaluate`` with each rank predicting its share of the images and the counts summed across ranks."""
    (acc,) = percent_correct(clf, test.x, test.y)
    if attack is None:
        return Scores(acc)
    keep = non_target(test, attack)
    triggered = attack.test_set(test)
    asr, ra = percent_correct(clf, triggered.x, triggered.y, test.y[keep])
    (acc_nontarget,) = percent_correct(clf, test.x[keep], test.y[keep])
    return Scores(acc, asr, ra, acc_nontarget)


def defense_effectiveness(before: Scores, after: Scores) -> float | None:
    """DER (BackdoorBench): (max(0, ASR drop) - max(0, ACC drop) + 1) / 2, on fractions, in [0, 1]."""
    if before.asr is None or after.asr is None:
        return None
    asr_drop = max(0.0, before.asr - after.asr) / 100
    acc_drop = max(0.0, before.acc - after.acc) / 100
    return (asr_drop - acc_drop + 1) / 2
