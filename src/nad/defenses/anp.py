"""Adversarial Neuron Pruning (Wu & Wang, NeurIPS 2021: "Adversarial Neuron Perturbations Expose Backdoor
Models").

Every channel ("neuron") of every affine BatchNorm layer gets a mask ``m`` in [0, 1] (initialised to 1) and two
adversarial noises within ``eps``: a multiplicative one ``delta`` on the BN weight and ``xi`` on the BN bias.
As in the reference code's ``NoisyBatchNorm2d``, the BN computes
``weight * (m + delta) * x_hat + bias * (1 + xi)`` when perturbed and ``weight * m * x_hat + bias`` when not.
Here this is done with forward hooks on the unmodified BatchNorm modules: their output ``y = weight * x_hat +
bias`` is rewritten as ``(y - bias) * (m [+ delta]) + bias * (1 [+ xi])``.

Per batch of D (drawn with replacement, as the reference's ``RandomSampler``): draw ``delta, xi ~ U(-eps, eps)``,
take ``steps`` signed-gradient ascent steps of size ``eps / steps`` on the cross-entropy (kept within
``[-eps, eps]``, the paper's budget; the reference code does not clip), then take one SGD step on the masks
for ``alpha * L_nat(m) + (1 - alpha) * L_adv(m, delta, xi)`` and clip them to [0, 1]. The model runs in train
mode throughout, as in the reference (the BatchNorm statistics it updates belong to a scratch copy). Finally
every neuron whose mask is at most ``threshold`` is pruned by zeroing its BatchNorm weight (the reference's
``pruning``, matching what a mask of 0 does in the forward pass); ``zero_bias=true`` also zeroes the bias so
the channel outputs exactly 0. Either way the pruning lives in the ``state_dict``. The threshold is fixed in
advance and never chosen with triggered data.

How much to prune, chosen on clean data (``max_drop``; ours, off by default). The paper prunes every mask under
a fixed threshold, and its reference code also sweeps the number of pruned neurons (``--pruning-by number``)
while printing the clean and backdoor accuracy, leaving the choice to the reader. A fixed 0.2 can cost much of
the clean accuracy on models trained with augmentation (on ``zoo/standard-sig``, 17 points). With
``max_drop`` set, a class-stratified ``val_ratio`` share of D (default 0.2) is held out of the mask
optimisation, and neurons are pruned in increasing order of their mask (never one above ``threshold``; set
``threshold=1`` to lift that cap) for as long as accuracy on the held-out images stays within ``max_drop``
points of the unpruned model's: Fine-Pruning's stopping rule (Liu et al. stop at 4 points). The candidates are
tried a hundredth of the neurons at a time.

Defaults are the paper's and its reference code's (csdongxian/ANP_backdoor, ``optimize_mask_cifar.py`` and
``prune_neuron_cifar.py``): eps 0.4, 1 perturbation step, alpha 0.2, mask lr 0.2 with SGD momentum 0.9,
2000 iterations of batch 128, threshold 0.2, random crop (padding 4) and horizontal flip on D.

``anp_ft`` (ours, not in the paper): ANP's pruning with the paper's rule (every neuron whose mask is at most the
0.2 threshold; ``max_drop`` off, as in ``anp``), then Fine-Pruning's second step: fine-tune the pruned model on all
of D (``train``: the ``finetune`` defense's schedule, the NAD reference's 20 epochs of SGD at lr 0.1 then 0.01)
with the pruned BatchNorm weights put back to zero after every optimiser step, so each pruned neuron stays a
constant (its BatchNorm bias, which keeps training) and the pruning still lives in the ``state_dict``. Pruning
alone removes the backdoor only at a cost in clean accuracy on models trained with augmentation; the fine-tuning
wins that accuracy back while the neurons that carried the backdoor stay gone (docs/defenses.md). Its first
default, ``max_drop`` = 4 on the held-out images (Fine-Pruning's stopping rule), is blind to the backdoor and
stopped short of it on two of three seeds of ``zoo/standard-sig`` (ASR 26.7% and 32.4% left); the paper's threshold
removed it on all three (docs/defenses.md), so ``anp_ft`` follows the paper and ``max_drop=4`` stays an option.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from nad.attention import batch_norms
from nad.data.augment import Augment, augment_batch
from nad.data.dataset import ImageData, stratified_split
from nad.defenses.base import Defense, Monitor, Repair, epoch_hook
from nad.defenses.registry import register_defense
from nad.device import to_device
from nad.errors import NadError
from nad.metrics import accuracy
from nad.models.checkpoint import Classifier
from nad.training import TrainConfig, train


@dataclass(frozen=True)
class ANPConfig:
    """ANP's parameters (the paper's and its reference code's defaults)."""

    eps: float = 0.4
    steps: int = 1
    alpha: float = 0.2
    mask_lr: float = 0.2
    momentum: float = 0.9
    iterations: int = 2000
    batch_size: int = 128
    threshold: float = 0.2
    zero_bias: bool = False
    max_drop: float | None = None
    val_ratio: float = 0.2
    augment: Augment = field(default_factory=lambda: Augment(crop_padding=4, flip=True, cutout_holes=0))
    seed: int = 0

    def __post_init__(self) -> None:
        if self.eps < 0 or self.steps < 1 or self.iterations < 0 or self.batch_size < 1:
            raise NadError("anp: need eps >= 0, steps >= 1, iterations >= 0 and batch_size >= 1")
        if not 0 <= self.alpha <= 1:
            raise NadError(f"anp: alpha must lie in [0, 1], got {self.alpha}")
        if self.max_drop is not None and self.max_drop < 0:
            raise NadError(f"anp: max_drop must be >= 0 (accuracy points), got {self.max_drop}")
        if not 0 < self.val_ratio < 1:
            raise NadError(f"anp: val_ratio must lie in (0, 1), got {self.val_ratio}")


class NeuronPerturbation:
    """Masks and adversarial noises on every affine BatchNorm of ``module``, applied by forward hooks."""

    def __init__(self, module: nn.Module) -> None:
        self.norms = batch_norms(module)
        if not self.norms:
            raise NadError("anp: the model has no affine BatchNorm layer to put neuron masks on")
        device = self.norms[0][1].weight.device
        self.masks = [torch.ones(m.num_features, device=device, requires_grad=True) for _, m in self.norms]
        self.noise_w = [torch.zeros(m.num_features, device=device, requires_grad=True) for _, m in self.norms]
        self.noise_b = [torch.zeros(m.num_features, device=device, requires_grad=True) for _, m in self.norms]
        self.perturbed = False
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> NeuronPerturbation:
        for i, (_, m) in enumerate(self.norms):
            self._handles.append(m.register_forward_hook(self._hook(i)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, i: int):
        def rewrite(m: nn.Module, _inputs: object, out: Tensor) -> Tensor:
            shape = (1, -1) + (1,) * (out.ndim - 2)
            bias = m.bias.view(shape) if m.bias is not None else torch.zeros((), device=out.device)
            scale = self.masks[i] + self.noise_w[i] if self.perturbed else self.masks[i]
            shift = bias * (1 + self.noise_b[i].view(shape)) if self.perturbed else bias
            return (out - bias) * scale.view(shape) + shift

        return rewrite

    @torch.no_grad()
    def reset_noise(self, eps: float, gen: torch.Generator) -> None:
        # Drawn on the CPU generator (the same noise on every device), moved in one asynchronous copy: a
        # copy per BatchNorm layer at every iteration made the GPU's queue drain as often.
        noises = self.noise_w + self.noise_b
        drawn = torch.cat([(torch.rand(n.shape, generator=gen) * 2 - 1).mul_(eps).flatten() for n in noises])
        for n, values in zip(noises, to_device(drawn, noises[0].device).split([n.numel() for n in noises])):
            n.copy_(values.view_as(n))


@register_defense
class ANP(Defense):
    """``ANP(ANPConfig(...)).repair(model, clean)``: learn neuron masks under perturbation, prune low ones."""

    name = "anp"
    Config = ANPConfig

    def masks(
        self, model: Classifier, clean: ImageData, quiet: bool = False, monitor: Monitor | None = None
    ) -> tuple[list[str], list[Tensor], list[Tensor]]:
        """Optimise the masks on a scratch copy of ``model``; returns BN names, their masks, per-step losses.

        ``monitor`` (phase ``masks``) sees the masked, unperturbed model 20 times over the run.
        """
        cfg: ANPConfig = self.config
        scratch = model.clone()
        module = scratch.module
        for p in module.parameters():
            p.requires_grad_(False)
        module.train()
        device = clean.x.device
        gen = torch.Generator().manual_seed(cfg.seed)
        aug_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
        losses: list[Tensor] = []
        with NeuronPerturbation(module) as pert:
            opt = torch.optim.SGD(pert.masks, lr=cfg.mask_lr, momentum=cfg.momentum)
            noises = pert.noise_w + pert.noise_b
            step_size = cfg.eps / cfg.steps
            report_every = max(1, cfg.iterations // 20)
            for it in tqdm(range(cfg.iterations), desc="ANP masks", disable=quiet, leave=False, dynamic_ncols=True):
                idx = to_device(torch.randint(len(clean), (cfg.batch_size,), generator=gen), device)
                inputs = scratch.preprocess(augment_batch(clean.x[idx], cfg.augment, aug_gen))
                targets = clean.y[idx]
                if cfg.eps > 0:
                    pert.reset_noise(cfg.eps, gen)
                    pert.perturbed = True
                    for _ in range(cfg.steps):
                        loss = F.cross_entropy(module(inputs), targets)
                        grads = torch.autograd.grad(loss, noises)
                        with torch.no_grad():
                            for n, g in zip(noises, grads):
                                n.add_(step_size * g.sign()).clamp_(-cfg.eps, cfg.eps)
                    loss_rob = F.cross_entropy(module(inputs), targets)
                else:
                    loss_rob = torch.zeros((), device=device)
                pert.perturbed = False
                loss_nat = F.cross_entropy(module(inputs), targets)
                loss = cfg.alpha * loss_nat + (1 - cfg.alpha) * loss_rob
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    for m in pert.masks:
                        m.clamp_(0.0, 1.0)
                losses.append(torch.stack([loss_nat.detach(), loss_rob.detach()]))
                if monitor is not None and (it + 1) % report_every == 0:
                    recent = torch.stack(losses[-report_every:]).mean(0).tolist()
                    monitor("masks", it // report_every, {"nat": recent[0], "rob": recent[1]}, scratch)
                    module.train()
            names = [name for name, _ in pert.norms]
            values = [m.detach().clone() for m in pert.masks]
        return names, values, losses

    def repair(
        self,
        model: Classifier,
        clean: ImageData,
        quiet: bool = False,
        monitor: Monitor | None = None,
        fine_tuned: Classifier | None = None,
    ) -> Repair:
        pruned, log = self.prune_model(model, clean, quiet, monitor)
        return Repair(pruned.model, log)

    def prune_model(
        self, model: Classifier, clean: ImageData, quiet: bool = False, monitor: Monitor | None = None
    ) -> tuple[PrunedNeurons, dict[str, Any]]:
        """A pruned copy of ``model`` (with the neurons it pruned) and the log of the choice."""
        cfg: ANPConfig = self.config
        start = time.perf_counter()
        log: dict[str, Any] = {}
        if cfg.max_drop is None:
            names, values, losses = self.masks(model, clean, quiet, monitor)
            order = pruning_order(values, cfg.threshold)
            count = len(order)
        else:  # hold a share of D out of the mask optimisation, to choose how many neurons go
            val_idx, tune_idx = stratified_split(clean.y, cfg.val_ratio, cfg.seed)
            val = clean.subset(val_idx.to(clean.x.device))
            names, values, losses = self.masks(model, clean.subset(tune_idx.to(clean.x.device)), quiet, monitor)
            order = pruning_order(values, cfg.threshold)
            count, log["val_acc_curve"] = count_within_drop(model, names, order, val, cfg.max_drop, cfg.zero_bias)
            log["val_size"] = len(val)
        mask_seconds = time.perf_counter() - start
        pruned = PrunedNeurons(model.clone(), names, order[:count], cfg.zero_bias)
        pruned.apply()
        all_masks = torch.cat(values)
        curve = torch.stack(losses).float() if losses else torch.zeros(0, 2)
        log.update(
            {
                "neurons": len(all_masks),
                "below_threshold": len(order),
                "pruned": count,
                "pruned_per_layer": {k: v for k, v in pruned.counts().items() if v},
                "mask_histogram": torch.histc(all_masks.float().cpu(), bins=10, min=0.0, max=1.0).tolist(),
                "loss_nat_first_last": curve[[0, -1], 0].tolist() if len(curve) else [],
                "loss_rob_first_last": curve[[0, -1], 1].tolist() if len(curve) else [],
                "seconds": {"masks": mask_seconds, "prune": time.perf_counter() - start - mask_seconds},
            }
        )
        return pruned, log


@dataclass(frozen=True)
class ANPFineTuneConfig(ANPConfig):
    """``anp_ft``: ANP's parameters (every neuron under its 0.2 threshold goes, unless ``max_drop`` is set),
    and ``train``, the fine-tuning schedule after pruning (the ``finetune`` defense's)."""

    train: TrainConfig = field(default_factory=TrainConfig)


@register_defense
class ANPFineTune(ANP):
    """``ANPFineTune(ANPFineTuneConfig(...)).repair(model, clean)``: ANP's pruning, then fine-tuning with the
    pruned neurons held at zero (Fine-Pruning's second step)."""

    name = "anp_ft"
    Config = ANPFineTuneConfig

    def repair(
        self,
        model: Classifier,
        clean: ImageData,
        quiet: bool = False,
        monitor: Monitor | None = None,
        fine_tuned: Classifier | None = None,
    ) -> Repair:
        cfg: ANPFineTuneConfig = self.config
        pruned, log = self.prune_model(model, clean, quiet, monitor)
        start = time.perf_counter()
        hook = epoch_hook(monitor, "pruned", pruned.model)
        history = train(
            pruned.model, clean, cfg.train, desc="anp_ft", quiet=quiet, on_epoch=hook, after_step=pruned.apply
        )
        pruned.apply()
        log["history"] = history.epochs
        log["seconds"]["finetune"] = time.perf_counter() - start
        return Repair(pruned.model, log)


class PrunedNeurons:
    """Neurons of ``model`` pruned by zeroing their BatchNorm weight (with ``zero_bias`` their bias too).

    The per-layer channel indices are resolved once, so ``apply`` can run after every optimiser step without
    a host sync."""

    def __init__(self, model: Classifier, names: list[str], pairs: Tensor, zero_bias: bool) -> None:
        self.model = model
        self.zero_bias = zero_bias
        modules = dict(model.module.named_modules())
        self.layers: list[tuple[str, nn.Module, Tensor]] = []
        for i, name in enumerate(names):
            bn = modules[name]
            self.layers.append((name, bn, pairs[pairs[:, 0] == i, 1].to(bn.weight.device)))

    @torch.no_grad()
    def apply(self) -> None:
        for _, bn, channels in self.layers:
            bn.weight[channels] = 0.0
            if self.zero_bias and bn.bias is not None:
                bn.bias[channels] = 0.0

    def counts(self) -> dict[str, int]:
        return {name: len(channels) for name, _, channels in self.layers}


def pruning_order(values: list[Tensor], threshold: float) -> Tensor:
    """(layer, channel) pairs of every mask at most ``threshold``, lowest mask first, as a (N, 2) tensor."""
    flat = torch.cat([v.float().cpu() for v in values])
    layer = torch.cat([torch.full((len(v),), i) for i, v in enumerate(values)])
    channel = torch.cat([torch.arange(len(v)) for v in values])
    ranked = torch.argsort(flat, stable=True)
    ranked = ranked[flat[ranked] <= threshold]
    return torch.stack([layer[ranked], channel[ranked]], dim=1)


def prune(model: Classifier, names: list[str], pairs: Tensor, zero_bias: bool) -> dict[str, int]:
    """Zero the BatchNorm weight (and with ``zero_bias`` the bias) of each (layer, channel); counts per layer."""
    pruned = PrunedNeurons(model, names, pairs, zero_bias)
    pruned.apply()
    return pruned.counts()


def count_within_drop(
    model: Classifier, names: list[str], order: Tensor, val: ImageData, max_drop: float, zero_bias: bool
) -> tuple[int, list[list[float]]]:
    """The largest prefix of ``order``, tried a hundredth of the neurons at a time, whose pruning keeps the
    accuracy on ``val`` within ``max_drop`` points of the unpruned model's; with the curve of (count, acc)."""
    scratch = model.clone()
    norms = dict(batch_norms(scratch.module))
    originals = {name: copy.deepcopy(norms[name].state_dict()) for name in names}
    total = sum(norms[name].num_features for name in names)
    step = max(1, round(total / 100))
    curve: list[list[float]] = []
    chosen = 0
    for count in range(0, len(order) + step, step):
        count = min(count, len(order))
        for name in names:
            norms[name].load_state_dict(originals[name])
        prune(scratch, names, order[:count], zero_bias)
        acc = accuracy(scratch, val)
        curve.append([count, acc])
        if acc < curve[0][1] - max_drop - 1e-9:
            break
        chosen = count
        if count == len(order):
            break
    return chosen, curve
