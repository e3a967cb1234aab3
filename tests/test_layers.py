"""The package's layers import one way (docs/architecture.md §2), read from the source with ast:

- ``shared`` imports none of ``server``, ``client``, ``simulations``;
- ``server`` and ``client`` never import each other (they meet through Flower messages);
- ``client`` and ``simulations`` do not import each other (a site runs no simulator code; the
  simulation's ClientApp is composed at the top, ``fedneurogen/simulation_app.py``);
- inside ``shared``, the core does not import ``shared.workflows`` (training, synthesis,
  evaluation, explanations, plots, fairness build on the core, never the other way);
- the workflows import each other without a loop (a module may import its own package), and
  ``plots``, where every figure is drawn, imports no other workflow.

Imports inside functions count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("shared", "server", "client", "simulations")
FORBIDDEN = {
    "shared": {"server", "client", "simulations"},
    "server": {"client", "simulations"},
    "client": {"server", "simulations"},
    # the local driver starts the server and the sites as processes; the simulation's ClientApp is
    # composed above both layers (fedneurogen/simulation_app.py)
    "simulations": {"server", "client"},
}


def imported_modules(path: Path, package: str) -> list[tuple[int, str]]:
    """``(line, absolute module)`` of every import in a file of ``package`` (dotted)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = package.split(".")
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the file's package
                base = here[: len(here) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.append((node.lineno, module))
            out += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]  # `from fedneurogen import client`
    return out


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "fedneurogen" and parts[1] in LAYERS else None


def violations() -> list[str]:
    found = []
    for layer in LAYERS:
        for path in sorted((ROOT / layer).rglob("*.py")):
            rel = path.relative_to(ROOT / layer).with_suffix("")
            package = ".".join(["fedneurogen", layer, *rel.parts[:-1]])
            for line, module in imported_modules(path, package):
                target = layer_of(module)
                if target in FORBIDDEN[layer]:
                    found.append(f"{path.relative_to(ROOT)}:{line} ({layer}) imports {module} ({target})")
    return sorted(set(found))


def test_layers_import_one_way():
    assert violations() == []


def core_imports_of_workflows() -> list[str]:
    """Imports of ``fedneurogen.shared.workflows`` from the core of ``shared``."""
    found = []
    workflows = ROOT / "shared" / "workflows"
    for path in sorted((ROOT / "shared").rglob("*.py")):
        if workflows in path.parents:
            continue
        rel = path.relative_to(ROOT / "shared").with_suffix("")
        package = ".".join(["fedneurogen", "shared", *rel.parts[:-1]])
        for line, module in imported_modules(path, package):
            if module == "fedneurogen.shared.workflows" or module.startswith("fedneurogen.shared.workflows."):
                found.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return found


def test_the_core_of_shared_does_not_import_its_workflows():
    assert core_imports_of_workflows() == []


def workflow_imports() -> dict[str, set[str]]:
    """Module -> the other modules of ``fedneurogen.shared.workflows`` it imports (a module's own
    packages left out: ``from . import protocol`` runs the package it is part of)."""
    workflows = ROOT / "shared" / "workflows"
    names = {}
    for path in sorted(workflows.rglob("*.py")):
        parts = ["fedneurogen", "shared", *path.relative_to(ROOT / "shared").with_suffix("").parts]
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        names[module] = (path, ".".join(parts[:-1]))
    graph = {}
    for module, (path, package) in names.items():
        found = set()
        for _, imported in imported_modules(path, package):
            while imported and imported not in names:  # `from pkg import function` -> pkg
                imported = imported.rpartition(".")[0]
            if imported and imported != module and not module.startswith(imported + "."):
                found.add(imported)
        graph[module] = found
    return graph


def import_loops(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each loop of ``graph`` once, as the modules on it (depth-first search)."""
    loops, state = [], {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for other in sorted(graph[module]):
            if state.get(other) == "open":
                loops.append(path[path.index(other) :] + [other])
            elif other not in state:
                visit(other, [*path, other])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return loops


def test_workflows_import_each_other_without_a_loop():
    graph = workflow_imports()
    assert import_loops(graph) == []
    assert graph["fedneurogen.shared.workflows.plots"] == set(), "plots draws: the callers prepare the data"
    assert import_loops({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]  # the check sees a loop


@pytest.mark.parametrize(
    ("source", "package", "expected"),
    [
        ("from fedneurogen.client.app import x", "fedneurogen.shared", "fedneurogen.client.app"),
        ("def f():\n    from ..simulations import simulator", "fedneurogen.client", "fedneurogen.simulations"),
        ("import fedneurogen.server.app as a", "fedneurogen.shared.data", "fedneurogen.server.app"),
        ("from fedneurogen import client", "fedneurogen.shared", "fedneurogen.client"),
    ],
)
def test_the_checker_sees_every_form_of_import(tmp_path, source, package, expected):
    """The walk finds absolute, relative, lazy and `from package import layer` imports."""
    file = tmp_path / "m.py"
    file.write_text(source + "\n")
    modules = [m for _, m in imported_modules(file, package)]
    assert expected in modules and layer_of(expected) in LAYERS
