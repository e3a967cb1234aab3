"""What only the local simulation does on a site (``simulations/drills.py``,
``fedneurogen/simulation_app.py``): simulated node settings, a failing node, a poisoning node, and
the app folder the simulation runs. Real Flower messages and mods; no processes, no data."""

from __future__ import annotations

import importlib
import tomllib

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.cli.build import build_fab_from_disk
from flwr.clientapp import ClientApp

from fedneurogen.shared.errors import ConfigError
from fedneurogen.shared.run_config import RunConfig
from fedneurogen.simulations import drills
from fedneurogen.simulations.drills import FAULT_REASON, simulation_mod
from fedneurogen.simulations.drills import SimulationConfig, is_node, poison, simulated_node_config
from fedneurogen.simulations.federated import SIMULATION_CLIENTAPP, app_dir, simulation_app


def _weights(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "blocks.0.weight": torch.randn(4, 3, generator=g),
        "blocks.0.bias": torch.randn(4, generator=g),
        "modality_heads.fmri.scale": torch.randn(1, generator=g),  # one element: std() is NaN
    }


@pytest.fixture(autouse=True)
def _flower_task(task_identity):
    """Messages are stamped with the running task's identity (conftest fakes one)."""


@pytest.fixture
def received() -> dict[str, torch.Tensor]:
    return _weights(0)


@pytest.fixture
def local(received) -> dict[str, torch.Tensor]:
    step = _weights(1)
    return {k: received[k] + 0.01 * step[k] for k in received}


def _drill(mode: str = "scale", scale: float = 100.0) -> SimulationConfig:
    return SimulationConfig.from_run_config({"attack-partition": 2, "attack-mode": mode, "attack-scale": scale})


# ---------------------------------------------------------------------------------------------
# The poisoned update


def test_scale_poisoning_is_global_plus_scale_times_update(local, received):
    out = poison(_drill("scale", 100.0), local, received, seed=1)
    assert set(out) == set(local)
    for name in local:
        expected = received[name] + 100.0 * (local[name] - received[name])
        assert torch.equal(out[name], expected), name
        assert out[name].dtype == local[name].dtype and out[name].shape == local[name].shape
    update, poisoned_update = (
        local["blocks.0.weight"] - received["blocks.0.weight"],
        out["blocks.0.weight"] - received["blocks.0.weight"],
    )
    torch.testing.assert_close(poisoned_update, 100.0 * update, rtol=1e-4, atol=1e-5)


def test_scale_one_sends_the_local_update(local, received):
    out = poison(_drill("scale", 1.0), local, received, seed=1)
    for name in local:
        torch.testing.assert_close(out[name], local[name], rtol=0, atol=1e-6)


def test_random_poisoning_is_seeded_and_differs_from_the_update(local, received):
    drill = _drill("random", 100.0)
    first = poison(drill, local, received, seed=3)
    again = poison(drill, local, received, seed=3)
    other = poison(drill, local, received, seed=4)
    for name in local:
        assert torch.equal(first[name], again[name]), name  # same seed: same noise
        assert torch.isfinite(first[name]).all(), name
        assert not torch.allclose(first[name], local[name]), name
        assert not torch.equal(first[name], other[name]), name  # another round: other noise
    # noise of the update's per-tensor std x scale around the received weights
    update = local["blocks.0.weight"] - received["blocks.0.weight"]
    noise = first["blocks.0.weight"] - received["blocks.0.weight"]
    assert 10 * update.std() < noise.std() < 1000 * update.std()
    # a one-element tensor (std undefined) still gets finite noise
    assert first["modality_heads.fmri.scale"].item() != local["modality_heads.fmri.scale"].item()


def test_sign_flip_sends_the_update_backwards(local, received):
    out = poison(_drill("sign-flip", 2.0), local, received, seed=1)
    for name in local:
        torch.testing.assert_close(out[name], received[name] - 2.0 * (local[name] - received[name]))


@pytest.mark.parametrize("mode", ["statistics-scale", "statistics-crafted", "statistics-nan"])
def test_every_statistics_lie_is_refused_by_the_server(mode):
    """The drill's forged statistics against the server's checks (server/statistics.py): the
    honest release passes, each lie is refused with a reason."""
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

    from fedneurogen.server.statistics import StatisticsRefused, read_reply
    from fedneurogen.shared.ridge import RidgeStatistics

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((60, 6)), rng.standard_normal((60, 5))
    honest = {f"train.{k}": np.atleast_1d(v) for k, v in RidgeStatistics.from_rows(x, y).as_arrays().items()}
    assert read_reply(honest, {"modality": "fmri"}, False, width=6, n_fmri_points=5).train.n == 60
    query = Message(RecordDict({"request": ConfigRecord({"kind": "x"})}), dst_node_id=1, message_type=MessageType.QUERY)
    reply = Message(RecordDict({"statistics": ArrayRecord({k: Array(v) for k, v in honest.items()})}), reply_to=query)
    drills.lie(_drill(mode, 1e6), query, reply)
    forged = {k: a.numpy() for k, a in reply.content["statistics"].items()}
    with pytest.raises(StatisticsRefused):
        read_reply(forged, {"modality": "fmri"}, False, width=6, n_fmri_points=5)


def test_bad_drill_keys_are_refused_with_the_run_config():
    with pytest.raises(
        ConfigError, match="attack-mode = 'flip' is not allowed; choose one of: scale, random, sign-flip"
    ):
        _drill("flip")
    with pytest.raises(ConfigError, match="fault-partition = 'x'"):
        SimulationConfig.from_run_config({"fault-partition": "x"})
    assert drills.ATTACK_MODES[:2] == ("scale", "random") and "statistics-crafted" in drills.ATTACK_MODES


def test_drills_name_one_simulated_node_and_are_off_by_default():
    assert is_node(1, {"partition-id": 1}) and not is_node(1, {"partition-id": 0})
    for node in ({"partition-id": -1}, {"partition-id": 0}, {}):  # {}: a deployed site without a partition id
        assert not is_node(SimulationConfig().fault_partition, node)
        assert not is_node(SimulationConfig().attack_partition, node)
    assert not is_node(-1, {})


def test_simulated_node_config_emulates_a_site_daemon_only_in_simulation():
    spec = "1:data-path=/nowhere; 2:preset=small"
    assert simulated_node_config({"partition-id": 1}, spec) == {"partition-id": 1, "data-path": "/nowhere"}
    assert simulated_node_config({"partition-id": 2}, spec) == {"partition-id": 2, "preset": "small"}
    assert simulated_node_config({"partition-id": 0}, spec) == {"partition-id": 0}
    deployed = {"partition-id": 1, "data-path": "/data/site-01"}  # a real site keeps its own data path
    assert simulated_node_config(deployed, spec) == deployed
    # nor can its privacy policy be replaced
    policy = {"partition-id": 0, "data-path": "/d", "dp-required": "true"}
    assert simulated_node_config(policy, "0:dp-required=false") == policy
    with pytest.raises(ConfigError, match="sim-node-config entry 'oops' is not PARTITION:KEY=VALUE"):
        simulated_node_config({"partition-id": 0}, "oops")


# ---------------------------------------------------------------------------------------------
# The mod around the site's handlers


def _message(kind: str, received: dict[str, torch.Tensor] | None = None, server_round: int = 3) -> Message:
    content = RecordDict({"config": ConfigRecord({"server-round": server_round})})
    if received is not None:
        content["arrays"] = ArrayRecord({k: v.clone() for k, v in received.items()})
    return Message(content, dst_node_id=7, message_type=kind)


def _context(partition: int, **run_config) -> Context:
    return Context(
        run_id=1, node_id=7, node_config={"partition-id": partition}, state=RecordDict(), run_config=run_config
    )


class SiteHandler:
    """A stand-in for the site's handler: replies with fixed weights, keeps what it was given."""

    def __init__(self, weights: dict[str, torch.Tensor]):
        self.weights, self.calls = weights, []

    def __call__(self, msg: Message, context: Context) -> Message:
        self.calls.append(dict(context.node_config))
        context.state["seen"] = MetricRecord({"calls": len(self.calls)})
        content = RecordDict({"metrics": MetricRecord({"num-examples": 4})})
        if msg.metadata.message_type == MessageType.TRAIN:
            content["arrays"] = ArrayRecord({k: v.clone() for k, v in self.weights.items()})
        return Message(content, reply_to=msg)


def test_the_mod_gives_a_simulated_node_its_settings_and_keeps_its_state(local):
    handler = SiteHandler(local)
    context = _context(1, **{"sim-node-config": "1:data-path=/x;2:preset=small"})
    reply = simulation_mod(_message(MessageType.EVALUATE), context, handler)
    assert not reply.has_error()
    assert handler.calls == [{"partition-id": 1, "data-path": "/x"}]
    assert context.node_config == {"partition-id": 1}  # Flower's own context is not rewritten
    assert context.state["seen"]["calls"] == 1  # what the handler keeps between rounds survives


def test_the_fault_drills_node_fails_without_reaching_the_site(local):
    handler = SiteHandler(local)
    for kind in (MessageType.TRAIN, MessageType.EVALUATE):
        reply = simulation_mod(_message(kind), _context(1, **{"fault-partition": 1}), handler)
        assert reply.has_error() and reply.error.reason == FAULT_REASON
    assert handler.calls == []
    reply = simulation_mod(_message(MessageType.QUERY), _context(1, **{"fault-partition": 1}), handler)
    assert not reply.has_error() and len(handler.calls) == 1  # queries (classes, statistics) are answered
    reply = simulation_mod(_message(MessageType.EVALUATE), _context(0, **{"fault-partition": 1}), handler)
    assert not reply.has_error() and len(handler.calls) == 2


def test_the_attack_drills_node_sends_a_poisoned_update(local, received):
    handler = SiteHandler(local)
    attack = {"attack-partition": 2, "attack-mode": "scale", "attack-scale": 10.0}
    reply = simulation_mod(_message(MessageType.TRAIN, received, server_round=3), _context(2, **attack), handler)
    sent = reply.content["arrays"].to_torch_state_dict()
    expected = poison(SimulationConfig.from_run_config(attack), local, received, seed=3)
    for name in local:
        torch.testing.assert_close(sent[name], expected[name])
    honest = simulation_mod(_message(MessageType.TRAIN, received), _context(1, **attack), handler)
    for name, weights in honest.content["arrays"].to_torch_state_dict().items():
        assert torch.equal(weights, local[name]), name
    evaluated = simulation_mod(_message(MessageType.EVALUATE), _context(2, **attack), handler)
    assert "arrays" not in evaluated.content  # only training replies carry an update to poison


def test_a_bad_simulation_key_is_refused_with_the_reason(local):
    handler = SiteHandler(local)
    reply = simulation_mod(_message(MessageType.TRAIN), _context(0, **{"sim-node-config": "oops"}), handler)
    assert reply.error.reason == (
        "site refused: invalid run config: sim-node-config entry 'oops' is not PARTITION:KEY=VALUE"
    )
    assert handler.calls == []


# ---------------------------------------------------------------------------------------------
# The site's app knows none of it; the simulation runs its own copy of the app


def test_the_sites_app_declares_no_simulation_key():
    site_config = tomllib.loads((app_dir() / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    keys = set(SimulationConfig.defaults())
    assert keys == {"sim-node-config", "fault-partition", "attack-partition", "attack-mode", "attack-scale"}
    assert not keys & set(site_config["config"])
    assert not {k.replace("-", "_") for k in keys} & set(RunConfig.model_fields)
    assert site_config["components"]["clientapp"] == "fedneurogen.client.app:app"


def test_the_simulation_app_is_the_sites_app_with_the_simulations_client_and_keys(tmp_path):
    folder = simulation_app(tmp_path / "app")
    site_app = tomllib.loads((app_dir() / "pyproject.toml").read_text())
    sim_app = tomllib.loads((folder / "pyproject.toml").read_text())
    assert sim_app["tool"]["flwr"]["app"]["components"] == {
        "serverapp": site_app["tool"]["flwr"]["app"]["components"]["serverapp"],
        "clientapp": SIMULATION_CLIENTAPP,
    }
    assert sim_app["tool"]["flwr"]["app"]["config"] == {
        **site_app["tool"]["flwr"]["app"]["config"],
        **SimulationConfig.defaults(),
    }
    assert sim_app["project"] == site_app["project"]
    assert build_fab_from_disk(folder)[:2] == b"PK"  # Flower accepts it as an app (a zip)
    module, _, name = SIMULATION_CLIENTAPP.partition(":")  # and the component it names loads
    assert isinstance(getattr(importlib.import_module(module), name), ClientApp)


def test_attack_partition_takes_a_list_of_nodes():
    drill = SimulationConfig.from_run_config({"attack-partition": "1, 2", "attack-mode": "float64-huge"})
    assert drill.attack_partitions == (1, 2) and _drill().attack_partitions == (2,)
    assert SimulationConfig().attack_partitions == (drills.NO_NODE,)
    with pytest.raises(ConfigError, match="attack-partition = '1;2'.*comma-separated list"):
        SimulationConfig.from_run_config({"attack-partition": "1;2"})


def test_every_node_of_the_list_lies_and_the_others_do_not(local, received):
    handler = SiteHandler(local)
    attack = {"attack-partition": "0,2", "attack-mode": "float64-huge", "attack-scale": 1.0}
    for partition, lies in ((0, True), (1, False), (2, True)):
        reply = simulation_mod(_message(MessageType.TRAIN, received), _context(partition, **attack), handler)
        dtypes = {a.dtype for a in reply.content["arrays"].values()}
        assert dtypes == ({"float64"} if lies else {"float32"}), partition


# ---------------------------------------------------------------------------------------------
# A real Flower run


@pytest.mark.slow
def test_a_run_where_two_of_three_sites_send_garbage_ends_cleanly(federation_sites, tmp_path_factory):
    """Sites 2 and 3 send float64 arrays of 1e300 (finite, inf once cast) every round; with
    min-train-replies = 2 the one honest update is not enough: the run ends after round 1 without
    a traceback, the history names both sites and why, no checkpoint is written (no round was
    good) and the server's log says why the run ended."""
    import json
    import re
    import time

    from fedneurogen.simulations.federated import run_federated

    run_dir = tmp_path_factory.mktemp("garbage") / "run"
    started = time.time()
    run_federated(
        run_dir,
        federation_sites,
        num_sites=3,
        rounds=2,  # it must end after the first
        modality="mixed",
        subjects_per_site=3,
        seed=0,
        run_config={
            "preset": "tiny",
            "local-epochs": 1,
            "max-windows": 8,
            "fraction-evaluate": 0.0,  # the run ends on its training replies
            "min-train-replies": 2,
            "attack-partition": "1,2",
            "attack-mode": "float64-huge",
            "attack-scale": 1.0,
            "cache-dir": str(federation_sites.parent / "federation-cache"),
            "round-timeout": 300.0,
        },
        timeout=500,
    )
    print(f"1-round simulation ended by two garbage sites: {time.time() - started:.0f} s")

    (entry,) = json.loads((run_dir / "history.json").read_text())
    assert entry["round"] == 1
    failed = {f["node"]: f["reason"] for f in entry["train"]["failed"]}
    assert len(failed) == 2 and all(
        re.fullmatch(r"malformed reply: parameter \S+ is float64, not float32", r) for r in failed.values()
    )
    assert [m["modality"] for m in entry["train"]["sites"].values()] == ["fmri"]  # site-01, honest, alone
    assert entry["ended"].startswith("1 valid training reply where min-train-replies = 2")
    assert all(f"node {node}: {reason}" in entry["ended"] for node, reason in failed.items())
    assert not (run_dir / "latest.json").exists() and not (run_dir / "checkpoint").exists()
    assert not any((run_dir / "rounds").glob("round-*"))
    log = (run_dir / "flwr-run.log").read_text(errors="replace")
    assert "Run ended at round 1: 1 valid training reply where min-train-replies = 2" in log
    assert "no checkpoint was written" in log and "Traceback" not in log
    assert "Traceback" not in (run_dir / "superlink.log").read_text(errors="replace")


def test_eval_lie_claims_the_best_score_before_training_and_the_worst_after():
    for server_round, claimed in ((0, 0.99), (2, -0.99)):
        msg = _message(MessageType.EVALUATE, server_round=server_round)
        reply = Message(RecordDict({"metrics": MetricRecord({"num-examples": 4, "pcc": 0.1})}), reply_to=msg)
        drills.lie(_drill("eval-lie", 1e6), msg, reply)
        assert reply.content["metrics"]["pcc"] == claimed and reply.content["metrics"]["num-examples"] == 4_000_000


def test_the_robustness_benchmark_runs_the_eval_lie_attack_with_evaluation_on(tmp_path):
    """``benchmarks/robustness.py --runs integrity`` includes eval-lie, with the evaluation rounds
    early stopping acts on switched on for that run, and judges it like the other lies."""
    import argparse
    import sys
    from pathlib import Path

    from fedneurogen.shared.run_config import validate_run_config

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import robustness

    with pytest.raises(SystemExit) as done:
        robustness.main(["--help"])
    assert done.value.code == 0
    assert robustness.INTEGRITY_RUNS["eval_lie"][0] == "eval-lie"
    args = argparse.Namespace(
        attack="scale",
        attack_scale=100.0,
        attack_partition=3,
        sites=4,
        trim_beta=0.25,
        rounds=2,
        out=tmp_path / "r.json",
    )
    settings = robustness.run_settings("eval_lie", args)
    assert settings["attack-mode"] == "eval-lie" and settings["fraction-evaluate"] == 1.0
    assert settings["eval-pcc-windows"] > 0 and settings["early-stopping-patience"] >= 1
    common = {"eval-pcc-windows": robustness.EVAL_PCC_WINDOWS}  # every run's (robustness.main)
    run = validate_run_config({**common, **settings})  # the app's keys, as the benchmark merges them
    assert run.fraction_evaluate == 1.0 and run.eval_pcc_windows == settings["eval-pcc-windows"]
    assert SimulationConfig.from_run_config(settings).attack_partitions == (3,)

    def result(pcc):
        return {"pcc": pcc, "val_loss": 1.0, "per_site": [pcc], "val_loss_parts": {}}

    results = {"clean": result(0.2), robustness.WITHOUT_ATTACKER: result(0.15), "eval_lie": result(0.195)}
    report = robustness.build_report(args, results, 0.01, {}, {}, {})
    assert report["integrity"]["eval_lie"]["within_5pct"] and report["settings"]["runs"]["eval_lie"] == settings
    results["eval_lie"] = result(0.14)  # below both references: named as not within 5 %
    assert not robustness.build_report(args, results, 0.01, {}, {}, {})["integrity"]["eval_lie"]["within_5pct"]


def test_the_robustness_benchmark_judges_the_averaged_part_against_the_closed_form_start():
    """``closed_form_start`` keeps the closed-form records and resets what is trained; ``judge``
    reads the goal on the held-out diffusion loss and the point prediction's PCC beside it."""
    import sys
    from pathlib import Path

    import torch

    from fedneurogen.shared.model import NeuroGenModel

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import robustness

    torch.manual_seed(5)
    initial = {k: v.clone() for k, v in NeuroGenModel("tiny", device="cpu").named_parameters()}
    trained = NeuroGenModel("tiny", device="cpu")
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.5)  # trained weights and closed-form records alike
    start = robustness.closed_form_start(trained, seed=5)
    for name, p in start.named_parameters():
        expected = initial[name] if p.requires_grad else dict(trained.named_parameters())[name]
        assert torch.equal(p, expected), name
    assert any(not p.requires_grad for p in start.parameters())

    def report(**losses):
        out = {"pcc_start": 0.20, "diffusion_loss_start": 1.0}
        for run in robustness.RUNS:
            out[f"pcc_{run}"] = 0.20
            out[f"diffusion_loss_{run}"] = losses.get(run, 0.9)
        return out

    good = robustness.judge(report(poisoned_fedavg=1.5, poisoned_krum=float("nan")))
    assert good["clean_learned"] and good["met"]["fedavg_degraded"] and good["met"]["goal"]
    assert not good["met"]["robust_within_10pct"]["poisoned_krum"]  # blown up counts as not kept
    assert good["met"]["point_prediction_protected"]
    unlearned = robustness.judge(report(clean=1.1, poisoned_fedavg=2.0))
    assert not unlearned["clean_learned"] and not unlearned["met"]["goal"]
