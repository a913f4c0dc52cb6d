"""Backdoor defenses behind one interface: ``DEFENSES[name](config).repair(model, clean)``."""

from nad.defenses import anp, auto, fine_pruning, finetune, fst, ft_sam, ibau, mcr, nad, nc, sau  # noqa: F401  (register the defenses)
from nad.defenses.anp import ANP, ANPConfig, ANPFineTune, ANPFineTuneConfig
from nad.defenses.auto import Auto, AutoConfig
from nad.defenses.base import Defense, Repair
from nad.defenses.fine_pruning import FinePruning, FinePruningConfig
from nad.defenses.finetune import FineTune
from nad.defenses.fst import FST, FSTConfig
from nad.defenses.ft_sam import FTSAM, FTSAMConfig
from nad.defenses.ibau import IBAU, IBAUConfig
from nad.defenses.mcr import MCR, MCRConfig
from nad.defenses.nad import NAD, NADConfig
from nad.defenses.nc import NCConfig, NeuralCleanse
from nad.defenses.registry import DEFENSES, defense_class, register_defense
from nad.defenses.sau import SAU, SAUConfig

__all__ = [
    "ANP",
    "DEFENSES",
    "FST",
    "FTSAM",
    "IBAU",
    "MCR",
    "NAD",
    "SAU",
    "ANPConfig",
    "ANPFineTune",
    "ANPFineTuneConfig",
    "Auto",
    "AutoConfig",
    "Defense",
    "FSTConfig",
    "FTSAMConfig",
    "FinePruning",
    "FinePruningConfig",
    "FineTune",
    "IBAUConfig",
    "MCRConfig",
    "NADConfig",
    "NCConfig",
    "NeuralCleanse",
    "Repair",
    "SAUConfig",
    "defense_class",
    "register_defense",
]
