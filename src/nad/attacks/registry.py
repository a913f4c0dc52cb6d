"""Attack registry, keyed by the names the command line accepts."""

from __future__ import annotations

from typing import TypeVar

from nad.errors import NadError
from nad.spec import build, closest, split_spec

ATTACKS: dict[str, type] = {}
A = TypeVar("A", bound=type)


def register_attack(cls: A) -> A:
    ATTACKS[cls.name] = cls  # type: ignore[attr-defined]
    return cls


def parse_attack(spec: str):  # -> Attack (imported lazily to avoid a cycle)
    """``"badnets:target=5,pattern=grid"`` -> ``BadNets(target=5, pattern="grid")``."""
    name, params = split_spec(spec)
    if name not in ATTACKS:
        raise NadError(f"unknown attack {name!r}{closest(name, ATTACKS)}; known: {', '.join(sorted(ATTACKS))}")
    return build(ATTACKS[name], params, f"attack {name}")
