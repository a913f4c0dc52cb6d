"""What a benchmark is: a YAML mapping read into :class:`BenchConfig` (unknown keys refused, one line).

A preset (``nad/presets/paper-cifar10.yaml``) or a file names the data, the model and its training schedule,
the attacks and the defenses (spec strings, ``none`` = the backdoored model as it is), the clean-data ratios
and the seeds. Any default of an attack or a defense can be overridden for every use of it, under
``attack_params`` / ``defense_params`` (``{nad: {teacher_epochs: 5, train: {epochs: 10}}}``), or in one spec
(``nad:p=4``); the spec's own values win. An optional ``quick:`` mapping holds overrides of any of these
keys (merged key by key) that ``--quick`` applies: fewer epochs, a subset of the data, fewer seeds.

``studies`` splits a grid into sub-grids, each with its own defenses and clean ratios (the ablations); cells
that two studies share run once.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, get_args

from nad.api import SCRATCH
from nad.config import from_mapping, load_yaml
from nad.errors import NadError
from nad.models.checkpoint import is_user_code
from nad.training import Precision, TrainConfig, load_profile


@dataclass(frozen=True)
class Study:
    """A sub-grid: its ``defenses`` at its ``clean_ratios`` on its ``attacks`` (empty: the bench's).

    ``baseline`` is the defense the others are compared with under the table (default: ``nad`` if listed,
    else the first defense other than ``none``). ``profile`` names the training profile of the study's
    backdoored models (``reference``, ``standard``, ``cosine``: ``nad/presets/profiles/``); without one they
    train with the bench's ``train``.
    """

    name: str
    defenses: tuple[str, ...]
    clean_ratios: tuple[float, ...] = ()
    attacks: tuple[str, ...] = ()
    baseline: str | None = None
    profile: str | None = None
    precision: Precision | None = None  # the models' training precision, when not the profile's

    def __post_init__(self) -> None:
        if self.profile is not None:
            load_profile(self.profile)  # an unknown profile is refused when the bench is read
        if self.precision not in (None, *get_args(Precision)):
            raise NadError(f"study {self.name}: precision must be one of {', '.join(get_args(Precision))}")


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark grid: attacks x defenses x clean ratios x seeds, on one dataset and architecture."""

    name: str = "bench"
    data: str | None = None  # training data spec; ``--data`` replaces it
    test: str | None = None  # default: the test split of ``data``
    train_size: int = 0  # > 0: a fixed, class-stratified subset of about this many training images
    test_size: int = 0  # > 0: the same for the test set
    arch: str = "wrn16_1"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    normalize: str | None = None  # default: the dataset's own (cifar10, gtsrb, digits)
    train: TrainConfig = field(default_factory=lambda: SCRATCH)  # the backdoored model's; default: nad train's
    attacks: tuple[str, ...] = ("badnets",)
    attack_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    defenses: tuple[str, ...] = ("none", "finetune", "nad")
    defense_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    clean_ratios: tuple[float, ...] = (0.05,)
    seeds: tuple[int, ...] = (0, 1, 2)
    model_per_seed: bool = True  # one backdoored model per attack and seed; false: one per attack (first seed)
    model_epochs: int | None = None  # set: every backdoored model trains this many epochs (``quick`` runs)
    studies: tuple[Study, ...] = ()
    quick: bool = False  # set by ``load_bench(quick=True)``; recorded in the outputs

    def __post_init__(self) -> None:
        for key in ("attack_params", "defense_params"):
            value = getattr(self, key)
            if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
                raise NadError(f"{key}: expected a mapping of names to mappings of parameters")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise NadError(f"seeds: expected distinct integers, got {list(self.seeds)}")
        if self.train_size < 0 or self.test_size < 0:
            raise NadError("train_size and test_size must be >= 0 (0: all images)")
        if not isinstance(self.arch_kwargs, dict):
            raise NadError("arch_kwargs: expected a mapping")
        if self.model_epochs is not None and self.model_epochs < 0:
            raise NadError(f"model_epochs must be >= 0, got {self.model_epochs}")

    def model_train(self, study: Study) -> TrainConfig:
        """How the backdoored models of ``study`` train: its profile, else the bench's ``train``."""
        train = load_profile(study.profile) if study.profile else self.train
        if study.precision is not None:
            train = replace(train, precision=study.precision)
        return train if self.model_epochs is None else replace(train, epochs=self.model_epochs)

    def all_studies(self) -> tuple[Study, ...]:
        """The studies, each with its attacks and ratios filled in; one study of the whole grid if none."""
        studies = self.studies or (Study("main", self.defenses),)
        return tuple(
            replace(s, clean_ratios=s.clean_ratios or self.clean_ratios, attacks=s.attacks or self.attacks)
            for s in studies
        )


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` laid over it, mappings merged key by key, everything else replaced."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_bench(
    name_or_path: str | Path,
    quick: bool = False,
    data: str | None = None,
    test: str | None = None,
    seeds: tuple[int, ...] | None = None,
    arch: str | None = None,
) -> BenchConfig:
    """A preset or YAML file as a :class:`BenchConfig`; ``quick`` applies its ``quick:`` overrides.

    The ``quick`` overrides are validated in either case, so a typo there is reported at once.
    """
    raw = load_yaml(name_or_path)
    where = f"bench {Path(str(name_or_path)).stem}"
    named = raw.get("arch")
    if isinstance(named, str) and is_user_code(named) and not arch:
        raise NadError(
            f"{where}: arch names the Python file {named!r}; nad never imports code because a file names it. "
            f"If you trust that file, pass --arch {named} yourself"
        )
    if arch:
        raw["arch"] = arch
    overrides = raw.pop("quick", None) or {}
    if not isinstance(overrides, dict):
        raise NadError(f"{where}: quick: expected a mapping of overrides")
    if "quick" in overrides:
        raise NadError(f"{where}: quick: cannot hold another quick")
    raw.setdefault("name", Path(str(name_or_path)).stem)
    full = from_mapping(BenchConfig, raw, where)
    fast = from_mapping(BenchConfig, {**merge(raw, overrides), "quick": True}, f"{where} quick")
    cfg = fast if quick else full
    updates: dict[str, Any] = {}
    if data:
        updates["data"] = data
    if test:
        updates["test"] = test
    if seeds:
        updates["seeds"] = tuple(seeds)
    return replace(cfg, **updates) if updates else cfg
