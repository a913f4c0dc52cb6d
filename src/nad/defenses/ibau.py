"""Implicit Backdoor Adversarial Unlearning, I-BAU (Zeng, Chen, Park, Mao, Jin & Jia, ICLR 2022: "Adversarial
Unlearning of Backdoors via Implicit Hypergradient").

The minimax problem ``min_theta max_{||delta|| <= C} 1/n sum_i L(f_theta(x_i + delta), y_i)`` over one universal
perturbation ``delta`` (an image-sized tensor in [0, 1] pixel units, added before normalisation and clamped to
the valid range), solved in ``rounds`` rounds:

1. Inner max: from ``delta = 0``, one pass of SGD (lr ``pert_lr`` = 10) over the batches of D on
   ``-CE(f(x + delta), f(x).argmax) + reg * ||delta||^2`` (the model's own predictions as labels), then
   projection onto the L2 ball of radius ``norm_bound`` = 10.
2. Outer min: for every batch of D, one Adam step (lr ``lr``) on the implicit hypergradient of the outer loss
   ``CE(f(x + patch), y)``, where ``patch`` adds ``delta`` to a random ``portion`` of the batch's images. The
   hypergradient ``dL/dtheta + (d Phi/d theta)^T v`` treats ``delta`` as the fixed point of the map
   ``Phi(delta) = delta - inner_lr * grad_delta inner_loss(delta)`` (inner loss on the first batch with its
   true labels, ``inner_lr`` = 0.1), with ``v`` from ``K`` = 5 fixed-point iterations
   ``v <- (d Phi/d delta)^T v + dL/d delta`` (the reference's ``hypergrad.fixed_point``).

Defaults are the reference code's (YiZeng623/I-BAU, ``defense.py`` and the CIFAR notebook): 5 rounds, K = 5,
batch 100, Adam at lr 0.001 for the model, inner step 0.1, SGD at lr 10 for delta with regulariser 0.001, L2
bound 10 (the notebook's projection; ``defense.py`` has it commented out), clamping to [0, 1] (notebook), and
the model in eval mode throughout. The reference perturbs ``int(0.01 * batch)`` images of each outer batch
(one of 100), not all of them as the paper's formula reads; we keep ``portion`` = 0.01 but perturb at least
one image per batch, since on a small D a batch of fewer than 100 images would otherwise get none and I-BAU
would reduce to plain fine-tuning. ``portion=1`` gives the paper's formula.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from nad.data.dataset import ImageData
from nad.defenses.base import Defense, Monitor, Repair
from nad.defenses.registry import register_defense
from nad.errors import NadError
from nad.models.checkpoint import Classifier


@dataclass(frozen=True)
class IBAUConfig:
    """I-BAU's parameters (the reference code's defaults)."""

    rounds: int = 5
    K: int = 5
    batch_size: int = 100
    lr: float = 0.001
    inner_lr: float = 0.1
    pert_lr: float = 10.0
    reg: float = 0.001
    norm_bound: float = 10.0
    portion: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rounds < 0 or self.K < 1 or self.batch_size < 1:
            raise NadError("ibau: need rounds >= 0, K >= 1 and batch_size >= 1")
        if not 0 < self.portion <= 1:
            raise NadError(f"ibau: portion must lie in (0, 1], got {self.portion}")


def pixels(x: Tensor) -> Tensor:
    return x.float().div(255.0)


def perturbed(clf: Classifier, x: Tensor, delta: Tensor, rows: Tensor | None = None) -> Tensor:
    """Model inputs for uint8 ``x`` with ``delta`` added (to the ``rows`` mask only, if given), clamped to [0, 1]."""
    patch = delta if rows is None else delta * rows.view(-1, 1, 1, 1).to(delta.dtype)
    return clf.preprocess_float((pixels(x) + patch).clamp(0.0, 1.0))


def fixed_point_hypergradient(
    params: list[nn.Parameter],
    delta: Tensor,
    outer_loss: Tensor,
    fp_map: Tensor,
    K: int,
) -> list[Tensor]:
    """``dL/dtheta + (d Phi/d theta)^T v`` with ``v`` from ``K`` fixed-point iterations (Grazzi et al., 2020).

    ``outer_loss`` is ``L(delta, theta)`` and ``fp_map`` is ``Phi(delta, theta)``, both built from ``delta``
    (a leaf requiring grad) and ``params`` with graphs that allow second derivatives of ``fp_map``.
    """
    grads = torch.autograd.grad(outer_loss, [delta, *params], allow_unused=True)
    g_delta = grads[0] if grads[0] is not None else torch.zeros_like(delta)
    g_params = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads[1:], params)]
    v = torch.zeros_like(delta)
    for _ in range(K):
        (jv,) = torch.autograd.grad(fp_map, delta, grad_outputs=v, retain_graph=True)
        v = jv + g_delta
    indirect = torch.autograd.grad(fp_map, params, grad_outputs=v, allow_unused=True)
    return [g + i if i is not None else g for g, i in zip(g_params, indirect)]


@register_defense
class IBAU(Defense):
    """``IBAU(IBAUConfig(...)).repair(model, clean)``: adversarial unlearning of a universal perturbation."""

    name = "ibau"
    Config = IBAUConfig

    def repair(
        self,
        model: Classifier,
        clean: ImageData,
        quiet: bool = False,
        monitor: Monitor | None = None,
        fine_tuned: Classifier | None = None,
    ) -> Repair:
        """``monitor`` (phase ``unlearn``) is called after every round."""
        cfg: IBAUConfig = self.config
        start = time.perf_counter()
        student = model.clone()
        module = student.module
        module.eval()
        params = [p for p in module.parameters() if p.requires_grad]
        outer_opt = torch.optim.Adam(params, lr=cfg.lr)
        device = clean.x.device
        gen = torch.Generator().manual_seed(cfg.seed)
        order = torch.randperm(len(clean), generator=gen).to(device)
        batches = [order[s : s + cfg.batch_size] for s in range(0, len(clean), cfg.batch_size)]
        first_x, first_y = clean.x[batches[0]], clean.y[batches[0]]
        rounds: list[dict[str, Tensor]] = []
        bar = tqdm(total=cfg.rounds * len(batches), desc="I-BAU", disable=quiet, leave=False, dynamic_ncols=True)
        for _ in range(cfg.rounds):
            # Inner max: a universal perturbation against the model's own predictions.
            delta = torch.zeros((1, *clean.image_shape), device=device, requires_grad=True)
            pert_opt = torch.optim.SGD([delta], lr=cfg.pert_lr)
            for idx in batches:
                x = clean.x[idx]
                with torch.no_grad():
                    labels = student(x).argmax(1)
                loss = -F.cross_entropy(module(perturbed(student, x, delta)), labels) + cfg.reg * delta.pow(2).sum()
                (delta.grad,) = torch.autograd.grad(loss, delta)
                pert_opt.step()
            with torch.no_grad():
                norm = delta.norm()
                delta = (delta * torch.clamp(cfg.norm_bound / (norm + 1e-12), max=1.0)).detach()
            # Outer min: Adam on the implicit hypergradient, one step per batch.
            outer_sum = torch.zeros((), device=device)
            for idx in batches:
                x, y = clean.x[idx], clean.y[idx]
                d = delta.clone().requires_grad_(True)
                count = max(1, int(cfg.portion * len(idx)))
                rows = torch.zeros(len(idx), device=device)
                rows[torch.randperm(len(idx), generator=gen)[:count].to(device)] = 1.0
                outer = F.cross_entropy(module(perturbed(student, x, d, rows)), y)
                inner = -F.cross_entropy(module(perturbed(student, first_x, d)), first_y) + cfg.reg * d.pow(2).sum()
                (g_inner,) = torch.autograd.grad(inner, d, create_graph=True)
                fp_map = d - cfg.inner_lr * g_inner
                grads = fixed_point_hypergradient(params, d, outer, fp_map, cfg.K)
                outer_opt.zero_grad(set_to_none=True)
                for p, g in zip(params, grads):
                    p.grad = g.detach()
                outer_opt.step()
                outer_sum = outer_sum + outer.detach() * len(idx)
                bar.update()
            rounds.append({"outer_loss": outer_sum / len(clean), "delta_norm": norm})
            if monitor is not None:
                monitor("unlearn", len(rounds) - 1, {k: float(v) for k, v in rounds[-1].items()}, student)
                module.eval()
        bar.close()
        history = [{k: float(v) for k, v in r.items()} for r in rounds]
        log: dict[str, Any] = {"history": history, "seconds": {"unlearn": time.perf_counter() - start}}
        return Repair(student, log)
