"""Never losing work: ``kill -9`` during ``nad train`` leaves intact files, and ``--resume`` finishes the run
with exactly the weights an uninterrupted run gets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nad.cli import main

EPOCHS = 12


def train_args(epochs: int = EPOCHS) -> list[str]:
    return [
        "train",
        "--data",
        "digits",
        "--arch",
        "small_cnn",
        "--attack",
        "badnets",
        "--epochs",
        str(epochs),
        "--quiet",
    ]


def epochs_done(state: Path) -> int:
    try:
        return int(torch.load(state, weights_only=True)["epochs_done"])
    except Exception:  # being written or renamed at this very moment
        return 0


def partial(out: Path) -> Path:
    """Where ``nad train`` keeps a run's files, its training state among them, until it publishes them."""
    return out.parent / f".{out.name}.nad-partial"


def kill_after_epochs(out: Path, epochs: int) -> None:
    """Start ``nad train`` in a child process and SIGKILL it once it has saved ``epochs`` epochs."""
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    child = subprocess.Popen([sys.executable, "-m", "nad", *train_args(), "--out", str(out)], env=env)
    state = partial(out) / "train-state.pt"
    deadline = time.monotonic() + 120
    try:
        while not (state.exists() and epochs_done(state) >= epochs):
            if child.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"training ended (rc={child.returncode}) or stalled before epoch {epochs}")
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_uninterrupted_weights(tmp_path: Path) -> None:
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert main([*train_args(), "--out", str(whole)]) == 0
    kill_after_epochs(broken, epochs=3)
    assert not broken.exists()  # no half-written output: it is published only when the run ends
    visible = sorted(p.name for p in partial(broken).iterdir() if not p.name.startswith("."))
    assert visible == ["train-state.pt"]  # only the last complete epoch's state
    assert 3 <= epochs_done(partial(broken) / "train-state.pt") < EPOCHS
    assert main([*train_args(), "--out", str(broken), "--resume"]) == 0
    assert not partial(broken).exists() and not (broken / "train-state.pt").exists()  # finished: state dropped
    a, b = load_file(whole / "model.safetensors"), load_file(broken / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_rerun_without_resume_starts_afresh(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main([*train_args(2), "--out", str(out)]) == 0
    first = load_file(out / "model.safetensors")
    assert main([*train_args(2), "--out", str(out), "--overwrite"]) == 0
    again = load_file(out / "model.safetensors")
    assert all(torch.equal(first[k], again[k]) for k in first)  # same seed, same run: bit-identical
