"""Mode Connectivity Repair (Zhao, Chen, Das, Ramamurthy & Lin, ICLR 2020: "Bridging Mode Connectivity in Loss
Landscapes and Adversarial Robustness").

A quadratic Bezier curve joins two end models in weight space,
``w(t) = (1 - t)^2 w0 + 2 t (1 - t) theta + t^2 w1``. As in the NAD paper's MCR baseline, the ends are the
suspicious model (t = 0) and a copy of it fine-tuned on the clean set D (t = 1, with ``train``: the project's
fine-tuning schedule, so ``nad erase``'s fine-tuning baseline is this very end model). Only the middle control
point ``theta`` is trained, initialised at the midpoint of the ends (the reference's linear initialisation);
each step draws ``t ~ U(0, 1)`` and minimises the cross-entropy of ``w(t)`` on D plus the reference's L2
penalty ``0.5 * l2 * ||w(t)||^2``. The curve is evaluated with ``torch.func.functional_call`` over the
parameter dict of the unmodified architecture. The returned model is the plain architecture with the weights
``w(t)`` at ``t`` = 0.3 (the NAD paper's choice) and its BatchNorm running statistics re-estimated at that point
on D (reset, cumulative average, train-mode forward passes without gradients), as the reference does before
evaluating any point of the curve.

Curve-training defaults (``curve``) follow the reference code (IBM/model-sanitization, built on Garipov et al.'s
dnn-mode-connectivity): 100 epochs, batch 128, SGD with momentum 0.9 (no Nesterov), lr 0.01, L2 penalty 1e-4
on ``w(t)`` (so no optimizer weight decay), random crop (padding 4) and horizontal flip. One deviation: the
reference holds the lr for half of the run and then decays it linearly to 1 % of its value at 90 %; the
project's training loop offers step and cosine schedules, and this uses cosine decay, the closest of the two.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F

from nad import distributed
from nad.data.dataset import ImageData
from nad.defenses.base import Defense, FineTunedStart, Monitor, Repair
from nad.defenses.finetune import FineTune
from nad.defenses.registry import register_defense
from nad.device import to_device
from nad.errors import NadError
from nad.models.checkpoint import Classifier
from nad.training import TrainConfig, sgd_cosine, train

#: Curve training as in the reference code: 100 epochs, batch 128, SGD lr 0.01, momentum 0.9, crop and flip.
CURVE_TRAIN = sgd_cosine(100)


@dataclass(frozen=True)
class MCRConfig:
    """MCR's parameters: ``train`` makes the t = 1 end, ``curve`` trains the curve, ``t`` picks the point."""

    train: TrainConfig = field(default_factory=TrainConfig)
    curve: TrainConfig = field(default_factory=lambda: CURVE_TRAIN)
    t: float = 0.3
    l2: float = 1e-4

    def __post_init__(self) -> None:
        if not 0 <= self.t <= 1:
            raise NadError(f"mcr: t must lie in [0, 1], got {self.t}")
        if self.l2 < 0:
            raise NadError(f"mcr: l2 must be >= 0, got {self.l2}")


def bezier_weights(t: Tensor | float, w0: Tensor, theta: Tensor, w1: Tensor) -> Tensor:
    return (1 - t) ** 2 * w0 + 2 * t * (1 - t) * theta + t**2 * w1


class BezierCurve(nn.Module):
    """A quadratic Bezier curve between two weight sets of ``base``; only the control point is trainable.

    ``forward(x)`` evaluates ``base`` with the weights at a fresh ``t ~ U(0, 1)`` (or at ``self.fixed_t``) and
    leaves ``0.5 * ||w(t)||^2`` in ``self.l2`` for the regulariser. ``base``'s own parameters are frozen and
    never used; its buffers (BatchNorm statistics) are.
    """

    def __init__(self, base: nn.Module, start: dict[str, Tensor], end: dict[str, Tensor], seed: int = 0) -> None:
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.names = [name for name, _ in base.named_parameters()]
        missing = [n for n in self.names if n not in start or n not in end]
        if missing:
            raise NadError(f"mcr: the end models lack parameters {', '.join(missing[:4])}")
        self.theta = nn.ParameterList(nn.Parameter((start[n] + end[n]).detach() / 2) for n in self.names)
        for i, n in enumerate(self.names):
            self.register_buffer(f"w0_{i}", start[n].detach().clone())
            self.register_buffer(f"w1_{i}", end[n].detach().clone())
        self.gen = torch.Generator().manual_seed(seed)
        self.fixed_t: float | None = None
        self.l2: Tensor = torch.zeros(())

    def ends(self, i: int) -> tuple[Tensor, Tensor]:
        return getattr(self, f"w0_{i}"), getattr(self, f"w1_{i}")

    def weights(self, t: Tensor | float) -> dict[str, Tensor]:
        """``{name: w(t)}`` for every parameter of ``base``."""
        out = {}
        for i, (name, theta) in enumerate(zip(self.names, self.theta)):
            w0, w1 = self.ends(i)
            out[name] = bezier_weights(t, w0, theta, w1)
        return out

    def forward(self, x: Tensor) -> Tensor:
        if self.fixed_t is None:
            t: Tensor | float = to_device(torch.rand((), generator=self.gen), x.device)
        else:
            t = self.fixed_t
        weights = self.weights(t)
        self.l2 = 0.5 * sum(w.pow(2).sum() for w in weights.values())  # type: ignore[assignment]
        return functional_call(self.base, weights, (x,))

    @torch.no_grad()
    def point(self, t: float) -> nn.Module:
        """A plain copy of ``base`` with the weights ``w(t)`` (BatchNorm statistics as ``base`` holds them)."""
        import copy

        module = copy.deepcopy(self.base)
        for name, w in self.weights(float(t)).items():
            module.get_parameter(name).copy_(w)
        for p in module.parameters():
            p.requires_grad_(True)
        return module


def reestimate_bn(clf: Classifier, data: ImageData, batch_size: int) -> None:
    """Reset every BatchNorm's running statistics and re-estimate them on ``data`` (cumulative average)."""
    norms = [m for m in clf.module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    clf.module.train()
    try:
        with torch.no_grad():
            for start in range(0, len(data), batch_size):
                x = data.x[start : start + batch_size]
                if len(x) > 1 or len(data) == 1:
                    clf(x)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        clf.module.eval()


class CurveLoss:
    """Cross-entropy of the curve at the sampled ``t`` plus ``l2 * 0.5 * ||w(t)||^2``."""

    def __init__(self, l2: float) -> None:
        self.l2 = l2

    def __call__(self, module: nn.Module, inputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        logits = module(inputs)
        terms = {"ce": F.cross_entropy(logits, targets)}
        if self.l2 > 0:
            terms["l2"] = self.l2 * distributed.unwrap(module).l2  # type: ignore[operator]  (DDP hides .l2)
        return terms


@register_defense
class MCR(Defense):
    """``MCR(MCRConfig(...)).repair(model, clean)``; ``fit`` and ``at`` expose the curve itself."""

    name = "mcr"
    Config = MCRConfig

    def fine_tuned_start(self) -> FineTunedStart:
        return FineTunedStart(self.config.train, self.config.train.epochs, "end")

    def fit(
        self,
        model: Classifier,
        clean: ImageData,
        quiet: bool = False,
        end: Classifier | None = None,
        monitor: Monitor | None = None,
    ) -> tuple[Classifier, dict[str, Any]]:
        """Train the curve from ``model`` (t = 0) to ``end`` (t = 1; default: ``model`` fine-tuned on ``clean``).

        Returns a classifier wrapping the ``BezierCurve`` and a log. ``monitor`` sees the fine-tuning epochs
        (phase ``end``) and, for the curve (phase ``curve``), the curve at ``t`` (BatchNorm statistics as
        training left them, not re-estimated).
        """
        cfg: MCRConfig = self.config
        log: dict[str, Any] = {"seconds": {}}
        start = time.perf_counter()
        if end is None:
            rename = (lambda _p, e, losses, m: monitor("end", e, losses, m)) if monitor is not None else None
            ft = FineTune(cfg.train).repair(model, clean, quiet=quiet, monitor=rename)
            end = ft.model
            log["finetune_history"] = ft.log["history"]
        log["seconds"]["finetune"] = time.perf_counter() - start
        start = time.perf_counter()
        base = model.clone().module
        w0 = dict(model.module.named_parameters())
        w1 = dict(end.module.named_parameters())
        curve = Classifier(BezierCurve(base, w0, w1, seed=cfg.curve.seed), model.info)
        bezier: BezierCurve = curve.module  # type: ignore[assignment]

        def at_t(epoch: int, losses: dict[str, float]) -> None:
            bezier.fixed_t = cfg.t
            try:
                monitor("curve", epoch, losses, curve)  # type: ignore[misc]
            finally:
                bezier.fixed_t = None

        hook = at_t if monitor is not None else None
        history = train(curve, clean, cfg.curve, CurveLoss(cfg.l2), desc="MCR curve", quiet=quiet, on_epoch=hook)
        log["curve_history"] = history.epochs
        log["seconds"]["curve"] = time.perf_counter() - start
        return curve, log

    def at(self, curve: Classifier, t: float, clean: ImageData) -> Classifier:
        """The plain model at ``t`` on a trained curve, with BatchNorm statistics re-estimated on ``clean``."""
        bezier: BezierCurve = curve.module  # type: ignore[assignment]
        point = Classifier(bezier.point(t), curve.info)
        reestimate_bn(point, clean, self.config.curve.batch_size)
        return point

    def repair(
        self,
        model: Classifier,
        clean: ImageData,
        quiet: bool = False,
        monitor: Monitor | None = None,
        fine_tuned: Classifier | None = None,
    ) -> Repair:
        """``fine_tuned``: the curve's t = 1 end made already (else it is fine-tuned from ``model``)."""
        curve, log = self.fit(model, clean, quiet=quiet, end=fine_tuned, monitor=monitor)
        start = time.perf_counter()
        point = self.at(curve, self.config.t, clean)
        log["t"] = self.config.t
        log["seconds"]["bn"] = time.perf_counter() - start
        return Repair(point, log)
