"""The benchmark scripts are run as ``python -m benchmarks.NAME``: each one with a ``main`` must call it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

SCRIPTS = sorted(Path(__file__).parents[1].joinpath("benchmarks").glob("*.py"))


def defines_main(tree: ast.Module) -> bool:
    return any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body)


def runs_main_as_script(tree: ast.Module) -> bool:
    return any(isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) for node in tree.body)


@pytest.mark.parametrize("script", [s for s in SCRIPTS if defines_main(ast.parse(s.read_text()))], ids=lambda s: s.stem)
def test_a_benchmark_with_a_main_runs_it_as_a_module(script: Path) -> None:
    assert runs_main_as_script(ast.parse(script.read_text())), f"python -m benchmarks.{script.stem} would do nothing"


def test_the_tone_probe_family_holds_sigs_trigger(monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe's claim that a pure tone can express SIG's trigger: the column tone of 6 periods at phase 0
    is SIG's signal, and ``describe`` names it so."""
    monkeypatch.syspath_prepend(str(SCRIPTS[0].parents[1]))  # the scripts run from the repository root
    from benchmarks.tone_probe import describe, tones
    from nad.attacks.sig import sinusoid

    family = tones(32, 32, 20 / 255)
    sig = (sinusoid(32, 20.0, 6.0) / 255).expand(32, 32)
    matches = [i for i, tone in enumerate(family) if torch.allclose(tone[0], sig, atol=1e-6)]
    assert [describe(i) for i in matches] == ["columns f=6 phase=0/8"]
