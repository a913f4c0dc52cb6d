"""Defense registry, keyed by the names ``nad erase --defense`` accepts."""

from __future__ import annotations

from typing import TypeVar

from nad.errors import NadError
from nad.spec import closest

DEFENSES: dict[str, type] = {}
D = TypeVar("D", bound=type)


def register_defense(cls: D) -> D:
    DEFENSES[cls.name] = cls  # type: ignore[attr-defined]
    return cls


def defense_class(name: str) -> type:
    if name not in DEFENSES:
        raise NadError(f"unknown defense {name!r}{closest(name, DEFENSES)}; known: {', '.join(sorted(DEFENSES))}")
    return DEFENSES[name]
