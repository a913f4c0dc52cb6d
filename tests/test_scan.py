"""``nad scan``: trigger inversion and universal perturbations per class, on the demo's backdoored model."""

from __future__ import annotations

import json

import pytest
import torch

from nad.api import select_clean
from nad.data import load_data
from nad.errors import NadError
from nad.scan import ScanConfig, anomaly_index, scan


def test_anomaly_index_uses_the_mad_with_a_floor():
    index = anomaly_index([10, 10, 10, 10, 1], low=True, floor=1.0)
    assert index[-1] == pytest.approx(9 / 1.0) and index[0] == 0
    spread = anomaly_index([1.0, 2.0, 3.0, 4.0, 100.0], low=False, floor=0.0)
    assert spread[-1] == pytest.approx((100 - 3) / (1.4826 * 1.0))


@pytest.mark.slow
def test_the_backdoor_target_gets_the_smallest_inverted_trigger(demo_run):
    _, trained, _ = demo_run
    clean = select_clean(load_data("digits"), 0.05, 0)
    result = scan(trained.model, clean, ScanConfig(steps=100), quiet=True)
    assert min(range(10), key=lambda c: result.norms[c]) == 0  # the demo's backdoor targets class 0
    assert result.reached[0] and result.nc_index[0] == max(result.nc_index)
    assert json.loads(json.dumps(result.to_json()))["verdict"] == result.verdict


def test_scan_refuses_too_little_data(demo_run):
    _, trained, _ = demo_run
    tiny = select_clean(load_data("digits"), 1.0, 0).subset(torch.arange(12))
    with pytest.raises(NadError, match="too few"):
        scan(trained.model, tiny, ScanConfig(), quiet=True)
