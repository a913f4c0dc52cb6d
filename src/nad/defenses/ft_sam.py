"""Fine-tuning with sharpness-aware minimisation (FT-SAM; Zhu, Wei, Zha & Wu, ICCV 2023: "Enhancing
Fine-Tuning Based Backdoor Defense with Sharpness-Aware Minimization"; official code in BackdoorBench,
``defense/ft-sam.py`` with ``utils/defense_utils/sam/``).

Backdoor neurons sit in sharp directions of the loss with large norms; fine-tuning with (adaptive) SAM
seeks a flat minimum and so shrinks them. Each step:

1. the gradient g of the label-smoothed cross-entropy at the weights w;
2. the weights move uphill to w + e, e = rho * T^2 g / ||T g|| with T = |w| per weight (adaptive SAM, the
   official default: its ``--adaptive`` flag is ``store_false``, so on unless given); BatchNorm keeps its
   running statistics from this second pass out (momentum 0);
3. the gradient at w + e, taken back to w, is the step SGD takes.

The loss is cross-entropy against labels smoothed as the official ``smooth_crossentropy`` does: 1 - s on
the label and s / (classes - 1) on each other class, s = 0.1.

Defaults are BackdoorBench's ``config/defense/ft-sam/cifar10.yaml``: rho 2.0 (``rho_max`` = ``rho_min``,
so constant), ``alpha`` 0 (no gradient decomposition, so none here), SGD lr 0.01, momentum 0.9, weight
decay 5e-4, batch 256, 100 epochs, random crop (4-pixel padding) and horizontal flip, on 5% of the training
set as here. Its published schedule is for PreActResNet-18; WRN-16-1 is tuned with the same one.

Deviation: the official code steps ``CosineAnnealingLR(T_max=100)`` after every *batch*, so the rate falls
to 0 after 100 steps and rises again, five times over a 100-epoch run on 2,500 images; here the rate
follows one cosine from lr to 0 over the run, which is what a 100-epoch cosine schedule states.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from nad import distributed
from nad.data.dataset import ImageData
from nad.defenses.base import Defense, Monitor, Repair, epoch_hook
from nad.defenses.registry import register_defense
from nad.errors import NadError
from nad.models.checkpoint import Classifier
from nad.training import Precision, TrainConfig, autocast, backdoorbench_tuning, train

LossOnLogits = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class FTSAMConfig:
    """FT-SAM's parameters (see the module doc): the neighbourhood radius, adaptivity, smoothing, schedule."""

    rho: float = 2.0
    adaptive: bool = True
    label_smoothing: float = 0.1
    train: TrainConfig = field(default_factory=backdoorbench_tuning)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rho) and self.rho >= 0):
            raise NadError(f"ft_sam: rho must be a finite number >= 0, got {self.rho}")
        if not (0 <= self.label_smoothing < 1):
            raise NadError(f"ft_sam: label_smoothing must be in [0, 1), got {self.label_smoothing}")


def smoothed_cross_entropy(logits: Tensor, targets: Tensor, smoothing: float) -> Tensor:
    """Cross-entropy against 1 - s on the label and s / (classes - 1) elsewhere (the official smoothing)."""
    log_p = F.log_softmax(logits.float(), dim=1)
    off = smoothing / (logits.shape[1] - 1)
    on = log_p.gather(1, targets[:, None]).squeeze(1)
    return -((1 - smoothing - off) * on + off * log_p.sum(1)).mean()


class SharpnessAwareStep:
    """``train``'s ``before_step``: replace the gradient at w by the gradient at w + e (see the module doc)."""

    def __init__(self, module: nn.Module, loss: LossOnLogits, rho: float, adaptive: bool, precision: Precision) -> None:
        self.module, self.loss, self.rho, self.adaptive, self.precision = module, loss, rho, adaptive, precision
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.norms = [m for m in module.modules() if isinstance(m, _BatchNorm)]

    @torch.no_grad()
    def ascent(self, params: list[nn.Parameter]) -> list[Tensor]:
        """Move ``params`` to w + e and return e."""
        grads = [p.grad for p in params]
        scaled = torch._foreach_mul(grads, torch._foreach_abs(params)) if self.adaptive else grads
        scale = self.rho / (torch.linalg.vector_norm(torch.stack(torch._foreach_norm(scaled))) + 1e-12)
        steps = (
            torch._foreach_mul(torch._foreach_mul(scaled, torch._foreach_abs(params)), scale)
            if self.adaptive
            else (torch._foreach_mul(grads, scale))
        )  # adaptive: e = rho * w^2 g / ||w g||, as the official code scales g by w^2
        torch._foreach_add_(params, steps)
        return steps

    def __call__(self, inputs: Tensor, targets: Tensor) -> None:
        params = [p for p in self.params if p.grad is not None]
        steps = self.ascent(params)
        momenta = [m.momentum for m in self.norms]
        for m in self.norms:
            m.momentum = 0.0  # running statistics stay as the first pass left them
        try:
            for p in self.params:
                p.grad = None
            with autocast(inputs.device, self.precision):
                loss = self.loss(self.module(inputs), targets)
            loss.backward()
            world = distributed.world_size()
            for p in params:  # under torchrun the first pass went through DDP; this one averages by hand
                if p.grad is not None and world > 1:
                    p.grad.copy_(distributed.all_reduce_sum(p.grad) / world)
        finally:
            for m, momentum in zip(self.norms, momenta):
                m.momentum = momentum
            with torch.no_grad():
                torch._foreach_sub_(params, steps)


@register_defense
class FTSAM(Defense):
    name = "ft_sam"
    Config = FTSAMConfig

    def repair(
        self,
        model: Classifier,
        clean: ImageData,
        quiet: bool = False,
        monitor: Monitor | None = None,
        fine_tuned: Classifier | None = None,
    ) -> Repair:
        start = time.perf_counter()
        cfg: FTSAMConfig = self.config
        student = model.clone()

        def loss(logits: Tensor, targets: Tensor) -> Tensor:
            return smoothed_cross_entropy(logits, targets, cfg.label_smoothing)

        def terms(module: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
            return {"ce": loss(module(x), y)}

        sam = SharpnessAwareStep(student.module, loss, cfg.rho, cfg.adaptive, cfg.train.precision)
        hook = epoch_hook(monitor, "ft_sam", student)
        history = train(student, clean, cfg.train, terms, desc="ft_sam", quiet=quiet, on_epoch=hook, before_step=sam)
        return Repair(student, {"history": history.epochs, "seconds": {"ft_sam": time.perf_counter() - start}})
