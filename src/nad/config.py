"""Typed configuration from YAML: nested dataclasses built from mappings, unknown keys refused.

Presets ship in ``nad/presets/*.yaml``; ``load_yaml(NAME_OR_PATH)`` reads either.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

from nad.errors import NadError
from nad.spec import closest

T = TypeVar("T")


def from_mapping(cls: type[T], data: Any, where: str = "config") -> T:
    """Build dataclass ``cls`` from a (YAML) mapping, recursing into nested dataclass fields."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise NadError(f"{where}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise NadError(
                f"{where}: unknown key {key!r}{closest(str(key), fields)}; known: {', '.join(sorted(fields))}"
            )
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise NadError(f"{where}: {exc}") from None


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
        origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return from_mapping(hint, value, where)  # type: ignore[arg-type]
    if origin is tuple:
        if not isinstance(value, list | tuple):
            value = [value]
        item = (typing.get_args(hint) or (None,))[0]
        if dataclasses.is_dataclass(item):  # a list of mappings, one dataclass each
            return tuple(from_mapping(item, v, f"{where}[{i}]") for i, v in enumerate(value))  # type: ignore[arg-type]
        return tuple(value)
    if hint is float and isinstance(value, int):
        return float(value)
    return value


def load_yaml(name_or_path: str | Path) -> dict[str, Any]:
    """A preset by name (``demo``, ``nad-paper``) or a YAML file by path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise NadError(f"{path}: no such file")
        text = path.read_text()
    else:
        try:
            text = resources.files("nad.presets").joinpath(f"{name_or_path}.yaml").read_text()
        except FileNotFoundError:
            raise NadError(f"no preset named {name_or_path!r}; known: {', '.join(preset_names())}") from None
    return parse_yaml(text, str(name_or_path))


def parse_yaml(text: str, where: str) -> dict[str, Any]:
    """A YAML mapping from ``text`` (safe loader: plain data only)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise NadError(f"{where}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise NadError(f"{where}: expected a YAML mapping at the top level")
    return data


def preset_names() -> list[str]:
    return sorted(
        p.name.removesuffix(".yaml") for p in resources.files("nad.presets").iterdir() if p.name.endswith(".yaml")
    )
