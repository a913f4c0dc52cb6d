"""Plain-function entry points: any ``nn.Module`` and any map-style torch ``Dataset`` in, nad's result out.

``nad.erase`` and ``nad.scan_model`` take what a PyTorch user already has: a module (torchvision, timm or one's
own) that maps normalised float images to logits, and datasets of ``(image, label)`` pairs or a
``TensorDataset``. Images may be uint8 (0..255) or float in [0, 1], as tensors (C, H, W), numpy arrays
(H, W, C) or PIL images; the normalisation the model expects is given once (``normalize=``), never baked into
the data. They are converted here, once, to nad's own form (uint8 tensors, a :class:`Classifier`); everything
after runs on those.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from nad.api import EraseResult, scan_images, split_clean
from nad.api import erase as erase_classifier
from nad.attacks import parse_attack
from nad.attacks.base import Attack
from nad.data import load_data
from nad.data.dataset import ImageData
from nad.defenses.base import Defense
from nad.errors import NadError
from nad.models.checkpoint import Classifier, ModelInfo, Normalization, checked_normalization, parse_normalize
from nad.scan import ScanConfig, ScanResult
from nad.scan import scan as scan_classifier

NormalizeLike = Normalization | str | tuple[Sequence[float], Sequence[float]] | None


def erase(
    model: nn.Module | Classifier,
    clean: Any,
    defense: Defense | str = "nad",
    *,
    normalize: NormalizeLike = None,
    test: Any = None,
    attack: Attack | str | None = None,
    clean_ratio: float = 1.0,
    seed: int = 0,
    baseline: bool = True,
    scan: bool | ScanConfig = False,
    quiet: bool = False,
) -> EraseResult:
    """Purify ``model`` with ``defense`` (NAD by default) on the clean data ``clean``.

    ``clean`` and ``test`` are torch datasets, :class:`ImageData` or data specs (``"digits"``,
    ``"cifar10:ROOT"``); ``clean_ratio`` < 1 keeps a class-stratified share of ``clean`` (drawn from ``seed``).
    ``defense`` is a :class:`Defense` or a spec (``"nad"``, ``"finetune:epochs=5"``, see ``nad defenses``);
    ``attack`` a spec or :class:`Attack`, only to measure ASR on ``test``. With ``scan`` (True or a
    :class:`ScanConfig`) the model is scanned for backdoor evidence before and after. The model is not
    changed: ``result.model.module`` is the purified ``nn.Module``; ``result.before``/``after``/``finetune``
    hold the scores (percent) when ``test`` is given.
    """
    clean_data = as_image_data(clean, "clean")
    clf = as_classifier(model, normalize, clean_data)
    device = next(iter(clf.module.parameters()), torch.empty(0)).device
    clean_data, rest = split_clean(clean_data.to(device), clean_ratio, seed, clf.info.num_classes)
    test_data = as_image_data(test, "test", split="test").to(device) if test is not None else None
    if isinstance(attack, str):
        attack = parse_attack(attack)
    if attack is not None:
        attack.check(clf.info.num_classes, clean_data.image_shape)
    scan_config = ScanConfig(seed=seed) if scan is True else (scan or None)
    return erase_classifier(
        clf,
        clean_data,
        as_defense(defense, seed),
        test_data,
        attack,
        baseline=baseline,
        quiet=quiet,
        scan_config=scan_config,
        scan_data=scan_images(clean_data, rest, seed),
    )


def scan_model(
    model: nn.Module | Classifier,
    clean: Any,
    *,
    normalize: NormalizeLike = None,
    config: ScanConfig | None = None,
    quiet: bool = False,
) -> ScanResult:
    """Backdoor evidence per class without the trigger (see :mod:`nad.scan`), from clean data ``clean``."""
    clean_data = as_image_data(clean, "clean")
    clf = as_classifier(model, normalize, clean_data)
    device = next(iter(clf.module.parameters()), torch.empty(0)).device
    return scan_classifier(clf, clean_data.to(device), config or ScanConfig(), quiet=quiet)


def as_defense(defense: Defense | str, seed: int) -> Defense:
    from nad.defenses import defense_class
    from nad.defenses.settings import RunSettings, defense_config

    if isinstance(defense, Defense):
        return defense
    if not isinstance(defense, str):
        raise NadError(f"defense: expected a Defense or a spec such as 'nad', got {type(defense).__name__}")
    name, config = defense_config(defense, RunSettings(seed=seed))
    return defense_class(name)(config)


def as_classifier(model: nn.Module | Classifier, normalize: NormalizeLike, data: ImageData) -> Classifier:
    """``model`` with what nad needs to feed it ``data``'s uint8 images: the normalisation and the class count
    (read from the model's output on one image)."""
    if isinstance(model, Classifier):
        return model
    if not isinstance(model, nn.Module):
        raise NadError(f"model: expected an nn.Module, got {type(model).__name__}")
    norm = as_normalization(normalize)
    if norm is not None and len(norm.mean) not in (1, data.image_shape[0]):
        raise NadError(f"normalize: {len(norm.mean)} channel values for images of {data.image_shape[0]} channels")
    device = next(iter(model.parameters()), torch.empty(0)).device
    arch = f"{type(model).__module__}.{type(model).__qualname__}"  # for the record: never looked up or imported
    info = ModelInfo(arch, 1, data.image_shape, normalize=norm)
    probe = Classifier(model, info)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = probe(data.x[:2].to(device))
    except RuntimeError as exc:
        raise NadError(f"model: fails on the data's {data.image_shape} images: {exc}") from None
    finally:
        model.train(was_training)
    if logits.ndim != 2:
        raise NadError(f"model: expected logits of shape (N, classes), got {tuple(logits.shape)}")
    if logits.shape[1] < data.num_classes:
        raise NadError(f"model: {logits.shape[1]} outputs, but the data has labels up to {data.num_classes - 1}")
    return Classifier(model, ModelInfo(arch, logits.shape[1], data.image_shape, normalize=norm))


def as_normalization(normalize: NormalizeLike) -> Normalization | None:
    if normalize is None or isinstance(normalize, Normalization):
        return normalize
    if isinstance(normalize, str):
        return parse_normalize(normalize)
    if isinstance(normalize, tuple | list) and len(normalize) == 2:
        return checked_normalization(list(normalize[0]), list(normalize[1]), "normalize")
    raise NadError(f"normalize: expected a name such as 'cifar10' or (mean, std), got {normalize!r:.60}")


def as_image_data(data: Any, name: str = "data", split: str = "train") -> ImageData:
    """``data`` as :class:`ImageData`: a data spec is loaded, a ``TensorDataset`` converted at once, any other
    map-style dataset of ``(image, label, ...)`` items read item by item (once)."""
    if isinstance(data, ImageData):
        return data
    if isinstance(data, str):
        return load_data(data, split)
    tensors = getattr(data, "tensors", None)
    if isinstance(tensors, tuple) and len(tensors) >= 2:  # a TensorDataset: all images in one tensor
        images, labels = tensors[0], tensors[1]
    else:
        if not hasattr(data, "__getitem__") or not hasattr(data, "__len__"):
            raise NadError(f"{name}: expected a map-style Dataset of (image, label), got {type(data).__name__}")
        items = [data[i] for i in range(len(data))]
        if not items or not all(isinstance(item, tuple | list) and len(item) >= 2 for item in items):
            raise NadError(f"{name}: expected a non-empty Dataset whose items are (image, label)")
        images = torch.stack([image_tensor(item[0], name) for item in items])
        labels = torch.tensor([int(item[1]) for item in items])
    x = uint8_images(torch.as_tensor(images), name)
    y = torch.as_tensor(labels).long().flatten()
    if len(y) != len(x) or len(y) == 0:
        raise NadError(f"{name}: {len(x)} images and {len(y)} labels")
    return ImageData(x, y, int(y.max()) + 1, name=name)


def image_tensor(image: Any, name: str) -> Tensor:
    """One image as a tensor (C, H, W): a PIL image or numpy array (H, W[, C]) is transposed, a tensor kept."""
    if isinstance(image, Tensor):
        return image if image.ndim == 3 else image.unsqueeze(0)
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise NadError(f"{name}: an image of shape {array.shape}; expected (H, W) or (H, W, C)")
    return torch.from_numpy(np.array(array.transpose(2, 0, 1)))  # a copy: PIL arrays are read-only


def uint8_images(x: Tensor, name: str) -> Tensor:
    """(N, C, H, W) or (N, H, W) images, uint8 or float in [0, 1], as uint8 (N, C, H, W)."""
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4:
        raise NadError(f"{name}: images of shape {tuple(x.shape)}; expected (N, C, H, W)")
    if x.dtype == torch.uint8:
        return x.contiguous()
    if not x.is_floating_point():
        raise NadError(f"{name}: images of dtype {x.dtype}; expected uint8 or float in [0, 1]")
    if not bool(torch.isfinite(x).all()) or float(x.min()) < 0 or float(x.max()) > 1:
        raise NadError(
            f"{name}: float images outside [0, 1] (already normalised?): give the images in [0, 1] or 0..255 "
            "and the model's normalisation as normalize="
        )
    return x.mul(255).round_().to(torch.uint8).contiguous()
