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

Defaults are the paper's and its reference code's (csdongxian/ANP_backdoor, ``optimize_mask_cifar.py`` and
``prune_neuron_cifar.py``): eps 0.4, 1 perturbation step, alpha 0.2, mask lr 0.2 with SGD momentum 0.9,
2000 iterations of batch 128, threshold 0.2, random crop (padding 4) and horizontal flip on D.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from nad.data.augment import Augment, augment_batch
from nad.data.dataset import ImageData
from nad.defenses.base import Defense, Monitor, Repair
from nad.defenses.registry import register_defense
from nad.errors import NadError
from nad.models.checkpoint import Classifier


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
    augment: Augment = field(default_factory=lambda: Augment(crop_padding=4, flip=True, cutout_holes=0))
    seed: int = 0

    def __post_init__(self) -> None:
        if self.eps < 0 or self.steps < 1 or self.iterations < 0 or self.batch_size < 1:
            raise NadError("anp: need eps >= 0, steps >= 1, iterations >= 0 and batch_size >= 1")
        if not 0 <= self.alpha <= 1:
            raise NadError(f"anp: alpha must lie in [0, 1], got {self.alpha}")


def batch_norms(module: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    return [
        (name, m)
        for name, m in module.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine and m.weight is not None
    ]


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
        for n in self.noise_w + self.noise_b:
            n.copy_((torch.rand(n.shape, generator=gen) * 2 - 1).mul_(eps).to(n.device))


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
                idx = torch.randint(len(clean), (cfg.batch_size,), generator=gen).to(device)
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
        cfg: ANPConfig = self.config
        start = time.perf_counter()
        names, values, losses = self.masks(model, clean, quiet, monitor)
        mask_seconds = time.perf_counter() - start
        pruned_model = model.clone()
        modules = dict(pruned_model.module.named_modules())
        per_layer: dict[str, int] = {}
        with torch.no_grad():
            for name, mask in zip(names, values):
                prune = mask <= cfg.threshold
                bn = modules[name]
                bn.weight[prune] = 0.0
                if cfg.zero_bias and bn.bias is not None:
                    bn.bias[prune] = 0.0
                per_layer[name] = prune
        counts = {name: int(p.sum()) for name, p in per_layer.items()}
        all_masks = torch.cat(values)
        curve = torch.stack(losses).float() if losses else torch.zeros(0, 2)
        log: dict[str, Any] = {
            "neurons": len(all_masks),
            "pruned": sum(counts.values()),
            "pruned_per_layer": {k: v for k, v in counts.items() if v},
            "mask_histogram": torch.histc(all_masks.float().cpu(), bins=10, min=0.0, max=1.0).tolist(),
            "loss_nat_first_last": curve[[0, -1], 0].tolist() if len(curve) else [],
            "loss_rob_first_last": curve[[0, -1], 1].tolist() if len(curve) else [],
            "seconds": {"masks": mask_seconds, "prune": time.perf_counter() - start - mask_seconds},
        }
        return Repair(pruned_model, log)
