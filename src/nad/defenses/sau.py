"""Shared Adversarial Unlearning (SAU; Wei, Zhang, Zha & Wu, NeurIPS 2023: "Shared Adversarial Unlearning:
Backdoor Mitigation by Unlearning Shared Adversarial Examples"; official code by the first author in
BackdoorBench, ``defense/sau.py`` with ``config/defense/sau/config.yaml``).

A backdoor is a perturbation that fools the backdoored model h0 and, until it is unlearned, the model h
being purified in the same way. Each batch of the clean set:

1. **Shared PGD** (maximisation): an L-inf perturbation of at most ``bound`` (in [0, 1] pixel units; not
   clipped to the valid image range, as in the official code), started at +``bound`` everywhere, ``steps``
   signed-gradient steps of ``step_size`` that lower ``beta_1 * L_adv + beta_2 * L_share``: L_adv is minus
   the mean cross-entropy of the images h (or h0) does not yet mislead, L_share the Jensen-Shannon divergence
   between h's and h0's predictions on the images not yet misled by both alike. The search stops, perturbation
   kept, once every image is a shared adversarial example.
2. **Unlearning** (minimisation): one optimiser step on ``lmd_1 * CE(h(x), y) + lmd_2 * CE(h(x + d), y) +
   lmd_3 * L_sar``, where L_sar lowers h's probability of h0's adversarial label on every image h0 is misled on
   (away from both its label and its clean prediction): ``-(log(1 - p) + log(1 - p)) / 2`` with the official
   code's clamps (p in [0.001, 0.999], 1e-6 inside the logs).

Both models stay in eval mode throughout (the official ``train_mode`` is off: BatchNorm keeps its running
statistics); h0 is frozen. Defaults are the official CIFAR-10 configuration: ``bound`` 0.2, ``step_size`` 0.2,
5 steps, ``beta_1`` 0.01, ``beta_2`` 1, ``lmd_1`` 1, ``lmd_2`` 0, ``lmd_3`` 1; Adam (AMSGrad, betas 0.9/0.999,
no weight decay) at lr 1e-4, batch 256, 100 rounds over 5% of the training set, no augmentation. The
configuration names a cosine schedule, but the official loop never steps it, so the rate is constant: here too.

Deviations: only the L-inf ball (the official default; its L1, L2 and unconstrained variants are not
implemented); the clean predictions of both models, which do not change during the search, are computed
once per batch instead of at every PGD step; the early stop is taken without a host sync (later steps leave
the perturbation as it was), which gives the same perturbation.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from nad.data.augment import Augment
from nad.data.dataset import ImageData
from nad.defenses.base import Defense, Monitor, Repair, epoch_hook
from nad.defenses.registry import register_defense
from nad.errors import NadError
from nad.models.checkpoint import Classifier
from nad.training import OptimConfig, TrainConfig, freeze, layout, train


def sau_schedule() -> TrainConfig:
    return TrainConfig(
        epochs=100,
        batch_size=256,
        optim=OptimConfig(lr=1e-4, weight_decay=0.0, milestones=(), kind="adam", amsgrad=True),
        augment=Augment(crop_padding=0, flip=False, cutout_holes=0),
    )


@dataclass(frozen=True)
class SAUConfig:
    """SAU's parameters (see the module doc); ``train.epochs`` is the official ``n_rounds``."""

    bound: float = 0.2
    step_size: float = 0.2
    steps: int = 5
    init: Literal["max", "min", "zero", "random"] = "max"
    beta_1: float = 0.01
    beta_2: float = 1.0
    lmd_1: float = 1.0
    lmd_2: float = 0.0
    lmd_3: float = 1.0
    train: TrainConfig = field(default_factory=sau_schedule)

    def __post_init__(self) -> None:
        weights = (self.bound, self.step_size, self.beta_1, self.beta_2, self.lmd_1, self.lmd_2, self.lmd_3)
        if not all(math.isfinite(v) and v >= 0 for v in weights):
            raise NadError("sau: bound, step_size, beta_1, beta_2 and lmd_1..3 must be finite numbers >= 0")
        if not (isinstance(self.steps, int) and self.steps >= 1):
            raise NadError(f"sau: steps must be an integer >= 1, got {self.steps!r}")
        if self.init not in ("max", "min", "zero", "random"):
            raise NadError(f"sau: init must be max, min, zero or random, got {self.init!r}")


def js_divergence(logits_a: Tensor, logits_b: Tensor) -> Tensor:
    """Per-image Jensen-Shannon divergence of two softmax outputs (clamped at 1e-8, as officially)."""
    p = F.softmax(logits_a.float(), dim=1).clamp(min=1e-8)
    q = F.softmax(logits_b.float(), dim=1).clamp(min=1e-8)
    m = (0.5 * (p + q)).log()
    return (0.5 * (p * (p.log() - m) + q * (q.log() - m))).sum(1)


class SharedAdversarialUnlearning:
    """``train``'s loss: a shared PGD search against h and h0, then SAU's unlearning objective."""

    def __init__(self, reference: nn.Module, cfg: SAUConfig, pixel_std: Tensor) -> None:
        self.reference, self.cfg = reference, cfg
        self.to_input = 1 / pixel_std.view(1, -1, 1, 1)  # a perturbation in pixel units, in normalised units

    def initial(self, x: Tensor) -> Tensor:
        bound, init = self.cfg.bound, self.cfg.init
        start = {"max": torch.full_like(x, bound), "min": torch.full_like(x, -bound), "zero": torch.zeros_like(x)}
        return start[init] if init in start else torch.rand_like(x).clamp(-bound, bound)

    def search(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        cfg, scale = self.cfg, self.to_input.to(x)
        with torch.no_grad():
            clean, clean_ref = model(x).argmax(1), self.reference(x).argmax(1)
        pert, done = self.initial(x), torch.zeros((), dtype=torch.bool, device=x.device)
        for _ in range(cfg.steps):
            pert.requires_grad_(True)
            adv_x = x + pert * scale
            logits, logits_ref = model(adv_x), self.reference(adv_x)
            label, label_ref = logits.argmax(1), logits_ref.argmax(1)
            fooled, fooled_ref = label != clean, label_ref != clean_ref
            shared = fooled & fooled_ref & (label == label_ref)
            ce = F.cross_entropy(logits.float(), y, reduction="none") * ~fooled
            ce_ref = F.cross_entropy(logits_ref.float(), y, reduction="none") * ~fooled_ref
            loss_adv = -(ce.sum() + ce_ref.sum()) / (2 * len(x))
            loss_share = (js_divergence(logits, logits_ref) * ~shared).sum() / len(x)
            (grad,) = torch.autograd.grad(cfg.beta_1 * loss_adv + cfg.beta_2 * loss_share, pert)
            with torch.no_grad():
                step = (pert - cfg.step_size * grad.sign()).clamp(-cfg.bound, cfg.bound)
                pert = torch.where(done, pert, step)  # once all were shared, the official loop has stopped
                done = done | shared.all()
        return pert.detach() * scale

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        cfg = self.cfg
        adv_x = x + self.search(model, x, y)
        logits, adv_logits = model(torch.cat([x, adv_x])).float().split(len(x))
        with torch.no_grad():
            clean_ref, adv_ref = self.reference(x).argmax(1), self.reference(adv_x).argmax(1)
        misled = (adv_ref != y) & (adv_ref != clean_ref)  # the official "potential poison"
        p = F.softmax(adv_logits, dim=1).gather(1, adv_ref[:, None]).squeeze(1)
        others = 1 - p
        unlikely = torch.log(1e-6 + others.clamp(max=0.999)) + torch.log(1 + 1e-6 - p.clamp(min=0.001))
        terms = {
            "ce": cfg.lmd_1 * F.cross_entropy(logits, y),
            "sar": cfg.lmd_3 * -(unlikely * misled).sum() / (2 * len(x)),
        }
        if cfg.lmd_2:
            terms["at"] = cfg.lmd_2 * F.cross_entropy(adv_logits, y)
        return terms


@register_defense
class SAU(Defense):
    name = "sau"
    Config = SAUConfig

    def repair(
        self,
        model: Classifier,
        clean: ImageData,
        quiet: bool = False,
        monitor: Monitor | None = None,
        fine_tuned: Classifier | None = None,
    ) -> Repair:
        start = time.perf_counter()
        cfg: SAUConfig = self.config
        reference = freeze(model.clone().module).eval().to(memory_format=layout(cfg.train))
        student = model.clone()
        norm = model.info.normalize
        std = torch.tensor(norm.std if norm is not None else (1.0,), dtype=torch.float32)
        loss = SharedAdversarialUnlearning(reference, cfg, std)
        hook = epoch_hook(monitor, "sau", student)
        history = train(student, clean, cfg.train, loss, desc="sau", quiet=quiet, on_epoch=hook, train_mode=False)
        return Repair(student, {"history": history.epochs, "seconds": {"sau": time.perf_counter() - start}})
