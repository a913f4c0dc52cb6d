"""The defense interface: take a suspicious model and a small clean set, return a purified model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from nad.data.dataset import ImageData
from nad.models.checkpoint import Classifier
from nad.training import TrainConfig

#: Called after every training epoch of a defense with (phase, epoch, mean losses, model being trained).
Monitor = Callable[[str, int, dict[str, float], Classifier], None]


@dataclass(frozen=True)
class Repair:
    """A defense's result: the purified model, in eval mode (ready to score or save), and its log."""

    model: Classifier
    log: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.model.module.eval()  # every defense trains; none should hand back BatchNorm in training mode


@dataclass(frozen=True)
class FineTunedStart:
    """A plain fine-tuning run that a defense starts from: its schedule, its length, and its role in the
    defense (``teacher``, ``end``). ``repair(..., fine_tuned=model)`` accepts that model ready-made, and
    ``erase`` then takes it from its baseline run."""

    config: TrainConfig
    epochs: int
    role: str


class Defense:
    """Subclasses set ``name`` and ``Config`` (a dataclass of their parameters) and define ``repair``."""

    name: ClassVar[str] = ""
    Config: ClassVar[type] = TrainConfig

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.Config()

    def fine_tuned_start(self) -> FineTunedStart | None:
        """The plain fine-tuning this defense begins with, if any (NAD's teacher, MCR's t = 1 end)."""
        return None

    def check(self, model: Classifier, clean: ImageData) -> None:
        """Refuse a configuration that cannot work on this model, before any training starts."""

    def repair(
        self,
        model: Classifier,
        clean: ImageData,
        quiet: bool = False,
        monitor: Monitor | None = None,
        fine_tuned: Classifier | None = None,
    ) -> Repair:
        """Return a purified copy of ``model``; ``model`` itself is left untouched.

        ``monitor``, when given, is called after each training epoch (for curves in reports). ``fine_tuned``
        is the model of ``fine_tuned_start()`` made already (defenses that start from none ignore it).
        """
        raise NotImplementedError


def epoch_hook(
    monitor: Monitor | None, phase: str, model: Classifier
) -> Callable[[int, dict[str, float]], None] | None:
    """Adapt a ``Monitor`` to ``training.train``'s per-epoch callback for one phase of a defense."""
    if monitor is None:
        return None
    return lambda epoch, losses: monitor(phase, epoch, losses, model)
