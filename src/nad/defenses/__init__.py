"""Backdoor defenses behind one interface: ``DEFENSES[name](config).repair(model, clean)``."""

from nad.defenses import finetune, nad  # noqa: F401  (register the defenses)
from nad.defenses.base import Defense, Repair
from nad.defenses.finetune import FineTune
from nad.defenses.nad import NAD, NADConfig
from nad.defenses.registry import DEFENSES, defense_class, register_defense

__all__ = [
    "DEFENSES",
    "NAD",
    "Defense",
    "FineTune",
    "NADConfig",
    "Repair",
    "defense_class",
    "register_defense",
]
