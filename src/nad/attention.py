"""Attention maps of intermediate layers, captured with forward hooks by qualified module name.

The attention map of a feature map F of shape (B, C, H, W) is ``A = sum_c |F_c|^p`` (or the channel mean),
flattened per sample and L2-normalised (Zagoruyko & Komodakis, ICLR 2017, as used by NAD). The attention
distillation loss between a student and a teacher map is their mean squared error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from nad.errors import NadError
from nad.spec import closest

Reduce = Literal["sum", "mean"]


def attention_map(features: Tensor, p: float = 2.0, reduce: Reduce = "sum", eps: float = 1e-12) -> Tensor:
    """(B, C, H, W) -> (B, H*W): channel-pooled |F|^p, L2-normalised per sample."""
    if features.ndim != 4:
        raise NadError(f"attention needs (B, C, H, W) features, got shape {tuple(features.shape)}")
    powered = features.float().abs().pow(p)
    pooled = powered.mean(1) if reduce == "mean" else powered.sum(1)
    return F.normalize(pooled.flatten(1), dim=1, eps=eps)


def attention_loss(student: Tensor, teacher: Tensor, p: float = 2.0, reduce: Reduce = "sum") -> Tensor:
    """Mean squared error between the two attention maps (the NAD paper's Eq. 2 with its reference code)."""
    return F.mse_loss(attention_map(student, p, reduce), attention_map(teacher, p, reduce))


class FeatureHooks:
    """Record the outputs of named submodules during forward passes.

    ``with FeatureHooks(model, ["block1", "block2.layer.0"]) as feats: model(x)`` leaves the outputs in
    ``feats.outputs``. Works on any ``nn.Module``; names under a ``DistributedDataParallel`` or
    ``torch.compile`` wrapper may be given with or without the ``module.`` / ``_orig_mod.`` prefix.
    """

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        self.modules = {name: find_module(model, name) for name in names}
        self.outputs: dict[str, Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> FeatureHooks:
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_hook(self._recorder(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _recorder(self, name: str):
        def record(_module: nn.Module, _inputs: object, output: object) -> None:
            if not isinstance(output, Tensor):
                raise NadError(f"layer {name!r} does not output a tensor; pick a module that does")
            self.outputs[name] = output

        return record

    def take(self) -> list[Tensor]:
        """The recorded outputs in the order the names were given; clears the record."""
        try:
            out = [self.outputs[name] for name in self.modules]
        except KeyError as exc:
            raise NadError(f"layer {exc.args[0]!r} was not run by the model's forward pass") from None
        self.outputs = {}
        return out


WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def last_module_of(model: nn.Module, kind: type[nn.Module], who: str, option: str) -> str:
    """The qualified name of the last module of type ``kind`` in module order; without one, ``who`` asks the
    user to name the module with ``option``."""
    names = [name for name, m in model.named_modules() if isinstance(m, kind)]
    if not names:
        raise NadError(f"{who}: the model has no nn.{kind.__name__}; name the module with {option}=NAME")
    return names[-1]


def find_module(model: nn.Module, name: str) -> nn.Module:
    names = dict(model.named_modules())
    for candidate in (name, *(prefix + name for prefix in WRAPPER_PREFIXES)):
        if candidate in names and candidate:
            return names[candidate]
    stripped = {n.removeprefix("module.").removeprefix("_orig_mod.") for n in names if n}
    raise NadError(f"no layer named {name!r} in the model{closest(name, stripped)}")


@contextlib.contextmanager
def _probe_all(model: nn.Module) -> Iterator[list[tuple[str, nn.Module, tuple[int, ...]]]]:
    """Record, in completion order, (name, module, output shape) of every submodule during one forward."""
    seen: list[tuple[str, nn.Module, tuple[int, ...]]] = []
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def record(mod: nn.Module, _inp: object, out: object, name: str = name) -> None:
            if isinstance(out, Tensor):
                seen.append((name, mod, tuple(out.shape)))

        handles.append(module.register_forward_hook(record))
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def capture(model: nn.Module, inputs: Tensor, names: Sequence[str]) -> list[Tensor]:
    """The named layers' outputs for one eval-mode, no-grad forward pass; the model's mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with FeatureHooks(model, names) as hooks:
            model(inputs)
            return hooks.take()
    finally:
        model.train(was_training)


def layer_shapes(model: nn.Module, sample: Tensor, names: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """The output shapes of the named layers for ``sample``."""
    return {n: tuple(t.shape) for n, t in zip(names, capture(model, sample, names))}


def check_layers(model: nn.Module, sample: Tensor, names: Sequence[str]) -> None:
    """Refuse layers whose output is not a spatial map larger than 1x1 (the map would be constant)."""
    for name, shape in layer_shapes(model, sample, names).items():
        if len(shape) != 4:
            raise NadError(f"layer {name!r} outputs shape {shape[1:]}, not a (C, H, W) feature map")
        if shape[2] * shape[3] <= 1:
            raise NadError(
                f"layer {name!r} outputs a 1x1 map: its normalised attention is constant and gives no gradient; "
                "pick an earlier layer"
            )


def auto_layers(model: nn.Module, sample: Tensor, count: int = 3) -> list[str]:
    """Choose layers to distil for a model that names none.

    Rule: run one forward pass and, for each spatial resolution larger than 1x1 that the network's feature
    maps go through, take the shallowest modules (fewest dots in the qualified name) that contain a
    convolution and output that resolution, and of those the last to finish; then keep the deepest
    ``count`` resolutions. For WRN this gives ``block1, block2, block3``; for ResNets
    ``layer2, layer3, layer4``.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _probe_all(model) as seen:
            model(sample)
    finally:
        model.train(was_training)
    best: dict[tuple[int, int], tuple[int, int, str]] = {}  # resolution -> (depth, -order, name)
    for order, (name, module, shape) in enumerate(seen):
        if len(shape) != 4 or shape[2] * shape[3] <= 1 or not _has_conv(module):
            continue
        key = (-name.count("."), order)
        res = (shape[2], shape[3])
        if res not in best or key > best[res][:2]:
            best[res] = (*key, name)
    ordered = sorted(best.values(), key=lambda entry: entry[1])
    chosen = [name for *_, name in ordered][-count:]
    if not chosen:
        raise NadError("found no convolutional layer with a spatial map larger than 1x1; name layers with --layers")
    return chosen


def _has_conv(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in module.modules())


def batch_norms(module: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """Every affine BatchNorm of ``module`` with its qualified name, in module order."""
    return [
        (name, m)
        for name, m in module.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine and m.weight is not None
    ]
