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
import dataclasses
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
from nad.bench.grid import ModelSpec, key_dict
from nad.config import from_mapping
from nad.data.dataset import ImageData, fingerprint
from nad.errors import NadError
from nad.io import write_json
from nad.models import Classifier, load_model, parse_normalize, save_model
from nad.training import TrainConfig

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
    """The cache under ``root``; ``zoo`` (a folder of ``nad train`` outputs, such as the repository's
    ``zoo/``) fills it: a model whose recorded training equals a spec's is copied in instead of trained."""

    def __init__(self, root: Path, zoo: Path | None = None) -> None:
        self.root = root
        self.zoo = zoo
        self.trained = 0  # models trained by this process
        self.from_zoo = 0  # models copied from the zoo by this process
        self._fingerprints: dict[int, str] = {}

    def path(self, spec: ModelSpec) -> Path:
        return self.root / spec.key

    def has(self, spec: ModelSpec) -> bool:
        return (self.path(spec) / META).is_file()

    def get(self, spec: ModelSpec, data: ImageData, quiet: bool = False) -> CachedModel:
        """The model for ``spec``: from the cache, else trained on ``data`` (already subset) and cached."""
        trained_now = False
        if not self.has(spec):
            with self.lock(spec):
                if not self.has(spec) and not self.fill_from_zoo(spec, data):  # another process may have
                    self.train(spec, data, quiet)  # finished it while we waited
                    trained_now = True
        return self.load(spec, data.device, trained_now)

    def fill_from_zoo(self, spec: ModelSpec, data: ImageData) -> bool:
        """Copy the zoo model trained exactly as ``spec`` says (same data, by fingerprint) into the cache."""
        if self.zoo is None or not self.zoo.is_dir():
            return False
        if id(data) not in self._fingerprints:
            self._fingerprints[id(data)] = fingerprint(data)
        for folder in sorted(p for p in self.zoo.iterdir() if (p / "results.json").is_file()):
            record = json.loads((folder / "results.json").read_text())
            if zoo_matches(record, folder, spec, self._fingerprints[id(data)]):
                partial = self.root / f".partial-{spec.key}"
                shutil.rmtree(partial, ignore_errors=True)
                shutil.copytree(folder, partial)
                meta = {"key": spec.key, "spec": spec.to_json(), "seconds": record.get("seconds", 0.0)}
                write_json(partial / META, {**meta, "zoo": folder.name, "poisoned": record.get("poisoned")})
                os.rename(partial, self.path(spec))
                self.from_zoo += 1
                return True
        return False

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


def zoo_matches(record: dict[str, Any], folder: Path, spec: ModelSpec, data_fingerprint: str) -> bool:
    """Whether the ``nad train`` output in ``folder`` (its ``results.json`` is ``record``) is ``spec``'s model."""
    config = record.get("config") or {}
    if spec.train_size or record.get("data_fingerprint") != data_fingerprint or config.get("arch") != spec.arch:
        return False
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        train = from_mapping(TrainConfig, {k: v for k, v in config.items() if k in names}, str(folder))
        # The attack as asked: ``attack`` is the prepared one, which names what preparing generated (Trojan's
        # ``trigger=``) and so never equals the bench's spec. Records from before ``attack_asked`` lack it.
        asked = config.get("attack_asked") or config.get("attack")
        attack = parse_attack(asked).spec() if asked else None
        version = config.get("attack_version") or 1  # recorded since versions exist; before, all were 1
        if key_dict(train) != key_dict(spec.train) or attack != spec.attack or version != spec.attack_version:
            return False  # decided from results.json alone, before any weights are read
        info = load_model(folder).info
    except (NadError, KeyError):
        return False
    return info.arch_kwargs == spec.arch_kwargs and info.normalize == parse_normalize(spec.normalize)
