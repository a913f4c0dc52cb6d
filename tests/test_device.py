"""Device helpers: what a bench row records as its device, and the CPU-drawn noise ANP moves to the device."""

from __future__ import annotations

import torch
from torch import nn

from nad.defenses.anp import NeuronPerturbation
from nad.device import describe, resolve_device, to_device


def test_describe_names_the_cpu_and_its_threads():
    assert describe(resolve_device("cpu")) == f"cpu ({torch.get_num_threads()} threads)"


def test_to_device_keeps_the_values():
    t = torch.arange(6.0).view(2, 3)
    moved = to_device(t, torch.device("cpu"))
    assert moved.device.type == "cpu" and torch.equal(moved, t)


def test_anp_noise_is_drawn_layer_by_layer_from_the_cpu_generator():
    """The noise drawn in one copy equals a per-layer draw from the same CPU generator, so every device
    sees the noise a CPU run sees (and the committed CPU results stay reproducible)."""
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.BatchNorm2d(5))
    pert = NeuronPerturbation(module)
    pert.reset_noise(0.4, torch.Generator().manual_seed(7))
    gen = torch.Generator().manual_seed(7)
    expected = [(torch.rand(n.shape, generator=gen) * 2 - 1) * 0.4 for n in pert.noise_w + pert.noise_b]
    for got, want in zip(pert.noise_w + pert.noise_b, expected, strict=True):
        assert torch.equal(got.detach(), want)
    assert all(n.abs().max() <= 0.4 for n in pert.noise_w) and pert.noise_w[0].abs().sum() > 0
