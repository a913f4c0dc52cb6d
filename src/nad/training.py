"""One short training loop for everything that trains: backdoored models, fine-tuning, the NAD student.

Data stays on the device as uint8; each batch is gathered by index, augmented with tensor ops, normalised,
and fed forward. Losses are summed as tensors and read once per epoch, so the inner loop never waits on
the host. What is optimised is given by a ``LossFn``: plain cross-entropy, or NAD's CE + attention loss.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from nad.data.augment import Augment, augment_batch
from nad.data.dataset import ImageData
from nad.errors import NadError
from nad.io import atomic_path
from nad.models.checkpoint import Classifier

Precision = Literal["fp32", "bf16"]


@dataclass(frozen=True)
class OptimConfig:
    """SGD with a per-epoch learning-rate schedule.

    ``step``: ``lr`` times ``gamma`` for every milestone epoch reached (NAD's reference: 0.1, then 0.01
    from epoch 2). ``cosine``: cosine decay from ``lr`` to 0 over the run, updated every step.
    """

    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    schedule: Literal["step", "cosine"] = "step"
    milestones: tuple[int, ...] = (2,)
    gamma: float = 0.1

    def lr_at(self, epoch: float, total_epochs: int) -> float:
        if self.schedule == "cosine":
            return 0.5 * self.lr * (1 + math.cos(math.pi * epoch / max(total_epochs, 1)))
        return self.lr * self.gamma ** sum(epoch >= m for m in self.milestones)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    batch_size: int = 64
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: Augment = field(default_factory=Augment)
    seed: int = 0
    precision: Precision = "fp32"
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1:
            raise NadError(f"epochs must be >= 0 and batch size >= 1, got {self.epochs} and {self.batch_size}")


class LossFn(Protocol):
    def __call__(self, module: nn.Module, inputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        """Return named loss terms; their sum is minimised. Keys are reported per epoch."""


def cross_entropy(module: nn.Module, inputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
    return {"ce": F.cross_entropy(module(inputs), targets)}


@dataclass
class History:
    """Per-epoch means of each loss term, plus whatever the epoch callback recorded."""

    epochs: list[dict[str, float]] = field(default_factory=list)


EpochCallback = Callable[[int, dict[str, float]], None]


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def batches(n: int, batch_size: int, gen: torch.Generator) -> Iterator[Tensor]:
    """A shuffled pass over ``range(n)``; a trailing batch of one is dropped (BatchNorm needs two)."""
    order = torch.randperm(n, generator=gen)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        if len(idx) > 1 or n == 1:
            yield idx


def train(
    clf: Classifier,
    data: ImageData,
    cfg: TrainConfig,
    loss_fn: LossFn = cross_entropy,
    desc: str = "train",
    quiet: bool = False,
    on_epoch: EpochCallback | None = None,
    state_path: Path | None = None,
) -> History:
    """Train ``clf.module`` in place on ``data`` (which must be on the module's device).

    With ``state_path``, the full training state (weights, optimiser, random generators, history) is saved
    there atomically after every epoch, and a run that finds the file resumes after its last epoch.
    """
    module = clf.module
    device = data.x.device
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.SGD(
        params,
        lr=cfg.optim.lr,
        momentum=cfg.optim.momentum,
        nesterov=cfg.optim.nesterov and cfg.optim.momentum > 0,
        weight_decay=cfg.optim.weight_decay,
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    steps = math.ceil(len(data) / cfg.batch_size)
    history = History()
    first = load_state(state_path, module, opt, gen, aug_gen, history) if state_path else 0
    bar = tqdm(
        total=cfg.epochs * steps, initial=first * steps, desc=desc, disable=quiet, leave=False, dynamic_ncols=True
    )
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    for epoch in range(first, cfg.epochs):
        module.train()
        last_good = copy.deepcopy(module.state_dict())
        sums: dict[str, Tensor] = {}
        count = 0
        for step, idx in enumerate(batches(len(data), cfg.batch_size, gen)):
            for group in opt.param_groups:
                group["lr"] = cfg.optim.lr_at(epoch + step / steps, cfg.epochs)
            idx = idx.to(device, non_blocking=True)
            x = augment_batch(data.x[idx], cfg.augment, aug_gen)
            inputs = clf.preprocess(x).contiguous(memory_format=memory_format)
            with autocast(device, cfg.precision):
                terms = loss_fn(module, inputs, data.y[idx])
            loss = sum(terms.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[union-attr]
            opt.step()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0) + v.detach().float() * len(idx)
            count += len(idx)
            bar.update()
        means = {k: float(v) / max(count, 1) for k, v in sums.items()}
        if not all(math.isfinite(v) for v in means.values()):
            module.load_state_dict(last_good)
            bar.close()
            raise NonFiniteLoss(desc, epoch, means, clf)
        history.epochs.append(means)
        bar.set_postfix({k: f"{v:.3g}" for k, v in means.items()})
        if on_epoch is not None:
            on_epoch(epoch, means)
        if state_path is not None:
            save_state(state_path, epoch + 1, module, opt, gen, aug_gen, history)
    bar.close()
    return history


def save_state(
    path: Path,
    epochs_done: int,
    module: nn.Module,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    aug_gen: torch.Generator,
    history: History,
) -> None:
    state = {
        "epochs_done": epochs_done,
        "model": module.state_dict(),
        "optimizer": opt.state_dict(),
        "generator": gen.get_state(),
        "augment_generator": aug_gen.get_state(),
        "history": history.epochs,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(
    path: Path,
    module: nn.Module,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    aug_gen: torch.Generator,
    history: History,
) -> int:
    """Restore a saved training state (read with ``weights_only=True``); returns the epochs already done."""
    if not path.is_file():
        return 0
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        module.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        aug_gen.set_state(state["augment_generator"])
        history.epochs[:] = state["history"]
        return int(state["epochs_done"])
    except Exception as exc:  # a damaged or foreign state file: say so rather than train from a bad state
        raise NadError(f"{path}: cannot resume from this training state ({exc}); delete it to start afresh") from None


class NonFiniteLoss(NadError):
    """The loss became NaN or inf; the model was rolled back to the end of the last good epoch."""

    def __init__(self, desc: str, epoch: int, means: dict[str, float], model: Classifier) -> None:
        terms = ", ".join(f"{k}={v}" for k, v in means.items())
        super().__init__(
            f"{desc}: the loss became non-finite in epoch {epoch + 1} ({terms}); stopped and kept the model "
            f"from the end of epoch {epoch} (try a lower learning rate or smaller betas)"
        )
        self.epoch = epoch
        self.model = model  # rolled back to the last good epoch


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and no gradients: for a teacher that is only read."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module
