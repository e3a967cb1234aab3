"""The simulation on a Ray cluster of two nodes (``simulations/ray_cluster.py``): the same sites,
seed and rounds give the same global model as on one machine's own Ray instance."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedneurogen.shared.workflows.training import TRAIN_PRESETS
from fedneurogen.simulations.federated import alive, descendants, ensure_sites, run_federated
from fedneurogen.simulations.ray_cluster import LocalRayCluster

pytestmark = pytest.mark.slow


def _run(run_dir, data, ray_address=None):
    run_federated(
        run_dir,
        data,
        num_sites=4,
        rounds=2,
        modality="fmri",
        subjects_per_site=2,
        run_seconds=60,
        seed=3,
        run_config={
            "preset": "tiny",
            "local-epochs": 1,
            "max-windows": 8,
            "departure-windows": 0,
            "cache-dir": str(data.parent / "cache"),
        },
        client_cpus=1,  # one site actor per node of the cluster
        timeout=900,
        ray_address=ray_address,
    )
    return json.loads((run_dir / "history.json").read_text()), load_file(run_dir / "checkpoint" / "model.safetensors")


def test_a_two_node_ray_cluster_trains_the_same_global_model(tmp_path):
    data = tmp_path / "data"
    ensure_sites(data, 4, "fmri", subjects_per_site=2, seed=3, run_seconds=60)
    one_node, one_model = _run(tmp_path / "one-node", data)
    with LocalRayCluster(nodes=2, cpus_per_node=1) as cluster:
        started = [p.pid for p in cluster.procs]
        tree = set(started).union(*(descendants(pid) for pid in started))
        assert cluster.alive_nodes() == 2
        two_nodes, two_model = _run(tmp_path / "two-nodes", data, ray_address=cluster.address)
        assert cluster.alive_nodes() == 2  # nothing of the run took a node down
    deadline = time.time() + 30  # a killed process takes a moment to go
    while (running := [pid for pid in tree if alive(pid)]) and time.time() < deadline:
        time.sleep(0.5)
    assert running == []  # the cluster stopped exactly what it started

    for history in (one_node, two_nodes):
        assert [len(h["train"]["sites"]) for h in history] == [4, 4]
        assert all(not h["train"]["failed"] and not h["evaluate"].get("failed") for h in history)
    first, second = one_node[0]["ridge_path"]["fmri"], two_nodes[0]["ridge_path"]["fmri"]
    assert (first["penalty"], first["rank"], first["validation_mse"]) == (
        second["penalty"],
        second["rank"],
        second["validation_mse"],
    )
    assert one_node[0]["train"]["aggregate"]["loss"] == two_nodes[0]["train"]["aggregate"]["loss"]
    assert set(one_model) == set(two_model)
    for name in one_model:
        if ".mean.ridge." in name:  # solved from the same statistics, in the same order
            np.testing.assert_array_equal(one_model[name], two_model[name], err_msg=name)
        else:  # within one optimiser step: Adam turns the float order of a reduction into a step's size
            np.testing.assert_allclose(one_model[name], two_model[name], rtol=0, atol=TRAIN_PRESETS["tiny"].lr)
