"""A short integration run on real CIFAR-10: backdoor WRN-16-1 on a subset, then run NAD briefly.

Needs the dataset: set ``NAD_DATA`` to a folder holding ``cifar-10-batches-py/`` (nothing is downloaded).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

from nad.api import erase, select_clean, train_model
from nad.attacks import BadNets
from nad.data import load_data, stratified_split
from nad.data.augment import NO_AUGMENT
from nad.defenses import NAD, NADConfig
from nad.metrics import predict
from nad.models import parse_normalize
from nad.training import OptimConfig, TrainConfig

ROOT = os.environ.get("NAD_DATA", "")

pytestmark = [
    pytest.mark.cifar,
    pytest.mark.slow,
    pytest.mark.skipif(
        not ROOT or not (Path(ROOT) / "cifar-10-batches-py").is_dir(),
        reason="set NAD_DATA to a folder holding cifar-10-batches-py/ to run the CIFAR-10 integration test",
    ),
]


def in_percent(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and 0 <= value <= 100


def test_cifar10_badnets_then_nad():
    train_full = load_data(f"cifar10:{ROOT}:train")
    test_full = load_data(f"cifar10:{ROOT}:test")
    assert train_full.x.shape == (50000, 3, 32, 32) and test_full.x.shape == (10000, 3, 32, 32)
    assert train_full.class_counts().tolist() == [5000] * 10

    train_idx, _ = stratified_split(train_full.y, 2000 / 50000, seed=0)
    test_idx, _ = stratified_split(test_full.y, 1000 / 10000, seed=0)
    train = train_full.subset(train_idx)
    test = test_full.subset(test_idx)
    assert len(train) == 2000 and len(test) == 1000
    assert train.class_counts().tolist() == [200] * 10

    # Two epochs on 2,000 images are few: a 6x6 white square on 20% of the images (and no augmentation, which
    # would move or mirror it) makes the backdoor learnable that quickly.
    attack = BadNets(target=0, rate=0.2, pattern="square", size=6)
    cfg = TrainConfig(
        epochs=2, batch_size=64, optim=OptimConfig(lr=0.05, schedule="cosine"), augment=NO_AUGMENT, seed=0
    )
    trained = train_model(train, "wrn16_1", cfg, attack, test, parse_normalize("cifar10"), quiet=True)
    assert trained.model.info.input_size == (3, 32, 32) and trained.model.info.num_classes == 10
    assert trained.poisoned is not None and len(trained.poisoned) == 400
    assert len(trained.history.epochs) == 2 and set(trained.history.epochs[0]) == {"ce"}
    scores = trained.scores
    assert scores is not None and in_percent(scores.acc) and in_percent(scores.asr)
    assert set(scores.to_json()) >= {"acc", "asr"}

    # The backdoor was learnt at least somewhat: triggered images go to the target more often than clean ones.
    clean_non_target = test.subset(torch.nonzero(test.y != attack.target).flatten())
    clean_rate = 100.0 * float((predict(trained.model, clean_non_target.x) == attack.target).float().mean())
    assert scores.asr > clean_rate

    clean = select_clean(
        train_full.subset(torch.nonzero(~torch.isin(torch.arange(50000), train_idx)).flatten()), 0.01, 0
    )
    assert len(clean) == 480 and clean.class_counts().min() > 0
    weights_before = {k: v.clone() for k, v in trained.model.module.state_dict().items()}
    nad = NAD(NADConfig(train=TrainConfig(epochs=1, batch_size=64, seed=0), teacher_epochs=1))
    result = erase(trained.model, clean, nad, test, attack, baseline=False, quiet=True)
    assert result.before == scores
    assert result.after is not None and in_percent(result.after.acc) and in_percent(result.after.asr)
    assert result.clean_size == len(clean)
    assert result.log["layers"] == ["block1", "block2", "block3"]
    assert result.log["betas"] == [500.0, 1000.0, 1000.0]
    assert len(result.log["history"]) == 1 and set(result.log["history"][0]) == {"ce", "at"}
    assert all(math.isfinite(v) for v in result.log["history"][0].values())
    # The defense returns a new model; the backdoored one is untouched.
    assert result.model.module is not trained.model.module
    assert all(torch.equal(weights_before[k], v) for k, v in trained.model.module.state_dict().items())
