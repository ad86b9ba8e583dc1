"""The package's layers: imports only go downward (spec -> models -> measure -> train -> study ->
laws -> report -> commands) and no module imports itself back through others."""

from __future__ import annotations

import ast
from pathlib import Path

import scaling_lab

PACKAGE = Path(scaling_lab.__file__).parent
# Top-level module or package -> layer; everything else (spec, graphs, scaling, schema, files,
# errors, stats, ...) is the bottom layer that all may use. Each area's ``commands`` module is the
# command line, the top layer.
LAYERS = {"models": 1, "measure": 2, "latency": 2, "measure_cache": 2, "data": 3, "train": 3, "trial": 3, "study": 4, "laws": 5, "report": 6, "commands": 7, "cli": 7}


def _imports() -> dict[str, set[str]]:
    """Module (dotted, without ``scaling_lab.``) -> the package modules it imports, anywhere in it."""
    paths = {".".join(path.relative_to(PACKAGE).with_suffix("").parts).removesuffix("__init__").rstrip("."): path for path in PACKAGE.rglob("*.py")}
    modules = {}
    for name, path in paths.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("scaling_lab"):
                base = node.module.removeprefix("scaling_lab").lstrip(".")
                # ``from package import module`` imports the module
                found.update(f"{base}.{a.name}".lstrip(".") if f"{base}.{a.name}".lstrip(".") in paths else base for a in node.names)
            elif isinstance(node, ast.Import):
                found.update(a.name.removeprefix("scaling_lab").lstrip(".") for a in node.names if a.name.startswith("scaling_lab"))
        modules[name] = {module for module in found if module}
    return modules


def _layer(module: str) -> int:
    return LAYERS["commands"] if module.split(".")[-1] == "commands" else LAYERS.get(module.split(".")[0], 0)


def test_imports_only_go_downward():
    upward = [(module, imported) for module, imports in _imports().items() for imported in imports if _layer(imported) > _layer(module)]
    assert upward == []


def test_the_study_layer_never_imports_the_report_layer():
    assert not [(m, i) for m, imports in _imports().items() if m.startswith("study") for i in imports if i.startswith("report")]


def test_no_import_circles():
    graph = _imports()
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for imported in sorted(graph.get(module, ())):
            assert state.get(imported) != "open", " -> ".join([*path, module, imported])
            if imported in graph and imported not in state:
                visit(imported, [*path, module])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
