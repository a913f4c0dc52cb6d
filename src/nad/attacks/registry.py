"""Attack registry, keyed by the names the command line accepts."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from nad.registry import Registry
from nad.spec import build, split_spec

if TYPE_CHECKING:  # the attacks import this registry to register themselves
    from nad.attacks.base import Attack

ATTACKS: Registry[type] = Registry("attack")
A = TypeVar("A", bound=type)


def register_attack(cls: A) -> A:
    return ATTACKS.add(cls.name, cls)  # type: ignore[attr-defined]


def parse_attack(spec: str) -> Attack:
    """``"badnets:target=5,pattern=grid"`` -> ``BadNets(target=5, pattern="grid")``."""
    name, params = split_spec(spec)
    return build(ATTACKS.get_entry(name), params, f"attack {name}")
