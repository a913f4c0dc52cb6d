"""Shared helpers for the benchmark scripts: timing, machine description, JSON output."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from nad.api import select_clean
from nad.data.dataset import ImageData
from nad.models.checkpoint import Classifier, load_model
from nad.scan import rate_index

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall seconds of ``fn()``, synchronising the device before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def report(name: str, figures: dict[str, Any], out: Path | None = None) -> Path:
    """Print the figures and write them, with the machine, to ``results/NAME.json``."""
    payload = {"benchmark": name, "machine": machine(), **figures}
    print(json.dumps(payload, indent=2))
    path = out or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def merged_with_committed(name: str, items: list[dict[str, Any]], field: str) -> list[dict[str, Any]]:
    """``items`` (each with a ``"model"``) over the other models' entries of the committed ``results/NAME.json``
    list ``field``: a model measured again replaces its entry, the rest are kept, so one new model need not
    rerun the others."""
    path = RESULTS / f"{name}.json"
    kept = json.loads(path.read_text())[field] if path.is_file() else []
    return list(({m["model"]: m for m in kept} | {m["model"]: m for m in items}).values())


def frozen_model(name: str) -> Classifier:
    """A model of ``zoo/`` (or, for a ``name`` with a ``/``, a folder), frozen in eval mode."""
    clf = load_model(name if "/" in name else f"zoo/{name}")
    clf.module.eval().requires_grad_(False)
    return clf


def probe_model(name: str, clean_pool: ImageData, clean_seed: int = 0) -> tuple[Classifier, ImageData]:
    """:func:`frozen_model` and the 5% clean subset of ``clean_pool`` that ``nad scan`` draws with ``clean_seed``:
    what every scan probe starts from."""
    clf = frozen_model(name)
    return clf, select_clean(clean_pool, 0.05, clean_seed, clf.info.num_classes)


def class_rates(rates: list[float], rate_floor: float = 0.005, **setting: Any) -> dict[str, Any]:
    """One probe setting's per-class success rates (%) with their anomaly indices as ``nad scan`` takes them
    (log-odds, rates clipped to ``rate_floor``, the MAD at least the scan's floor): the index of class 0, which
    every zoo attack targets, and the class that scores highest."""
    index = rate_index(rates, rate_floor)
    top = max(range(len(index)), key=index.__getitem__)
    return {
        **setting,
        "success": [round(r, 1) for r in rates],
        "index_of_0": round(index[0], 2),
        "top_class": top,
        "index_of_top": round(index[top], 2),
    }
