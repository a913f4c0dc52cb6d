"""Defense registry, keyed by the names ``nad erase --defense`` accepts."""

from __future__ import annotations

from typing import TypeVar

from nad.registry import Registry

DEFENSES: Registry[type] = Registry("defense")
D = TypeVar("D", bound=type)


def register_defense(cls: D) -> D:
    return DEFENSES.add(cls.name, cls)  # type: ignore[attr-defined]


def defense_class(name: str) -> type:
    return DEFENSES.get_entry(name)
