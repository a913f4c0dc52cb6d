"""api.erase hands a defense its fine-tuned starting point from the baseline run, changing no result."""

from __future__ import annotations

from dataclasses import replace

import torch

from nad.api import erase, select_clean, shared_finetuning
from nad.data import Augment, load_data
from nad.defenses import NAD, FineTune, NADConfig
from nad.defenses.mcr import MCR, MCRConfig
from nad.models import build_classifier
from nad.models.checkpoint import ModelInfo
from nad.training import OptimConfig, TrainConfig


def _setup():
    torch.manual_seed(0)
    model = build_classifier(ModelInfo("small_cnn", 10, (1, 16, 16)))
    clean = select_clean(load_data("digits"), 0.05, 0)
    return model, clean, TrainConfig(epochs=3, batch_size=16, augment=Augment(2, False, 1, 3))


def _same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.module.state_dict().values(), b.module.state_dict().values()))


def test_mcr_end_from_the_baseline_is_the_same_model():
    model, clean, tc = _setup()
    cfg = MCRConfig(train=tc, curve=replace(tc, epochs=1))
    shared = erase(model, clean, MCR(cfg), baseline=True, quiet=True)
    alone = erase(model, clean, MCR(cfg), baseline=False, quiet=True)
    assert shared.log["end_from_baseline"] is True
    assert _same_weights(shared.model, alone.model)


def test_only_exact_prefixes_of_the_baseline_are_shared():
    _, _, tc = _setup()
    assert shared_finetuning(NAD(NADConfig(train=tc, teacher_epochs=2)), tc).epochs == 2
    assert shared_finetuning(NAD(NADConfig(train=tc, teacher_epochs=4)), tc) is None  # longer than the baseline
    assert shared_finetuning(NAD(NADConfig(train=tc, teacher_epochs=2)), replace(tc, seed=1)) is None
    cosine = replace(tc, optim=OptimConfig(schedule="cosine"))
    assert shared_finetuning(NAD(NADConfig(train=cosine, teacher_epochs=2)), cosine) is None  # lr depends on length
    assert shared_finetuning(MCR(MCRConfig(train=cosine)), cosine).epochs == 3  # the whole run is always the same
    assert shared_finetuning(FineTune(tc), tc) is None
