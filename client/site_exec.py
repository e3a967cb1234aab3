"""The site's gate on what runs next to its data: ``flower-superexec`` that launches only approved apps.

Whoever submits a run chooses the app (a FAB) whose ClientApp then runs at every site. A site
replaces ``flower-superexec`` (the process that launches ClientApps for its SuperNode) with

    python -m fedneurogen.client.site_exec --allowed-apps /etc/fedneurogen/allowed-apps.txt  <flower-superexec flags>

(or sets ``FEDNEUROGEN_ALLOWED_APPS`` and puts the ``flower-superexec`` shim of
``install_shim`` first on the SuperNode's PATH, for ``--isolation subprocess``). Every task
Flower hands it carries the SHA-256 of the run's FAB; a task whose app is not in the allowlist
is never launched: the site logs the refusal with the hash, nothing of the app executes, and
the server sees no reply from the site. The allowlist holds one hash per line (``#`` comments);
``fedneurogen app-hash`` prints the hash of a release's app folder, which ``flwr build`` makes
reproducibly (the same files give the same FAB).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from fedneurogen.shared.errors import ConfigError

ALLOWLIST_ENV = "FEDNEUROGEN_ALLOWED_APPS"
HASH = re.compile(r"[0-9a-f]{64}")


def read_allowlist(path: str | Path) -> frozenset[str]:
    """The app hashes in ``path``; a clear error for a missing file, a bad line or no hash."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"allowlist {path} does not exist (one app SHA-256 per line; `fedneurogen app-hash` prints it)")
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
        done = subprocess.run(["flwr", "build", "--app", str(app)], cwd=out, capture_output=True, text=True, timeout=300)
        fabs = list(Path(out).glob("*.fab"))
        if done.returncode != 0 or len(fabs) != 1:
            raise ConfigError(f"flwr build --app {app} failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")
        return hashlib.sha256(fabs[0].read_bytes()).hexdigest()


def allowlist_plugin(allowed: frozenset[str], source: str):
    """Flower's task-driven SuperExec plugin, refusing tasks whose app is not in ``allowed``."""
    from logging import ERROR

    from flwr.common import log
    from flwr.supercore.superexec.executor import LaunchResult
    from flwr.supercore.superexec.plugin import AutoExecPlugin

    class AllowlistExecPlugin(AutoExecPlugin):
        def launch_task(self, token: str, task) -> LaunchResult:  # noqa: ANN001 - Flower's Task message
            fab_hash = getattr(task, "fab_hash", "") or ""
            if fab_hash not in allowed:
                shown = fab_hash or "(none given)"
                log(ERROR, "site refused app %s of run %s: not in the allowlist %s; nothing of it was executed", shown, task.run_id, source)
                return LaunchResult.failed(f"app {shown} is not in the site's allowlist {source}")
            return super().launch_task(token, task)

    return AllowlistExecPlugin


def install_shim(folder: Path, allowlist: Path) -> Path:
    """A ``flower-superexec`` in ``folder`` that runs this gate with ``allowlist``: put ``folder``
    first on a SuperNode's PATH (``--isolation subprocess`` starts ``flower-superexec`` by name)."""
    folder.mkdir(parents=True, exist_ok=True)
    shim = folder / "flower-superexec"
    shim.write_text(
        f'#!/bin/sh\nexec "{sys.executable}" -m fedneurogen.client.site_exec --allowed-apps "{allowlist}" "$@"\n', encoding="utf-8"
    )
    shim.chmod(0o755)
    return shim


def main(argv: list[str] | None = None) -> None:
    """``flower-superexec`` with the allowlist: ``--allowed-apps FILE`` (or $FEDNEUROGEN_ALLOWED_APPS),
    every other argument passed to Flower's own command."""
    args = list(sys.argv[1:] if argv is None else argv)
    source = os.environ.get(ALLOWLIST_ENV)
    if "--allowed-apps" in args:
        at = args.index("--allowed-apps")
        if at + 1 >= len(args):
            sys.exit("error: --allowed-apps needs a file")
        source = args[at + 1]
        del args[at : at + 2]
    if not source:
        sys.exit(f"error: give the site's allowlist of apps with --allowed-apps FILE or ${ALLOWLIST_ENV}")
    try:
        allowed = read_allowlist(source)
    except ConfigError as err:
        sys.exit(f"error: {err}")

    import flwr.supercore.superexec.run_superexec as superexec
    from flwr.supercore.cli.flower_superexec import flower_superexec

    superexec.AutoExecPlugin = allowlist_plugin(allowed, source)  # the plugin run_superexec builds
    sys.argv = ["flower-superexec", *args]
    flower_superexec()


if __name__ == "__main__":
    main()
