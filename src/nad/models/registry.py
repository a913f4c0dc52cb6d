"""Model registry: architectures by the names the command line accepts, as in timm."""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from nad.errors import NadError
from nad.registry import Registry


@dataclass(frozen=True)
class ModelEntry:
    """An architecture, plus the layers NAD distils by default and their betas."""

    name: str
    build: Callable[..., nn.Module]
    nad_layers: tuple[str, ...] = ()
    nad_betas: tuple[float, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


MODELS: Registry[ModelEntry] = Registry("architecture")


def register_model(
    name: str, nad_layers: tuple[str, ...] = (), nad_betas: tuple[float, ...] = (), **kwargs: Any
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS.add(name, ModelEntry(name, fn, nad_layers, nad_betas, kwargs))
        return fn

    return wrap


def _load_user_class(arch: str) -> Callable[..., nn.Module]:
    """``path/to/file.py:ClassName``: the user's own code, imported as they would import it."""
    file, _, cls_name = arch.rpartition(":")
    path = Path(file)
    if not path.is_file():
        raise NadError(f"--arch {arch}: no such file {path}")
    spec = importlib.util.spec_from_file_location(f"nad_user_arch_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise NadError(f"--arch {arch}: cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cls = getattr(module, cls_name, None)
    if not (inspect.isclass(cls) and issubclass(cls, nn.Module)) and not callable(cls):
        raise NadError(f"--arch {arch}: {path} defines no nn.Module named {cls_name}")
    return cls  # type: ignore[return-value]


def model_entry(arch: str) -> ModelEntry:
    if arch in MODELS:
        return MODELS[arch]
    if arch.endswith(".py") or ".py:" in arch:
        if ":" not in arch:
            raise NadError(f"--arch {arch}: name the class too, as path/to/file.py:ClassName")
        return ModelEntry(arch, _load_user_class(arch))
    return MODELS.get_entry(arch)  # an unknown name: one line with the close matches


def create_model(arch: str, num_classes: int, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """Build a registered architecture, or a user's ``file.py:ClassName``."""
    entry = model_entry(arch)
    params = {**entry.kwargs, **kwargs}
    try:
        if arch in MODELS:
            return entry.build(num_classes=num_classes, in_channels=in_channels, **params)
        accepted = inspect.signature(entry.build).parameters
        if "num_classes" in accepted:
            params.setdefault("num_classes", num_classes)
        if "in_channels" in accepted:
            params.setdefault("in_channels", in_channels)
        return entry.build(**params)
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:  # bad kwargs fail in the constructor
        raise NadError(f"--arch {arch}: cannot build it with {params} ({str(exc)[:200]})") from None
