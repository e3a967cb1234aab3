"""Which Flower apps a site runs: the SHA-256 of an app (FAB) and the site's allowlist file.

Used by the site's gate (``fedneurogen.client.site_exec``), by ``fedneurogen app-hash`` and by the
local consortium; one hash per line in the file, ``#`` comments allowed.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import tempfile
from pathlib import Path

from fedneurogen.shared.errors import ConfigError

HASH = re.compile(r"[0-9a-f]{64}")


def read_allowlist(path: str | Path) -> frozenset[str]:
    """The app hashes in ``path``; a clear error for a missing file, a bad line or no hash."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"allowlist {path} does not exist (one app SHA-256 per line; `fedneurogen app-hash` prints it)"
        )
    hashes = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        entry = line.split("#", 1)[0].strip().lower()
        if not entry:
            continue
        if not HASH.fullmatch(entry):
            raise ConfigError(f"{path}:{number}: {entry[:80]!r} is not a SHA-256 (64 hex digits)")
        hashes.add(entry)
    if not hashes:
        raise ConfigError(f"allowlist {path} holds no app hash: every run would be refused")
    return frozenset(hashes)


def app_hash(app: str | Path) -> str:
    """The SHA-256 of the FAB ``flwr build`` makes of the app folder ``app`` (what ``flwr run``
    sends and what the site's SuperExec is asked to launch)."""
    app = Path(app).resolve()
    if not (app / "pyproject.toml").is_file():
        raise ConfigError(f"{app} is not a Flower app folder (no pyproject.toml)")
    with tempfile.TemporaryDirectory() as out:
        done = subprocess.run(
            ["flwr", "build", "--app", str(app)], cwd=out, capture_output=True, text=True, timeout=300
        )
        fabs = list(Path(out).glob("*.fab"))
        if done.returncode != 0 or len(fabs) != 1:
            raise ConfigError(f"flwr build --app {app} failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")
        return hashlib.sha256(fabs[0].read_bytes()).hexdigest()
