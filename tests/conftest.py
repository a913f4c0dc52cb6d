"""Shared fixtures for the nad test suite: everything runs on the CPU, from the same seeds."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """``nad.demo.run_demo`` once per session: (output folder, TrainResult, EraseResult).

    The TrainResult's model is the demo preset's backdoored small_cnn (seed 0); tests that need that model
    can share it instead of training another (NAD and the other defenses work on clones, leaving it intact).
    """
    from nad.demo import run_demo

    out = tmp_path_factory.mktemp("demo")
    trained, erased = run_demo(out, seed=0, quiet=True)
    return out, trained, erased
