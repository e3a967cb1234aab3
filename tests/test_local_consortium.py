"""The local consortium (deploy/scripts/local-consortium.sh): the trust boundaries of a real
deployment on loopback. The sites' address serves the Fleet API only, so no one there can list
or submit runs; the admin address runs a real FedNeuroGen round; an app other than the approved
release is never launched at a site; an unregistered site key and a plaintext client are
refused; a site's privacy policy refuses a run that asks for too much; ``down`` stops exactly
what ``up`` started."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from fedneurogen.shared.deploy.apps import app_hash, read_allowlist
from fedneurogen.shared.deploy.pki import make_node_keypair
from fedneurogen.simulations.federated import alive, app_dir, flower_env, flwr_run, start_supernode, write_connection

SCRIPT = Path(__file__).resolve().parents[1] / "deploy" / "scripts" / "local-consortium.sh"
pytestmark = [
    pytest.mark.skipif(
        not (shutil.which("nginx") or Path("/usr/sbin/nginx").is_file()),
        reason="nginx is not installed (apt-get install nginx-light; CI installs it)",
    ),
    pytest.mark.slow,
]
ROUND = {
    "num-server-rounds": 1, "preset": "tiny", "local-epochs": 1, "max-windows": 8, "classes": "faces,motion,rest,scenes,tools",
    "fraction-evaluate": 0.0, "min-available-nodes": 2, "round-timeout": 240.0,
}  # fmt: skip


def script(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=300)


def endpoints(folder: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in (folder / "endpoints.env").read_text().splitlines())


@pytest.fixture(scope="module")
def consortium(tmp_path_factory, federation_sites):
    """Two fMRI sites (the policy: DP required, epsilon at most 8) behind the proxy; one DP round
    submitted from the admin side; the refused attempts; then ``down``."""
    folder = tmp_path_factory.mktemp("consortium")
    data = folder / "data"
    data.mkdir()
    for name in ("site-01", "site-02"):  # the two fMRI sites of the shared simulation
        (data / name).symlink_to(federation_sites / name)
    started = script(
        "up", folder, "--sites", 2, "--data-root", data, "--site-config", 'dp-required="true" dp-max-epsilon="8"'
    )
    assert started.returncode == 0, started.stdout + started.stderr
    result = {"folder": folder, "env": endpoints(folder), "pids": json.loads((folder / "processes.json").read_text())}
    env = result["env"]
    try:
        # someone on the sites' network tries the Control API
        intruder = folder / "intruder"
        write_connection(intruder, "site", env["SITE_ADDRESS"], root_certificates=Path(env["CA_CERT"]))
        result["ls_from_site"] = subprocess.run(
            ["flwr", "ls", "site"], env=flower_env(intruder), capture_output=True, text=True, timeout=120
        )
        # an unregistered key and a plaintext client at the sites' address
        keys = make_node_keypair(folder / "stranger-keys", "stranger")
        stranger = start_supernode(
            folder / "stranger", env["SITE_ADDRESS"], f'data-path="{data / "site-01"}"', folder / "stranger.log",
            root_certificates=Path(env["CA_CERT"]), auth_key=keys.private, max_retries=2,
        )  # fmt: skip
        plaintext = start_supernode(
            folder / "plain",
            env["SITE_ADDRESS"],
            f'data-path="{data / "site-01"}"',
            folder / "plain.log",
            max_retries=2,
        )
        result["stranger_exit"], result["plain_exit"] = stranger.wait(timeout=120), plaintext.wait(timeout=120)
        # the admins submit a DP round within the sites' policy, and one that breaks it
        admin = Path(env["FLWR_HOME"])
        result["run_dir"] = folder / "run"
        flwr_run(
            admin, env["FLWR_CONNECTION"], {**ROUND, "run-dir": str(result["run_dir"]), "dp-enabled": True, "dp-target-epsilon": 8.0},
            timeout=420, log_file=folder / "run.log",
        )  # fmt: skip
        result["greedy_dir"] = folder / "greedy"
        flwr_run(
            admin, env["FLWR_CONNECTION"], {**ROUND, "run-dir": str(result["greedy_dir"]), "dp-enabled": True, "dp-target-epsilon": 50.0},
            timeout=420, log_file=folder / "greedy.log",
        )  # fmt: skip
        # an app that is not the approved release (here: the same app with one line changed)
        other = folder / "other-app"
        other.mkdir()
        for name in ("pyproject.toml", "README.md"):
            (other / name).write_text((app_dir() / name).read_text())
        with open(other / "README.md", "a") as readme:
            readme.write("\nchanged by someone\n")
        result["other_hash"], result["other_dir"] = app_hash(other), folder / "other"
        flwr_run(
            admin, env["FLWR_CONNECTION"], {**ROUND, "run-dir": str(result["other_dir"]), "dp-enabled": True, "round-timeout": 15.0},
            app=other, timeout=300, log_file=folder / "other.log",
        )  # fmt: skip
    finally:
        result["down"] = script("down", folder)
    yield result


def test_the_sites_address_serves_no_control_api(consortium):
    listed = consortium["ls_from_site"]
    assert listed.returncode != 0 and "403 Forbidden" in listed.stdout + listed.stderr
    access = (consortium["folder"] / "proxy" / "access.log").read_text()
    assert '"POST /v1/control/list-runs HTTP/1.1" 403' in access  # refused by the proxy, never reached the SuperLink


def test_a_run_from_the_admin_address_completes_at_both_sites(consortium):
    (entry,) = json.loads((consortium["run_dir"] / "history.json").read_text())
    assert not entry["train"]["failed"] and len(entry["train"]["sites"]) == 2
    assert all(0 < m["epsilon"] <= 8.0 for m in entry["train"]["sites"].values())


def test_an_app_that_is_not_the_approved_release_is_never_launched_at_a_site(consortium):
    approved = read_allowlist(consortium["folder"] / "allowed-apps.txt")
    assert approved == {app_hash(app_dir())} and consortium["other_hash"] not in approved
    (entry,) = json.loads((consortium["other_dir"] / "history.json").read_text())
    assert not entry["train"]["sites"] and len(entry["train"]["failed"]) == 2  # no site ran it
    assert all(f["reason"] == "no reply before the round timeout" for f in entry["train"]["failed"])
    for site in ("site-01", "site-02"):
        log = (consortium["folder"] / "logs" / f"{site}.log").read_text(errors="replace")
        assert f"site refused app {consortium['other_hash']}" in log and "not in the allowlist" in log


def test_the_sites_policy_refuses_a_run_that_asks_for_more(consortium):
    (entry,) = json.loads((consortium["greedy_dir"] / "history.json").read_text())
    reasons = [f["reason"] for f in entry["train"]["failed"]]
    assert len(reasons) == 2 and all(r.startswith("site refused:") and "8" in r for r in reasons), reasons
    assert not entry["train"]["sites"]


def test_unregistered_and_plaintext_clients_are_refused(consortium):
    assert consortium["stranger_exit"] != 0 and "Failed to activate SuperNode" in (
        consortium["folder"] / "stranger.log"
    ).read_text(errors="replace")
    assert consortium["plain_exit"] != 0  # a TLS-only listener: plain HTTP gets nowhere


def test_down_stops_exactly_what_up_started(consortium):
    down = consortium["down"]
    assert down.returncode == 0 and "superlink" in down.stdout and "proxy" in down.stdout
    assert not any(alive(p["pid"]) for p in consortium["pids"])
    assert not (consortium["folder"] / "processes.json").exists()
    assert script("down", consortium["folder"]).stdout.startswith("nothing running")
