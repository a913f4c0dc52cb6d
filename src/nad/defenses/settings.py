"""One path from a user's parameters to a defense's typed configuration.

A defense is named by a spec (``nad:p=4``, ``mcr:curve.epochs=50``) and configured, in this order, by:
its ``Config`` defaults; the run settings the command line or a bench applies to *every* schedule the
defense has (``RunSettings``: seed, precision, layout, epochs); parameters by field name (a bench's
``defense_params``, ``nad erase``'s ``--teacher-epochs``/``--layers``/``--betas``/``--p``); and last the
spec's own ``key=value`` pairs. ``nad erase`` and ``nad bench`` both build through ``defense_config``.

A setting that a defense cannot honour is refused with one line: ``--epochs`` for a defense without a
training schedule, ``--precision bf16`` or ``--no-channels-last`` for one whose loops run in fp32 in the
model's own layout (ANP, I-BAU).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from typing import Any

from nad.config import from_mapping
from nad.defenses.registry import defense_class
from nad.errors import NadError
from nad.spec import override, split_spec
from nad.training import Precision, TrainConfig


@dataclass(frozen=True)
class RunSettings:
    """What a run sets for all of a defense's schedules; None leaves the defense's own value."""

    seed: int | None = None
    precision: Precision | None = None
    channels_last: bool | None = None
    epochs: int | None = None  # the main schedule's (``train``, or the config itself when it is one)


def schedules(config: Any) -> list[str]:
    """The names of the training schedules in ``config`` (``""``: the config is itself a ``TrainConfig``)."""
    if isinstance(config, TrainConfig):
        return [""]
    return [f.name for f in dataclasses.fields(config) if isinstance(getattr(config, f.name), TrainConfig)]


def nested_defenses(config: Any) -> list[str]:
    """The fields of ``config`` that are whole defense configurations with schedules of their own (``auto``'s
    ``nc`` and ``anp_ft``), for a defense that runs other defenses."""
    if isinstance(config, TrainConfig) or not dataclasses.is_dataclass(config):
        return []
    return [
        f.name
        for f in dataclasses.fields(config)
        if dataclasses.is_dataclass(value := getattr(config, f.name))
        and not isinstance(value, TrainConfig)
        and schedules(value)
    ]


def apply_settings(config: Any, settings: RunSettings, name: str) -> Any:
    """``config`` with ``settings`` in every schedule it has (and ``seed`` in a top-level ``seed`` field); a
    defense made of other defenses' configurations passes them to each of those."""
    found = schedules(config)
    if not found and (nested := nested_defenses(config)):
        return replace(config, **{k: apply_settings(getattr(config, k), settings, f"{name}.{k}") for k in nested})
    main = "" if "" in found else "train" if "train" in found else None
    if settings.epochs is not None and main is None:
        raise NadError(f"--epochs does not apply to {name}, which has no training schedule (see nad defenses)")
    if not found:
        if settings.precision not in (None, "fp32"):
            raise NadError(f"--precision {settings.precision} does not apply to {name}: its loops run in fp32")
        if settings.channels_last is False:
            raise NadError(f"--no-channels-last does not apply to {name}: it runs in the model's own layout")

    def schedule(train: TrainConfig, is_main: bool) -> TrainConfig:
        given = {
            "seed": settings.seed,
            "precision": settings.precision,
            "channels_last": settings.channels_last,
            "epochs": settings.epochs if is_main else None,
        }
        return replace(train, **{k: v for k, v in given.items() if v is not None})

    if isinstance(config, TrainConfig):
        return schedule(config, True)
    updates: dict[str, Any] = {key: schedule(getattr(config, key), key == main) for key in found}
    fields = {f.name for f in dataclasses.fields(config)}
    if settings.seed is not None and "seed" in fields:
        updates["seed"] = settings.seed
    return replace(config, **updates)


def defense_config(
    spec: str,
    settings: RunSettings = RunSettings(),
    fields: dict[str, Any] | None = None,
    params: dict[str, str] | None = None,
    base: dict[str, Any] | None = None,
) -> tuple[str, Any]:
    """``(name, Config)`` for a defense spec: ``base`` (a YAML mapping of the defense's configuration, e.g.
    the ``nad-paper`` preset) or the defaults, then ``settings``, ``fields`` (typed values by field name,
    refused if the defense has no such field), ``params`` (strings, ``group.key`` for nested ones), then the
    spec's own parameters."""

    name, own = split_spec(spec)
    cls = defense_class(name)
    start = from_mapping(cls.Config, base, f"{name} configuration") if base is not None else cls.Config()
    config = apply_settings(start, settings, name)
    given = {k: v for k, v in (fields or {}).items() if v is not None}
    known = set() if isinstance(config, TrainConfig) else {f.name for f in dataclasses.fields(config)}
    for key in given:
        if key not in known:
            raise NadError(f"--{key.replace('_', '-')} does not apply to {name} (see nad defenses)")
    if given:
        try:
            config = replace(config, **given)
        except (TypeError, ValueError) as exc:
            raise NadError(f"{name}: {exc}") from None
    return name, override(config, {**(params or {}), **own}, f"defense {spec}")


def config_seed(config: Any) -> int:
    """The seed a defense's configuration runs with: its own, or its main schedule's."""
    if isinstance(config, TrainConfig):
        return config.seed
    if isinstance(getattr(config, "seed", None), int):
        return config.seed
    train = getattr(config, "train", None)
    if isinstance(train, TrainConfig):
        return train.seed
    nested = nested_defenses(config)
    return config_seed(getattr(config, nested[0])) if nested else 0
