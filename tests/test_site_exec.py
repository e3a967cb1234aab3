"""The site's gate on apps (fedneurogen.client.site_exec): the allowlist file is read strictly,
and Flower's SuperExec plugin launches an allowed app and never an unknown one."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from fedneurogen.client.site_exec import allowlist_plugin
from fedneurogen.shared.deploy.apps import read_allowlist
from fedneurogen.simulations.consortium import install_shim
from fedneurogen.shared.errors import ConfigError

GOOD, OTHER = "a" * 64, "b" * 64


def test_allowlist_file_is_read_strictly(tmp_path):
    path = tmp_path / "allowed.txt"
    path.write_text(f"# approved releases\n{GOOD.upper()}  # 0.1.0\n\n")
    assert read_allowlist(path) == {GOOD}
    path.write_text("not-a-hash\n")
    with pytest.raises(ConfigError, match=r"allowed.txt:1: 'not-a-hash' is not a SHA-256"):
        read_allowlist(path)
    path.write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match="holds no app hash"):
        read_allowlist(path)
    with pytest.raises(ConfigError, match="does not exist"):
        read_allowlist(tmp_path / "missing.txt")


class RecordingExecutor:
    def __init__(self):
        self.launched = []

    def launch(self, spec):
        from flwr.supercore.superexec.executor import LaunchResult

        self.launched.append(spec.fab_hash)
        return LaunchResult.accepted()


def test_only_allowed_apps_are_launched(caplog):
    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.executor import LaunchResultStatus

    executor = RecordingExecutor()
    plugin = allowlist_plugin(frozenset({GOOD}), "allowed.txt")(
        runtime_api_address="127.0.0.1:1", insecure=True, root_certificates_path=None, executor=executor
    )
    task = lambda fab_hash: SimpleNamespace(type=str(TaskType.CLIENT_APP), task_id=1, run_id=7, fab_hash=fab_hash)  # noqa: E731
    assert plugin.launch_task("token", task(GOOD)).status == LaunchResultStatus.ACCEPTED
    refused = plugin.launch_task("token", task(OTHER))
    assert refused.status == LaunchResultStatus.FAILED and "not in the site's allowlist" in refused.message
    assert plugin.launch_task("token", task("")).status == LaunchResultStatus.FAILED  # no hash: cannot be checked
    assert executor.launched == [GOOD]  # nothing of the other apps was started


def test_shim_runs_the_gate(tmp_path):
    shim = install_shim(tmp_path / "bin", tmp_path / "allowed.txt")
    text = shim.read_text()
    assert (
        shim.name == "flower-superexec"
        and "-m fedneurogen.client.site_exec --allowed-apps" in text
        and str(tmp_path / "allowed.txt") in text
    )
