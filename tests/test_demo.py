"""The key functional test: NAD erases a BadNets backdoor from a small CNN on the embedded digits.

The ``demo`` preset is run once per session (the ``demo_run`` fixture in conftest.py) and every test reads its
results.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from nad.attacks import parse_attack
from nad.data import load_data
from nad.metrics import evaluate
from nad.models import load_model

pytestmark = pytest.mark.slow


def test_backdoor_was_implanted(demo_run):
    _, trained, erased = demo_run
    assert trained.scores is not None and trained.scores.asr is not None
    assert trained.scores.asr >= 90
    assert trained.scores.acc >= 80  # a usable digit classifier, not a model that predicts the target
    assert erased.before == trained.scores
    assert trained.poisoned is not None and len(trained.poisoned) == round(0.1 * 1437)


def test_nad_erases_the_backdoor_and_keeps_accuracy(demo_run):
    _, trained, erased = demo_run
    assert erased.after is not None and erased.after.asr is not None
    assert erased.after.asr < 20
    assert abs(erased.after.acc - trained.scores.acc) <= 10
    assert erased.after.asr < trained.scores.asr
    assert erased.finetune is not None  # the fine-tuning baseline ran beside it
    assert erased.log["layers"] == ["block1", "block2", "block3"]
    assert erased.log["betas"] == [125.0, 250.0, 250.0]


def test_demo_files(demo_run):
    out, trained, erased = demo_run
    results = json.loads((out / "results.json").read_text())
    assert set(results) >= {"before", "after", "finetune", "config", "seconds"}
    assert results["before"]["asr"] == pytest.approx(trained.scores.asr, abs=0.01)
    assert results["after"]["asr"] == pytest.approx(erased.after.asr, abs=0.01)
    assert results["after"]["acc"] == pytest.approx(erased.after.acc, abs=0.01)
    for key in ("before", "after", "finetune"):
        assert all(0 <= results[key][m] <= 100 and math.isfinite(results[key][m]) for m in ("acc", "asr"))
    png = out / "attention.png"
    assert png.is_file()
    with Image.open(png) as img:
        img.verify()
    with Image.open(png) as img:
        assert img.format == "PNG"
        img.load()
        assert img.size[0] > 100 and img.size[1] > 100
        assert len(np.unique(np.asarray(img.convert("L")))) > 10  # a real picture, not a blank canvas


def test_saved_models_reproduce_the_scores(demo_run):
    out, trained, erased = demo_run
    test = load_data("digits:test")
    attack = parse_attack(trained.model.info.attack)
    backdoored = load_model(out / "backdoored.safetensors")
    purified = load_model(out)
    assert backdoored.info.attack == trained.model.info.attack
    assert evaluate(backdoored, test, attack) == trained.scores
    assert evaluate(purified, test, attack) == erased.after
