"""``nad demo``: backdoor a small CNN on the embedded digits with BadNets, then purify it with NAD.

Everything comes from the ``demo`` preset (``nad/presets/demo.yaml``); no download is needed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nad.api import EraseResult, TrainResult, erase, save_erase_outputs, select_clean, train_model
from nad.attacks import parse_attack
from nad.config import from_mapping, load_yaml
from nad.data import load_data
from nad.defenses import NAD, NADConfig
from nad.models import parse_normalize, save_model
from nad.training import TrainConfig


@dataclass(frozen=True)
class DemoConfig:
    data: str = "digits"
    arch: str = "small_cnn"
    attack: str = "badnets"
    normalize: str = "digits"
    train: TrainConfig = field(default_factory=TrainConfig)
    clean_ratio: float = 0.05
    nad: NADConfig = field(default_factory=NADConfig)


def run_demo(out: Path, seed: int = 0, quiet: bool = False, device: str = "cpu") -> tuple[TrainResult, EraseResult]:
    from dataclasses import replace

    cfg = from_mapping(DemoConfig, load_yaml("demo"), "demo preset")
    cfg = replace(
        cfg,
        train=replace(cfg.train, seed=seed),
        nad=replace(cfg.nad, train=replace(cfg.nad.train, seed=seed)),
    )
    start = time.perf_counter()
    train_data = load_data(cfg.data, "train").to(device)
    test = load_data(cfg.data, "test").to(device)
    attack = parse_attack(cfg.attack)
    trained = train_model(train_data, cfg.arch, cfg.train, attack, test, parse_normalize(cfg.normalize), quiet=quiet)
    save_model(trained.model, out, stem="backdoored")
    clean = select_clean(train_data, cfg.clean_ratio, seed)
    result = erase(trained.model, clean, NAD(cfg.nad), test, attack, quiet=quiet, curve_subset=len(test))
    summary: dict[str, Any] = {
        "before": trained.scores.to_json() if trained.scores else None,
        "after": result.after.to_json() if result.after else None,
        "finetune": result.finetune.to_json() if result.finetune else None,
        "config": {
            "preset": "demo",
            "model": f"{cfg.arch} trained on {cfg.data} with {attack.spec()}",
            "defense": "nad",
            "clean": cfg.data,
            "clean_ratio": cfg.clean_ratio,
            "clean_size": result.clean_size,
            "test": f"{cfg.data}:test",
            "attack": attack.spec(),
            "seed": seed,
        },
        "seconds": round(time.perf_counter() - start, 1),
        "log": result.log,
    }
    save_erase_outputs(out, trained.model, result, summary, test, attack)
    return trained, result
