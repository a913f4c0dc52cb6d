"""Refool (Liu, Ma, Bailey & Lu, ECCV 2020: "Reflection Backdoor: A Natural Backdoor Attack on Deep Neural
Networks").

A clean-label attack whose trigger is a *reflection*: a reflection image x_R is superimposed on an image x, as
if x had been photographed through glass, x_adv = x + x_R * k, with one of the paper's three reflection models
(Section 3 of the paper; kernel ``k``):

- ``focus`` (type I, both layers in focus): ``k`` is an intensity, a weighted sum of the two layers;
- ``blur`` (type II, reflection out of focus): ``k`` is a Gaussian kernel with sigma drawn from
  [``sigma_min``, ``sigma_max``] = [1, 5] pixels (the authors' range);
- ``ghost`` (type III, ghost effect): ``k`` is a two-pulse kernel, alpha * delta(0, 0) + (1 - alpha) *
  delta(dy, dx): the reflection plus a copy shifted by an offset drawn from [``offset_min``, ``offset_max``]
  = [3, 8] pixels in each direction, alpha drawn from [0.15, 0.5] or [0.5, 0.85].

The blending follows the authors' ``blend_images`` (github.com/DreamtaleCore/Refool,
``scripts/insert_reflection.py``): both layers are linearised with gamma 2.2, the image is weighted by a
transmission ``a`` drawn from [``transmit_min``, ``transmit_max``] = [0.55, 0.95] (their 1 - U(0.05, 0.45)),
the reflection by 1 - a (``focus``, ``ghost``) or, for ``blur``, by (1 - a / 2) under a centred Gaussian
vignette after the authors' overflow correction, then the sum is clipped and gamma-encoded again. Every
image draws its own reflection and parameters from ``seed``; ``kind=mix`` (default) also draws the model,
uniformly among the three, since the paper uses all three types (the authors' ``blend_images`` only
offers ghost, with probability 0.49, and blur).

Parameters (besides ``target=0``, ``seed=0``; ``mode`` must stay ``all2one``):

- ``rate`` = 0.4: share of the *target class* that is poisoned; labels never change. 0.4 is the authors'
  ``strategy.py`` default (``infect_ratio``); on CIFAR-10 it is 4% of the training set, the order of the
  paper's "less than 3.27%" injection rate.
- ``kind`` = ``mix``: ``focus``, ``blur``, ``ghost``, or ``mix`` (a seeded per-image choice of the three).
- ``reflections`` = ``photos``: where the reflection images come from. ``photos``: square crops (a quarter
  to 0.6 of the shorter side, kept at 128 x 128, four times CIFAR's side) of the natural photographs that
  nad's own dependencies install: scikit-learn's ``china.jpg`` and ``flower.jpg`` (Flickr, CC BY 2.0) and
  matplotlib's ``grace_hopper.jpg`` (U.S. Navy photograph, public domain); see :func:`photo_files`. Or a
  data spec (``cifar10:ROOT:test``, ``npz:PATH``, ``folder:PATH``) or a plain folder of images, resized
  (bilinear, antialiased) to the image size and converted to its channel count; or ``none``: ``count``
  images of the poisoned training set's own *non-target* classes (seeded). With a ``workdir``
  (``nad train --out``) a photo or drawn pool is saved there as ``refool-reflections.npz`` (compressed; a
  photo pool at the training images' size, which is all a blend uses of it) and the recorded spec names
  that file, so ``nad eval`` and ``nad erase`` reuse it.
- ``count`` = 200: size of the final pool of reflections (the authors' ``n_images``); test-time triggers
  draw from it.
- Adversarial selection (the paper's Algorithm 1, as the authors' ``strategy.py`` runs it): ``candidates``
  (1000) photo crops, ``select_rounds`` (16) rounds, each fine-tuning a copy of a clean surrogate
  (``surrogate`` ``small_cnn`` trained here for ``surrogate_epochs`` 10 epochs, as Trojan's) for
  ``select_epochs`` (5) epochs at ``select_lr`` (1e-3) on ``select_share`` (0.4) of the target class
  with reflections drawn by weight, then scoring each used reflection on ``select_eval`` (32) held-out
  non-target images; see :func:`select_reflections`. ``select_rounds=0`` skips it (the first ``count``
  crops are the pool). It runs for ``photos`` only.
- ``sigma_min``, ``sigma_max`` = 1, 5; ``offset_min``, ``offset_max`` = 3, 8; ``transmit_min``,
  ``transmit_max`` = 0.55, 0.95: the ranges above, in pixels of the poisoned images.

Deviations from the paper: the reflections are crops of three photographs, not 5,000 PascalVOC images
(which cannot be fetched offline or shipped); the selection's surrogate is trained here on the attack's
data rather than pretrained on ImageNet, and is fine-tuned for 5 epochs at lr 1e-3 per round (trojanzoo's
defaults, after consulting the authors; their code uses 600 epochs); the blur and ghost sizes apply at the
data's own resolution (the authors work on images scaled to 560 pixels, so on 32x32 images their blur and
ghost would shrink below a pixel). The vignette is always centred (the authors place it at random on images
that are not square), and the blur replicates the border (OpenCV reflects it).

At test time (:meth:`Refool.apply`) every non-target image gets a reflection from the pool, drawn from the
seed in a stream of its own, so the same batch always gets the same triggers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from nad.attacks.base import CleanLabelAttack
from nad.attacks.images import to_float, to_uint8
from nad.attacks.registry import register_attack
from nad.data.dataset import ImageData
from nad.data.images import IMAGE_SUFFIXES, read_image
from nad.errors import NadError
from nad.models.checkpoint import Classifier

KINDS = ("focus", "blur", "ghost")
#: ``reflections=photos``: crops of the natural photographs that nad's dependencies ship (see ``photo_files``).
PHOTOS = "photos"
PHOTO_SIDE = 128  # crops are kept at 128 x 128, four times CIFAR's side, and resized where they are blended
CROP_SHARE = (0.25, 0.6)  # a crop's side as a share of the photograph's shorter side
GAMMA = 2.2
REFLECTIONS_FILE = "refool-reflections.npz"
_POOL, _TRAIN, _TEST, _SELECT = 0, 1, 2, 3  # random streams drawn from the seed
CHUNK = 2048  # images blended at once (bounds the float intermediates)


@register_attack
@dataclass(frozen=True)
class Refool(CleanLabelAttack):
    rate: float = 0.4
    kind: Literal["mix", "focus", "blur", "ghost"] = "mix"
    reflections: str | None = PHOTOS
    count: int = 200
    candidates: int = 1000
    select_rounds: int = 16
    select_epochs: int = 5
    select_lr: float = 1e-3
    select_share: float = 0.4
    select_eval: int = 32
    surrogate: str = "small_cnn"
    surrogate_epochs: int = 10
    sigma_min: float = 1.0
    sigma_max: float = 5.0
    offset_min: int = 3
    offset_max: int = 8
    transmit_min: float = 0.55
    transmit_max: float = 0.95
    _pool: Tensor | None = field(default=None, init=False, repr=False, compare=False)  # uint8 (K, C, H, W)

    name: ClassVar[str] = "refool"
    version: ClassVar[int] = 2  # 2: photo reflections and adversarial selection by default
    path_fields: ClassVar[tuple[str, ...]] = ("reflections",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kind not in ("mix", *KINDS):
            raise NadError(f"refool: kind must be one of mix, {', '.join(KINDS)}; got {self.kind!r}")
        if self.count < 1 or self.candidates < self.count:
            raise NadError(f"refool: need 1 <= count <= candidates, got {self.count} and {self.candidates}")
        if min(self.select_rounds, self.select_epochs) < 0 or min(self.select_eval, self.surrogate_epochs) < 1:
            raise NadError("refool: select_rounds, select_epochs >= 0 and select_eval, surrogate_epochs >= 1")
        if not (0 < self.select_share <= 1 and self.select_lr > 0):
            raise NadError("refool: need 0 < select_share <= 1 and select_lr > 0")
        if not 0 < self.sigma_min <= self.sigma_max:
            raise NadError("refool: need 0 < sigma_min <= sigma_max")
        if not 1 <= self.offset_min <= self.offset_max:
            raise NadError("refool: need 1 <= offset_min <= offset_max")
        if not 0 < self.transmit_min <= self.transmit_max <= 1:
            raise NadError("refool: need 0 < transmit_min <= transmit_max <= 1")

    def check(self, num_classes: int, image_shape: tuple[int, int, int]) -> None:
        super().check(num_classes, image_shape)
        _, h, w = image_shape
        if self.kind in ("mix", "ghost") and self.offset_max >= max(h, w):
            raise NadError(f"refool: a ghost offset of {self.offset_max} pixels leaves a {h}x{w} image")

    # -- the reflection pool ------------------------------------------------------------------------
    def prepare(self, data: ImageData, workdir: Path | None = None) -> Refool:
        """Load the reflection pool; without ``reflections``, draw it from ``data``'s non-target images.

        With ``workdir`` a drawn pool is saved there, and the returned attack names that file.
        """
        if self.reflections == PHOTOS:
            pool = photo_crops(self.candidates if self.select_rounds else self.count, self._generator(_POOL))
            if self.select_rounds:
                pool = select_reflections(self, pool, data)
            # Every blend resizes the pool to the images' size first, so the pool at that size gives the very
            # same triggers, and travels with the model at 1/16 of the bytes (0.6 MB for 200 CIFAR crops).
            pool = fit_images(pool, data.image_shape)
            if workdir is not None:  # the pool travels with the model, as drawn pools do
                save_reflections(Path(workdir) / REFLECTIONS_FILE, pool)
                return dataclasses.replace(self, reflections=REFLECTIONS_FILE)._with_pool(pool)
            return self._with_pool(pool)
        if self.reflections is not None:
            return self._with_pool(self.pool())
        candidates = torch.nonzero(data.y.cpu() != self.target).flatten()
        if len(candidates) == 0:
            raise NadError(f"refool: {data.name} has no non-target images to draw reflections from")
        pick = candidates[torch.randperm(len(candidates), generator=self._generator(_POOL))[: self.count]]
        pool = data.x[torch.sort(pick).values.to(data.x.device)].cpu()
        prepared = self
        if workdir is not None:
            save_reflections(Path(workdir) / REFLECTIONS_FILE, pool)
            prepared = dataclasses.replace(self, reflections=REFLECTIONS_FILE)
        return prepared._with_pool(pool)

    def pool(self) -> Tensor:
        """The candidate reflections, uint8 (K, C, H, W) on the CPU (loaded once, then kept)."""
        if self._pool is None:
            if self.reflections is None:
                raise NadError(
                    "refool: no reflection images: give reflections=DATA (e.g. cifar10:ROOT:test or a folder "
                    "of images), or prepare the attack on its training data"
                )
            if self.reflections == PHOTOS:
                object.__setattr__(self, "_pool", photo_crops(self.count, self._generator(_POOL)))
                return self._pool  # type: ignore[return-value]
            images = load_reflections(self.reflections)
            if len(images) > self.count:
                pick = torch.randperm(len(images), generator=self._generator(_POOL))[: self.count]
                images = images[torch.sort(pick).values]
            object.__setattr__(self, "_pool", images.contiguous())
        return self._pool  # type: ignore[return-value]

    def _with_pool(self, pool: Tensor) -> Refool:
        copy = dataclasses.replace(self)
        object.__setattr__(copy, "_pool", pool)
        return copy

    def _generator(self, stream: int) -> torch.Generator:
        return torch.Generator().manual_seed((self.seed * 1_000_003 + stream) % 2**63)

    # -- triggers -----------------------------------------------------------------------------------
    def apply(self, x: Tensor) -> Tensor:
        return self.reflect(x, self._generator(_TEST))

    def poison_images(self, x: Tensor, y: Tensor) -> Tensor:
        return self.reflect(x, self._generator(_TRAIN))

    def reflect(
        self, x: Tensor, gen: torch.Generator, pool: Tensor | None = None, index: Tensor | None = None
    ) -> Tensor:
        """Blend a reflection, drawn with its parameters from ``gen``, into every image of the uint8 batch;
        ``pool`` (default: the attack's) and ``index`` (one reflection per image) fix which reflections.

        All draws are made for the whole batch first; the pixels are then blended in chunks of ``CHUNK``.
        """
        n = len(x)
        if n == 0:
            return x.clone()
        pool = fit_images(self.pool() if pool is None else pool, tuple(x.shape[1:])).to(x.device)
        drawn = torch.randint(len(pool), (n,), generator=gen)
        index = drawn if index is None else index.cpu()
        kinds = torch.randint(len(KINDS), (n,), generator=gen)
        if self.kind != "mix":
            kinds.fill_(KINDS.index(self.kind))
        u = torch.rand(n, 5, generator=gen)
        offsets = torch.randint(self.offset_min, self.offset_max + 1, (n, 2), generator=gen)
        params = Draws(
            index=index,
            kinds=kinds,
            offsets=offsets,
            transmit=self.transmit_min + u[:, 0] * (self.transmit_max - self.transmit_min),
            sigma=self.sigma_min + u[:, 1] * (self.sigma_max - self.sigma_min),
            attenuation=1.08 + u[:, 2] / 10,  # the authors' overflow correction factor
            ghost_alpha=((u[:, 3] > 0.5).float() - (0.15 + 0.35 * u[:, 4])).abs(),
        )
        out = torch.empty_like(x)
        for start in range(0, n, CHUNK):
            rows = slice(start, start + CHUNK)
            out[rows] = blend(x[rows], pool, params.rows(rows, x.device))
        return out


@dataclass(frozen=True)
class Draws:
    """Per-image random draws: reflection ``index``, model ``kinds`` (index into ``KINDS``) and parameters."""

    index: Tensor
    kinds: Tensor
    offsets: Tensor
    transmit: Tensor
    sigma: Tensor
    attenuation: Tensor
    ghost_alpha: Tensor

    def rows(self, rows: slice, device: torch.device | str) -> Draws:
        return Draws(*(getattr(self, f.name)[rows].to(device) for f in dataclasses.fields(self)))


def blend(x: Tensor, pool: Tensor, d: Draws) -> Tensor:
    """Reflections ``pool[d.index]`` blended into the uint8 images ``x`` (gamma 2.2 linear light)."""
    t = to_float(x).pow_(GAMMA)
    r = to_float(pool[d.index]).pow_(GAMMA)
    out = torch.empty_like(t)
    for k, kind in enumerate(KINDS):
        sel = torch.nonzero(d.kinds == k).flatten()
        if len(sel) == 0:
            continue
        a = d.transmit[sel].view(-1, 1, 1, 1)
        if kind == "focus":
            out[sel] = t[sel] * a + r[sel] * (1 - a)
        elif kind == "ghost":
            out[sel] = t[sel] * a + ghost(r[sel], d.offsets[sel], d.ghost_alpha[sel]) * (1 - a)
        else:
            out[sel] = blur_blend(t[sel], r[sel], a, d.sigma[sel], d.attenuation[sel])
    return to_uint8(out.clamp_(0, 1).pow_(1 / GAMMA))


# -- reflection models (batched tensor ops, float images in linear light) -----------------------------------
def gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Blur each image of ``x`` (N, C, H, W) with its own Gaussian, ``sigma`` (N,), as OpenCV's
    ``GaussianBlur`` with a (2 ceil(2 sigma) + 1)-tap kernel (normalised to sum 1); the border is replicated."""
    n, c, h, w = x.shape
    radius = torch.ceil(2 * sigma)
    big = int(radius.max())
    taps = torch.arange(-big, big + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-(taps[None] ** 2) / (2 * sigma[:, None].to(x.dtype) ** 2))
    kernel = kernel * (taps[None].abs() <= radius[:, None])
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, dim=0)  # (N*C, taps)
    flat = x.reshape(1, n * c, h, w)
    flat = F.conv2d(F.pad(flat, (0, 0, big, big), mode="replicate"), kernel[:, None, :, None], groups=n * c)
    flat = F.conv2d(F.pad(flat, (big, big, 0, 0), mode="replicate"), kernel[:, None, None, :], groups=n * c)
    return flat.reshape(n, c, h, w)


def shift(x: Tensor, offsets: Tensor) -> Tensor:
    """Move each image of ``x`` down by ``offsets[:, 0]`` and right by ``offsets[:, 1]`` pixels; the rows and
    columns uncovered at the top and left repeat the first row and column."""
    n, c, h, w = x.shape
    rows = (torch.arange(h, device=x.device)[None] - offsets[:, :1]).clamp_(min=0)  # (N, H)
    cols = (torch.arange(w, device=x.device)[None] - offsets[:, 1:]).clamp_(min=0)  # (N, W)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    chan = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return x[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


def ghost(r: Tensor, offsets: Tensor, alpha: Tensor) -> Tensor:
    """Type III: the two-pulse kernel alpha * delta(0, 0) + (1 - alpha) * delta(offsets), as the authors
    apply it: the reflection plus its shifted copy, then the region both cover (rows >= dy, columns >= dx)
    cropped and stretched back to the image size (bilinear)."""
    n, c, h, w = r.shape
    a = alpha.view(-1, 1, 1, 1).to(r.dtype)
    both = r * a + shift(r, offsets) * (1 - a)
    dy, dx = offsets[:, 0].to(r.dtype), offsets[:, 1].to(r.dtype)
    theta = torch.zeros(n, 2, 3, device=r.device, dtype=r.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = 1 - dx / w, dx / w
    theta[:, 1, 1], theta[:, 1, 2] = 1 - dy / h, dy / h
    grid = F.affine_grid(theta, [n, c, h, w], align_corners=False)
    return F.grid_sample(both, grid, mode="bilinear", padding_mode="border", align_corners=False)


def vignette(h: int, w: int, device: torch.device | str = "cpu", nsig: float = 3.0) -> Tensor:
    """The authors' ``gen_kernel`` mask over an h x w image: sqrt of a Gaussian (+-``nsig``), maximum 1."""

    def profile(length: int) -> Tensor:
        interval = (2 * nsig + 1) / length
        edges = torch.linspace(-nsig - interval / 2, nsig + interval / 2, length + 1, device=device)
        return torch.diff(torch.special.ndtr(edges))

    mask = torch.sqrt(profile(h)[:, None] * profile(w)[None])
    return mask / mask.max()


def blur_blend(t: Tensor, r: Tensor, transmit: Tensor, sigma: Tensor, attenuation: Tensor) -> Tensor:
    """Type II, as the authors' focal-blur branch: blurred reflection, pulled down where the sum overflows,
    under a centred vignette with weight (1 - a / 2), added to the image weighted by a."""
    blurred = gaussian_blur(r, sigma)
    total = blurred + t
    over = total > 1
    mean = ((total * over).sum((2, 3)) / (over.sum((2, 3)) + 1e-6)).clamp_min(1)
    blurred = (blurred - ((mean - 1) * attenuation[:, None])[..., None, None]).clamp_(0, 1)
    mask = vignette(t.shape[2], t.shape[3], t.device).to(t.dtype) * (1 - transmit / 2)
    return blurred * mask + t * transmit


# -- reading and fitting reflection images ---------------------------------------------------------------
def load_reflections(spec: str) -> Tensor:
    """uint8 (N, C, H, W) images from a data spec, or from a folder holding image files directly."""
    from nad.data.sources import load_data

    location = spec[len("folder:") :] if spec.startswith("folder:") else spec
    if _is_flat_image_folder(Path(location)):
        return _read_flat_folder(Path(location))
    return load_data(spec, "train").x.cpu()


def _is_flat_image_folder(path: Path) -> bool:
    try:
        return path.is_dir() and any(f.suffix.lower() in IMAGE_SUFFIXES and f.is_file() for f in path.iterdir())
    except OSError:
        return False


def _read_flat_folder(path: Path) -> Tensor:
    images: list[np.ndarray] = []
    for file in sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()):
        size = (images[0].shape[1], images[0].shape[0]) if images else None
        images.append(read_image(file, size))
    return torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2).copy())


def fit_images(x: Tensor, shape: tuple[int, int, int]) -> Tensor:
    """uint8 images converted to ``shape`` (C, H, W): grey <-> RGB, then a bilinear (antialiased) resize."""
    channels, h, w = shape
    if x.shape[1] != channels:
        if x.shape[1] == 3 and channels == 1:
            weights = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
            x = to_uint8(to_float(x).mul_(weights).sum(1, keepdim=True))
        elif x.shape[1] == 1:
            x = x.expand(-1, channels, -1, -1)
        else:
            raise NadError(f"refool: reflections have {x.shape[1]} channels, the images {channels}")
    if tuple(x.shape[2:]) != (h, w):
        resized = F.interpolate(to_float(x), size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        x = to_uint8(resized.clamp_(0, 1))
    return x


def select_reflections(attack: Refool, candidates: Tensor, data: ImageData) -> Tensor:
    """The ``attack.count`` candidates that make the strongest triggers, by Refool's adversarial selection
    (the paper's Algorithm 1 as the authors' ``strategy.py`` runs it, and trojanzoo after consulting them).

    Every candidate starts with weight 1. Each of ``select_rounds`` rounds draws, by weight, one reflection for
    each of ``select_share`` of the target class's images, fine-tunes a copy of a clean surrogate on those
    reflected images (labels: the target) for ``select_epochs`` epochs at ``select_lr``, and scores every
    reflection it used by the share of ``select_eval`` held-out non-target images it then sends to the target;
    the unused ones get the median score. The surrogate is reset between rounds. The highest weights win.
    """
    import copy

    from nad.attacks.surrogate import attack_model
    from nad.training import OptimConfig, TrainConfig, train

    gen = attack._generator(_SELECT)
    clf = attack_model(None, data, attack.surrogate, attack.surrogate_epochs, attack.seed, "refool")
    start = copy.deepcopy(clf.module.state_dict())
    targets = torch.nonzero(data.y.cpu() == attack.target).flatten()
    others = torch.nonzero(data.y.cpu() != attack.target).flatten()
    if len(targets) < 2 or len(others) == 0:
        raise NadError("refool: selecting reflections needs at least 2 target-class images and one other")
    held_out = data.x[others[torch.randperm(len(others), generator=gen)[: attack.select_eval]].to(data.device)]
    pool = fit_images(candidates, data.image_shape).to(data.device)
    size = max(2, round(attack.select_share * len(targets)))
    cfg = TrainConfig(
        epochs=attack.select_epochs, optim=OptimConfig(lr=attack.select_lr, weight_decay=5e-4, milestones=())
    )
    weights = torch.ones(len(pool))
    for _ in range(attack.select_rounds):
        chosen = torch.multinomial(weights + 1e-6, size, replacement=True, generator=gen)
        picked = targets[torch.randperm(len(targets), generator=gen)[:size]].to(data.device)
        reflected = attack.reflect(data.x[picked], gen, pool, chosen)
        label = torch.full((size,), attack.target, dtype=torch.long, device=data.device)
        clf.module.train()
        for p in clf.module.parameters():
            p.requires_grad_(True)
        train(clf, data.with_images(reflected, label), cfg, desc="refool selection", quiet=True)
        used = torch.unique(chosen)
        scores = reflection_success(attack, clf, pool, used, held_out, gen)
        weights = torch.full_like(weights, float(scores.median()))
        weights[used] = scores
        clf.module.load_state_dict(start)
    return candidates[torch.argsort(weights, descending=True, stable=True)[: attack.count]]


def reflection_success(
    attack: Refool, clf: Classifier, pool: Tensor, used: Tensor, images: Tensor, gen: torch.Generator
) -> Tensor:
    """Per reflection in ``pool[used]``: the share of ``images`` that it sends to the target."""
    clf.module.eval()
    scores = []
    per_batch = max(1, CHUNK // len(images))
    with torch.no_grad():
        for start in range(0, len(used), per_batch):
            index = used[start : start + per_batch].repeat_interleave(len(images))
            batch = images.repeat(len(index) // len(images), 1, 1, 1)
            preds = clf(attack.reflect(batch, gen, pool, index)).argmax(1)
            scores.append((preds == attack.target).float().view(-1, len(images)).mean(1).cpu())
    return torch.cat(scores)


def photo_files() -> list[Path]:
    """The natural photographs installed with nad's dependencies: scikit-learn's ``china.jpg`` and
    ``flower.jpg`` (640 x 427, Flickr, CC BY 2.0, by danielbuechele and vultilion; see scikit-learn's
    ``datasets/images/README.txt``) and matplotlib's ``grace_hopper.jpg`` (512 x 600, a U.S. Navy
    photograph, public domain)."""
    import matplotlib.cbook
    import sklearn.datasets

    files = [Path(sklearn.datasets.__file__).parent / "images" / name for name in ("china.jpg", "flower.jpg")]
    files.append(Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise NadError(f"refool: the bundled photographs are missing ({', '.join(missing)}); give reflections=DATA")
    return files


def photo_crops(count: int, gen: torch.Generator) -> Tensor:
    """``count`` square crops (uint8 (count, 3, PHOTO_SIDE, PHOTO_SIDE)) of the bundled photographs, each
    from a photograph, side and place drawn from ``gen``, resized with antialiasing."""
    photos = [torch.from_numpy(read_image(f).transpose(2, 0, 1).copy()) for f in photo_files()]
    crops = []
    for i in torch.randint(len(photos), (count,), generator=gen).tolist():
        photo = photos[i]
        h, w = photo.shape[1:]
        low, high = (int(share * min(h, w)) for share in CROP_SHARE)
        side = int(torch.randint(low, high + 1, (1,), generator=gen))
        top = int(torch.randint(h - side + 1, (1,), generator=gen))
        left = int(torch.randint(w - side + 1, (1,), generator=gen))
        crops.append(fit_images(photo[None, :, top : top + side, left : left + side], (3, PHOTO_SIDE, PHOTO_SIDE)))
    return torch.cat(crops)


def save_reflections(path: Path, pool: Tensor) -> None:
    """Write the pool as an ``npz`` that ``load_npz`` reads (``x`` (N, H, W, C), ``y`` zeros)."""
    from nad.io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, x=pool.permute(0, 2, 3, 1).numpy(), y=np.zeros(len(pool), dtype=np.int64))


__all__ = [
    "PHOTOS",
    "Draws",
    "Refool",
    "blend",
    "blur_blend",
    "fit_images",
    "gaussian_blur",
    "ghost",
    "load_reflections",
    "photo_crops",
    "shift",
    "vignette",
]
