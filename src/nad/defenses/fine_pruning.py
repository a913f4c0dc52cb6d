"""Fine-Pruning (Liu, Dolan-Gavitt & Garg, RAID 2018: "Fine-Pruning: Defending Against Backdooring Attacks on
Deep Neural Networks").

1. Rank: feed the clean set D through the model (eval mode) and record each channel's mean activation in the
   pruned layer: ``layer`` if named, else the last ``nn.Conv2d`` in module order (WRN-16-1:
   ``block3.layer.1.conv2``; small_cnn: ``block3.3``). A channel's activation is read where it becomes a neuron
   of the next layer's input: at the output of the BatchNorm that normalises it (the first ``BatchNorm2d`` of the
   same width to run after the convolution, e.g. WRN's final ``bn1``; ``bn`` names another, ``bn="none"`` uses
   the convolution's own output), passed through a ReLU, averaged over images and positions. The paper's
   networks have ReLU right after the convolution, so this is its "average activation".
2. Prune channels in increasing order of mean activation while the accuracy on a held-out part of D
   (``val_ratio`` = 0.2, class-stratified) stays within ``max_drop`` = 4 points of the unpruned model's (the
   4 % accuracy drop at which the paper stops pruning), and at most ``max_ratio`` of the channels
   (1.0: no cap, as in the paper).
3. Fine-tune the pruned model on all of D (``train``: the project's fine-tuning schedule, the NAD reference's
   20 epochs of SGD at lr 0.1 then 0.01) with the pruned channels held at zero.

How the pruning persists: a pruned channel's output-channel weights (and bias) in the convolution and its
weight and bias in the BatchNorm are set to zero in the parameters themselves, so the channel outputs exactly 0
and the pruning lives in the ``state_dict``: it survives ``save_model``/``load_model`` into a freshly built
architecture with no mask tensors or parametrisations. During fine-tuning, gradient hooks multiply those
parameters' gradients by the mask; with zero weight and zero gradient, SGD's weight decay and (Nesterov)
momentum leave them exactly zero, and the mask is re-applied once after training for good measure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from nad.attention import find_module, last_module_of
from nad.data.dataset import ImageData, stratified_split
from nad.defenses.base import Defense, Monitor, Repair, epoch_hook
from nad.defenses.registry import register_defense
from nad.errors import NadError
from nad.models.checkpoint import Classifier
from nad.training import TrainConfig, train


@dataclass(frozen=True)
class FinePruningConfig:
    """Fine-Pruning's parameters; ``train`` is the fine-tuning schedule after pruning."""

    train: TrainConfig = field(default_factory=TrainConfig)
    layer: str = ""
    bn: str = ""
    max_drop: float = 4.0
    max_ratio: float = 1.0
    val_ratio: float = 0.2
    batch_size: int = 256

    def __post_init__(self) -> None:
        if self.max_drop < 0:
            raise NadError(f"fine_pruning: max_drop must be >= 0 (accuracy points), got {self.max_drop}")
        if not 0 < self.max_ratio <= 1:
            raise NadError(f"fine_pruning: max_ratio must lie in (0, 1], got {self.max_ratio}")
        if not 0 < self.val_ratio < 1:
            raise NadError(f"fine_pruning: val_ratio must lie in (0, 1), got {self.val_ratio}")


def last_conv(module: nn.Module) -> str:
    """The qualified name of the last ``nn.Conv2d`` in module order."""
    return last_module_of(module, nn.Conv2d, "fine_pruning", "layer")


def following_bn(module: nn.Module, conv: nn.Conv2d, sample: Tensor) -> nn.BatchNorm2d | None:
    """The first ``BatchNorm2d`` with ``conv.out_channels`` features to run after ``conv`` in a forward pass."""
    order: list[nn.Module] = []
    handles = [m.register_forward_hook(lambda m, _i, _o: order.append(m)) for m in module.modules()]
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            module(sample)
    finally:
        module.train(was_training)
        for h in handles:
            h.remove()
    if conv not in order:
        raise NadError("fine_pruning: the layer to prune was not run by the model's forward pass")
    after = order[order.index(conv) + 1 :]
    return next(
        (m for m in after if isinstance(m, nn.BatchNorm2d) and m.affine and m.num_features == conv.out_channels),
        None,
    )


@dataclass
class ChannelPruning:
    """Which channels of ``conv`` (and of the BatchNorm ``bn`` that follows it) are pruned."""

    conv: nn.Conv2d
    bn: nn.BatchNorm2d | None
    keep: Tensor  # float (C,), 1 = kept, 0 = pruned

    @property
    def neuron(self) -> nn.Module:
        """Where a channel's activation is read (and, during the search, masked)."""
        return self.bn if self.bn is not None else self.conv

    def params(self) -> list[nn.Parameter]:
        mods = [self.conv] + ([self.bn] if self.bn is not None else [])
        return [p for m in mods for p in (m.weight, m.bias) if p is not None]

    @torch.no_grad()
    def apply(self) -> None:
        """Zero the pruned channels' parameters (output channel = dim 0 of every one of them)."""
        for p in self.params():
            p.mul_(self.keep.to(p.dtype).view(-1, *([1] * (p.ndim - 1))))

    def hold(self) -> list[torch.utils.hooks.RemovableHandle]:
        """Gradient hooks that keep the pruned parameters at zero under SGD; remove them when done."""
        handles = []
        for p in self.params():
            mask = self.keep.to(p.dtype).view(-1, *([1] * (p.ndim - 1)))
            handles.append(p.register_hook(lambda g, mask=mask: g * mask))
        return handles


def mean_activation(clf: Classifier, module: nn.Module, data: ImageData, batch_size: int) -> Tensor:
    """Per-channel mean of ReLU(output of ``module``) over ``data`` (eval mode)."""
    total: list[Tensor] = []

    def record(_m: nn.Module, _i: object, out: Tensor) -> None:
        total.append(F.relu(out.detach()).float().mean(dim=(2, 3)).sum(0))

    handle = module.register_forward_hook(record)
    clf.module.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(data), batch_size):
                clf(data.x[start : start + batch_size])
    finally:
        handle.remove()
    return torch.stack(total).sum(0) / max(len(data), 1)


def pruning_curve(
    clf: Classifier, neuron: nn.Module, order: Tensor, counts: list[int], val: ImageData, batch_size: int
) -> Tensor:
    """Correct predictions on ``val`` with the first ``k`` channels of ``order`` masked, for each ``k``."""
    mask = torch.ones(len(order), device=val.x.device)
    handle = neuron.register_forward_hook(lambda _m, _i, out: out * mask.view(1, -1, 1, 1).to(out.dtype))
    correct = []
    clf.module.eval()
    try:
        with torch.no_grad():
            for k in counts:
                mask.fill_(1.0)
                mask[order[:k]] = 0.0
                hits = [
                    (clf(val.x[s : s + batch_size]).argmax(1) == val.y[s : s + batch_size]).sum()
                    for s in range(0, len(val), batch_size)
                ]
                correct.append(torch.stack(hits).sum())
    finally:
        handle.remove()
    return torch.stack(correct)


@register_defense
class FinePruning(Defense):
    """``FinePruning(FinePruningConfig(...)).repair(model, clean)``: prune dormant channels, then fine-tune."""

    name = "fine_pruning"
    Config = FinePruningConfig

    def repair(
        self,
        model: Classifier,
        clean: ImageData,
        quiet: bool = False,
        monitor: Monitor | None = None,
        fine_tuned: Classifier | None = None,
    ) -> Repair:
        cfg: FinePruningConfig = self.config
        start = time.perf_counter()
        student = model.clone()
        module = student.module
        layer = cfg.layer or last_conv(module)
        conv = find_module(module, layer)
        if not isinstance(conv, nn.Conv2d):
            raise NadError(f"fine_pruning: layer {layer!r} is a {type(conv).__name__}, not an nn.Conv2d")
        sample = student.preprocess(clean.x[:2])
        if cfg.bn.lower() == "none":
            bn = None
        elif cfg.bn:
            bn = find_module(module, cfg.bn)
            if not isinstance(bn, nn.BatchNorm2d) or bn.num_features != conv.out_channels:
                raise NadError(f"fine_pruning: bn {cfg.bn!r} is not a BatchNorm2d with {conv.out_channels} features")
        else:
            bn = following_bn(module, conv, sample)
        channels = conv.out_channels
        pruning = ChannelPruning(conv, bn, torch.ones(channels, device=clean.x.device))

        val_idx, _ = stratified_split(clean.y, cfg.val_ratio, cfg.train.seed)
        val = clean.subset(val_idx.to(clean.x.device))
        activation = mean_activation(student, pruning.neuron, clean, cfg.batch_size)
        order = torch.argsort(activation)  # least active first
        limit = int(cfg.max_ratio * channels)
        # Evaluate every prefix up to the cap, a chunk at a time, with one host sync per chunk.
        chunk = 16
        base_correct = pruning_curve(student, pruning.neuron, order, [0], val, cfg.batch_size)
        floor = float(base_correct) - cfg.max_drop / 100 * len(val)
        curve: list[float] = []
        pruned = 0
        for first in range(1, limit + 1, chunk):
            counts = list(range(first, min(first + chunk, limit + 1)))
            correct = pruning_curve(student, pruning.neuron, order, counts, val, cfg.batch_size).tolist()
            stop = False
            for k, c in zip(counts, correct):
                if c < floor - 1e-9:
                    stop = True
                    break
                curve.append(100.0 * c / len(val))
                pruned = k
            if stop:
                break
        pruning.keep[order[:pruned]] = 0.0
        pruning.apply()
        prune_seconds = time.perf_counter() - start

        start = time.perf_counter()
        handles = pruning.hold()
        try:
            hook = epoch_hook(monitor, "pruned", student)
            history = train(student, clean, cfg.train, desc="fine-pruning", quiet=quiet, on_epoch=hook)
        finally:
            for h in handles:
                h.remove()
        pruning.apply()
        log: dict[str, Any] = {
            "layer": layer,
            "bn": next((n for n, m in module.named_modules() if m is bn), None),
            "channels": channels,
            "pruned": pruned,
            "pruned_channels": sorted(order[:pruned].tolist()),
            "val_size": len(val),
            "val_acc_before": 100.0 * float(base_correct) / len(val),
            "val_acc_curve": curve,
            "history": history.epochs,
            "seconds": {"prune": prune_seconds, "finetune": time.perf_counter() - start},
        }
        return Repair(student, log)
