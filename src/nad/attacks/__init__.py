"""Backdoor attacks used to make backdoored models for evaluation."""

from nad.attacks import badnets  # noqa: F401  (registers the attack)
from nad.attacks.badnets import BadNets
from nad.attacks.base import Attack, PoisonResult
from nad.attacks.registry import ATTACKS, parse_attack, register_attack

__all__ = ["ATTACKS", "Attack", "BadNets", "PoisonResult", "parse_attack", "register_attack"]
