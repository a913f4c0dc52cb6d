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
    return _scalar(value, hint, where)


def _scalar(value: Any, hint: Any, where: str) -> Any:
    """``value`` if it has the type ``hint`` asks for (an int is taken as a float); else one line."""
    if typing.get_origin(hint) is typing.Literal:
        if value not in typing.get_args(hint):
            raise NadError(f"{where}: expected one of {', '.join(map(str, typing.get_args(hint)))}, got {value!r:.60}")
        return value
    expected = {int: (int,), float: (int, float), str: (str,), bool: (bool,)}.get(hint)
    if expected is None:
        container = typing.get_origin(hint) or hint
        if container is dict and not isinstance(value, dict):
            raise NadError(f"{where}: expected a mapping, got {type(value).__name__}")
        return value
    if not isinstance(value, expected) or (hint is not bool and isinstance(value, bool)):
        raise NadError(f"{where}: expected {hint.__name__}, got {value!r:.60}")
    return float(value) if hint is float else value


def load_yaml(name_or_path: str | Path) -> dict[str, Any]:
    """A preset by name (``demo``, ``nad-paper``) or a YAML file by path.

    A bare name (no ``.yaml``/``.yml``, no folder) is a preset when one has that name, whatever the current
    folder holds: ``nad demo --out demo`` must not read the folder ``demo/``. A *file* of a preset's name is
    ambiguous and refused; ``./NAME`` names the file.
    """
    text_arg = str(name_or_path)
    path = Path(name_or_path)
    bare = path.suffix not in (".yaml", ".yml") and "/" not in text_arg and "\\" not in text_arg
    if bare and text_arg in preset_names():
        if path.is_file():
            raise NadError(f"{text_arg!r} is both a preset and a file here; write ./{text_arg} for the file")
        text = resources.files("nad.presets").joinpath(f"{text_arg}.yaml").read_text()
        return parse_yaml(text, text_arg)
    if not bare or path.exists():
        if not path.is_file():
            raise NadError(f"{path}: no such file")
        if path.stat().st_size > MAX_YAML_BYTES:
            raise NadError(f"{path}: {path.stat().st_size:,} bytes, more than a configuration may hold")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise NadError(f"{path}: not UTF-8 text") from None
        return parse_yaml(text, text_arg)
    raise NadError(f"no preset named {text_arg!r}; known: {', '.join(preset_names())}")


#: Limits on a configuration file: its size, and its size once aliases are expanded (YAML's "billion
#: laughs": a few lines of nested aliases stand for billions of values).
MAX_YAML_BYTES = 1_000_000
MAX_YAML_VALUES = 100_000


def parse_yaml(text: str, where: str) -> dict[str, Any]:
    """A YAML mapping from ``text``: the safe loader (plain data only, no tags that build objects), within
    ``MAX_YAML_BYTES`` and ``MAX_YAML_VALUES``."""
    if len(text) > MAX_YAML_BYTES:
        raise NadError(f"{where}: {len(text):,} characters, more than a configuration may hold ({MAX_YAML_BYTES:,})")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise NadError(f"{where}: not valid YAML ({' '.join(str(exc).split())[:200]})") from None
    except RecursionError:
        raise NadError(f"{where}: nested too deeply") from None
    if not isinstance(data, dict):
        raise NadError(f"{where}: expected a YAML mapping at the top level")
    values = expanded_size(data)
    if values > MAX_YAML_VALUES:
        raise NadError(f"{where}: expands to {values:,} values through its aliases (at most {MAX_YAML_VALUES:,})")
    return data


def expanded_size(data: Any, memo: dict[int, int] | None = None) -> int:
    """How many values ``data`` holds with every alias expanded, counted without expanding them."""
    memo = {} if memo is None else memo
    if id(data) in memo:
        return memo[id(data)]
    if isinstance(data, dict):
        size = 1 + sum(expanded_size(k, memo) + expanded_size(v, memo) for k, v in data.items())
    elif isinstance(data, list):
        size = 1 + sum(expanded_size(v, memo) for v in data)
    else:
        size = 1
    if isinstance(data, dict | list):
        memo[id(data)] = size
    return size


def preset_names() -> list[str]:
    return sorted(
        p.name.removesuffix(".yaml") for p in resources.files("nad.presets").iterdir() if p.name.endswith(".yaml")
    )
