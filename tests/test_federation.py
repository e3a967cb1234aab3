"""The federation: per-modality aggregation around Flower's strategies, round checkpoints and
resume, and a local Flower simulation (`flwr run` against a simulation SuperLink) with a
failing site, differential privacy across rounds and a resumed run."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
from safetensors.numpy import load_file

from fedneurogen.server.audit import AUDIT_FILE, read_log
from fedneurogen.server.checkpointing import RunStore, model_parameters
from fedneurogen.server.strategy import STRATEGIES, make_strategy
from fedneurogen.shared.errors import ConfigError
from fedneurogen.shared.model import NeuroGenModel, load_checkpoint
from fedneurogen.shared.run_config import RunConfig
from fedneurogen.simulations.federated import run_federated

BACKBONE, FMRI, FNIRS = (
    "dit.blocks.0.weight",
    "modality_heads.fmri.final_layer.linear.weight",
    "modality_heads.fnirs.final_layer.linear.weight",
)


class FakeGrid:
    def __init__(self, nodes):
        self.nodes = nodes

    def get_node_ids(self):
        return list(self.nodes)


def reply(
    out: Message, modality: str, n: int, values: dict[str, float] | None, metrics: dict | None = None, shape=(2, 3)
) -> Message:
    """A site's train reply to ``out``: its backbone and own head filled with constants."""
    if values is None:
        return Message(Error(code=2, reason="Traceback ...\nsite raised RuntimeError"), reply_to=out)
    arrays = ArrayRecord({name: Array(np.full(shape, value, dtype=np.float32)) for name, value in values.items()})
    content = RecordDict(
        {
            "arrays": arrays,
            "metrics": MetricRecord({"num-examples": n, "loss": 1.0, **(metrics or {})}),
            "site": ConfigRecord({"modality": modality}),
        }
    )
    return Message(content=content, reply_to=out)


def one_round(name: str, sites: dict[int, tuple[str, int, dict | None]], current: float = 0.0, strategy=None):
    strategy = strategy or make_strategy(RunConfig(strategy=name, min_available_nodes=1, min_train_nodes=1))
    arrays = ArrayRecord({k: Array(np.full((2, 3), current, dtype=np.float32)) for k in (BACKBONE, FMRI, FNIRS)})
    messages = list(strategy.configure_train(1, arrays, ConfigRecord({}), FakeGrid(sites)))
    replies = [reply(m, *sites[m.metadata.dst_node_id]) for m in messages if sites[m.metadata.dst_node_id] != "silent"]
    new, metrics = strategy.aggregate_train(1, replies)
    return strategy, {k: float(new[k].numpy()[0, 0]) for k in new.keys()}, metrics


def test_heads_aggregate_over_their_own_modality_only(task_identity):
    sites = {
        1: ("fmri", 10, {BACKBONE: 1.0, FMRI: 1.0}),
        2: ("fmri", 30, {BACKBONE: 2.0, FMRI: 3.0}),
        3: ("fnirs", 20, {BACKBONE: 4.0, FNIRS: 5.0}, {"extra": 1.0}),  # an unexpected metric is ignored
        4: ("fnirs", 0, {BACKBONE: 9.0, FNIRS: 9.0}),  # privacy budget spent: reports, does not count
        5: ("fmri", 50, None),  # raised an exception
        6: "silent",  # never answered
        7: ("fmri", 50, {BACKBONE: 9.0, FMRI: 9.0}, None, (3, 2)),  # weights of the wrong shape
    }
    strategy, new, metrics = one_round("fedavg", sites)
    assert new[FMRI] == pytest.approx((10 * 1 + 30 * 3) / 40)  # the two fMRI sites, by examples
    assert new[FNIRS] == pytest.approx(5.0)  # the fNIRS site alone
    assert new[BACKBONE] == pytest.approx((10 * 1 + 30 * 2 + 20 * 4) / 60)  # every site
    assert metrics["num-examples"] == 60
    report = strategy.report[MessageType.TRAIN]
    assert set(report["sites"]) == {"1", "2", "3", "4"} and report["sites"]["3"]["modality"] == "fnirs"
    failed = {f["node"]: f["reason"] for f in report["failed"]}
    assert failed[5] == "error reply: site raised RuntimeError" and failed[6] == "no reply before the round timeout"
    assert failed[7].startswith("malformed reply: parameter") and len(failed) == 3

    # a round with no fNIRS site keeps the global fNIRS head
    _, new, _ = one_round(
        "fedavg",
        {1: ("fmri", 10, {BACKBONE: 1.0, FMRI: 1.0}), 2: ("fmri", 10, {BACKBONE: 3.0, FMRI: 3.0})},
        current=7.0,
    )
    assert new == {BACKBONE: 2.0, FMRI: 2.0, FNIRS: 7.0}


@pytest.mark.parametrize("name", ["fedavg", "fedmedian"])
def test_a_non_finite_update_is_refused_and_the_global_model_stays_finite(name, task_identity):
    sites = {
        1: ("fmri", 10, {BACKBONE: 1.0, FMRI: 1.0}),
        2: ("fmri", 10, {BACKBONE: float("nan"), FMRI: 1.0}),
        3: ("fmri", 10, {BACKBONE: 3.0, FMRI: float("inf")}),
        4: ("fmri", float("nan"), {BACKBONE: 5.0, FMRI: 5.0}),
    }
    strategy, new, _ = one_round(name, sites)
    assert all(np.isfinite(v) for v in new.values()) and new[BACKBONE] == pytest.approx(1.0)
    failed = {f["node"]: f["reason"] for f in strategy.report[MessageType.TRAIN]["failed"]}
    assert "NaN or infinite" in failed[2] and "NaN or infinite" in failed[3] and "num-examples is nan" in failed[4]


def test_an_inflated_example_count_is_refused(task_identity):
    """FedAvg weights by the examples a site claims: a site may not claim more than it declared in
    its first round, nor more than max-examples-per-site."""
    strategy = make_strategy(RunConfig(min_available_nodes=1, min_train_nodes=1, max_examples_per_site=1000))
    honest = {1: ("fmri", 10, {BACKBONE: 1.0, FMRI: 1.0}), 2: ("fmri", 10, {BACKBONE: 3.0, FMRI: 3.0})}
    one_round("fedavg", honest, strategy=strategy)
    inflated = {
        1: ("fmri", 10, {BACKBONE: 1.0, FMRI: 1.0}),
        2: ("fmri", 1e9, {BACKBONE: 1e3, FMRI: 1e3}),
        3: ("fmri", 5000, {BACKBONE: 7.0, FMRI: 7.0}),
    }
    strategy, new, metrics = one_round("fedavg", inflated, strategy=strategy)
    assert new[BACKBONE] == pytest.approx(1.0) and metrics["num-examples"] == 10  # only the honest site counted
    failed = {f["node"]: f["reason"] for f in strategy.report[MessageType.TRAIN]["failed"]}
    assert "more than the 10 this site declared in its first round" in failed[2]
    assert "above max-examples-per-site = 1000" in failed[3]
    restored = make_strategy(RunConfig())  # the declarations survive a resume
    restored.load_state_dict(strategy.state_dict())
    assert restored.declared == {1: 10.0, 2: 10.0}


def test_a_large_update_is_scaled_to_the_norm_bound(task_identity):
    strategy = make_strategy(RunConfig(min_available_nodes=1, min_train_nodes=1, max_update_norm=1.0))
    # each update is 6 + 6 values; site 2 moves every value by 100 (norm 100 * sqrt(12))
    sites = {1: ("fmri", 10, {BACKBONE: 0.1, FMRI: 0.1}), 2: ("fmri", 10, {BACKBONE: 100.0, FMRI: 100.0})}
    strategy, new, _ = one_round("fedavg", sites, strategy=strategy)
    bounded = 100.0 / (100.0 * np.sqrt(12))  # site 2's values after scaling its update to norm 1
    assert new[BACKBONE] == pytest.approx((0.1 + bounded) / 2, rel=1e-5)  # site 1 (norm 0.35) untouched
    clipped = strategy.report[MessageType.TRAIN]["clipped"]
    assert [c["node"] for c in clipped] == [2] and clipped[0]["norm"] == pytest.approx(100 * np.sqrt(12))


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_strategy_keeps_the_heads_apart(name, task_identity):
    def sites(fmri_head: float) -> dict:
        return {
            1: ("fmri", 10, {BACKBONE: 1.0, FMRI: fmri_head}),
            2: ("fmri", 30, {BACKBONE: 2.0, FMRI: fmri_head + 1}),
            3: ("fnirs", 20, {BACKBONE: 4.0, FNIRS: 5.0}),
        }

    strategy, a, _ = one_round(name, sites(1.0))
    _, b, _ = one_round(name, sites(100.0))
    assert a[FNIRS] == b[FNIRS]  # the fNIRS head does not see the fMRI sites' heads
    if name == "bulyan":  # needs 3 updates per part (krum-malicious = 0): the heads keep their global weights
        assert a[FMRI] == b[FMRI] == 0.0 and a[FNIRS] == 0.0
        assert a[BACKBONE] == pytest.approx(7 / 3, rel=1e-6)  # with no malicious site assumed, all three are averaged
        return
    assert a[FMRI] != b[FMRI]
    if name == "krum":  # picks one site's update (with three sites, the two nearest tie)
        assert a[BACKBONE] in (1.0, 2.0) and a[FMRI] in (1.0, 2.0)
    else:
        assert a[BACKBONE] == pytest.approx(b[BACKBONE], rel=1e-6)  # summation order varies
    if name != "fedadam":  # plain aggregates of one fNIRS site: its own head
        assert a[FNIRS] == pytest.approx(5.0)
    else:  # the server optimizer moved each part from 0 towards its sites and kept its moments
        assert 0 < a[FNIRS] < 5.0 and 0 < a[FMRI] and 0 < a[BACKBONE]
        state = strategy.state_dict()
        assert {k.split("/")[0] for k in state} == {"backbone", "fmri", "fnirs", "declared"}
        restored = make_strategy(RunConfig(strategy=name))
        restored.load_state_dict(state)
        assert all(np.array_equal(restored.state_dict()[k], v) for k, v in state.items())


def test_run_store_checkpoints_rounds_atomically_and_resumes(tmp_path):
    torch.manual_seed(0)
    model = NeuroGenModel("tiny", device="cpu")
    store = RunStore(tmp_path / "run", keep=2)
    history = []
    for rnd in range(1, 4):
        with torch.no_grad():
            next(model.parameters()).add_(1.0)
        history.append(
            {
                "round": rnd,
                "train": {
                    "aggregate": {"loss": 1.0 / rnd},
                    "sites": {"7": {"loss": 1.0, "epsilon": float(rnd)}},
                    "failed": [],
                },
                "evaluate": {
                    "aggregate": {"loss": 2.0 / rnd, "pcc": float("nan")},
                    "sites": {},
                    "failed": [{"node": 9, "reason": "x"}],
                },
            }
        )
        state = {
            "backbone/m_t/w": np.full(3, rnd, dtype=np.float32),
            "backbone/v_t/scale": np.array(0.5, dtype=np.float32),
        }
        store.save_round(rnd, model, state, history, {"class_names": ["a", "b"], "provenance": {"rounds": rnd}})
        store.write_reports(history)
    run = tmp_path / "run"
    assert json.loads((run / "latest.json").read_text())["round"] == 3
    assert sorted(p.name for p in (run / "rounds").iterdir()) == ["round-0002", "round-0003"]
    assert (run / "checkpoint").resolve() == (run / "rounds" / "round-0003").resolve()
    saved = json.loads((run / "history.json").read_text())
    assert [e["round"] for e in saved] == [1, 2, 3] and saved[0]["evaluate"]["aggregate"]["pcc"] is None
    assert (run / "metrics.png").stat().st_size > 10_000 and any((run / "tensorboard").iterdir())

    loaded, meta = load_checkpoint(run / "checkpoint", device="cpu", use_ema=True)  # what synthesize/evaluate read
    assert meta["class_names"] == ["a", "b"] and meta["provenance"]["rounds"] == 3
    fresh = NeuroGenModel("tiny", device="cpu")
    done, state, resumed_history, _ = RunStore(run).resume(fresh)
    assert done == 3 and resumed_history == saved and np.array_equal(state["backbone/m_t/w"], np.full(3, 3.0))
    assert state["backbone/v_t/scale"].shape == ()  # a scalar parameter's moment stays a scalar
    assert all(torch.equal(a, b) for a, b in zip(model_parameters(fresh).values(), model_parameters(model).values()))

    (run / "latest.json").write_text(
        json.dumps({"round": 3, "checkpoint": "../../elsewhere"})
    )  # resume loads only this run's rounds
    with pytest.raises(ConfigError, match=r"latest.json names '../../elsewhere', not a round folder under"):
        RunStore(run).resume(fresh)


# ---------------------------------------------------------------------------------------------
# A local Flower simulation: flwr run against a simulation SuperLink, three simulated sites


def site_metric(entry: dict, stage: str, key: str) -> dict[str, float]:
    """By modality: here one training site each (node ids are new in every run)."""
    return {m["modality"]: m[key] for m in entry[stage]["sites"].values()}


def statistics_replies(run_dir: Path) -> int:
    """Replies that carried ridge statistics, in the run's audit log."""
    return sum(1 for entry in read_log(run_dir / AUDIT_FILE) if "statistics" in (entry.get("records") or {}))


@pytest.mark.slow
def test_simulation_with_a_failing_site_dp_and_resume(federation_sites, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("sim") / "run"
    config = {
        "preset": "tiny",
        "strategy": "fedadam",
        "local-epochs": 1,
        "max-windows": 8,
        "fault-partition": 1,  # site-02 fails
        "dp-enabled": True,
        "dp-target-epsilon": 8.0,
        "dp-statistics-share": 0.1,  # the rest to DP-SGD, whose cumulative epsilon this test follows
        "dp-rounds": 3,
        "eval-pcc-windows": 2,
        "cache-dir": str(federation_sites.parent / "federation-cache"),
        "round-timeout": 300.0,
    }
    started = time.time()
    run_federated(
        run_dir,
        federation_sites,
        num_sites=3,
        rounds=2,
        modality="mixed",
        subjects_per_site=3,
        seed=0,
        run_config=config,
        timeout=600,
    )
    print(f"2-round simulation: {time.time() - started:.0f} s")

    history = json.loads((run_dir / "history.json").read_text())
    assert [e["round"] for e in history] == [1, 2]
    for entry in history:  # the failing site is named by node id; the other two trained
        (failure,) = entry["train"]["failed"]
        assert failure["reason"] == "error reply: injected fault (fault-partition drill)"
        assert sorted(m["modality"] for m in entry["train"]["sites"].values()) == ["fmri", "fnirs"]
        assert str(failure["node"]) not in entry["train"]["sites"]
    eps1, eps2 = site_metric(history[0], "train", "epsilon"), site_metric(history[1], "train", "epsilon")
    assert set(eps1) == {"fmri", "fnirs"} and all(
        0 < eps1[n] < eps2[n] < 8.0 for n in eps1
    )  # cumulative, within budget
    # under DP the sites withhold their held-out loss and PCC (no mechanism covers them) and the
    # training loss; the server gets example counts, so early stopping has no score to act on
    evaluated = history[1]["evaluate"]
    assert (
        evaluated["aggregate"]["withheld"] == 1
        and "loss" not in evaluated["aggregate"]
        and "pcc" not in evaluated["aggregate"]
    )
    assert all("loss" not in m for m in history[1]["train"]["sites"].values())
    assert history[-1]["early_stopping"]["best_round"] is None
    # under DP every site released its ridge statistics once, by the Gaussian mechanism (the fault
    # drill fails training and evaluation only), and the epsilon sites report includes it
    assert statistics_replies(run_dir) == 3

    model, meta = load_checkpoint(run_dir / "checkpoint", device="cpu", use_ema=True)  # as synthesize/evaluate load it
    assert {"faces", "left", "rest"} <= set(meta["class_names"]) and meta["preprocess"]["eeg_sfreq"] == 200.0
    assert (
        meta["provenance"]["rounds"] == 2
        and meta["provenance"]["strategy"] == "fedadam"
        and meta["provenance"]["sites_count"] == 3  # the failing site trained nothing but released its statistics
    )
    round2 = {k: v.clone() for k, v in model_parameters(model).items()}
    assert (run_dir / "rounds" / "round-0002" / "strategy.safetensors").is_file()
    text = json.dumps(history)
    assert "sub-0" not in text and str(federation_sites) not in text  # no subjects or paths left the sites

    # resume: a new run (new context.state) continues the checkpoint, FedAdam's moments and the
    # sites' privacy ledgers from disk
    run_federated(
        run_dir,
        federation_sites,
        num_sites=3,
        rounds=3,
        modality="mixed",
        subjects_per_site=3,
        seed=0,
        run_config={**config, "resume": True},
        timeout=600,
    )
    history = json.loads((run_dir / "history.json").read_text())
    assert [e["round"] for e in history] == [1, 2, 3] and site_metric(history[1], "train", "epsilon") == eps2
    eps3 = site_metric(history[2], "train", "epsilon")
    assert all(eps2[n] < eps3[n] <= 8.0 for n in eps3) and max(eps3.values()) > 7.0, (eps2, eps3)  # not restarted
    assert statistics_replies(run_dir) == 3  # the resumed run did not ask for (or spend on) them again
    resumed, meta = load_checkpoint(run_dir / "checkpoint", device="cpu")
    assert meta["provenance"]["rounds"] == 3
    assert any(not torch.equal(round2[k], v) for k, v in model_parameters(resumed).items())
    moments = load_file(str(run_dir / "rounds" / "round-0003" / "strategy.safetensors"))
    assert any(k.startswith("fnirs/v_t/") for k in moments) and any(k.startswith("fmri/m_t/") for k in moments)


def test_round_watcher_reports_each_new_round_once(tmp_path):
    from fedneurogen.simulations.federated import RoundWatcher

    history = tmp_path / "history.json"
    history.write_text(json.dumps([{"round": 1}]))  # a resumed run: round 1 was before
    seen = []
    watch = RoundWatcher(history, seen.append)
    watch()
    history.write_text(json.dumps([{"round": 1}, {"round": 2, "seconds": 3.0}]))
    watch()
    watch()
    history.write_text("[{")  # caught mid-write by another reader: ignored until it is whole
    watch()
    assert seen == [{"round": 2, "seconds": 3.0}]


def test_under_dp_a_site_counting_more_than_one_example_is_refused(task_identity):
    """A DP site counts 1 (its window count is withheld), so every site weighs alike; a site that
    claims more, even in its first round and with two sites (no median cap), is refused."""
    strategy = make_strategy(RunConfig(min_available_nodes=1, min_train_nodes=1, dp_enabled=True))
    sites = {1: ("fmri", 1, {BACKBONE: 1.0, FMRI: 1.0}), 2: ("fmri", 500, {BACKBONE: 1e3, FMRI: 1e3})}
    strategy, new, metrics = one_round("fedavg", sites, strategy=strategy)
    assert new[BACKBONE] == pytest.approx(1.0) and metrics["num-examples"] == 1
    (failure,) = strategy.report[MessageType.TRAIN]["failed"]
    assert failure["node"] == 2 and "under DP, where every site counts at most 1" in failure["reason"]


def test_sigterm_unwinds_so_the_started_processes_are_stopped(tmp_path):
    """A local run killed with SIGTERM (a user's `kill`, a scheduler) runs its finally blocks, which
    stop the SuperLink and `flwr run` it started; Python's default would leave them running."""
    import signal
    import subprocess
    import sys
    import textwrap
    import time

    marker = tmp_path / "unwound"
    script = textwrap.dedent(
        f"""
        import time
        from fedneurogen.simulations.federated import sigterm_unwinds
        with sigterm_unwinds():
            try:
                print("ready", flush=True)
                time.sleep(60)
            finally:
                open({str(marker)!r}, "w").write("stopped")
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    started = time.time()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert marker.read_text() == "stopped" and time.time() - started < 30


def test_only_a_seeded_few_sites_score_the_departure_and_only_theirs_count(task_identity):
    """The last evaluation asks at most DEPARTURE_SITES sites (the same ones for the same seed) to
    score the departure shares; the others' messages carry no departure-windows, and departure
    metrics from a site not asked (a hostile one) never reach the aggregate."""
    from fedneurogen.server.strategy import DEPARTURE_SITES
    from fedneurogen.shared.workflows.departure import DEPARTURE_METRICS, DEPARTURE_WINDOWS

    arrays = ArrayRecord({BACKBONE: Array(np.zeros((2, 3), dtype=np.float32))})

    def asked(seed: int, config: dict, nodes=tuple(range(1, 257))):
        strategy = make_strategy(RunConfig(seed=seed))
        out = list(strategy.configure_evaluate(5, arrays, ConfigRecord(config), FakeGrid(nodes)))
        windows = sorted(m.metadata.dst_node_id for m in out if DEPARTURE_WINDOWS in m.content["config"])
        return strategy, out, windows

    strategy, out, chosen = asked(3, {"class-names": "a,b", DEPARTURE_WINDOWS: 16})
    assert len(out) == 256 and len(chosen) == DEPARTURE_SITES == 32
    assert all(m.content["config"][DEPARTURE_WINDOWS] == 16 for m in out if m.metadata.dst_node_id in chosen)
    assert all(m.content["config"]["class-names"] == "a,b" for m in out)  # the rest is everyone's
    assert asked(3, {DEPARTURE_WINDOWS: 16})[2] == chosen  # the same sites for the same seed
    assert asked(4, {DEPARTURE_WINDOWS: 16})[2] != chosen
    assert asked(3, {})[2] == [] and asked(3, {DEPARTURE_WINDOWS: 0})[2] == []  # not asked: nobody scores
    assert asked(3, {DEPARTURE_WINDOWS: 16}, nodes=(1, 2, 3))[2] == [1, 2, 3]  # a small federation: all

    def metrics(node: int) -> MetricRecord:
        scored = {key: 1.0 for key in DEPARTURE_METRICS} if node in chosen else {}
        hostile = {key: 100.0 for key in DEPARTURE_METRICS} if node == min(set(range(1, 257)) - set(chosen)) else {}
        return MetricRecord({"num-examples": 10, "pcc": 0.2, **scored, **hostile})

    site = ConfigRecord({"modality": "fmri"})
    replies = [Message(RecordDict({"metrics": metrics(m.metadata.dst_node_id), "site": site}), reply_to=m) for m in out]
    aggregate = strategy.aggregate_evaluate(5, replies)
    assert all(aggregate[key] == 1.0 for key in DEPARTURE_METRICS)  # the asked sites' alone
    assert strategy.report[MessageType.EVALUATE]["departure_sites"] == 32
    assert aggregate["pcc"] == pytest.approx(0.2)  # every site's held-out score still counts
