"""The public API of the core carries numpydoc docstrings (the MNE / braindecode style).

Every public function, class and public method defined in the modules below must have a
docstring; one that takes parameters (other than ``self``/``cls``) must have a ``Parameters``
section underlined with dashes that names each of them (``*args``/``**kwargs`` may be named or
left out). A class documents its constructor's parameters in its own docstring (or its
``__init__``'s); a dataclass or pydantic model may list its fields under ``Attributes`` instead.
Names re-exported from other modules (third-party or another module of the project) are checked
where they are defined, not where they are imported.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re

import pytest
from pydantic import BaseModel

MODULES = (
    "fedneurogen.shared.model",
    "fedneurogen.shared.model.generator",
    "fedneurogen.shared.model.batch",
    "fedneurogen.shared.model.losses",
    "fedneurogen.shared.model.sampling",
    "fedneurogen.shared.model.checkpoint",
    "fedneurogen.shared.model.config",
    "fedneurogen.shared.model.diffusion",
    "fedneurogen.shared.model.ema",
    "fedneurogen.shared.model.eeg_encoder",
    "fedneurogen.shared.recording",
    "fedneurogen.shared.design",
    "fedneurogen.shared.ridge",
    "fedneurogen.shared.private_path",
    "fedneurogen.shared.sources",
    "fedneurogen.shared.local_path",
    "fedneurogen.server.local_statistics",
    "fedneurogen.shared.signing",
    "fedneurogen.shared.deploy.tls",
    "fedneurogen.shared.deploy.proxy",
    "fedneurogen.shared.surface",
    "fedneurogen.shared.metrics",
    "fedneurogen.shared.splits",
    "fedneurogen.shared.io",
    "fedneurogen.shared.manifest",
    "fedneurogen.shared.errors",
    "fedneurogen.shared.config",
    "fedneurogen.shared.data",
    "fedneurogen.shared.data.bids",
    "fedneurogen.shared.data.cache",
    "fedneurogen.shared.data.scanner",
    "fedneurogen.shared.data.bcg",
    "fedneurogen.shared.data.scanner_metrics",
    "fedneurogen.shared.workflows.explain",
    "fedneurogen.shared.workflows.explain_attribution",
    "fedneurogen.shared.workflows.explain_regions",
    "fedneurogen.shared.workflows.explain_sources",
    "fedneurogen.shared.workflows.fairness",
    "fedneurogen.shared.workflows.fairness.augment",
    "fedneurogen.shared.workflows.fairness.plan",
    "fedneurogen.shared.workflows.fairness.protocol",
    "fedneurogen.shared.workflows.fairness.window_features",
    "fedneurogen.shared.workflows.fairness.classifiers",
    "fedneurogen.shared.workflows.fairness.metrics",
    "fedneurogen.shared.workflows.fairness.report",
    "fedneurogen.shared.workflows.fairness.strategies",
    "fedneurogen.shared.workflows.baselines",
    "fedneurogen.shared.workflows.baselines.label_only",
    "fedneurogen.shared.workflows.baselines.regressor",
    "fedneurogen.shared.workflows.baselines.ridge_hrf",
)

_ENTRY = re.compile(r"^(\*{0,2}[A-Za-z_]\w*(?:\s*,\s*\*{0,2}[A-Za-z_]\w*)*)\s*(?::.*)?$")


def sections(doc: str) -> dict[str, list[str]]:
    """The numpydoc sections of a docstring: title -> its lines (title underlined with dashes)."""
    lines = inspect.cleandoc(doc).splitlines()
    out: dict[str, list[str]] = {}
    current: str | None = None
    i = 0
    while i < len(lines):
        title = lines[i].strip()
        underline = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if (
            title
            and not lines[i].startswith(" ")
            and re.fullmatch(r"-{3,}", underline)
            and len(underline) == len(title)
        ):
            current = title
            out[current] = []
            i += 2
            continue
        if current is not None:
            out[current].append(lines[i])
        i += 1
    return out


def documented_names(section: list[str]) -> set[str]:
    """Names a Parameters/Attributes section documents: its unindented ``name : type`` lines
    (``a, b : int`` documents both; stars are dropped)."""
    names: set[str] = set()
    for line in section:
        if not line.strip() or line.startswith((" ", "\t")):
            continue
        match = _ENTRY.match(line.strip())
        if match:
            names.update(part.strip().lstrip("*") for part in match.group(1).split(","))
    return names


def _parameters(func) -> list[inspect.Parameter]:
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return []
    return [p for p in signature.parameters.values() if p.name not in ("self", "cls")]


def check(doc: str | None, params: list[inspect.Parameter], allowed: tuple[str, ...] = ("Parameters",)) -> str | None:
    """What is wrong with one docstring (None: nothing)."""
    if not doc or not doc.strip():
        return "no docstring"
    required = [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if not required:
        return None
    found = sections(doc)
    present = [s for s in allowed if s in found]
    if not present:
        return f"no {' or '.join(allowed)} section (underlined with dashes) for {', '.join(required)}"
    named = set().union(*(documented_names(found[s]) for s in present))
    missing = [name for name in required if name not in named]
    if missing:
        return f"{'/'.join(present)} does not document {', '.join(missing)}"
    return None


def _unwrap(obj):
    return inspect.unwrap(obj) if callable(obj) and hasattr(obj, "__wrapped__") else obj


def check_class(cls) -> list[tuple[str, str]]:
    """Problems of a class and of its public methods, as ``(qualified name, problem)``."""
    problems = []
    name = f"{cls.__module__}.{cls.__qualname__}"
    if dataclasses.is_dataclass(cls):
        fields = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY) for f in dataclasses.fields(cls) if f.init]
        problem = check(cls.__doc__, fields, ("Parameters", "Attributes"))
    elif issubclass(cls, BaseModel):
        fields = [inspect.Parameter(f, inspect.Parameter.KEYWORD_ONLY) for f in cls.model_fields]
        problem = check(cls.__doc__, fields, ("Parameters", "Attributes"))
    else:
        init = cls.__dict__.get("__init__")
        params = _parameters(init) if inspect.isfunction(init) else []
        doc = "\n\n".join(d for d in (cls.__doc__, init.__doc__ if inspect.isfunction(init) else None) if d)
        problem = check(doc if cls.__doc__ else None, params)
    if problem:
        problems.append((name, problem))
    for attr, member in vars(cls).items():
        if attr.startswith("_"):
            continue
        if isinstance(member, property):
            if not (member.fget and member.fget.__doc__ and member.fget.__doc__.strip()):
                problems.append((f"{name}.{attr}", "no docstring"))
            continue
        if isinstance(member, (staticmethod, classmethod)):
            member = member.__func__
        member = _unwrap(member)
        if inspect.isfunction(member):
            problem = check(member.__doc__, _parameters(member))
            if problem:
                problems.append((f"{name}.{attr}", problem))
    return problems


def public_objects(module) -> list:
    """Public functions and classes defined in ``module`` itself."""
    out = []
    for attr, obj in sorted(vars(module).items()):
        if attr.startswith("_"):
            continue
        obj = _unwrap(obj)
        if (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == module.__name__:
            out.append(obj)
    return out


def problems_of(module) -> list[tuple[str, str]]:
    problems = []
    for obj in public_objects(module):
        if inspect.isclass(obj):
            problems += check_class(obj)
        else:
            problem = check(obj.__doc__, _parameters(obj))
            if problem:
                problems.append((f"{obj.__module__}.{obj.__qualname__}", problem))
    return problems


def test_public_api_has_numpydoc_docstrings():
    problems = []
    for name in MODULES:
        problems += problems_of(importlib.import_module(name))
    assert not problems, f"{len(problems)} public names lack numpydoc docstrings:\n" + "\n".join(
        f"  {name}: {problem}" for name, problem in problems
    )


def test_the_modules_have_public_names():
    """The collection finds what it should (a checker that sees nothing passes everything)."""
    counted = sum(len(public_objects(importlib.import_module(name))) for name in MODULES)
    assert counted > 100
    names = {obj.__name__ for obj in public_objects(importlib.import_module("fedneurogen.shared.model.generator"))}
    assert {"NeuroGenModel", "parameter_count"} <= names
    assert "Batch" in {
        obj.__name__ for obj in public_objects(importlib.import_module("fedneurogen.shared.model.batch"))
    }


# -- the checker itself ---------------------------------------------------------------------------


def _good(windows, seed: int = 0, *args, **kwargs) -> int:
    """Count windows.

    Parameters
    ----------
    windows : PairedWindows
        The windows.
    seed : int
        Random seed.

    Returns
    -------
    int
        How many.
    """
    return len(windows)


def _prose(windows, seed: int = 0) -> int:
    """Count ``windows`` (``seed`` is unused): prose, no Parameters section."""
    return len(windows)


def _partial(windows, seed: int = 0) -> int:
    """Count windows.

    Parameters
    ----------
    windows : PairedWindows
        The windows; ``seed`` is only mentioned here, not documented.
    """
    return len(windows)


def _no_underline(windows) -> int:
    """Count windows.

    Parameters
    windows : PairedWindows
        The windows.
    """
    return len(windows)


def _undocumented(windows) -> int:
    return len(windows)


def _no_parameters() -> int:
    """Nothing to document but this line."""
    return 0


@dataclasses.dataclass
class _Fields:
    """Two fields.

    Attributes
    ----------
    a, b : int
        Both documented on one line.
    """

    a: int
    b: int = 0


@dataclasses.dataclass
class _MissingField:
    """Two fields, one documented.

    Attributes
    ----------
    a : int
        The first.
    """

    a: int
    b: int = 0


class _Plain:
    """A class that documents its constructor.

    Parameters
    ----------
    size : int
        How big.
    """

    def __init__(self, size: int):
        self.size = size

    def grow(self, by: int) -> int:
        return self.size + by


@pytest.mark.parametrize(
    "func, expected",
    [
        (_good, None),
        (_no_parameters, None),
        (_prose, "no Parameters section"),
        (_partial, "does not document seed"),
        (_no_underline, "no Parameters section"),
        (_undocumented, "no docstring"),
    ],
)
def test_checker_flags_badly_documented_functions(func, expected):
    problem = check(func.__doc__, _parameters(func))
    if expected is None:
        assert problem is None
    else:
        assert problem is not None and expected in problem


def test_checker_on_classes():
    assert check_class(_Fields) == []
    assert check_class(_MissingField) == [(f"{__name__}._MissingField", "Attributes does not document b")]
    assert [name for name, _ in check_class(_Plain)] == [f"{__name__}._Plain.grow"]


def test_sections_parse_grouped_and_starred_names():
    doc = _good.__doc__ + "\n    Other Parameters\n    ----------------\n    a, *rest : int\n        Grouped.\n"
    found = sections(doc)
    assert set(found) == {"Parameters", "Returns", "Other Parameters"}
    assert documented_names(found["Parameters"]) == {"windows", "seed"}
    assert documented_names(found["Other Parameters"]) == {"a", "rest"}
