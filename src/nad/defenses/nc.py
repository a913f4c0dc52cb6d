"""Neural Cleanse's mitigation by unlearning (Wang, Yao, Shan, Li, Viswanath, Zheng & Zhao, "Neural Cleanse:
Identifying and Mitigating Backdoor Attacks in Neural Networks", IEEE S&P 2019, Section VI-C; the code
followed is BackdoorBench's ``defense/nc.py`` with ``config/defense/nc/cifar10.yaml``).

The defense first looks for the trigger, then teaches the model to ignore what it found:

1. **Detect.** The clean set D is scanned (:func:`nad.scan.scan`): Neural Cleanse's trigger inversion for
   every class, each class's smallest mask m and pattern p that send clean images to it, and the anomaly
   index of the mask norms. No class flagged: the model is returned unchanged, as the official code does
   ("This is not a backdoor model").
2. **Unlearn.** A seeded ``unlearning_ratio`` share of D (0.2) is set aside; for each flagged class it is
   stamped with that class's inverted trigger, ``(1 - m) * x + m * p`` (rounded to 8-bit pixels, as the
   official code writes images), and keeps its *true* labels. The model is fine-tuned on the rest of D with
   these stamped copies, one copy per flagged class, so the inverted trigger stops carrying it to the target.

Defaults are BackdoorBench's CIFAR-10 configuration: unlearning ratio 0.2, then 100 epochs of SGD (lr 0.01,
momentum 0.9, weight decay 5e-4, batch 256, cosine) with random crop and horizontal flip. Its schedule is for
PreActResNet-18 on 5% of CIFAR-10, the budget here; WRN-16-1 is tuned with the same one.

Deviations:
- The detection is :mod:`nad.scan` (its module doc gives its own deviations from Neural Cleanse: all classes
  optimised at once for fewer steps, the anomaly index on log norms with a floor under the MAD), with the
  run's seed and precision; and a class is also flagged when the scan's universal adversarial perturbation
  stands out (the official code flags by mask norm alone). A class flagged only that way is still unlearned
  with its inverted mask trigger, unless ``uap`` is set. A class the scan flags by its neuron perturbation
  alone is not unlearned: that measure perturbs the model, so it yields no input trigger to unlearn.
- ``uap`` (default off): also stamp each flagged class's universal perturbation (L-inf 8/255) on a further
  copy of the unlearning share. This is an extension in the spirit of I-BAU's unlearning of a universal
  perturbation, for full-image triggers that a small mask cannot express; Neural Cleanse has nothing like it.
- The unlearning share is a seeded random 20% of D; the official code takes the last 20% in index order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import torch

from nad.attacks.images import to_float, to_uint8
from nad.data.dataset import ImageData
from nad.defenses.base import Defense, Monitor, Repair, epoch_hook
from nad.defenses.registry import register_defense
from nad.errors import NadError
from nad.models.checkpoint import Classifier
from nad.scan import ScanConfig, ScanResult, scan
from nad.training import TrainConfig, backdoorbench_tuning, cross_entropy, train


@dataclass(frozen=True)
class NCConfig:
    """Neural Cleanse unlearning's parameters (see the module doc); ``scan`` runs with the schedule's seed."""

    unlearning_ratio: float = 0.2
    uap: bool = False
    scan: ScanConfig = field(default_factory=ScanConfig)
    train: TrainConfig = field(default_factory=backdoorbench_tuning)

    def __post_init__(self) -> None:
        if not 0 < self.unlearning_ratio < 1:
            raise NadError(f"nc: unlearning_ratio must lie in (0, 1), got {self.unlearning_ratio}")


def unlearning_set(clean: ImageData, found: ScanResult, cfg: NCConfig) -> ImageData:
    """D with its unlearning share replaced by one stamped copy per flagged class (true labels kept)."""
    device = clean.device
    order = torch.randperm(len(clean), generator=torch.Generator().manual_seed(cfg.train.seed)).to(device)
    cut = len(clean) - int(len(clean) * cfg.unlearning_ratio)
    keep, chosen = order[:cut], order[cut:]
    share = to_float(clean.x[chosen])
    images, labels = [clean.x[keep]], [clean.y[keep]]
    for c in found.trigger_flagged:
        mask, pattern = found.masks[c].to(device), found.patterns[c].to(device)
        images.append(to_uint8((1 - mask) * share + mask * pattern))
        if cfg.uap:
            images.append(to_uint8(share + found.perturbations[c].to(device)))
    labels += [clean.y[chosen]] * (len(images) - 1)
    return clean.with_images(torch.cat(images), torch.cat(labels), name=f"{clean.name} (unlearning)")


@register_defense
class NeuralCleanse(Defense):
    name = "nc"
    Config = NCConfig

    def check(self, model: Classifier, clean: ImageData) -> None:
        if model.info.num_classes < 3:
            raise NadError(f"nc: the model has {model.info.num_classes} classes; its scan needs at least 3")

    def repair(
        self,
        model: Classifier,
        clean: ImageData,
        quiet: bool = False,
        monitor: Monitor | None = None,
        fine_tuned: Classifier | None = None,
    ) -> Repair:
        start = time.perf_counter()
        found = scan(model, clean, self.scan_config(), quiet)
        return self.unlearn(model, clean, found, time.perf_counter() - start, quiet, monitor)

    def scan_config(self) -> ScanConfig:
        """The scan this defense detects with: ``scan`` with the schedule's seed and precision."""
        cfg: NCConfig = self.config
        return replace(cfg.scan, seed=cfg.train.seed, precision=cfg.train.precision)

    def unlearn(
        self,
        model: Classifier,
        clean: ImageData,
        found: ScanResult,
        scan_seconds: float,
        quiet: bool = False,
        monitor: Monitor | None = None,
    ) -> Repair:
        """Step 2 on the result of step 1: ``model`` fine-tuned to ignore the triggers ``found`` inverted."""
        start = time.perf_counter()
        log = {"flagged": found.trigger_flagged, "scan": found.to_json(), "seconds": {"scan": scan_seconds}}
        student = model.clone()
        if not found.trigger_flagged:  # nothing found, nothing to unlearn: the official code returns the model as it is
            return Repair(student, {**log, "unlearned": False})
        data = unlearning_set(clean, found, self.config)
        hook = epoch_hook(monitor, "nc", student)
        history = train(student, data, self.config.train, cross_entropy, desc="nc", quiet=quiet, on_epoch=hook)
        log["seconds"]["unlearn"] = time.perf_counter() - start
        return Repair(student, {**log, "unlearned": True, "unlearning_images": len(data), "history": history.epochs})
