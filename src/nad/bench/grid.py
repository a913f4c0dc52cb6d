"""The grid of a bench: one :class:`Cell` per (attack, defense, clean ratio, seed), each with a stable id.

A cell's id is a hash of everything that determines its result (the backdoored model's key, the defense's
resolved configuration, the clean ratio, the seed and the test set), not of its labels: a cell listed by two
studies runs once, and a cell whose configuration changed gets a new id, so an old result is never taken for
it. Cells are ordered so that those sharing a backdoored model are adjacent; ``--shard i/n`` takes the i-th
of n contiguous, near-equal blocks, so few models are needed by more than one shard.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nad.attacks.base import Attack
from nad.bench.config import BenchConfig, Study
from nad.errors import NadError
from nad.spec import build, closest, split_spec
from nad.training import TrainConfig

NONE = "none"  # the defense that leaves the backdoored model as it is: the "Before" column


def digest(obj: Any, length: int = 16) -> str:
    """A short SHA-256 of the canonical JSON of ``obj`` (sorted keys, no spaces)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def key_dict(obj: Any) -> Any:
    """``dataclasses.asdict``, except that a field marked ``metadata={"hash": "when-changed"}`` is left out
    while it holds its default: a field added later (``TrainConfig.shuffle``) keeps every earlier key valid."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.metadata.get("hash") == "when-changed" and value == f.default:
                continue
            out[f.name] = key_dict(value)
        return out
    if isinstance(obj, dict):
        return {k: key_dict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [key_dict(v) for v in obj]
    return obj


@dataclass(frozen=True)
class ModelSpec:
    """Everything that determines a backdoored model; its :attr:`key` names it in the cache."""

    data: str
    train_size: int
    arch: str
    arch_kwargs: dict[str, Any]
    normalize: str
    attack: str  # canonical spec, with the bench's attack_params applied
    train: TrainConfig
    # The attack's ``version``: in the key only once raised, so the keys of unchanged attacks stay valid.
    attack_version: int = field(default=1, metadata={"hash": "when-changed"})

    def to_json(self) -> dict[str, Any]:
        return key_dict(self)

    @property
    def key(self) -> str:
        return digest(self.to_json())


@dataclass(frozen=True)
class Cell:
    study: str
    attack: str  # as listed in the bench
    defense: str  # as listed; ``none`` for the backdoored model itself
    clean_ratio: float | None  # None for ``none``
    seed: int
    model: ModelSpec
    defense_name: str
    defense_config: Any  # the defense's resolved Config instance; None for ``none``
    test: str
    test_size: int

    def to_json(self) -> dict[str, Any]:
        config = key_dict(self.defense_config) if self.defense_config is not None else None
        return {
            "model": self.model.key,
            "defense": self.defense_name,
            "defense_config": config,
            "clean_ratio": self.clean_ratio,
            "seed": self.seed,
            "test": self.test,
            "test_size": self.test_size,
        }

    @property
    def id(self) -> str:
        return digest(self.to_json())

    def make_defense(self):  # -> Defense
        from nad.defenses import defense_class

        return defense_class(self.defense_name)(self.defense_config)


@dataclass(frozen=True)
class Shard:
    """``--shard I/N``: the I-th (1-based) of N contiguous blocks of the grid."""

    index: int = 1
    count: int = 1

    @classmethod
    def parse(cls, text: str | None) -> Shard:
        if not text:
            return cls()
        head, sep, tail = text.partition("/")
        try:
            shard = cls(int(head), int(tail)) if sep else None
        except ValueError:
            shard = None
        if shard is None or not 1 <= shard.index <= shard.count:
            raise NadError(f"--shard {text!r}: expected I/N with 1 <= I <= N, e.g. 2/4")
        return shard

    def select(self, cells: list[Cell]) -> list[Cell]:
        n = len(cells)
        return cells[(self.index - 1) * n // self.count : self.index * n // self.count]

    @property
    def name(self) -> str:
        return "" if self.count == 1 else f"{self.index}-of-{self.count}"


@dataclass(frozen=True)
class CellFilter:
    """``--only KEY=VALUE[,VALUE...]`` (repeatable): the cells whose ``study``, ``attack``, ``defense`` (as
    listed), ``seed`` or ``clean_ratio`` is one of the values, for every key given."""

    wanted: tuple[tuple[str, frozenset[str]], ...] = ()

    KEYS = ("study", "attack", "defense", "seed", "clean_ratio")

    @classmethod
    def parse(cls, texts: list[str] | None) -> CellFilter:
        wanted = []
        for text in texts or []:
            key, sep, values = text.partition("=")
            key = key.strip()
            if not sep or key not in cls.KEYS or not values.strip():
                raise NadError(f"--only {text!r}: expected KEY=VALUE[,VALUE...] with KEY one of {', '.join(cls.KEYS)}")
            wanted.append((key, frozenset(v.strip() for v in values.split(",") if v.strip())))
        return cls(tuple(wanted))

    def matches(self, cell: Cell) -> bool:
        return all(str(getattr(cell, key)) in values for key, values in self.wanted)

    def select(self, cells: list[Cell]) -> list[Cell]:
        chosen = [c for c in cells if self.matches(c)]
        if self.wanted and not chosen:
            given = "; ".join(f"{k}={','.join(sorted(v))}" for k, v in self.wanted)
            raise NadError(f"--only {given}: no cell of this bench matches")
        return chosen


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """YAML parameters as spec strings: nested mappings become dotted keys, lists ``a;b`` (spec syntax)."""
    out: dict[str, str] = {}
    for key, value in params.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        elif isinstance(value, list | tuple):
            out[prefix + key] = ";".join(map(str, value))
        elif isinstance(value, bool):
            out[prefix + key] = str(value).lower()
        else:
            out[prefix + key] = "none" if value is None else str(value)
    return out


def resolve_attack(spec: str, cfg: BenchConfig) -> Attack:
    """The attack a listed spec names, with the bench's ``attack_params`` for it under the spec's own."""
    from nad.attacks import ATTACKS

    name, params = split_spec(spec)
    merged = {**flatten(cfg.attack_params.get(name, {})), **params}
    return build(ATTACKS.get_entry(name), merged, f"attack {spec}")


def resolve_defense(spec: str, cfg: BenchConfig, seed: int) -> tuple[str, Any]:
    """``(name, Config instance)``: defaults, the seed in every schedule, the bench's ``defense_params``, then
    the spec's own (``nad.defenses.settings.defense_config``, as for ``nad erase``)."""
    from nad.defenses.settings import RunSettings, defense_config

    name, params = split_spec(spec)
    if name == NONE:
        if params:
            raise NadError(f"defense {spec!r}: 'none' takes no parameters")
        return NONE, None
    name, config = defense_config(spec, RunSettings(seed=seed), params=flatten(cfg.defense_params.get(name, {})))
    return name, with_inner_params(config, cfg)


def with_inner_params(config: Any, cfg: BenchConfig) -> Any:
    """``config`` whose fields that name another defense (``metadata={"defense_spec": True}``: NAD's
    ``teacher``) carry the bench's ``defense_params`` for that defense under the spec's own, so that
    ``--quick``'s short schedules reach a purified teacher too. A field left at its default (the paper's
    fine-tuned teacher, run by NAD's own ``teacher_epochs``) is left alone."""
    if not dataclasses.is_dataclass(config):
        return config
    updates = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if not f.metadata.get("defense_spec") or value == f.default:
            continue
        inner, own = split_spec(value)
        if extra := flatten(cfg.defense_params.get(inner, {})):
            updates[f.name] = f"{inner}:" + ",".join(f"{k}={v}" for k, v in {**extra, **own}.items())
    return dataclasses.replace(config, **updates) if updates else config


def data_specs(cfg: BenchConfig) -> tuple[str, str, str]:
    """Canonical training data spec, test data spec and normalisation name of a bench."""
    from nad.data.sources import DEFAULT_NORMALIZE, default_test_spec, parse_data_spec
    from nad.models import parse_normalize

    if not cfg.data:
        raise NadError(f"bench {cfg.name}: no training data; give --data (e.g. cifar10:ROOT)")
    kind = parse_data_spec(cfg.data)[0]
    test = default_test_spec(cfg.data, cfg.test)
    if test is None:
        raise NadError(f"bench {cfg.name}: {cfg.data} has no test split; give the test data (test: or --test)")
    normalize = cfg.normalize or DEFAULT_NORMALIZE.get(kind, "none")
    parse_normalize(normalize)
    return canonical_data(cfg.data, "train"), canonical_data(test, "test"), normalize


def canonical_data(spec: str, split: str) -> str:
    """``kind:ABSOLUTE_PATH:split`` (``digits:split``), so that equal data gets equal cache keys."""
    from nad.data.sources import parse_data_spec

    kind, location, split = parse_data_spec(spec, split)
    return f"{kind}:{split}" if kind == "digits" else f"{kind}:{Path(location).resolve()}:{split}"


def study_cells(cfg: BenchConfig, study: Study) -> list[Cell]:
    """Every cell of one study, in table order (attack, seed, defense, ratio)."""
    data, test, normalize = data_specs(cfg)
    if not study.defenses:
        raise NadError(f"study {study.name}: no defenses")
    if study.baseline is not None and study.baseline not in study.defenses:
        raise NadError(f"study {study.name}: baseline {study.baseline!r} is not one of its defenses")
    if any(not 0 < r <= 1 for r in study.clean_ratios):
        raise NadError(f"study {study.name}: clean ratios must lie in (0, 1], got {list(study.clean_ratios)}")
    cells = []
    for attack_spec in study.attacks:
        attack = resolve_attack(attack_spec, cfg)
        for seed in cfg.seeds:
            model_seed = seed if cfg.model_per_seed else cfg.seeds[0]
            model = ModelSpec(
                data,
                cfg.train_size,
                cfg.arch,
                dict(cfg.arch_kwargs),
                normalize,
                attack.spec(),
                replace(cfg.model_train(study), seed=model_seed),
                type(attack).version,
            )
            for defense_spec in study.defenses:
                name, config = resolve_defense(defense_spec, cfg, seed)
                for ratio in (None,) if name == NONE else study.clean_ratios:
                    cells.append(
                        Cell(
                            study.name, attack_spec, defense_spec, ratio, seed, model, name, config, test, cfg.test_size
                        )
                    )
    return cells


def expand(cfg: BenchConfig) -> list[Cell]:
    """The whole grid: every study's cells, each distinct cell once, those of one model adjacent."""
    from nad.models import model_entry

    model_entry(cfg.arch)  # an unknown architecture is refused before anything runs
    check_param_names(cfg)
    names = [s.name for s in cfg.all_studies()]
    if len(set(names)) != len(names):
        raise NadError(f"studies: names must be distinct, got {names}")
    unique: dict[str, Cell] = {}
    for study in cfg.all_studies():
        for cell in study_cells(cfg, study):
            unique.setdefault(cell.id, cell)
    first: dict[str, int] = {}
    for cell in unique.values():
        first.setdefault(cell.model.key, len(first))
    return sorted(unique.values(), key=lambda c: first[c.model.key])  # stable: table order within a model


def check_param_names(cfg: BenchConfig) -> None:
    from nad.attacks import ATTACKS
    from nad.defenses import DEFENSES

    for key, known in (("attack_params", ATTACKS), ("defense_params", DEFENSES)):
        for name in getattr(cfg, key):
            if name not in known:
                raise NadError(f"{key}: unknown name {name!r}{closest(name, known)}; known: {', '.join(sorted(known))}")
