"""What every command of the ``fedneurogen`` command line shares: the typer ``app`` and its global
options (``--verbose``/``--quiet``/``--version``), the consoles, logging on stderr, the options
table laid out for 80 columns, errors and exit codes, and helpers several commands use.

Output: a command's results go to stdout (``console``). The library reports status through
``logging`` (loggers under ``fedneurogen``); ``_main`` shows those records on stderr, one line
each, at INFO (``--verbose``: DEBUG; ``--quiet``: WARNING), and ``--quiet`` also turns progress
bars off: commands pass ``progress=show_progress()`` to the library functions that draw them.
"""

from __future__ import annotations

import logging
from enum import Enum
from pathlib import Path

import click
import typer
import typer.rich_utils
from rich.console import Console
from rich.table import Table
from rich.text import Text

app = typer.Typer(
    name="fedneurogen",
    help="Federated cross-modal neuroimaging generation: EEG -> fMRI BOLD / fNIRS HbO-HbR.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


class _OptionsTable(Table):
    """The table typer draws a command's options in, laid out to leave the help text room.

    typer gives each row a cell for: the required marker (when some option is required), the
    long names, the short names, the ``--no-`` names and their short forms, the metavar, the
    help. At 80 columns rich shrinks the widest columns to one width, so a choice metavar
    (``[generate|linear-gaussian|...]``) or a ``--no-`` column left the help a word or two a
    line. Here a ``--no-`` name goes under its option, the metavar column is capped at a fifth
    of the width (a longer one folds, a choice list after its ``|``), and the columns empty in
    every row are left out. In the commands panel a help's line breaks (from its docstring)
    become spaces.
    """

    def add_row(self, *renderables, **kwargs) -> None:
        cells = list(renderables)
        if len(cells) >= 6:  # an options row: [required,] long, short, --no- long, --no- short, metavar, help
            for name, negative in ((-6, -4), (-5, -3)):
                if isinstance(cells[name], Text) and isinstance(cells[negative], Text) and cells[negative].plain:
                    merged = cells[name].copy()
                    merged.append("\n")
                    merged.append_text(cells[negative])
                    cells[name], cells[negative] = merged, Text("")
        elif len(cells) == 2 and isinstance(cells[1], Text) and "\n" in cells[1].plain:  # a commands panel row
            cells[1] = Text(" ").join(cells[1].split("\n"))  # a docstring's line break is not a paragraph's
        super().add_row(*cells, **kwargs)

    def _fit(self, width: int) -> None:
        if len(self.columns) < 6:  # not an options table (or already fitted)
            return
        metavar = self.columns[-2]
        metavar.max_width = max(18, width // 5)
        metavar._cells = [_fold_choices(cell, metavar.max_width) for cell in metavar._cells]
        self.columns[:] = [c for c in self.columns if any(str(cell) for cell in c.cells)]

    def __rich_measure__(self, console, options):
        self._fit(options.max_width)
        return super().__rich_measure__(console, options)

    def __rich_console__(self, console, options):
        self._fit(options.max_width)
        yield from super().__rich_console__(console, options)


def _fold_choices(cell, width: int):
    """A choice metavar longer than ``width`` broken into lines after its ``|`` separators
    (``[generate|linear-gaussian|...]`` has no space, so rich would cut it inside a word)."""
    if not isinstance(cell, Text) or len(cell.plain) <= width or "|" not in cell.plain or "\n" in cell.plain:
        return cell
    lines, start, end = [], 0, 0
    for i, char in enumerate(cell.plain):
        if char == "|":
            if i + 1 - start > width and end > start:
                lines.append(cell[start:end])
                start = end
            end = i + 1
    if len(cell.plain) - start > width and end > start:
        lines.append(cell[start:end])
        start = end
    lines.append(cell[start:])
    return Text("\n").join(lines)


typer.rich_utils.Table = _OptionsTable  # typer has no setting for the options table's layout
#: Line width of output that is not a terminal (a pipe, a file): wide enough that rich never breaks
#: a path or cuts a table cell, which it does at its default of 80 columns.
PIPE_WIDTH = 4096

#: The logger whose records the command line shows: the parent of every library module's
#: ``logging.getLogger(__name__)``.
LOGGER = "fedneurogen"
#: Settings of the running command, from the global options (reset when it ends).
_settings = {"progress": True}


class SimModality(str, Enum):
    fmri = "fmri"
    fnirs = "fnirs"
    mixed = "mixed"


def _show_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        console.print(
            f"fedneurogen {version('fedneurogen')} (flwr {version('flwr')}, torch {version('torch')})", highlight=False
        )
        raise typer.Exit()


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001 - warnings.showwarning's signature
    """A warning as one readable line (``warning: <file>: <problem>``), not Python's
    ``file:line: Category`` form with the source line."""
    from rich.markup import escape

    err_console.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)


def show_progress() -> bool:
    """Whether the running command shows progress bars (``--quiet`` turns them off)."""
    return _settings["progress"]


def _configure_logging(ctx: typer.Context, level: int) -> None:
    """Show the library's log records from ``level`` up on stderr, one line each, while the
    command runs; the logger is restored when it ends (tests run many commands in one process)."""
    from rich.logging import RichHandler

    logger = logging.getLogger(LOGGER)
    handler = RichHandler(console=err_console, show_time=False, show_path=False, markup=False)
    handler.setFormatter(logging.Formatter("%(message)s"))
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)

    def restore() -> None:
        logger.removeHandler(handler)
        logger.setLevel(previous)
        _settings["progress"] = True

    ctx.call_on_close(restore)


@app.callback()
def _main(
    ctx: typer.Context,
    show_version: bool = typer.Option(
        False, "--version", callback=_show_version, is_eager=True, help="Print the versions and exit."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also show debug messages."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Show only warnings and errors; no progress bars."),
) -> None:
    """Federated cross-modal neuroimaging generation: EEG -> fMRI BOLD / fNIRS HbO-HbR."""
    import warnings

    if verbose and quiet:
        raise click.UsageError("--verbose and --quiet cannot be used together", ctx=ctx)
    warnings.showwarning = _show_warning  # e.g. "warning: sub-02/eeg/...edf: run ... skipped: truncated"
    _settings["progress"] = not quiet
    _configure_logging(ctx, logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    _unwrapped_when_piped(ctx)


def _unwrapped_when_piped(ctx: typer.Context) -> None:
    """Output that is not a terminal is not wrapped: a path copied from a log or a pipe must be
    whole. ``COLUMNS``, when set, is respected; the consoles are restored when the command ends."""
    import os

    saved = [(c, c.soft_wrap, c.width) for c in (console, err_console)]
    for c in (console, err_console):
        if not c.is_terminal and not os.environ.get("COLUMNS", "").isdigit():
            c.soft_wrap = True
            c.width = PIPE_WIDTH

    def restore() -> None:
        for c, soft_wrap, width in saved:
            c.soft_wrap, c.width = soft_wrap, width

    ctx.call_on_close(restore)


#: Exit codes: 1 a dataset, checkpoint or other input file cannot be used (DataError and the
#: like); 2 the command was called wrongly: an option, a preset or a run config (ConfigError,
#: and click's own usage errors, which also exit 2).
EXIT_DATA, EXIT_CONFIG = 1, 2


def fail_on(err: Exception) -> None:
    """One line for a library error, with the exit code of its kind."""
    from fedneurogen.shared.errors import ConfigError

    fail(str(err), EXIT_CONFIG if isinstance(err, ConfigError) else EXIT_DATA)


def trust_unsigned_option() -> typer.models.OptionInfo:
    """``--trust-unsigned`` of every command that loads a checkpoint (``shared/signing.py``)."""
    return typer.Option(
        False,
        "--trust-unsigned",
        help="Load a checkpoint that is unsigned or signed by a key you do not trust (`fedneurogen keys`), with a "
        "warning; its files are still checked against its manifest. Only for a checkpoint whose source you trust.",
    )


def fail(message: str, code: int = 1) -> None:
    from rich.markup import escape

    # file names and patterns may hold [brackets]; soft wrap: a path is never broken by a newline
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


class Preset(str, Enum):
    tiny = "tiny"
    small = "small"
    base = "base"


def load_sites(data: list[Path], preprocess):
    """Each site's windows; a skipped run is one warning line, and a site with skipped runs
    gets a closing line saying that the others are used."""
    from fedneurogen.shared.data import load_site_data

    sites = []
    for folder in data:
        loaded = load_site_data(folder, preprocess, progress=show_progress())
        loaded.warn()
        if loaded.skipped:
            used = len(set(loaded.windows.runs.tolist()))
            err_console.print(f"{folder}: {len(loaded.skipped)} run(s) skipped (above), {used} used", highlight=False)
        sites.append(loaded.windows)
    return sites
