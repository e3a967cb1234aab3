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

import pytest

from fedneurogen.server.audit import AUDIT_FILE, default_window_shapes, find_leaks, preset_shapes, read_log
from fedneurogen.shared.model import load_checkpoint
from fedneurogen.simulations.federated import LocalSuperLink, flwr_run, start_supernode, stop_process, write_connection


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


@pytest.mark.slow
def test_superlink_and_two_site_daemons_train_and_checkpoint(federation_sites, tmp_path):
    run_dir = tmp_path / "run"
    link = LocalSuperLink(tmp_path / "superlink-home", simulation=False)
    nodes: list[subprocess.Popen] = []
    try:
        link.start()
        for i in (1, 2):  # each site daemon: its own data, state folder and Flower home
            config = f'data-path="{federation_sites / f"site-0{i}"}" state-dir="{tmp_path / f"state-{i}"}"'
            nodes.append(start_supernode(tmp_path / f"node-{i}-home", link.address, config, tmp_path / f"node-{i}.log"))
        write_connection(tmp_path / "cli-home", "deployment", link.address)
        started = time.time()
        flwr_run(
            tmp_path / "cli-home",
            "deployment",
            {
                "num-server-rounds": 1,
                "run-dir": str(run_dir),
                "preset": "tiny",
                "strategy": "fedavg",
                "local-epochs": 1,
                "max-windows": 8,
                "classes": "faces,motion,rest,scenes,tools",
                "fraction-evaluate": 0.0,  # one ClientApp per site
                "min-available-nodes": 2,
                "round-timeout": 240.0,
                "dp-enabled": True,
                "cache-dir": str(federation_sites.parent / "federation-cache"),
            },
            timeout=420,
            log_file=tmp_path / "flwr-run.log",
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
    # the default DP run spends each subject's whole budget on the private ridge path: the model's
    # path adapts the public prior from the sites' noisy releases, and DP-SGD has nothing left
    private = entry["ridge_path"]["fmri"]
    assert private["private_path"] == "prior" and private["private_sites"] == 2 and len(private["gains"]) == 10
    assert private["penalty"] >= private["penalty_floor"] > 0
    assert not entry["train"]["failed"] and len(entry["train"]["sites"]) == 2
    assert all(
        m["modality"] == "fmri" and m["budget_exhausted"] == 1 and 7.0 < m["epsilon"] <= 8.0
        for m in entry["train"]["sites"].values()
    )
    model, meta = load_checkpoint(run_dir / "checkpoint", device="cpu", use_ema=True)
    assert (
        meta["provenance"]["rounds"] == 1 and meta["provenance"]["sites_count"] == 2 and "faces" in meta["class_names"]
    )
    # each daemon keeps its privacy ledger in its own state folder
    audited = [e for e in read_log(run_dir / AUDIT_FILE) if e["message_type"] == "train"]
    for i in (1, 2):
        (ledger,) = (tmp_path / f"state-{i}").glob("privacy-*.json")
        spent = json.loads(ledger.read_text())
        assert spent["history"] == [] and spent["statistics"]["clip"] == 4.0  # one release, no DP-SGD step
        # each site's own record of what it sent matches what the coordinator's audit log received
        sent = [json.loads(line) for line in (tmp_path / f"state-{i}" / "sent.jsonl").read_text().splitlines()]
        (train,) = [e for e in sent if e["message_type"] == "train"]
        assert train["records"] in [e["records"] for e in audited]
        assert (
            find_leaks(sent, parameter_shapes=preset_shapes(sent, "tiny")[0], window_shapes=default_window_shapes())
            == []
        )
