"""The one registry shape behind architectures, attacks and defenses: a mapping from the names the command
line accepts to what they name, whose lookup of an unknown name is one line with close matches."""

from __future__ import annotations

from typing import TypeVar

from nad.errors import NadError
from nad.spec import closest

T = TypeVar("T")


class Registry(dict[str, T]):
    """``name -> entry``; ``registry.get_entry(name)`` refuses an unknown name in one line."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind  # "architecture", "attack", "defense": how errors name an entry

    def add(self, name: str, entry: T) -> T:
        if name in self:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self[name] = entry
        return entry

    def get_entry(self, name: str) -> T:
        if name not in self:
            raise NadError(f"unknown {self.kind} {name!r}{closest(name, self)}; known: {', '.join(sorted(self))}")
        return self[name]
