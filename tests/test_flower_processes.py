"""A real deployment on this machine: `flower-superlink` and two `flower-supernode` site
daemons as separate processes on free local ports, `flwr run` against that SuperLink.

Every process is started in its own session and stopped (with its children) in a finally
block; the test asserts that none of them is left running.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from fedneurogen.shared.model import load_checkpoint
from fedneurogen.simulations.federated import LocalSuperLink, ensure_sites, flower_env, flwr_run, free_port, stop_process, write_connection


@pytest.fixture(scope="session")
def fmri_sites(tmp_path_factory):
    """The same simulated sites as the simulation tests (site-01 and site-02 are EEG-fMRI)."""
    root = tmp_path_factory.getbasetemp() / "federation-sites"
    ensure_sites(root, 3, "mixed", subjects_per_site=3, seed=0, run_seconds=200)
    return root


def start_supernode(home: Path, superlink: str, node_config: str, log: Path) -> subprocess.Popen:
    env = flower_env(home)
    env["OMP_NUM_THREADS"] = "1"  # two sites share this machine's cores
    cmd = ["flower-supernode", "--insecure", "--superlink", superlink, "--port", str(free_port()), "--node-config", node_config]
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def group_gone(pgid: int, wait: float = 10.0) -> bool:
    """Whether no process of the group is left (killed children may take a moment to be reaped)."""
    deadline = time.time() + wait
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def test_superlink_and_two_site_daemons_train_and_checkpoint(fmri_sites, tmp_path):
    run_dir = tmp_path / "run"
    link = LocalSuperLink(tmp_path / "superlink-home", simulation=False)
    nodes: list[subprocess.Popen] = []
    try:
        link.start()
        for i in (1, 2):  # each site daemon: its own data, state folder and Flower home
            config = f'data-path="{fmri_sites / f"site-0{i}"}" state-dir="{tmp_path / f"state-{i}"}"'
            nodes.append(start_supernode(tmp_path / f"node-{i}-home", link.address, config, tmp_path / f"node-{i}.log"))
        write_connection(tmp_path / "cli-home", "deployment", link.address)
        started = time.time()
        flwr_run(
            tmp_path / "cli-home", "deployment",
            {
                "num-server-rounds": 1, "run-dir": str(run_dir), "preset": "tiny", "strategy": "fedavg", "local-epochs": 1,
                "max-windows": 8, "classes": "faces,motion,rest,scenes,tools", "fraction-evaluate": 0.0,  # one ClientApp per site
                "min-available-nodes": 2, "round-timeout": 240.0,
                "dp-enabled": True, "cache-dir": str(fmri_sites.parent / "federation-cache"),
            },
            timeout=420, log_file=tmp_path / "flwr-run.log",
        )
        print(f"deployment run: {time.time() - started:.0f} s")
    finally:
        for proc in nodes:
            stop_process(proc)
        link.stop()
    assert all(p.poll() is not None for p in [*nodes, link.proc])
    assert all(group_gone(p.pid) for p in [*nodes, link.proc])  # nor anything they started


    history = json.loads((run_dir / "history.json").read_text())
    (entry,) = history
    assert not entry["train"]["failed"] and len(entry["train"]["sites"]) == 2
    assert all(m["modality"] == "fmri" and m["num-examples"] == 8 and 0 < m["epsilon"] <= 8.0 for m in entry["train"]["sites"].values())
    model, meta = load_checkpoint(run_dir / "checkpoint", device="cpu", use_ema=True)
    assert meta["provenance"]["rounds"] == 1 and meta["provenance"]["sites_count"] == 2 and "faces" in meta["class_names"]
    # each daemon keeps its privacy ledger in its own state folder
    for i in (1, 2):
        (ledger,) = (tmp_path / f"state-{i}").glob("privacy-*.json")
        assert json.loads(ledger.read_text())["history"][0][2] == 1  # one DP step (8 windows, batch 8)
