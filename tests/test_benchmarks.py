"""The benchmark scripts are run as ``python -m benchmarks.NAME``: each one with a ``main`` must call it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SCRIPTS = sorted(Path(__file__).parents[1].joinpath("benchmarks").glob("*.py"))


def defines_main(tree: ast.Module) -> bool:
    return any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body)


def runs_main_as_script(tree: ast.Module) -> bool:
    return any(isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) for node in tree.body)


@pytest.mark.parametrize("script", [s for s in SCRIPTS if defines_main(ast.parse(s.read_text()))], ids=lambda s: s.stem)
def test_a_benchmark_with_a_main_runs_it_as_a_module(script: Path) -> None:
    assert runs_main_as_script(ast.parse(script.read_text())), f"python -m benchmarks.{script.stem} would do nothing"
