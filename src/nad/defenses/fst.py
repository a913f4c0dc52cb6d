"""Feature Shift Tuning (FST; Min, Liu, Chen, Wang & Chen, NeurIPS 2023: "Towards Stable Backdoor Purification
through Feature Shift Tuning"; official code github.com/AISafety-HKUST/stable_backdoor_purification,
``fine_tune/fst.py``).

Fine-tuning that pushes the features away from the backdoored ones by way of the classifier head:

1. the linear head (``head``: a qualified name, default the last ``nn.Linear`` in module order) is
   re-initialised, weight and bias uniform in +-1 / sqrt(in_features), as the official code does;
2. every layer is tuned on the clean set with ``CE + alpha * <W, W_0>``, the inner product of the head's
   weight W with the backdoored model's W_0, which the loss pushes down, so the new head (and with it the
   features it reads) turns away from the old one;
3. after every step W is rescaled to W_0's Frobenius norm, so the penalty cannot be met by shrinking W.

Defaults are the official README's CIFAR-10 command: ``alpha`` 0.1, 10 epochs, lr 0.01, batch 128, SGD
with momentum 0.9 and no weight decay, cosine annealing; BackdoorBench's CIFAR training transforms (random
crop with 4-pixel padding, horizontal flip). The paper tunes on 2% of CIFAR-10; here the clean set is whatever
``nad erase`` draws (5% by default).

Deviations: the cosine schedule is updated every step (the official code steps ``CosineAnnealingLR`` once per
epoch), and the head's weights are rescaled in place after ``optimizer.step()`` exactly as there, through
``train``'s ``after_step`` hook.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from nad.attention import find_module, last_module_of
from nad.data.dataset import ImageData
from nad.defenses.base import Defense, Monitor, Repair, epoch_hook
from nad.defenses.registry import register_defense
from nad.errors import NadError
from nad.models.checkpoint import Classifier
from nad.training import TrainConfig, cross_entropy, sgd_cosine, train


@dataclass(frozen=True)
class FSTConfig:
    """FST's parameters (see the module doc): the penalty weight, the head, and the tuning schedule."""

    alpha: float = 0.1
    head: str = ""
    train: TrainConfig = field(default_factory=lambda: sgd_cosine(10))

    def __post_init__(self) -> None:
        if not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise NadError(f"fst: alpha must be a finite number >= 0, got {self.alpha}")


def last_linear(module: nn.Module) -> str:
    return last_module_of(module, nn.Linear, "fst", "head")


def reinitialise(head: nn.Linear, gen: torch.Generator) -> None:
    """Uniform in +-1/sqrt(in_features) for weight and bias, as the official code draws them."""
    bound = 1 / math.sqrt(head.in_features)
    with torch.no_grad():
        for param in (head.weight, head.bias):
            if param is not None:
                param.copy_(torch.rand(param.shape, generator=gen).mul_(2 * bound).sub_(bound))


@register_defense
class FST(Defense):
    name = "fst"
    Config = FSTConfig

    def repair(
        self,
        model: Classifier,
        clean: ImageData,
        quiet: bool = False,
        monitor: Monitor | None = None,
        fine_tuned: Classifier | None = None,
    ) -> Repair:
        start = time.perf_counter()
        cfg = self.config
        student = model.clone()
        name = cfg.head or last_linear(student.module)
        head = find_module(student.module, name)
        if not isinstance(head, nn.Linear):
            raise NadError(f"fst: {name} is a {type(head).__name__}, not the nn.Linear head")
        original = head.weight.detach().clone()
        norm = torch.linalg.vector_norm(original)
        reinitialise(head, torch.Generator().manual_seed(cfg.train.seed))

        def loss(module: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
            terms = cross_entropy(module, x, y)
            return {**terms, "shift": cfg.alpha * (head.weight * original).sum()}

        def keep_norm() -> None:
            with torch.no_grad():
                head.weight.mul_(norm / torch.linalg.vector_norm(head.weight))

        hook = epoch_hook(monitor, "fst", student)
        history = train(student, clean, cfg.train, loss, desc="fst", quiet=quiet, on_epoch=hook, after_step=keep_norm)
        log = {"head": name, "history": history.epochs, "seconds": {"fst": time.perf_counter() - start}}
        return Repair(student, log)
