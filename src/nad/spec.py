"""Parse ``name:key=value,key=value`` strings into typed dataclasses.

Attacks, defenses and datasets are all named on the command line this way, for example
``badnets:target=5,pattern=grid``. The dataclass fields give the accepted keys and their types.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, TypeVar

from nad.errors import NadError

T = TypeVar("T")


def split_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``"badnets:target=5,size=4"`` -> ``("badnets", {"target": "5", "size": "4"})``."""
    name, _, rest = spec.strip().partition(":")
    if not name:
        raise NadError(f"empty name in spec {spec!r}")
    params: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise NadError(f"spec {spec!r}: expected key=value, got {item!r}")
        params[key.strip()] = value.strip()
    return name.strip().lower(), params


def closest(word: str, choices: typing.Iterable[str]) -> str:
    """A 'did you mean' suffix for an error message, or an empty string."""
    match = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(match)}?)" if match else ""


def _convert(raw: str, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if raw.lower() in ("none", "null", ""):
            return None
        return _convert(raw, args[0], key)
    if origin is typing.Literal:
        allowed = typing.get_args(hint)
        if raw not in allowed:
            raise NadError(f"{key}={raw!r}: expected one of {', '.join(map(str, allowed))}")
        return raw
    if origin is tuple:
        (item_type, *_) = typing.get_args(hint)
        return tuple(_convert(part, item_type, key) for part in raw.replace(";", " ").split())
    if hint is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise NadError(f"{key}={raw!r}: expected true or false")
    if hint in (int, float):
        try:
            return hint(raw)
        except ValueError:
            raise NadError(f"{key}={raw!r}: expected {hint.__name__}") from None
    return raw


def build(cls: type[T], params: Mapping[str, Any], what: str) -> T:
    """Instantiate dataclass ``cls`` from string (or already typed) values, refusing unknown keys."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    kwargs = {}
    for key, value in params.items():
        if key not in fields:
            raise NadError(
                f"{what}: unknown parameter {key!r}{closest(key, fields)}; known: {', '.join(sorted(fields))}"
            )
        kwargs[key] = _convert(value, hints[key], f"{what} {key}") if isinstance(value, str) else value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise NadError(f"{what}: {exc}") from None


def describe(cls: type) -> list[tuple[str, str, Any]]:
    """``(name, type, default)`` for each field of a parameter dataclass, for ``--help``-style listings."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        rows.append((f.name, type_name(hints[f.name]), default))
    return rows


def type_name(hint: Any) -> str:
    """``int``, ``float | None``, or the choices of a ``Literal`` as ``a|b|c``."""
    if typing.get_origin(hint) is typing.Literal:
        return "|".join(map(str, typing.get_args(hint)))
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def override(cfg: Any, params: dict[str, str], what: str) -> Any:
    """``cfg`` with the fields named in ``params`` (``key`` or ``nested.key``) set from their string values."""
    flat = {k: v for k, v in params.items() if "." not in k}
    nested: dict[str, dict[str, str]] = {}
    for key, value in params.items():
        if "." in key:
            head, _, rest = key.partition(".")
            nested.setdefault(head, {})[rest] = value
    fields = {f.name for f in dataclasses.fields(cfg)}
    updates: dict[str, Any] = {}
    for key in flat:
        if key in fields and dataclasses.is_dataclass(getattr(cfg, key)):
            raise NadError(f"{what}: {key} is a group of parameters; set them as {key}.NAME=VALUE")
    if flat:
        built = build(type(cfg), flat, what)
        updates.update({k: getattr(built, k) for k in flat})
    for head, sub in nested.items():
        inner = getattr(cfg, head, None) if head in fields else None
        if not dataclasses.is_dataclass(inner):
            raise NadError(f"{what}: no parameter group {head!r}{closest(head, fields)}")
        updates[head] = override(inner, sub, f"{what} {head}")
    try:
        return replace(cfg, **updates)
    except (TypeError, ValueError) as exc:
        raise NadError(f"{what}: {exc}") from None


def parse_list(text: str | None, kind: type, what: str, required: bool = False) -> tuple:
    """A comma-separated option as a tuple of ``kind``; ``required``: an empty list is refused."""
    if not text and not required:
        return ()
    try:
        values = tuple(kind(v.strip()) for v in (text or "").split(",") if v.strip())
    except ValueError:
        raise NadError(f"{what} {text!r}: expected a comma-separated list of {kind.__name__}") from None
    if required and not values:
        raise NadError(f"{what} {text!r}: names nothing; leave it out for the default")
    return values


def config_rows(cfg: Any, prefix: str = "") -> list[tuple[str, str, Any]]:
    """``(name, type, default)`` for every field of a config instance, nested dataclasses flattened."""
    rows = []
    for name, type_name, _ in describe(type(cfg)):
        value = getattr(cfg, name)
        if dataclasses.is_dataclass(value):
            rows += config_rows(value, f"{prefix}{name}.")
        else:
            rows.append((prefix + name, type_name, value))
    return rows
