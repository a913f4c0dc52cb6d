"""Backdoor attacks used to make backdoored models for evaluation. Importing a module registers its attack."""

from nad.attacks.badnets import BadNets
from nad.attacks.base import Attack, CleanLabelAttack, PoisonResult
from nad.attacks.blend import Blend
from nad.attacks.cl import LabelConsistent
from nad.attacks.refool import Refool
from nad.attacks.registry import ATTACKS, parse_attack, register_attack
from nad.attacks.sig import SIG
from nad.attacks.trojan import Trojan
from nad.attacks.wanet import WaNet

__all__ = [
    "ATTACKS",
    "SIG",
    "Attack",
    "BadNets",
    "Blend",
    "CleanLabelAttack",
    "LabelConsistent",
    "PoisonResult",
    "Refool",
    "Trojan",
    "WaNet",
    "parse_attack",
    "register_attack",
]
