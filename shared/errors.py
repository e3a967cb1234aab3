"""Errors a user sees. Each names the file (or dataset) and what is wrong with it."""

from __future__ import annotations

from pathlib import Path


class FedNeuroGenError(Exception):
    """Base class for errors that are the user's input, not a bug in the program."""


class DataError(FedNeuroGenError):
    """A file or dataset that cannot be used, with the path and the problem.

    The message reads ``"<path>: <problem>"``.

    Parameters
    ----------
    path : str | Path
        The file or dataset folder at fault (kept as ``self.path``, a ``Path``).
    problem : str
        What is wrong with it, in words (kept as ``self.problem``).
    """

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ConfigError(FedNeuroGenError):
    """A configuration (preset, checkpoint config, run config) that does not fit."""
