"""The ``fedneurogen`` command line: ``app`` is the entry point (``[project.scripts]`` in pyproject.toml).

Each subcommand is a thin layer over a library function. The commands live in one module per
area, and ``fedneurogen --help`` lists them in this order:

- ``data``: ``simulate``, ``validate``, ``cache``;
- ``train``: ``info``, ``train``, ``federate``;
- ``results``: ``synthesize``, ``evaluate``, ``explain``;
- ``fairness``: ``augment``, ``fairness-table``;
- ``privacy``: ``audit``, ``privacy-plan``, ``privacy-budget``;
- ``deploy``: ``app-hash``, ``certs``, ``keys``, ``consortium``.

What they share (the ``app``, global options, consoles, logging, errors and exit codes, the
options table laid out for 80 columns) is ``common``.
"""

# Start-up time: importing this package imports every command module, to register its commands
# on ``app``. So those modules import only the standard library, typer, click and rich at their
# top; each command imports the library it wraps (torch, flwr, ...) inside its function, so that
# ``fedneurogen --help`` stays fast. Keep it that way when adding a command.
from fedneurogen.cli.common import app
from fedneurogen.cli import data, train, results, fairness, privacy, deploy  # noqa: E402, F401  (registers the commands, in this order)

__all__ = ["app", "main"]


def main() -> None:
    """Run the command line (``python -m fedneurogen.cli``)."""
    app()
