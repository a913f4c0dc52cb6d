"""The backdoored-model cache: ``OUT/models/KEY/`` holds one trained model, shared by every defense.

``KEY`` is :attr:`ModelSpec.key`, a hash of the canonical JSON of the data, architecture, normalisation,
attack and training schedule (seed included). A model is trained in ``OUT/models/.partial-KEY/`` (the
training state is saved there after every epoch, so a stopped run resumes mid-training, and an attack's files,
such as a Trojan trigger, are written there), then the folder is renamed to ``KEY``: a crash never leaves a
half model under its key. A lock file keeps two processes (shards sharing ``OUT``) from training the same
model at once; the second waits and loads the first one's.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nad.api import train_model
from nad.attacks import parse_attack
from nad.bench.grid import ModelSpec
from nad.data.dataset import ImageData
from nad.io import write_json
from nad.models import Classifier, load_model, parse_normalize, save_model

META = "bench-model.json"
STATE = "train-state.pt"


@dataclass
class CachedModel:
    key: str
    model: Classifier
    attack: Any  # Attack, with its files found in the model's folder
    seconds: float  # how long training took (when it was trained, in whichever run)
    trained_now: bool  # trained by this call rather than read from the cache


class ModelCache:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.trained = 0  # models trained by this process

    def path(self, spec: ModelSpec) -> Path:
        return self.root / spec.key

    def has(self, spec: ModelSpec) -> bool:
        return (self.path(spec) / META).is_file()

    def get(self, spec: ModelSpec, data: ImageData, quiet: bool = False) -> CachedModel:
        """The model for ``spec``: from the cache, else trained on ``data`` (already subset) and cached."""
        trained_now = False
        if not self.has(spec):
            with self.lock(spec):
                if not self.has(spec):  # another process may have finished it while we waited
                    self.train(spec, data, quiet)
                    trained_now = True
        return self.load(spec, data.device, trained_now)

    def load(self, spec: ModelSpec, device: Any, trained_now: bool = False) -> CachedModel:
        folder = self.path(spec)
        meta = json.loads((folder / META).read_text())
        model = load_model(folder).to(device)
        attack = parse_attack(model.info.attack).rebase(folder) if model.info.attack else None
        return CachedModel(spec.key, model, attack, float(meta.get("seconds", 0.0)), trained_now)

    def train(self, spec: ModelSpec, data: ImageData, quiet: bool) -> None:
        partial = self.root / f".partial-{spec.key}"
        partial.mkdir(parents=True, exist_ok=True)
        write_json(partial / "spec.json", spec.to_json())
        start = time.perf_counter()
        result = train_model(
            data,
            spec.arch,
            spec.train,
            parse_attack(spec.attack),
            None,
            parse_normalize(spec.normalize),
            spec.arch_kwargs,
            quiet=quiet,
            state_path=partial / STATE,
            workdir=partial,
        )
        save_model(result.model, partial)
        (partial / STATE).unlink(missing_ok=True)
        poisoned = result.poisoned.tolist() if result.poisoned is not None else None
        meta = {"key": spec.key, "spec": spec.to_json(), "seconds": round(time.perf_counter() - start, 1)}
        write_json(partial / META, {**meta, "history": result.history.epochs, "poisoned": poisoned})
        final = self.path(spec)
        if final.exists():  # a folder without its metadata is no finished model (e.g. a hand-made copy)
            shutil.rmtree(final)
        os.rename(partial, final)
        self.trained += 1

    @contextlib.contextmanager
    def lock(self, spec: ModelSpec) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f".{spec.key}.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
