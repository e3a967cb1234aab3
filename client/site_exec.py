"""The site's gate on what runs next to its data: ``flower-superexec`` that launches only approved apps.

Whoever submits a run chooses the app (a FAB) whose ClientApp then runs at every site. A site
replaces ``flower-superexec`` (the process that launches ClientApps for its SuperNode) with

    python -m fedneurogen.client.site_exec --allowed-apps /etc/fedneurogen/allowed-apps.txt  <flower-superexec flags>

(or sets ``FEDNEUROGEN_ALLOWED_APPS``, or puts a ``flower-superexec`` that runs this first on the
SuperNode's PATH, as the local consortium does, for ``--isolation subprocess``). Every task
Flower hands it carries the SHA-256 of the run's FAB; a task whose app is not in the allowlist
is never launched: the site logs the refusal with the hash, nothing of the app executes, and
the server sees no reply from the site. The allowlist's format and the app hash live in
``fedneurogen.shared.deploy.apps``; ``fedneurogen app-hash`` prints the hash of a release.
"""

from __future__ import annotations

import os
import sys

from fedneurogen.shared.deploy.apps import read_allowlist
from fedneurogen.shared.errors import ConfigError

ALLOWLIST_ENV = "FEDNEUROGEN_ALLOWED_APPS"


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
                log(
                    ERROR,
                    "site refused app %s of run %s: not in the allowlist %s; nothing of it was executed",
                    shown,
                    task.run_id,
                    source,
                )
                return LaunchResult.failed(f"app {shown} is not in the site's allowlist {source}")
            return super().launch_task(token, task)

    return AllowlistExecPlugin


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
