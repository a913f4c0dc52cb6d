"""One short training loop for everything that trains: backdoored models, fine-tuning, the NAD student.

Data stays on the device as uint8; each batch is gathered by index, augmented with tensor ops, normalised,
and fed forward. Losses are summed as tensors and read once per epoch, so the inner loop never waits on
the host. What is optimised is given by a ``LossFn``: plain cross-entropy, or NAD's CE + attention loss.
A folder too large for memory (``StreamData``) is read batch by batch by DataLoader workers instead; the
batches, their order and their augmentation are the same.

Under torchrun (``nad.distributed``) every rank draws the same shuffle and takes every ``world``-th image
of each global batch of ``batch_size`` images; the module is wrapped in DistributedDataParallel for the
loop only, so gradients are averaged across ranks, and the epoch's loss sums are summed across ranks. A run
on N processes is then the single-process run, except that BatchNorm normalises each rank's share of the
batch by its own statistics (and floating-point sums are taken in another order).
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

from nad import distributed
from nad.data.augment import Augment, augment_batch
from nad.data.dataset import ImageData
from nad.data.stream import StreamData
from nad.errors import NadError
from nad.io import atomic_path
from nad.models.checkpoint import Classifier
from nad.spec import closest

Precision = Literal["fp32", "bf16"]


@dataclass(frozen=True)
class OptimConfig:
    """An optimiser (SGD by default) with a per-epoch learning-rate schedule.

    ``step``: ``lr`` times ``gamma`` for every milestone epoch reached (NAD's reference: 0.1, then 0.01
    from epoch 2; no milestones: a constant rate). ``cosine``: cosine decay from ``lr`` to 0 over the run,
    updated every step. ``kind`` ``adam`` is Adam with betas (0.9, 0.999), ``amsgrad`` as given, and
    ``weight_decay`` as L2 (``momentum`` and ``nesterov`` do not apply).
    """

    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    schedule: Literal["step", "cosine"] = "step"
    milestones: tuple[int, ...] = (2,)
    gamma: float = 0.1
    # Enter a configuration's hash only when changed, so the hashes of SGD runs stay as they were.
    kind: Literal["sgd", "adam"] = field(default="sgd", metadata={"hash": "when-changed"})
    amsgrad: bool = field(default=False, metadata={"hash": "when-changed"})

    def __post_init__(self) -> None:
        checks = {
            "lr": finite(self.lr) and self.lr >= 0,  # 0 leaves the weights as they are (a diagnostic)
            "momentum": finite(self.momentum) and 0 <= self.momentum < 1,
            "weight_decay": finite(self.weight_decay) and self.weight_decay >= 0,
            "gamma": finite(self.gamma) and self.gamma > 0,
            "milestones": all(isinstance(m, int) and m >= 0 for m in self.milestones),
        }
        checks["kind"] = self.kind in ("sgd", "adam")
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            k = bad[0]
            raise NadError(
                f"optimiser {k} = {getattr(self, k)!r} is out of range (lr >= 0, 0 <= momentum < 1, "
                "weight_decay >= 0, gamma > 0, milestones non-negative integers, kind sgd or adam)"
            )

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
    channels_last: bool = True  # the module's 4-D weights and the inputs in channels-last layout (faster)
    # False: the data's own order in every epoch, as the NAD reference's train_badnet.py reads it
    # (``shuffle=False``). Enters a configuration's hash only when False, so older hashes stay valid.
    shuffle: bool = field(default=True, metadata={"hash": "when-changed"})

    def __post_init__(self) -> None:
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (self.epochs, self.batch_size, self.seed)):
            raise NadError(
                f"epochs, batch size and seed must be integers, got {self.epochs!r}, {self.batch_size!r}, {self.seed!r}"
            )
        if self.epochs < 0 or self.batch_size < 1:
            raise NadError(f"epochs must be >= 0 and batch size >= 1, got {self.epochs} and {self.batch_size}")
        if self.precision not in ("fp32", "bf16"):
            raise NadError(f"precision must be fp32 or bf16, got {self.precision!r}")


PROFILES = "nad.presets.profiles"


def finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def load_profile(name: str) -> TrainConfig:
    """A training profile by name: a complete recipe for training a model from scratch, from
    ``nad/presets/profiles/NAME.yaml`` (``reference``, ``standard``, ``cosine``; see each file's header)."""
    from importlib import resources

    from nad.config import from_mapping, parse_yaml

    names = profile_names()
    if name not in names:
        raise NadError(f"no training profile named {name!r}{closest(name, names)}; known: {', '.join(names)}")
    text = resources.files(PROFILES).joinpath(f"{name}.yaml").read_text()
    return from_mapping(TrainConfig, parse_yaml(text, f"profile {name}"), f"profile {name}")


def profile_names() -> list[str]:
    from importlib import resources

    return sorted(p.name.removesuffix(".yaml") for p in resources.files(PROFILES).iterdir() if p.name.endswith(".yaml"))


class LossFn(Protocol):
    def __call__(self, module: nn.Module, inputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        """Return named loss terms; their sum is minimised. Keys are reported per epoch."""


def cross_entropy(module: nn.Module, inputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
    return {"ce": F.cross_entropy(module(inputs), targets)}


def sgd_cosine(epochs: int, lr: float = 0.01, batch_size: int = 128) -> TrainConfig:
    """SGD (momentum 0.9, no Nesterov, no weight decay) with cosine annealing, random crop and flip: the tuning
    schedule of the BackdoorBench-style defense code that MCR's curve training and FST follow."""
    return TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        optim=OptimConfig(lr=lr, momentum=0.9, nesterov=False, weight_decay=0.0, schedule="cosine"),
        augment=Augment(crop_padding=4, flip=True, cutout_holes=0),
    )


def backdoorbench_tuning(epochs: int = 100) -> TrainConfig:
    """BackdoorBench's CIFAR-10 defense fine-tuning (``config/defense/{ft-sam,nc}/cifar10.yaml`` with its
    optimiser defaults): SGD lr 0.01, momentum 0.9, weight decay 5e-4, batch 256, cosine, crop and flip."""
    return TrainConfig(
        epochs=epochs,
        batch_size=256,
        optim=OptimConfig(lr=0.01, momentum=0.9, nesterov=False, weight_decay=5e-4, schedule="cosine"),
        augment=Augment(crop_padding=4, flip=True, cutout_holes=0),
    )


@dataclass
class History:
    """Per-epoch means of each loss term, plus whatever the epoch callback recorded."""

    epochs: list[dict[str, float]] = field(default_factory=list)


EpochCallback = Callable[[int, dict[str, float]], None]


def layout(cfg: TrainConfig) -> torch.memory_format:
    """The memory format ``cfg`` trains in, for the module's 4-D weights and for the inputs."""
    return torch.channels_last if cfg.channels_last else torch.contiguous_format


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def batches(n: int, batch_size: int, gen: torch.Generator, shuffle: bool = True) -> Iterator[Tensor]:
    """A pass over ``range(n)``, shuffled unless ``shuffle`` is false; a trailing batch of one is dropped
    (BatchNorm needs two)."""
    order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        if len(idx) > 1 or n == 1:
            yield idx


class EpochBatches:
    """This rank's index batches, one pass per iteration: ``batches`` of the global batch size from the
    shared generator, each split across the ranks (``distributed.shard_indices``). Also a DataLoader
    ``batch_sampler``, for streamed data."""

    def __init__(self, n: int, batch_size: int, gen: torch.Generator, shuffle: bool = True) -> None:
        self.n, self.batch_size, self.gen, self.shuffle = n, batch_size, gen, shuffle

    def __iter__(self) -> Iterator[Tensor]:
        for index in batches(self.n, self.batch_size, self.gen, self.shuffle):
            index = distributed.shard_indices(index)
            if len(index):  # a tail batch smaller than the world is skipped by every rank alike
                yield index

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)


def global_batch_size(batch_size: int) -> int:
    """``batch_size`` is the global batch; each of N ranks takes ``batch_size // N`` images per step."""
    world = distributed.world_size()
    if batch_size < world:
        raise NadError(f"batch size {batch_size} is smaller than the {world} processes; each needs an image")
    if batch_size % world and distributed.is_main():
        import warnings

        warnings.warn(
            f"batch size {batch_size} is not a multiple of {world} processes; using {batch_size // world * world}",
            stacklevel=3,
        )
    return batch_size // world * world


def optimizer(params: list[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.kind == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, amsgrad=cfg.amsgrad)
    return torch.optim.SGD(
        params,
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov and cfg.momentum > 0,
        weight_decay=cfg.weight_decay,
    )


#: Runs between ``backward`` and the optimiser step with the batch's normalised inputs and labels (SAM's second
#: gradient, taken at perturbed weights, replaces the first there).
BeforeStep = Callable[[Tensor, Tensor], None]


def train(
    clf: Classifier,
    data: ImageData | StreamData,
    cfg: TrainConfig,
    loss_fn: LossFn = cross_entropy,
    desc: str = "train",
    quiet: bool = False,
    on_epoch: EpochCallback | None = None,
    state_path: Path | None = None,
    after_step: Callable[[], None] | None = None,
    before_step: BeforeStep | None = None,
    train_mode: bool = True,
) -> History:
    """Train ``clf.module`` in place on ``data`` (which must be on the module's device).

    ``after_step`` runs after every optimiser step (a projection of the weights, as FST keeps its head's norm);
    ``before_step`` between the backward pass and the step. ``train_mode=False`` keeps the module in eval mode
    while it trains (BatchNorm normalises with, and keeps, its running statistics), as SAU's official code does.

    With ``state_path``, the full training state (weights, optimiser, random generators, history) is saved
    there atomically after every epoch (by rank 0), and a run that finds the file resumes after its last epoch.
    """
    module = clf.module
    device = data.device
    memory_format = layout(cfg)
    module.to(memory_format=memory_format)  # before the optimiser, so that its buffers take the same layout
    opt = optimizer([p for p in module.parameters() if p.requires_grad], cfg.optim)
    # Both generators are seeded alike on every rank and stay in step: the shuffle is shared, and
    # augmentation draws for the whole global batch (``share``), so each image's crop and flip do not
    # depend on the number of processes.
    gen = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    share = (distributed.rank(), distributed.world_size())
    order = EpochBatches(len(data), global_batch_size(cfg.batch_size), gen, cfg.shuffle)
    loader = data.loader(order) if isinstance(data, StreamData) else None
    steps = len(order)
    history = History()
    first = load_state(state_path, module, opt, gen, aug_gen, history) if state_path else 0
    bar = tqdm(
        total=cfg.epochs * steps,
        initial=first * steps,
        desc=desc,
        disable=quiet or not distributed.is_main(),
        leave=False,
        dynamic_ncols=True,
    )
    model = distributed.wrap(module, device)  # DDP for several processes, for this loop only
    for epoch in range(first, cfg.epochs):
        module.train(train_mode)
        last_good = copy.deepcopy(module.state_dict())
        sums: dict[str, Tensor] = {}
        count = 0
        for step, (images, labels) in enumerate(loader if loader is not None else in_memory(data, order)):
            for group in opt.param_groups:
                group["lr"] = cfg.optim.lr_at(epoch + step / steps, cfg.epochs)
            x = augment_batch(images.to(device, non_blocking=True), cfg.augment, aug_gen, share)
            y = labels.to(device, non_blocking=True)
            inputs = clf.preprocess(x).contiguous(memory_format=memory_format)
            with autocast(device, cfg.precision):
                terms = loss_fn(model, inputs, y)
            loss = sum(terms.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[union-attr]
            if before_step is not None:
                before_step(inputs, y)
            opt.step()
            if after_step is not None:
                after_step()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0) + v.detach().float() * len(y)
            count += len(y)
            bar.update()
        means = epoch_means(sums, count, device)
        distributed.sync_buffers(module)  # one model on every rank, to evaluate, save or roll back
        if not all(math.isfinite(v) for v in means.values()):  # the same verdict on every rank
            module.load_state_dict(last_good)
            bar.close()
            raise NonFiniteLoss(desc, epoch, means, clf)
        history.epochs.append(means)
        bar.set_postfix({k: f"{v:.3g}" for k, v in means.items()})
        if on_epoch is not None:
            on_epoch(epoch, means)
        if state_path is not None and distributed.is_main():
            save_state(state_path, epoch + 1, module, opt, gen, aug_gen, history)
    bar.close()
    return history


def in_memory(data: ImageData, order: EpochBatches) -> Iterator[tuple[Tensor, Tensor]]:
    """One pass over ``data`` (on its device) in ``order``'s batches."""
    for index in order:
        index = index.to(data.device, non_blocking=True)
        yield data.x[index], data.y[index]


def epoch_means(sums: dict[str, Tensor], count: int, device: torch.device) -> dict[str, float]:
    """Per-image means of the summed loss terms over all ranks: one reduction, one read per epoch."""
    totals = torch.stack([*sums.values(), torch.tensor(float(count), device=device)])
    *values, total = distributed.all_reduce_sum(totals).tolist()
    return {k: v / max(total, 1) for k, v in zip(sums, values)}


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
