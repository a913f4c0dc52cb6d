"""The defense interface: take a suspicious model and a small clean set, return a purified model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from nad.data.dataset import ImageData
from nad.models.checkpoint import Classifier
from nad.training import TrainConfig


@dataclass(frozen=True)
class Repair:
    model: Classifier
    log: dict[str, Any] = field(default_factory=dict)


class Defense:
    """Subclasses set ``name`` and ``Config`` (a dataclass of their parameters) and define ``repair``."""

    name: ClassVar[str] = ""
    Config: ClassVar[type] = TrainConfig

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.Config()

    def repair(self, model: Classifier, clean: ImageData, quiet: bool = False) -> Repair:
        """Return a purified copy of ``model``; ``model`` itself is left untouched."""
        raise NotImplementedError
