"""Which folders the simulator may write into: only those it made itself.

A user's dataset is read-only to every command (``../shared/ARCHITECTURE.md`` section 3). The
simulator writes, rewrites and deletes files, so before its first byte it checks that its output
folder is empty or carries the marker file it writes into every folder it makes, and that each
site folder it is about to write is absent or marked too. The marker is never inferred from a
dataset's name or contents: a folder called ``site-01`` whose description says "FedNeuroGen
simulated site" but has no marker is someone else's and is never touched.
"""

from __future__ import annotations

import json
from pathlib import Path

from fedneurogen.shared.errors import ConfigError
from fedneurogen.shared.io import write_json_atomic

#: The file the simulator writes into every folder it makes (a dotfile, which BIDS tools ignore).
MARKER = ".fedneurogen-simulated"
_MARKER_TEXT = {
    "generator": "fedneurogen.simulations",
    "note": "Written by the FedNeuroGen simulator, which rewrites or removes only folders holding this file.",
}


def made_by_simulator(folder: Path) -> bool:
    """Whether ``folder`` is a real folder (not a symbolic link) that carries the simulator's marker.

    Parameters
    ----------
    folder : Path
        A folder, which may not exist.

    Returns
    -------
    bool
        True when the simulator made it (and so may rewrite or delete it).
    """
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return False
    marker = folder / MARKER
    if marker.is_symlink() or not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text(encoding="utf-8")).get("generator") == _MARKER_TEXT["generator"]
    except (OSError, ValueError, AttributeError):
        return False


def _contents(folder: Path, limit: int = 5) -> str:
    names = sorted(p.name for p in folder.iterdir())
    shown = ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
    return f"{len(names)} entr{'y' if len(names) == 1 else 'ies'}: {shown}"


def check_writable_by_simulator(out: Path, site_ids: list[str]) -> None:
    """Refuse, before anything is written, an output the simulator did not make.

    ``out`` must be absent, an empty folder or a folder the simulator made; each
    ``out/<site_id>`` must be absent or made by the simulator. Symbolic links are never written
    through: a linked site is someone's data kept elsewhere.

    Parameters
    ----------
    out : Path
        The simulator's output folder (it receives the site folders and ``simulation.json``).
    site_ids : list of str
        The site folders it is about to write (``site-01``, ...).

    Raises
    ------
    ConfigError
        Naming the folder and what is in it, when the simulator would write into a folder it did
        not make.
    """
    out = Path(out)
    hint = "the simulator writes only into an empty folder or one it made: choose another --out"
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ConfigError(f"{out}: not a folder the simulator made (a file or a symbolic link); {hint}")
    if not out.exists():
        return
    if not made_by_simulator(out) and any(out.iterdir()):
        raise ConfigError(f"{out}: not empty and not made by the simulator ({_contents(out)}); {hint}")
    for site_id in site_ids:
        site = out / site_id
        if site.is_symlink():
            raise ConfigError(f"{site}: a symbolic link (data kept elsewhere), never written by the simulator; {hint}")
        if site.exists() and not made_by_simulator(site):
            raise ConfigError(f"{site}: exists and was not made by the simulator ({_contents(site)}); {hint}")


def claim(folder: Path) -> None:
    """Create ``folder`` (if needed) and write the simulator's marker into it.

    Parameters
    ----------
    folder : Path
        A folder that ``check_writable_by_simulator`` has cleared.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not made_by_simulator(folder):
        write_json_atomic(folder / MARKER, _MARKER_TEXT)
