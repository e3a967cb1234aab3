"""Where a command may write: a folder it can write to, and never inside the data it reads.

A user's dataset is read-only to every command, and a folder the project did not make is never
rewritten (``../shared/ARCHITECTURE.md`` section 3). Every command that reads site data and
writes results checks its output folder here, before it reads anything: the folder must lie
outside every dataset it reads (and hold none of them), be new, empty or made by a command
(``OUTPUT_MARKER``), and be a folder this process can create and write to. Both problems are one clear line, not a traceback
after the whole site has been loaded.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from fedneurogen.shared.errors import ConfigError, DataError


def _real(path: str | Path) -> Path:
    # realpath follows symbolic links, so an output reached through a link into a site is caught
    return Path(os.path.realpath(Path(path).expanduser()))


def check_outside_inputs(
    out: str | Path, inputs: Iterable[str | Path], what: str = "--out", around: bool = True
) -> None:
    """Refuse an output folder that is, lies inside, or contains one of the datasets read.

    Parameters
    ----------
    out : str | Path
        The output folder (it may not exist yet).
    inputs : iterable of str | Path
        The datasets the command reads (site folders).
    what : str
        How the user named the output, for the message (``--out``, ``--run-dir``, ...).
    around : bool
        Also refuse an output folder that holds a dataset (False for a folder that writes only
        into subfolders of its own, such as the cache).

    Raises
    ------
    ConfigError
        Naming the output and the dataset, when the output would land in (or around) user data.
    """
    target = _real(out)
    for dataset in inputs:
        source = _real(dataset)
        if target == source or source in target.parents:
            raise ConfigError(
                f"{out}: {what} lies inside the dataset {dataset}, which is read-only to every command; "
                "write the output to a folder outside it"
            )
        if around and target in source.parents:
            raise ConfigError(
                f"{out}: {what} holds the dataset {dataset}, which is read-only to every command; "
                "write the output to a folder beside it, not around it"
            )


#: Written into every output folder a command makes: only such folders (or empty ones) are written again.
OUTPUT_MARKER = ".fedneurogen-output"


def prepare_output_folder(
    out: str | Path, inputs: Iterable[str | Path] = (), what: str = "--out", own: bool = True
) -> Path:
    """Check an output folder against the datasets read, create it and make sure it is writable.

    With ``own``, the folder must also be new, empty or one a command made (it holds
    ``OUTPUT_MARKER``, written here): files in a folder the project did not make are never
    overwritten.

    Parameters
    ----------
    out : str | Path
        The output folder.
    inputs : iterable of str | Path
        The datasets the command reads (see ``check_outside_inputs``).
    what : str
        How the user named the output, for the messages.
    own : bool
        Claim the folder (see above); False for a folder with its own rules (a run folder that
        ``--resume`` continues).

    Returns
    -------
    Path
        ``out``, which now exists.

    Raises
    ------
    ConfigError
        When the output lies inside (or around) a dataset read, or (``own``) is a folder with
        other files that no command made.
    DataError
        When the folder cannot be created or written to (permissions, a file in the way, a
        read-only file system).
    """
    out = Path(out)
    check_outside_inputs(out, inputs, what)
    if own and out.is_dir() and not (out / OUTPUT_MARKER).is_file() and any(out.iterdir()):
        names = sorted(p.name for p in out.iterdir())
        raise ConfigError(
            f"{out}: {what} holds files no fedneurogen command wrote ({', '.join(names[:4])}"
            f"{' ...' if len(names) > 4 else ''}); choose a new or empty folder"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out, prefix=".write-check-"):
            pass
        if own and not (out / OUTPUT_MARKER).is_file():
            (out / OUTPUT_MARKER).write_text("Written by FedNeuroGen: its commands write into this folder again.\n")
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise DataError(out, f"{what} cannot be written ({reason.lower()}); choose a folder you can write to") from None
    return out
