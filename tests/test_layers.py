"""The import graph of ``src/nad``: no circles, and no module imports one of a higher layer.

Layers, lowest first (data flows upward: data -> attack -> train -> defend -> evaluate -> report):
foundations (errors, typed specs and configuration, file output, device and process helpers), data, models,
the training loop with attention and metrics, attacks, defenses, the Python API with its reports, the
bench, the command handlers, the command line. Imports inside functions count as much as those at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

LAYERS: list[tuple[str, ...]] = [
    ("nad.errors", "nad.spec", "nad.registry", "nad.config", "nad.io", "nad.distributed", "nad.device", "nad.presets"),
    ("nad.data",),
    ("nad.models",),
    ("nad.attention", "nad.training", "nad.metrics"),
    ("nad.attacks",),
    ("nad.defenses", "nad.scan"),
    ("nad.api", "nad.viz", "nad.report", "nad.demo"),
    ("nad.easy",),
    ("nad.bench",),
    ("nad.commands",),
    ("nad.cli", "nad.__main__", "nad"),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in SRC.rglob("*.py")}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The ``nad`` modules that ``name`` imports, anywhere in its file (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            names = {f"{base}.{a.name}" for a in node.names}
            found |= names
            if not names <= known:  # ``from nad import distributed`` imports the submodule, not the package
                found.add(base)
    return {m for m in found if m in known and m != name}


def layer_of(name: str) -> int:
    """The layer of the longest prefix in ``LAYERS`` that names ``name`` or a package holding it (the bare
    ``nad`` names only the package itself, so a new module must be given a layer here)."""
    found = [
        (len(prefix), i)
        for i, group in enumerate(LAYERS)
        for prefix in group
        if name == prefix or (prefix != "nad" and name.startswith(prefix + "."))
    ]
    if not found:
        raise AssertionError(f"{name} has no layer in tests/test_layers.py")
    return max(found)[1]


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def test_every_module_has_a_layer():
    for name in modules():
        layer_of(name)  # raises if no prefix matches


def test_no_module_imports_a_higher_layer():
    upward = [
        f"{name} (layer {layer_of(name)}) imports {dep} (layer {layer_of(dep)})"
        for name, deps in graph().items()
        for dep in deps
        if layer_of(dep) > layer_of(name) and name != "nad"
    ]
    assert not upward, "\n".join(upward)


def test_no_import_circle():
    edges = graph()
    edges["nad"] = set()  # the package's own __init__ re-exports; it is the top, not part of a circle
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(edges[node]):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (circle := visit(dep)):
                return circle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (circle := visit(start)):
            raise AssertionError("import circle: " + " -> ".join(circle))
