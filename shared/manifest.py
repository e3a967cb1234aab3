"""A folder's manifest: the SHA-256 of each of its files, signed by the writer's key.

Checkpoints carry one (``MANIFEST.sha256``, ``sha256sum`` format): ``write_manifest`` writes and
signs it (``shared/signing.py``), ``verify_manifest`` checks the signature and then every file.
Above both ``shared/io.py`` (atomic writes, hashing) and ``shared/signing.py`` (keys), which
import neither this module nor each other's callers.
"""

from __future__ import annotations

from pathlib import Path

from fedneurogen.shared.io import file_sha256, write_bytes_atomic
from fedneurogen.shared.signing import check_signature, sign_manifest

#: A folder's manifest: ``sha256sum`` format (``<hex>  <name>`` per line), so ``sha256sum -c
#: MANIFEST.sha256`` checks it by hand too. It is signed by the writer's key (``shared/signing.py``):
#: the signature is ``MANIFEST.sha256.sig`` beside it.
MANIFEST_FILE = "MANIFEST.sha256"


def write_manifest(folder: str | Path, names: list[str], known: dict[str, str] | None = None) -> Path:
    """Write ``folder/MANIFEST.sha256`` for the files ``names``, atomically, and sign it with this
    user's key (``signing.sign_manifest``: ``MANIFEST.sha256.sig``).

    Parameters
    ----------
    folder : str | Path
        The folder that holds the files.
    names : list of str
        File names inside ``folder``.
    known : dict of str to str | None
        Hashes already computed, by file name; the others are read from disk.

    Returns
    -------
    Path
        The manifest file.

    Raises
    ------
    ConfigError
        This user's signing key cannot be made or read.
    """
    folder = Path(folder)
    known = known or {}
    lines = [f"{known.get(name) or file_sha256(folder / name)}  {name}" for name in sorted(names)]
    manifest = write_bytes_atomic(folder / MANIFEST_FILE, ("\n".join(lines) + "\n").encode("utf-8"))
    sign_manifest(manifest)
    return manifest


def read_manifest(folder: str | Path) -> dict[str, str] | None:
    """Read a folder's manifest.

    Parameters
    ----------
    folder : str | Path
        The folder.

    Returns
    -------
    dict of str to str | None
        ``{file name: sha256}``; None when the folder has no manifest.

    Raises
    ------
    ValueError
        The manifest is malformed or names a file outside the folder (the message names the line).
    """
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        return None
    return _parse_manifest(path, path.read_bytes())


def _parse_manifest(path: Path, data: bytes) -> dict[str, str]:
    out = {}
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or not name or "/" in name or name in (".", ".."):
            raise ValueError(f"{path} line {number} is not '<sha256>  <file name>': {line[:80]!r}")
        out[name] = digest
    return out


def verify_manifest(
    folder: str | Path, skip: set[str] = frozenset(), trust_unsigned: bool | None = None
) -> dict[str, str] | None:
    """Check that a folder's manifest was signed by a key this user accepts, then every file it
    lists against its hash.

    Parameters
    ----------
    folder : str | Path
        The folder.
    skip : set of str
        File names not checked (e.g. a large file checked elsewhere).
    trust_unsigned : bool | None
        Accept a folder that is unsigned (no manifest, or no signature), signed by an unknown key
        or whose signature does not match, with a warning; the files are still checked against
        the manifest when there is one. None: as the running command says
        (``signing.trusting_unsigned``).

    Returns
    -------
    dict of str to str | None
        The manifest, ``{file name: sha256}``; None when the folder has none (accepted only with
        ``trust_unsigned``; nothing is checked).

    Raises
    ------
    UntrustedSignature
        Unsigned, signed by a key this user does not trust, or a signature that does not match
        (a ``ConfigError`` naming the folder and how to proceed).
    ValueError
        The manifest is malformed, or names the first file that is missing or differs.
    """
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    data = path.read_bytes() if path.is_file() else None  # read once: the bytes checked are the bytes used
    check_signature(folder, path, data, trust_unsigned)
    manifest = None if data is None else _parse_manifest(path, data)
    for name, digest in (manifest or {}).items():
        if name in skip:
            continue
        file = folder / name
        if not file.is_file():
            raise ValueError(f"{file} is listed in {folder / MANIFEST_FILE} but missing")
        actual = file_sha256(file)
        if actual != digest:
            raise ValueError(
                f"{file} is corrupt or was modified: its SHA-256 {actual} does not match {digest} in {folder / MANIFEST_FILE}"
            )
    return manifest
