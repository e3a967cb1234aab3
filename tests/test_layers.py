"""The package's layers import one way (docs/architecture.md §2), read from the source with ast:

- ``shared`` imports none of ``server``, ``client``, ``simulations``;
- ``server`` and ``client`` never import each other (they meet through Flower messages);
- ``client`` and ``simulations`` do not import each other (a site runs no simulator code; the
  simulation's ClientApp is composed at the top, ``fedneurogen/simulation_app.py``);
- inside ``shared``, the core does not import ``shared.workflows`` (training, synthesis,
  evaluation, explanations, plots, fairness build on the core, never the other way);
- no module of the package imports itself back, through any chain of imports (the whole
  package: ``fedneurogen``, ``shared``, ``server``, ``client``, ``simulations``; importing
  ``a.b.c`` runs ``a.b`` too, so it counts as importing both; a module may import its own
  package), and ``plots``, where every figure is drawn, imports no other workflow.

Imports inside functions count too: a lazy import is still a dependency. Imports under
``if TYPE_CHECKING:`` do not: they never run (the model's mixins name ``NeuroGenModel`` in
annotations only).
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
    typing_only = {id(inner) for node in ast.walk(tree) if _type_checking(node) for inner in ast.walk(node)}
    out = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
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


def _type_checking(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``): its body never runs."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


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


#: Where each package of the distribution lives (pyproject.toml's package-dir).
PACKAGE_ROOTS = {
    "fedneurogen": ROOT / "fedneurogen",
    "fedneurogen.shared": ROOT / "shared",
    "fedneurogen.server": ROOT / "server",
    "fedneurogen.client": ROOT / "client",
    "fedneurogen.simulations": ROOT / "simulations",
}


def package_imports(roots: dict[str, Path] = PACKAGE_ROOTS) -> dict[str, set[str]]:
    """Module -> the other modules of the package it imports, lazy imports included: ``from pkg
    import function`` counts as ``pkg``, and importing ``a.b.c`` as importing ``a.b`` as well
    (Python runs it first). A module's own packages are left out (``from . import protocol``
    runs the package it is part of)."""
    names = {}
    for root, folder in roots.items():
        for path in sorted(folder.rglob("*.py")):
            parts = [*root.split("."), *path.relative_to(folder).with_suffix("").parts]
            module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            names[module] = (path, ".".join(parts[:-1]))
    graph = {}
    for module, (path, package) in names.items():
        found = set()
        for _, imported in imported_modules(path, package):
            while imported and imported not in names:  # `from pkg import function` -> pkg
                imported = imported.rpartition(".")[0]
            while imported:  # and every package above it
                if imported in names and imported != module and not module.startswith(imported + "."):
                    found.add(imported)
                imported = imported.rpartition(".")[0]
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


def test_the_package_imports_without_a_loop():
    graph = package_imports()
    assert len(graph) > 100 and "fedneurogen.shared.workflows.plots" in graph  # the walk sees every module
    assert import_loops(graph) == []
    workflows = {m for m in graph["fedneurogen.shared.workflows.plots"] if m.startswith("fedneurogen.shared.workflows")}
    assert workflows == set(), "plots draws: the callers prepare the data"
    assert import_loops({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]  # the check sees a loop


def test_the_loop_check_counts_lazy_imports_and_parent_packages(tmp_path):
    """A loop through an import inside a function, or through a package's ``__init__``, is found;
    one through ``if TYPE_CHECKING:`` is not (it never runs)."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from pkg.sub import b\n")
    (pkg / "a.py").write_text("def f():\n    from pkg.sub.b import g\n")
    (pkg / "sub" / "b.py").write_text("g = 1\n")
    (pkg / "sub" / "c.py").write_text("import pkg.a\n")
    (pkg / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import e\n")
    (pkg / "e.py").write_text("from pkg import d\n")
    graph = package_imports({"pkg": pkg})
    assert graph["pkg.a"] == {"pkg.sub", "pkg.sub.b"} and graph["pkg.d"] == set()
    assert import_loops(graph) == []
    (pkg / "sub" / "b.py").write_text("from pkg.sub import c\n")  # a -> sub.b -> sub.c -> a
    assert import_loops(package_imports({"pkg": pkg})) != []


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
