"""Atomic file writes and content hashing.

Every checkpoint and output is written to a temporary file in the same directory and then
renamed over the target, so a crash mid-write never leaves a half-written file behind. A
folder's signed manifest of hashes is ``shared/manifest.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    The parent folder is created. On an exception the temporary file is removed and ``path`` is
    left as it was.

    Parameters
    ----------
    path : str | Path
        The file to write.
    suffix : str | None
        Suffix of the temporary file, to keep the extension readers key on (e.g. ``.edf``,
        ``.gii``); None: the full suffix of ``path``.
    mode : int | None
        The file's permissions (e.g. 0o600 for a private key, which then is never readable by
        others, not even as the temporary file); None: 0o666 minus the umask.

    Yields
    ------
    Path
        The temporary file to write to.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600; give the final file the usual permissions (0666 minus the umask)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask if mode is None else mode)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write(path: str | Path, writer: Callable[[Path], Any], suffix: str | None = None) -> Path:
    """Call ``writer(tmp_path)`` and move the result onto ``path`` atomically.

    Parameters
    ----------
    path : str | Path
        The file to write.
    writer : callable
        ``writer(tmp_path)`` writes the content to the temporary path it is given.
    suffix : str | None
        Suffix of the temporary file, as in ``atomic_path``.

    Returns
    -------
    Path
        ``path``.
    """
    with atomic_path(path, suffix=suffix) as tmp:
        writer(tmp)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` as UTF-8, atomically.

    Parameters
    ----------
    path : str | Path
        The file to write.
    text : str
        Its content.

    Returns
    -------
    Path
        ``path``.
    """
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_bytes_atomic(path: str | Path, data: bytes, mode: int | None = None) -> Path:
    """Write ``data``, atomically.

    Parameters
    ----------
    path : str | Path
        The file to write.
    data : bytes
        Its content.
    mode : int | None
        The file's permissions, as in ``atomic_path``.

    Returns
    -------
    Path
        ``path``.
    """
    with atomic_path(path, mode=mode) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json_atomic(path: str | Path, obj: Any, indent: int = 2, mode: int | None = None) -> Path:
    """Write ``obj`` as JSON (UTF-8, newline-terminated), atomically.

    NumPy scalars and arrays and ``Path`` objects are converted; anything else that JSON
    cannot hold raises ``TypeError``.

    Parameters
    ----------
    path : str | Path
        The file to write.
    obj : Any
        The JSON-ready object.
    indent : int
        Indentation of the JSON text.
    mode : int | None
        The file's permissions, as in ``atomic_path`` (0o600: private).

    Returns
    -------
    Path
        ``path``.
    """
    text = json.dumps(obj, indent=indent, sort_keys=False, default=_json_default) + "\n"
    return write_bytes_atomic(path, text.encode("utf-8"), mode=mode)


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's contents.

    Parameters
    ----------
    path : str | Path
        The file.
    chunk : int
        Bytes read at a time.

    Returns
    -------
    str
        64 lower-case hex digits.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
