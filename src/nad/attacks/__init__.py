"""Backdoor attacks used to make backdoored models for evaluation."""

from nad.attacks import badnets, blend, sig, wanet  # noqa: F401  (registers the attacks)
from nad.attacks.badnets import BadNets
from nad.attacks.base import Attack, CleanLabelAttack, PoisonResult
from nad.attacks.blend import Blend
from nad.attacks.registry import ATTACKS, parse_attack, register_attack
from nad.attacks.sig import SIG
from nad.attacks.wanet import WaNet

__all__ = [
    "ATTACKS",
    "SIG",
    "Attack",
    "BadNets",
    "Blend",
    "CleanLabelAttack",
    "PoisonResult",
    "WaNet",
    "parse_attack",
    "register_attack",
]
