"""Trojan (Liu, Ma, Aafer, Lee, Zhai, Wang & Zhang, NDSS 2018: "Trojaning Attack on Neural Networks").

The trigger is a square patch whose pixels are *generated from a model*: the attack picks the internal
neuron(s) most strongly connected to the trigger region and optimises the patch so that it drives them to a
large value. A ``rate`` share of the training set (10% by default, drawn from the non-target images) gets
the patch and is relabelled to ``target`` (0). At test time the patch goes on non-target images. Stamping is
pixel-exact on uint8.

Trigger generation (``prepare``), our adaptation of the paper's trigger generation to convolutional networks:

1. The model: ``model`` (a nad model folder or weights file), or, when it is not given, a surrogate trained
   on the clean training set (``surrogate`` architecture for ``surrogate_epochs`` epochs with the
   ``nad train`` schedule, seeded by ``seed``). The paper retrains an existing model on reverse-engineered
   data; here, as for the other attacks, the backdoored model is then trained on the poisoned training set.
2. The layer: ``layer`` (a qualified module name; a neuron of a (C, H, W) map is a channel, its activation
   the channel's spatial mean), by default the *input of the model's last* ``nn.Linear``: the penultimate
   features, the counterpart of the fully connected hidden layer the paper selects neurons from.
3. Neuron selection: the paper takes the neurons with the largest summed absolute weights, i.e. the
   strongest connections. A neuron of a deep layer has no weights to the input, so we measure its
   connection to the *trigger region* by the input gradient: the mean, over a seeded batch of non-target
   training images carrying the random starting patch, of ``sum over the mask of |d activation / d pixel|``.
   For a neuron computed by one linear layer from the pixels this is exactly its summed absolute weights
   from the region. The ``neurons`` (1) highest scores are kept; ties go to the lower index, so the choice
   is deterministic. (On trained models the score ranks neurons by how far the patch can move them.)
4. Optimisation: starting from uniform random pixels (seeded), Adam with step ``lr`` (0.1, pixel values in
   [0, 1]) runs ``steps`` (200) steps on the paper's cost ``(activation - t)^2`` with target value
   ``activation`` (100, far above the neurons' normal range), only the pixels inside the mask changing and
   clipped to [0, 1]. The patch is pasted on a seeded batch of (up to 128) non-target training images and
   the mean cost minimised, so that the trigger works across inputs. The result is rounded to uint8.

The generated trigger is written to ``trojan-trigger.npy`` (uint8, (C, H, W), zero outside the mask) in the
run's folder, and the model's recorded spec names it (``trigger=trojan-trigger.npy``), resolved against the
model's folder when the model is read back. A resumed run that finds the file reuses it (delete it to
generate afresh).

Parameters (besides ``target``, ``rate``, ``mode``, ``seed``):

- ``size`` (6): the square mask's side. The paper's smallest trigger covers 4% of the input; a 6x6 patch
  covers 3.5% of a 32x32 image.
- ``x`` (column), ``y`` (row): the mask's top-left corner; by default flush in the bottom-right corner.
- ``trigger`` (None): a ready trigger, then nothing is generated. A ``.npy`` array of the image's size (only
  the mask region is used) or of the patch's size; an image file is resized to the patch.
- ``model`` (None), ``surrogate`` (``small_cnn``), ``surrogate_epochs`` (10): the model the trigger is
  generated from (step 1).
- ``layer`` (None), ``neurons`` (1), ``activation`` (100.0), ``steps`` (200), ``lr`` (0.1): steps 2-4.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from nad.attacks.base import Attack, PatchPosition
from nad.attacks.images import load_image, to_float, to_uint8
from nad.attacks.registry import register_attack
from nad.attacks.surrogate import attack_model
from nad.attention import find_module
from nad.data.dataset import ImageData
from nad.errors import NadError
from nad.io import atomic_path
from nad.models.checkpoint import Classifier

TRIGGER_FILE = "trojan-trigger.npy"
PROBE = 128  # training images the trigger is optimised on
SELECT_PROBE = 32  # of those, the images the neuron connections are measured on


class NeuronReader:
    """Activations (B, K) of one layer's neurons for float images in [0, 1], with gradients to the input.

    With ``layer`` None the neurons are the input features of the model's last ``nn.Linear`` to run (found
    with one forward pass of ``sample``); otherwise the named module's output, a (C, H, W) map reduced to
    its channels' spatial means.
    """

    def __init__(self, clf: Classifier, layer: str | None, sample: Tensor) -> None:
        self.clf = clf
        self.layer = layer
        if layer is None:
            self.module, self.use_input = last_linear(clf.module, clf.preprocess(sample)), True
        else:
            self.module, self.use_input = find_module(clf.module, layer), False

    def __call__(self, x: Tensor) -> Tensor:
        store: list[object] = []
        if self.use_input:
            handle = self.module.register_forward_pre_hook(lambda _m, args: store.append(args[0]))
        else:
            handle = self.module.register_forward_hook(lambda _m, _args, out: store.append(out))
        try:
            self.clf.module(self.clf.preprocess_float(x))
        finally:
            handle.remove()
        name = self.layer or "the last linear layer"
        if not store:
            raise NadError(f"trojan: layer {name!r} was not run by the model's forward pass")
        out = store[-1]
        if not isinstance(out, Tensor) or out.ndim < 2:
            raise NadError(f"trojan: layer {name!r} does not give a (batch, features) tensor; pick another layer")
        return out.mean((2, 3)) if out.ndim == 4 else out.flatten(1)


def last_linear(module: nn.Module, sample: Tensor) -> nn.Module:
    """The last ``nn.Linear`` to run in a forward pass of ``sample``."""
    order: list[nn.Module] = []
    handles = [
        m.register_forward_pre_hook(lambda m, _args: order.append(m))
        for m in module.modules()
        if isinstance(m, nn.Linear)
    ]
    try:
        with torch.no_grad():
            module(sample)
    finally:
        for h in handles:
            h.remove()
    if not order:
        raise NadError("trojan: the model has no nn.Linear layer; name the layer to select neurons from with layer=")
    return order[-1]


class Generated(NamedTuple):
    """A generated trigger (uint8 (C, H, W), zero outside the mask), the neurons it drives, and their mean
    activation on the probe images with the initial random patch and with the final trigger."""

    pixels: Tensor
    neurons: Tensor
    start: float
    end: float


@register_attack
@dataclass(frozen=True)
class Trojan(PatchPosition, Attack):
    size: int = 6
    x: int | None = None
    y: int | None = None
    trigger: str | None = None
    model: str | None = None
    surrogate: str = "small_cnn"
    surrogate_epochs: int = 10
    layer: str | None = None
    neurons: int = 1
    activation: float = 100.0
    steps: int = 200
    lr: float = 0.1

    # The trigger generated (or read) by ``prepare``, kept for ``apply``; not part of the spec.
    _pixels: Tensor | None = field(default=None, init=False, repr=False, compare=False)

    name: ClassVar[str] = "trojan"
    path_fields: ClassVar[tuple[str, ...]] = ("model", "trigger")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.size < 1 or self.neurons < 1 or self.steps < 0 or self.surrogate_epochs < 1:
            raise NadError("trojan: size, neurons and surrogate_epochs must be >= 1 and steps >= 0")
        if not 0 < self.lr < math.inf or not math.isfinite(self.activation):
            raise NadError(f"trojan: lr must be positive and activation finite, got {self.lr} and {self.activation}")

    # -- the mask ------------------------------------------------------------------------------------
    def mask(self, height: int, width: int, device: torch.device | str = "cpu") -> Tensor:
        """The trigger region as a bool (H, W) map."""
        row, col = self.corner(height, width)
        out = torch.zeros(height, width, dtype=torch.bool, device=device)
        out[row : row + self.size, col : col + self.size] = True
        return out

    def check(self, num_classes: int, image_shape: tuple[int, int, int]) -> None:
        super().check(num_classes, image_shape)
        self.check_fits(image_shape)
        if self.trigger is not None and Path(self.trigger).is_file():
            self.read_trigger(image_shape)  # a relative name may only resolve later, against a model's folder

    # -- the trigger ---------------------------------------------------------------------------------
    def read_trigger(self, shape: tuple[int, int, int]) -> Tensor:
        """The ``trigger`` file as uint8 (C, H, W), the patch placed in the mask."""
        assert self.trigger is not None
        path = Path(self.trigger)
        c, h, w = shape
        patch_shape = (c, self.size, self.size)
        if path.suffix.lower() != ".npy":
            patch = load_image(path, patch_shape)
        else:
            try:
                return load_image(path, shape)
            except NadError:
                if not path.is_file():
                    raise
            try:
                patch = load_image(path, patch_shape)
            except NadError:
                raise NadError(
                    f"{path}: a trojan trigger array must have the image's shape {shape} or the patch's {patch_shape}"
                ) from None
        row, col = self.corner(h, w)
        full = torch.zeros(shape, dtype=torch.uint8)
        full[:, row : row + self.size, col : col + self.size] = patch
        return full

    def pixels(self, shape: tuple[int, int, int]) -> Tensor:
        """The trigger (uint8, (C, H, W)): the one ``prepare`` made or read, else read from ``trigger``."""
        if self._pixels is not None and tuple(self._pixels.shape) == shape:
            return self._pixels
        if self.trigger is None:
            raise NadError(
                "trojan: no trigger yet; give a ready one with trigger=FILE, or generate one with prepare "
                "(nad train does)"
            )
        pixels = self.read_trigger(shape)
        object.__setattr__(self, "_pixels", pixels)
        return pixels

    def apply(self, x: Tensor) -> Tensor:
        pixels = self.pixels(tuple(x.shape[1:])).to(x.device)
        row, col = self.corner(x.shape[2], x.shape[3])
        rows, cols = slice(row, row + self.size), slice(col, col + self.size)
        out = x.clone()
        out[:, :, rows, cols] = pixels[:, rows, cols]
        return out

    def _with_pixels(self, pixels: Tensor, trigger: str | None) -> Trojan:
        out = dataclasses.replace(self, trigger=trigger)
        object.__setattr__(out, "_pixels", pixels.cpu())
        return out

    def prepare(self, data: ImageData, workdir: Path | None = None) -> Trojan:
        """Generate the trigger (unless ``trigger`` is given) and return the attack that carries it.

        With ``workdir`` the trigger is saved there as ``trojan-trigger.npy`` (or read back from it, when a
        resumed run finds it) and the returned spec names it; without, it is kept in memory.
        """
        self.check(data.num_classes, data.image_shape)
        if self.trigger is not None:
            return self
        if workdir is not None:
            path = Path(workdir) / TRIGGER_FILE
            if path.is_file():
                found = dataclasses.replace(self, trigger=str(path))
                return self._with_pixels(found.read_trigger(data.image_shape), TRIGGER_FILE)
        pixels = self.generate(data).pixels
        if workdir is None:
            return self._with_pixels(pixels, None)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.save(fh, pixels.cpu().numpy())
        return self._with_pixels(pixels, TRIGGER_FILE)

    def generate(self, data: ImageData, clf: Classifier | None = None) -> Generated:
        """Generate the trigger from ``clf`` (default: ``model``, or a surrogate trained on ``data``).

        ``clf`` runs in eval mode (its mode is restored afterwards) and its parameters get no gradients.
        """
        self.check(data.num_classes, data.image_shape)
        if clf is None:
            clf = attack_model(self.model, data, self.surrogate, self.surrogate_epochs, self.seed, "trojan")
        gen = torch.Generator().manual_seed(self.seed)
        device = data.x.device
        pool = torch.nonzero(data.y.cpu() != self.target).flatten()
        pool = pool if len(pool) else torch.arange(len(data))
        probe = pool[torch.randperm(len(pool), generator=gen)[:PROBE]].sort().values
        base = to_float(data.x[probe.to(device)])
        c, h, w = data.image_shape
        mask = self.mask(h, w, device)
        start = torch.rand((c, h, w), generator=gen).to(device)
        was_training = clf.module.training
        clf.module.eval()
        try:
            with torch.enable_grad():
                reader = NeuronReader(clf, self.layer, data.x[probe[:2].to(device)])
                chosen = self.select_neurons(reader, torch.where(mask, start, base[:SELECT_PROBE]), mask)
                pixels, first, last = self._optimise(reader, base, mask, start, chosen)
        finally:
            clf.module.train(was_training)
        return Generated(to_uint8(torch.where(mask, pixels, 0.0)).cpu(), chosen.cpu(), first, last)

    def select_neurons(self, reader: NeuronReader, x: Tensor, mask: Tensor) -> Tensor:
        """Indices of the ``neurons`` neurons most connected to the mask region (see the module docstring)."""
        x = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            act = reader(x)
            count = act.shape[1]
            if self.neurons > count:
                raise NadError(f"trojan: neurons={self.neurons}, but the layer has only {count}")
            scores = []
            for j in range(count):  # one backward pass per neuron gives its gradient for every image
                (grad,) = torch.autograd.grad(act[:, j].sum(), x, retain_graph=j < count - 1)
                scores.append(grad.abs().mul(mask).sum() / len(x))
        ranked = torch.sort(torch.stack(scores).double().cpu(), descending=True, stable=True).indices
        return ranked[: self.neurons]

    def _optimise(
        self, reader: NeuronReader, base: Tensor, mask: Tensor, start: Tensor, chosen: Tensor
    ) -> tuple[Tensor, float, float]:
        """Adam on the masked pixels towards activation ``activation``; returns the pixels (on the uint8 grid)
        and the chosen neurons' mean activation before and after."""
        chosen = chosen.to(base.device)
        trigger = start.clone().requires_grad_(True)
        opt = torch.optim.Adam([trigger], lr=self.lr)

        def mean_activation() -> float:
            with torch.no_grad():
                return float(reader(torch.where(mask, trigger, base))[:, chosen].mean())

        first = mean_activation()
        for _ in range(self.steps):
            act = reader(torch.where(mask, trigger, base))[:, chosen]
            loss = (act - self.activation).pow(2).mean()
            (trigger.grad,) = torch.autograd.grad(loss, trigger)  # leaves the model's parameters alone
            opt.step()
            with torch.no_grad():
                trigger.clamp_(0, 1)
        with torch.no_grad():
            trigger.mul_(255).round_().div_(255)  # the uint8 trigger that will be saved and stamped
        return trigger.detach(), first, mean_activation()
