"""Problems found in a dataset: what ``validate_dataset`` lists and ``load_site`` warns about."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Severity = Literal["error", "warning"]


class DataWarning(UserWarning):
    """A dataset problem the loader worked around (a skipped run, a dropped channel, ...)."""


@dataclass(frozen=True)
class Problem:
    """One problem with one file (or with the dataset, then ``path`` is the site folder)."""

    path: Path
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"

    def to_dict(self) -> dict[str, str]:
        return {"path": str(self.path), "message": self.message, "severity": self.severity}

    @classmethod
    def from_dict(cls, d: dict[str, str]) -> "Problem":
        return cls(Path(d["path"]), d["message"], d.get("severity", "error"))  # type: ignore[arg-type]


def warn_problem(problem: Problem) -> None:
    """Emit a problem as a ``DataWarning`` whose text names the file."""
    warnings.warn(str(problem), DataWarning, stacklevel=3)
