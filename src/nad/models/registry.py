"""Model registry: architectures by the names the command line accepts, as in timm."""

from __future__ import annotations

import difflib
import importlib
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


#: Model libraries ``--arch LIBRARY:NAME`` builds from (untrained), when they are installed: optional extras.
LIBRARIES = ("timm", "torchvision")


def is_library_arch(arch: str) -> bool:
    return arch.partition(":")[0] in LIBRARIES and bool(arch.partition(":")[2])


def _library_builder(arch: str) -> Callable[..., nn.Module]:
    """``timm:NAME`` or ``torchvision:NAME``: the library's own constructor, without pretrained weights."""
    library, _, name = arch.partition(":")
    try:
        module = importlib.import_module("timm" if library == "timm" else "torchvision.models")
    except Exception as exc:  # not installed, or built for another torch: both end here
        same = f"; nad's own --arch {name} has the same layout and needs neither" if name in MODELS else ""
        raise NadError(
            f"--arch {arch}: needs the {library} package (pip install 'nad[{library}]'), which cannot be imported "
            f"here ({type(exc).__name__}: {str(exc)[:120]}){same}"
        ) from None
    known = module.list_models()
    if name not in known and name.partition(".")[0] not in known:  # timm also takes NAME.PRETRAINED_TAG
        close = difflib.get_close_matches(name, known, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise NadError(f"--arch {arch}: {library} has no model named {name!r}{hint}")

    def build(num_classes: int, in_channels: int = 3, **kwargs: Any) -> nn.Module:
        if library == "timm":
            return module.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs)
        if in_channels != 3:
            raise NadError(f"--arch {arch}: torchvision's models take 3 channels, not {in_channels}")
        return module.get_model(name, weights=None, num_classes=num_classes, **kwargs)

    return build


def model_entry(arch: str) -> ModelEntry:
    if arch in MODELS:
        return MODELS[arch]
    if is_library_arch(arch):
        return ModelEntry(arch, _library_builder(arch))
    if arch.endswith(".py") or ".py:" in arch:
        if ":" not in arch:
            raise NadError(f"--arch {arch}: name the class too, as path/to/file.py:ClassName")
        return ModelEntry(arch, _load_user_class(arch))
    return MODELS.get_entry(arch)  # an unknown name: one line with the close matches


def create_model(arch: str, num_classes: int, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """Build a registered architecture, a library's (``timm:NAME``, ``torchvision:NAME``), or a user's
    ``file.py:ClassName``."""
    entry = model_entry(arch)
    params = {**entry.kwargs, **kwargs}
    try:
        if arch in MODELS or is_library_arch(arch):
            return entry.build(num_classes=num_classes, in_channels=in_channels, **params)
        accepted = inspect.signature(entry.build).parameters
        if "num_classes" in accepted:
            params.setdefault("num_classes", num_classes)
        if "in_channels" in accepted:
            params.setdefault("in_channels", in_channels)
        return entry.build(**params)
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:  # bad kwargs fail in the constructor
        raise NadError(f"--arch {arch}: cannot build it with {params} ({str(exc)[:200]})") from None
