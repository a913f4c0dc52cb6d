"""Neural Attention Distillation (Li, Lyu, Koren, Lyu, Li & Ma, ICLR 2021: "Neural Attention Distillation:
Erasing Backdoor Triggers from Deep Neural Networks").

1. Teacher: a copy of the suspicious model fine-tuned on the clean set D with cross-entropy
   (``teacher_epochs`` = 10).
2. Student: the suspicious model fine-tuned on D with
   ``CE(student(x), y) + sum_k beta_k * MSE(A(student_k(x)), A(teacher_k(x)))``, where ``A`` is the
   L2-normalised attention map ``sum_c |F_c|^p`` (p = 2) of layer k. The teacher is frozen, in eval mode,
   and runs one no-grad forward pass per batch.

Defaults are those of the paper's reference code: 20 epochs, batch 64, SGD with momentum 0.9 and Nesterov,
weight decay 1e-4, lr 0.1 for epochs 0-1 then 0.01, random crop (padding 4), horizontal flip and one
Cutout hole of length 3. For WRN-16-1 the layers are ``block1``, ``block2``, ``block3`` with betas 500, 1000,
1000. Layers are named by qualified module name and captured with forward hooks, so any ``nn.Module``
works; without names, the architecture's registered layers are used, else ``attention.auto_layers`` picks.

Extension (not in the paper): ``teacher`` names where the teacher comes from. The paper's is a plain
fine-tune, which on models trained with augmentation keeps much of the backdoor, and a student distilled
towards it can be no cleaner; ``nad:teacher=fst`` (or ``sau``, ``ft_sam``, ``anp``, ``ibau``) distils the
attention of a model another defense purified instead. ``teacher_epochs`` applies to the fine-tuned teacher only;
a purified teacher runs with its defense's defaults and the spec's own parameters (``teacher=fst:train.epochs=5``),
to which a bench adds its ``defense_params`` for that defense (so ``--quick`` shortens it too).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from nad.attention import FeatureHooks, Reduce, attention_loss, auto_layers, check_layers
from nad.data.dataset import ImageData
from nad.defenses.base import Defense, FineTunedStart, Monitor, Repair, epoch_hook
from nad.defenses.registry import DEFENSES, defense_class, register_defense
from nad.errors import NadError
from nad.models.checkpoint import Classifier
from nad.models.registry import MODELS
from nad.spec import split_spec
from nad.training import TrainConfig, freeze, layout, train


@dataclass(frozen=True)
class NADConfig:
    """NAD's parameters; ``train`` is the student's (and, for ``teacher_epochs``, the teacher's) schedule."""

    train: TrainConfig = field(default_factory=TrainConfig)
    teacher_epochs: int = 10
    layers: tuple[str, ...] = ()
    betas: tuple[float, ...] = ()
    p: float = 2.0
    reduce: Reduce = "sum"
    # Where the teacher comes from: "finetune" (the paper: ``teacher_epochs`` of ``train``'s schedule), or
    # another defense's spec ("fst", "sau", "ft_sam", "anp", "ibau", "fst:alpha=0.2"), run with its own
    # defaults and this run's seed, precision and layout. Hashed only when changed, so earlier keys stay.
    teacher: str = field(default="finetune", metadata={"hash": "when-changed", "defense_spec": True})

    def __post_init__(self) -> None:
        if self.betas and self.layers and len(self.betas) != len(self.layers):
            raise NadError(f"NAD: {len(self.layers)} layers but {len(self.betas)} betas; give one beta per layer")
        if not all(math.isfinite(b) and b >= 0 for b in self.betas):
            raise NadError(f"NAD: betas must be finite and >= 0, got {list(self.betas)}")
        if not (math.isfinite(self.p) and self.p > 0):
            raise NadError(f"NAD: the attention power p must be finite and > 0, got {self.p}")
        if self.teacher_epochs < 0:
            raise NadError(f"NAD: teacher_epochs must be >= 0, got {self.teacher_epochs}")
        teacher = split_spec(self.teacher)[0] if isinstance(self.teacher, str) and self.teacher.strip() else ""
        if teacher not in DEFENSES or teacher == "nad":
            raise NadError(f"NAD: teacher must be finetune or another defense's spec, got {self.teacher!r}")


def default_betas(count: int) -> tuple[float, ...]:
    """The paper's pattern for a model with no registered betas: 500 for the shallowest layer, 1000 after."""
    return (500.0,) + (1000.0,) * (count - 1) if count > 1 else (1000.0,)


def resolve_layers(clf: Classifier, sample: Tensor, cfg: NADConfig) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """The layers and betas to use: as configured, else the architecture's registered ones (unless the input is
    too small for them: an ImageNet ResNet's ``layer4`` is 1x1 on 32x32 images), else automatic."""
    entry = MODELS.get(clf.info.arch)
    registered = entry.nad_layers if entry and not cfg.layers and fits(clf.module, sample, entry.nad_layers) else ()
    layers = cfg.layers or registered or tuple(auto_layers(clf.module, sample))
    betas = cfg.betas
    if not betas:
        betas = entry.nad_betas if entry and layers == entry.nad_layers else default_betas(len(layers))
    if len(betas) != len(layers):
        raise NadError(f"NAD: {len(layers)} layers ({', '.join(layers)}) but {len(betas)} betas")
    if cfg.layers:  # registered layers were checked by ``fits``; automatic ones are maps above 1x1 by construction
        check_layers(clf.module, sample, layers)
    return layers, betas


def fits(module: nn.Module, sample: Tensor, layers: tuple[str, ...]) -> bool:
    """Whether every one of ``layers`` gives an attention map on inputs like ``sample``."""
    try:
        check_layers(module, sample, layers)
    except NadError:
        return False
    return True


class AttentionDistillationLoss:
    """CE plus the weighted attention losses against a frozen teacher; hooks live while it is entered."""

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        layers: tuple[str, ...],
        betas: tuple[float, ...],
        p: float,
        reduce: Reduce,
    ) -> None:
        self.student_hooks = FeatureHooks(student, layers)
        self.teacher_hooks = FeatureHooks(teacher, layers)
        self.teacher = teacher
        self.betas = betas
        self.p = p
        self.reduce = reduce

    def __enter__(self) -> AttentionDistillationLoss:
        self.student_hooks.__enter__()
        self.teacher_hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.student_hooks.__exit__()
        self.teacher_hooks.__exit__()

    def __call__(self, module: nn.Module, inputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        logits = module(inputs)
        student = self.student_hooks.take()
        with torch.no_grad():
            self.teacher(inputs)
        teacher = self.teacher_hooks.take()
        at = sum(beta * attention_loss(s, t, self.p, self.reduce) for beta, s, t in zip(self.betas, student, teacher))
        return {"ce": F.cross_entropy(logits, targets), "at": at}  # type: ignore[dict-item]


@register_defense
class NAD(Defense):
    """``NAD(NADConfig(...)).repair(model, clean)`` returns the purified student and a log."""

    name = "nad"
    Config = NADConfig

    def fine_tuned_start(self) -> FineTunedStart | None:
        if self.config.teacher != "finetune":
            return None  # the teacher is another defense's model, not a plain fine-tune
        return FineTunedStart(self.config.train, self.config.teacher_epochs, "teacher")

    def make_teacher(self, model: Classifier, clean: ImageData, quiet: bool, monitor: Monitor | None) -> Repair:
        """The teacher as configured: ``model`` fine-tuned (the paper), or purified by another defense."""
        cfg: NADConfig = self.config
        if cfg.teacher == "finetune":
            teacher = model.clone()
            hook = epoch_hook(monitor, "teacher", teacher)
            teacher_cfg = replace(cfg.train, epochs=cfg.teacher_epochs)
            history = train(teacher, clean, teacher_cfg, desc="NAD teacher", quiet=quiet, on_epoch=hook).epochs
            return Repair(teacher, {"history": history})
        from nad.defenses.settings import RunSettings, defense_config, schedules  # settings builds on this layer

        name = split_spec(cfg.teacher)[0]
        own_schedules = bool(schedules(defense_class(name).Config()))
        settings = RunSettings(
            seed=cfg.train.seed,
            precision=cfg.train.precision if own_schedules else None,
            channels_last=cfg.train.channels_last if own_schedules else None,
        )
        name, teacher_cfg = defense_config(cfg.teacher, settings)
        return defense_class(name)(teacher_cfg).repair(model, clean, quiet=quiet, monitor=monitor)

    def check(self, model: Classifier, clean: ImageData) -> None:
        resolve_layers(model, model.preprocess(clean.x[:2]), self.config)

    def repair(
        self,
        model: Classifier,
        clean: ImageData,
        quiet: bool = False,
        monitor: Monitor | None = None,
        fine_tuned: Classifier | None = None,
    ) -> Repair:
        """Purify ``model``; a ready teacher may be given as ``fine_tuned``, else one is fine-tuned from it."""
        cfg: NADConfig = self.config
        sample = model.preprocess(clean.x[:2])
        layers, betas = resolve_layers(model, sample, cfg)
        log: dict[str, Any] = {"layers": list(layers), "betas": list(betas), "seconds": {}}
        start = time.perf_counter()
        teacher = fine_tuned
        if teacher is None:
            made = self.make_teacher(model, clean, quiet, monitor)
            teacher = made.model
            log["teacher"] = cfg.teacher
            log["teacher_history"] = made.log.get("history", [])
        log["seconds"]["teacher"] = time.perf_counter() - start
        freeze(teacher.module)
        teacher.module.to(memory_format=layout(cfg.train))  # a given teacher runs as fast as the student
        start = time.perf_counter()
        student = model.clone()
        with AttentionDistillationLoss(student.module, teacher.module, layers, betas, cfg.p, cfg.reduce) as loss:
            hook = epoch_hook(monitor, "student", student)
            history = train(student, clean, cfg.train, loss, desc="NAD student", quiet=quiet, on_epoch=hook)
        log["history"] = history.epochs
        log["seconds"]["student"] = time.perf_counter() - start
        return Repair(student, log)
