"""A site's guarantee does not rest on trusting the coordinator (issue 26).

- The run config is bounded by the site: preprocessing that would cut windows without end is
  refused before any window is cut, ``local-epochs``/``round-timeout``/``eval-pcc-windows``/
  ``max-windows`` are bounded by the site's policy, and a deployed site ignores ``cache-dir``.
- The ledger reserves a run's whole target before it spends: runs opened with a tiny statistics
  share cannot together pass ``dp-lifetime-epsilon``, concurrent first messages included, and a
  finished run's unused reservation is released.
- Nothing random at a deployed site comes from the coordinator: the same run config, ``seed``
  and ``server-round`` give other DP batches, another DP noise and a subset keyed by the site;
  its subjects are split by a keyed hash of their ids, so adding a subject or changing ``seed``
  moves nobody.
- Every epsilon is a subject-level epsilon: group privacy over a subject's windows, equal to the
  figure an independent accountant gives for the group's sampled Gaussian mechanism.
- Statistics never leave exactly unless the site's policy says so, over enough subjects; the
  shipped site files require DP.
- The site records the run config and message config it acted on; ``audit`` flags a run whose
  seeds, windows or preprocessing changed between messages.
"""

from __future__ import annotations

import json
import multiprocessing
import threading

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import MessageType
from typer.testing import CliRunner

from fedneurogen.client import app as client_app
from fedneurogen.client import privacy, site
from fedneurogen.client.refusal import RUN_LIMITS, SiteRefusal, check_run
from fedneurogen.shared import workflows
from fedneurogen.shared.config import PreprocessConfig
from fedneurogen.shared.data.pairing import window_starts
from fedneurogen.shared.errors import ConfigError
from fedneurogen.shared.model import NeuroGenModel
from fedneurogen.shared.run_config import RunConfig, validate_run_config

DEFAULTS = RunConfig().model_dump(by_alias=True)


def _context(node: dict, run_config: dict, node_id: int = 5) -> Context:
    return Context(run_id=1, node_id=node_id, node_config=node, state=RecordDict(), run_config=run_config)


def _dp_run(run_dir: str, **changes) -> tuple[dict, RunConfig]:
    raw = {**DEFAULTS, "dp-enabled": True, "run-dir": run_dir, **changes}
    return raw, RunConfig.model_validate(raw)


# ---------------------------------------------------------------------------------------------
# Item 5: the run config is bounded by the site


@pytest.mark.parametrize("hop", ["0", "-1", "0.001"])
def test_a_hop_that_never_ends_is_refused_before_any_window_is_cut(hop, tmp_path):
    """``hop_seconds=0`` appended windows until memory ran out and ``-1`` looped for ever: the
    typed config refuses them, so the run config, the ClientApp and ``train --preprocess`` do
    too (exit 2, a configuration error, before the data path is even looked at)."""
    with pytest.raises(ConfigError, match=f"preprocessing: hop_seconds = {hop}: Input should be greater"):
        PreprocessConfig.from_overrides(f"hop_seconds={hop}")
    with pytest.raises(ConfigError, match=rf"run config: preprocess = 'hop_seconds={hop}': preprocessing: hop_seconds"):
        validate_run_config({"preprocess": f"hop_seconds={hop}"})

    from fedneurogen.cli import app as cli

    missing = tmp_path / "no-such-site"  # never read: the setting is refused first
    result = CliRunner().invoke(
        cli, ["train", "--data", str(missing), "--out", str(tmp_path / "out"), "--preprocess", f"hop_seconds={hop}"]
    )
    assert result.exit_code == 2, result.output
    assert "hop_seconds" in result.output and str(missing) not in result.output
    assert not (tmp_path / "out").exists()

    # a config built without validation (model_copy) still never reaches the window loop
    unchecked = PreprocessConfig().model_copy(update={"hop_seconds": float(hop)})
    if unchecked.hop_seconds <= 0:
        with pytest.raises(ConfigError, match="hop_seconds = .* must be > 0"):
            window_starts(200 * 600, 200.0, 300, 0.5, unchecked)


def test_every_preprocess_length_has_sane_bounds():
    """Every rate and length is positive and bounded, so no setting multiplies a site's windows."""
    for setting in (
        "window_seconds=0",
        "window_seconds=1e9",
        "lag_seconds=-6",
        "history_seconds=1e6",
        "eeg_sfreq=0",
        "fmri_sfreq=-0.5",
        "power_hop_seconds=0",
        "power_window_seconds=1e-6",
        "fnirs_filter_order=0",
        "label_min_fraction=2",
    ):
        with pytest.raises(ConfigError, match=f"preprocessing: {setting.split('=')[0]} = "):
            PreprocessConfig.from_overrides(setting)
    default = PreprocessConfig()
    assert window_starts(200 * 600, 200.0, 300, 0.5, default)[0].size == 70  # a 10 min run: (600 - 30 - 16) / 8 + 1


def test_the_run_config_keys_a_site_bounds_are_refused_with_a_clear_reason():
    """``local-epochs``, ``round-timeout``, ``eval-pcc-windows``, ``departure-windows`` and ``max-windows`` are bounded
    by the site's policy (defaults in ``RUN_LIMITS``, its node config may change them); the run
    config has absolute maxima too."""
    check_run({}, RunConfig())  # the defaults pass every default bound
    cases = {
        "local_epochs": (21, "the run's local-epochs = 21 is above this site's limit max-local-epochs = 20"),
        "round_timeout": (90000.0, "the run's round-timeout = 90000 is above this site's limit max-round-timeout = 86400"),
        "eval_pcc_windows": (5000, "the run's eval-pcc-windows = 5000 is above this site's limit max-eval-pcc-windows = 1024"),
        "departure_windows": (65, "the run's departure-windows = 65 is above this site's limit max-departure-windows = 64"),
        "max_windows": (1, "the run's max-windows = 1 is below this site's floor min-train-windows = 8 (0: all windows)"),
    }  # fmt: skip
    for name, (value, reason) in cases.items():
        with pytest.raises(SiteRefusal) as err:
            check_run({}, RunConfig(**{name: value}))
        assert err.value.public == reason
    assert {key for key, _, _ in RUN_LIMITS} == {
        "max-local-epochs",
        "max-round-timeout",
        "max-eval-pcc-windows",
        "max-departure-windows",
        "min-train-windows",
    }
    # a site may allow more, or less
    check_run({"max-local-epochs": "50"}, RunConfig(local_epochs=50))
    check_run({"min-train-windows": "1"}, RunConfig(max_windows=1))
    check_run({}, RunConfig(max_windows=0))  # all windows
    with pytest.raises(SiteRefusal, match="local-epochs = 3 is above this site's limit max-local-epochs = 2"):
        check_run({"max-local-epochs": "2"}, RunConfig(local_epochs=3))
    for key, value in (("local-epochs", 10**6), ("round-timeout", 1e9), ("eval-pcc-windows", 10**7)):
        with pytest.raises(ConfigError, match=f"run config: {key} = .*less than or equal to"):
            validate_run_config({key: value})


def test_a_refused_bound_is_a_public_reason_in_the_reply_and_the_sites_record(task_identity, tmp_path):
    """The ClientApp refuses before it reads any data: the reason goes back to the server (which
    names it in the history) and into the site's own ``sent.jsonl``."""
    node = {"data-path": str(tmp_path / "data"), "state-dir": str(tmp_path / "state")}
    context = _context(node, {**DEFAULTS, "local-epochs": 500})
    message = Message(
        RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=5, message_type=MessageType.TRAIN
    )
    reply = client_app.train(message, context)
    reason = "site refused: the run's local-epochs = 500 is above this site's limit max-local-epochs = 20"
    assert reply.has_error() and reply.error.reason == reason
    (sent,) = [json.loads(line) for line in (tmp_path / "state" / client_app.SENT_LOG).read_text().splitlines()]
    assert sent["error"]["reason"] == reason


def test_cache_dir_from_the_run_config_is_ignored_by_a_deployed_site(small_fmri_sites, tmp_path, monkeypatch):
    """A deployed site (its node config names its data) writes its preprocessed windows only
    where its node config says; a simulated node still takes the run config's ``cache-dir``."""
    monkeypatch.setattr(site, "_SITES", {})  # load, not the process' earlier copy
    chosen, own, simulated = tmp_path / "coordinator-chosen", tmp_path / "site-cache", tmp_path / "sim-cache"
    raw = {**DEFAULTS, "cache-dir": str(chosen)}
    run = RunConfig.model_validate(raw)
    node = {"data-path": str(small_fmri_sites[0]), "state-dir": str(tmp_path / "state"), "cache-dir": str(own)}
    data = client_app._site(_context(node, raw), run)
    assert len(data.train) > 0
    assert not chosen.exists() and any(own.rglob("*")), "the deployed site cached where the run config said"

    monkeypatch.setattr(site, "_SITES", {})
    sim_raw = {**raw, "cache-dir": str(simulated), "data-root": str(small_fmri_sites[0].parent)}
    sim_run = RunConfig.model_validate(sim_raw)
    client_app._site(_context({"partition-id": 0}, sim_raw), sim_run)
    assert any(simulated.rglob("*")), "the simulation's cache-dir is still used"


# ---------------------------------------------------------------------------------------------
# Item 3: the ledger reserves before it spends


def _site_node(tmp_path, cap: float | None = None, **policy) -> dict:
    data = tmp_path / "bids"
    data.mkdir(exist_ok=True)
    node = {"data-path": str(data), "state-dir": str(tmp_path / "state"), **policy}
    return node | ({"dp-lifetime-epsilon": cap} if cap is not None else {})


def test_runs_opened_with_a_tiny_statistics_share_cannot_together_pass_the_lifetime_cap(tmp_path):
    """The bypass: k runs each release the ridge statistics with a tiny ``dp-statistics-share``
    (0.05 here: 0.2 of a target of 4), then each spends its full target. Each run reserves its whole
    target before that first release, so the third cannot open; a resumed run is checked again."""
    node = _site_node(tmp_path, cap=10.0)
    opened = []
    for k in range(3):
        raw, run = _dp_run(f"runs/r{k}", **{"dp-target-epsilon": 4.0, "dp-statistics-share": 0.05})
        if k == 2:
            with pytest.raises(SiteRefusal) as err:
                with client_app._privacy(_context(node, raw), run):
                    pass
            assert "spent or reserved epsilon 8.00 (delta 1e-05)" in err.value.public
            assert "with this run's 4 it would exceed the site's lifetime limit 10" in err.value.public
            continue
        with client_app._privacy(_context(node, raw), run) as (dp, ledger, path):
            assert privacy.load_ledger(path, "rdp").reserved == 4.0  # on disk before the release
            ledger.history.append((privacy.statistics_noise_multiplier(ledger, dp), 1.0, 1))  # the release's step
            privacy.save_ledger(path, ledger)
        opened.append(path)
    spent = [privacy.load_ledger(p, "rdp").epsilon(1e-5) for p in opened]
    assert all(0 < s <= 0.2 * (1 + 1e-9) for s in spent)  # what the old check counted: next to nothing

    # the same run-dir again (a resumed run) is checked again, against the others' reservation
    raw, run = _dp_run("runs/r0", **{"dp-target-epsilon": 4.0, "dp-statistics-share": 0.05})
    with client_app._privacy(_context(node, raw), run):
        pass
    with pytest.raises(SiteRefusal, match="lifetime limit 7"):
        with client_app._privacy(_context(_site_node(tmp_path, cap=7.0), raw), run):
            pass


def test_the_lifetime_ledger_has_one_delta_the_sites(tmp_path):
    """Every run's epsilon is stated at the policy's ``dp-max-delta`` (default 1e-5), never at
    the new run's: a run with a larger delta is refused under a lifetime cap."""
    raw, run = _dp_run("runs/a", **{"dp-delta": 1e-3})
    with pytest.raises(SiteRefusal, match="dp-delta = 0.001 is above the delta 1e-05 this site states"):
        with client_app._privacy(_context(_site_node(tmp_path, cap=20.0), raw), run):
            pass
    earlier = privacy.PrivacyLedger("rdp", 1.0, [(1.0, 0.1, 200)])
    privacy.save_ledger(privacy.ledger_path(tmp_path / "state", "runs/earlier"), earlier)
    at_policy = earlier.epsilon(1e-4)
    raw, run = _dp_run("runs/b", **{"dp-delta": 1e-6, "dp-target-epsilon": 1.0})
    node = _site_node(tmp_path, cap=at_policy + 0.5, **{"dp-max-delta": 1e-4})
    with pytest.raises(SiteRefusal, match=f"spent or reserved epsilon {at_policy:.2f} \\(delta 0.0001\\)"):
        with client_app._privacy(_context(node, raw), run):
            pass


def test_a_second_message_of_the_same_run_cannot_spend_from_its_ledger_at_once(tmp_path):
    node = _site_node(tmp_path, cap=10.0)
    raw, run = _dp_run("runs/one")
    with client_app._privacy(_context(node, raw), run):
        with pytest.raises(SiteRefusal, match="another message of this run is using its ledger"):
            with client_app._privacy(_context(node, raw), run):
                pass
    with client_app._privacy(_context(node, raw), run):  # free again once the first is done
        pass


def test_concurrent_first_messages_cannot_both_pass_threads(tmp_path):
    """Eight runs' first messages at once, room for two (cap 10, target 4 each): two pass."""
    node = _site_node(tmp_path, cap=10.0)
    start, results = threading.Barrier(8), {}

    def first_message(k: int) -> None:
        raw, run = _dp_run(f"runs/t{k}", **{"dp-target-epsilon": 4.0})
        start.wait()
        try:
            with client_app._privacy(_context(node, raw), run):
                results[k] = "passed"
        except SiteRefusal as err:
            results[k] = err.public

    threads = [threading.Thread(target=first_message, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sum(r == "passed" for r in results.values()) == 2 and len(results) == 8
    reserved = [privacy.load_ledger(p, "rdp").reserved for p in (tmp_path / "state").glob("privacy-*.json")]
    assert sorted(reserved) == [4.0, 4.0]  # the refused runs reserved nothing


def _reserve_in_a_process(state: str, run_dir: str, start, out) -> None:
    settings = privacy.DPSettings(target_epsilon=4.0, delta=1e-5, max_grad_norm=1.0, planned_rounds=1)
    path = privacy.ledger_path(state, run_dir)
    start.wait()
    try:
        with privacy.run_lock(path):
            privacy.reserve(state, path, settings, 1e-5, 10.0)
        out.put("passed")
    except SiteRefusal:
        out.put("refused")


def test_concurrent_first_messages_cannot_both_pass_processes(tmp_path):
    """The same race between separate processes (a SuperNode starts a ClientApp process per
    message): the file lock, not memory, decides."""
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Barrier(4), ctx.Queue()
    procs = [
        ctx.Process(target=_reserve_in_a_process, args=(str(tmp_path / "state"), f"runs/p{k}", start, out))
        for k in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert sorted(out.get(timeout=5) for _ in procs) == ["passed", "passed", "refused", "refused"]


def test_a_finished_runs_unused_reservation_is_released(tmp_path):
    """After its last round a run counts what it spent, not its target: the room it did not use
    goes to the next run; the same run asked again reserves (and is checked) again."""
    node = _site_node(tmp_path, cap=10.0)
    raw, run = _dp_run("runs/done", **{"dp-target-epsilon": 8.0, "dp-statistics-share": 0.1})
    with client_app._privacy(_context(node, raw), run) as (dp, ledger, path):
        ledger.history.append((privacy.statistics_noise_multiplier(ledger, dp), 1.0, 1))
        privacy.save_ledger(path, ledger)
    other_raw, other = _dp_run("runs/next", **{"dp-target-epsilon": 8.0})
    with pytest.raises(SiteRefusal, match="lifetime limit 10"):
        with client_app._privacy(_context(node, other_raw), other):
            pass
    released = privacy.release(path.parent, path)
    assert released.reserved == 0.0 and released.committed(1e-5) == pytest.approx(released.epsilon(1e-5))
    assert 0 < released.committed(1e-5) < 1
    with client_app._privacy(_context(node, other_raw), other):  # the unused room is free
        pass
    with pytest.raises(SiteRefusal, match="lifetime limit 10"):  # the finished run asked again: checked
        with client_app._privacy(_context(node, raw), run):
            pass


# ---------------------------------------------------------------------------------------------
# Item 1 (batches, subset, noise): nothing random at a site comes from the coordinator


@pytest.fixture
def recorded_batches(monkeypatch):
    """Every Poisson batch a training draws (the real sampler, watched)."""
    drawn: list[list[int]] = []
    real = workflows.training.poisson_batches

    def watched(n, batch_size, rng):
        for site_index, index in real(n, batch_size, rng):
            drawn.append(sorted(index.tolist()))
            yield site_index, index

    monkeypatch.setattr(workflows.training, "poisson_batches", watched)
    return drawn


def _train_message(server_round: int = 1) -> Message:
    weights = {k: v.detach().clone() for k, v in NeuroGenModel("tiny", device="cpu").state_dict().items()}
    content = RecordDict(
        {"arrays": ArrayRecord(weights), "config": ConfigRecord({"server-round": server_round, "class-names": []})}
    )
    return Message(content, dst_node_id=5, message_type=MessageType.TRAIN)


def test_the_same_dp_run_config_draws_other_batches_and_a_released_reservation_at_the_end(
    small_fmri_sites, tmp_path, monkeypatch, recorded_batches, task_identity
):
    """On a deployed site, two DP runs with the same run config, ``seed`` and ``server-round``
    train on different Poisson batches (OS entropy), so no coordinator choice fixes them. Each
    run's last round releases its unused reservation. A simulated node given a ``site-seed``
    draws the plan of that seed (reproducible simulations), whatever the run's ``seed``."""
    monkeypatch.setattr(site, "_SITES", {})
    # the whole budget to DP-SGD (with the default share 1 it goes to the ridge statistics, and a
    # train message spends nothing)
    settings = {"local-epochs": 1, "max-windows": 16, "eval-pcc-windows": 0, "num-server-rounds": 1,
                "dp-statistics-share": 0.0}  # fmt: skip
    node = {"data-path": str(small_fmri_sites[0]), "state-dir": str(tmp_path / "state"), "dp-lifetime-epsilon": 20.0}
    plans = []
    for k in range(2):
        raw, run = _dp_run(f"runs/same-{k}", seed=7, **settings)
        reply = client_app.train(_train_message(server_round=1), _context(node, raw))
        assert not reply.has_error(), reply.error.reason
        plans.append(list(recorded_batches))
        recorded_batches.clear()
        ledger = privacy.load_ledger(privacy.ledger_path(tmp_path / "state", f"runs/same-{k}"), "rdp")
        assert ledger.reserved == 0.0 and 0 < ledger.epsilon(run.dp_delta) <= 8.0 * (1 + 1e-9)  # released
    assert len(plans[0]) == len(plans[1]) == 2  # 16 windows, batch 8: 2 steps, q = 1/2
    assert plans[0] != plans[1]  # the same by chance: 2^-32

    # a simulated node: its site-seed (and the round) alone make the plan; the run's seed does not
    monkeypatch.setattr(site, "_SITES", {})
    raw, run = _dp_run("runs/sim", seed=1, **settings, **{"data-root": str(small_fmri_sites[0].parent)})
    raw["site-state-dir"] = str(tmp_path / "sim-state")
    reply = client_app.train(_train_message(server_round=1), _context({"partition-id": 0, "site-seed": 3}, raw))
    assert not reply.has_error(), reply.error.reason
    from fedneurogen.shared.workflows.training import poisson_batches

    def plan(seed: int) -> list[list[int]]:
        return [sorted(i.tolist()) for _, i in poisson_batches(16, 8, np.random.default_rng(seed))]

    drawn = list(recorded_batches)  # (plan() below draws through the watched sampler too)
    assert drawn == plan(3 + 1000 * 1) != plan(run.seed + 1000 * 1)


def test_a_coordinator_chosen_seed_and_round_cannot_put_a_window_in_every_step(small_fmri_sites, tmp_path, monkeypatch):
    """The attack: search ``seed`` and ``server-round`` for a plan that puts one window in every
    step. The plan no longer depends on them on a deployed site: for the same (seed, round) the
    site's batches differ from the ones the coordinator computed, and from each other."""
    from fedneurogen.shared.workflows.training import poisson_batches

    n, batch = 32, 8
    seed, server_round = 1234, 5
    predicted = [
        idx.tolist() for _, idx in poisson_batches(n, batch, np.random.default_rng(seed + 1000 * server_round))
    ]
    node = {"data-path": str(small_fmri_sites[0])}
    site_seed = client_app._site_seed(node)
    assert site_seed is None  # a deployed site: the round's seed is the OS's
    drawn = [[idx.tolist() for _, idx in poisson_batches(n, batch, np.random.default_rng(site_seed))] for _ in range(2)]
    assert drawn[0] != predicted and drawn[1] != predicted and drawn[0] != drawn[1]
    # and a simulated node's seed is its own, not derived from the run's seed or the round
    assert client_app._site_seed({"partition-id": 2, "site-seed": "9"}) == 9
    assert client_app._site_seed({"partition-id": 2, "data-path": "/d", "site-seed": "9"}) is None


def test_the_max_windows_subset_is_keyed_by_the_site_not_the_runs_seed(small_fmri_sites, tmp_path, monkeypatch):
    """The ``max-windows`` subset of a deployed site comes from its secret key (one per state
    folder, made once): stable within a run, different at another site, whatever ``seed``."""
    raw = {**DEFAULTS, "max-windows": 8, "seed": 0, "run-dir": "runs/k"}
    run = RunConfig.model_validate(raw)

    def subset(state: str) -> list[float]:
        monkeypatch.setattr(site, "_SITES", {})
        node = {"data-path": str(small_fmri_sites[0]), "state-dir": str(tmp_path / state)}
        data = client_app._site(_context(node, raw), run)
        return sorted(zip(data.train.runs.tolist(), data.train.onsets.tolist()))

    first, again, elsewhere = subset("a"), subset("a"), subset("b")
    assert first == again and first != elsewhere and len(first) == 8
    secret = tmp_path / "a" / privacy.SECRET_FILE
    assert len(secret.read_bytes()) == 32 and secret.stat().st_mode & 0o777 == 0o600
    assert privacy.keyed_seed(tmp_path / "a", "max-windows", "runs/k") == privacy.keyed_seed(
        tmp_path / "a", "max-windows", "runs/./k"
    )


def test_dp_noise_comes_from_os_entropy_not_torchs_default_generator():
    """The DP-SGD noise: two noise-only steps from the same weights, with torch's process-wide
    generator reset to the same seed (as anything sharing the process can do, e.g. with a
    run-config seed), differ on a deployed site; with a simulated node's seed they repeat."""
    from fedneurogen.shared.workflows.training import noise_only_step

    def noisy_step(noise_seed: int | None) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = NeuroGenModel("tiny", fmri_positions=None, device="cpu")
        params = model.prepare_for_dp("fnirs")
        optimizer = torch.optim.SGD(params, lr=1.0)
        settings = privacy.DPSettings(8.0, 1e-5, 1.0, 1, noise_seed=noise_seed)
        ledger = privacy.PrivacyLedger()
        privacy.plan_round(ledger, settings, 20, 8, 1)
        torch.manual_seed(0)
        net, dp_optimizer, _ = privacy.make_private(model, optimizer, ledger, settings, 20, 8)
        dp_optimizer.zero_grad(set_to_none=True)
        noise_only_step(net, dp_optimizer)
        return [p.detach().clone() for p in params]

    first, second = noisy_step(None), noisy_step(None)
    assert any(not torch.equal(a, b) for a, b in zip(first, second))
    seeded, again = noisy_step(11), noisy_step(11)
    assert all(torch.equal(a, b) for a, b in zip(seeded, again))


# ---------------------------------------------------------------------------------------------
# Item 7: class names pass the one-token filter the server's audit applies


def test_class_names_are_sent_only_when_they_are_one_token(small_fmri_sites, tmp_path, monkeypatch, task_identity):
    """A site whose events name a trial "Jane Doe" or "sub-07" does not send those names; its
    one-token task labels still go. The filter is the audit's pattern (``server/audit.py``)."""
    import shutil

    from fedneurogen.server.audit import LABEL as AUDIT_LABEL
    from fedneurogen.shared.records import LABEL, sendable_label

    assert LABEL.pattern == AUDIT_LABEL.pattern
    assert [sendable_label(x) for x in ("faces", "left_hand", "go.nogo-2", "Jane Doe", "sub-07", "a/b", "", 3)] == [
        True, True, True, False, False, False, False, False,
    ]  # fmt: skip

    copy = tmp_path / "site-01"
    shutil.copytree(small_fmri_sites[0], copy)
    for events in copy.rglob("*_events.tsv"):
        events.write_text(events.read_text().replace("\tscenes", "\tJane Doe").replace("\tmotion", "\tsub-07"))
    monkeypatch.setattr(site, "_SITES", {})
    node = {"data-path": str(copy), "state-dir": str(tmp_path / "state")}
    context = _context(node, DEFAULTS)
    assert {"Jane Doe", "sub-07"} <= set(client_app._site(context, RunConfig()).classes)  # the site has them
    reply = client_app.query(Message(RecordDict(), dst_node_id=5, message_type=MessageType.QUERY), context)
    sent = list(reply.content["site"]["classes"])
    assert sent and all(sendable_label(c) for c in sent) and "Jane Doe" not in sent and "sub-07" not in sent


# ---------------------------------------------------------------------------------------------
# Item 1 (split): a deployed site's split is keyed by its secret and moves nobody


def test_a_keyed_split_moves_no_subject_when_another_is_added():
    """Each subject's split depends on its id and the key alone: adding subjects (one by one, up
    to 40) leaves every earlier subject where it was; another key gives another split."""
    from fedneurogen.shared.splits import keyed_split_subjects

    key = bytes(range(32))
    subjects = [f"sub-{i:02d}" for i in range(1, 41)]
    where = {}
    for n in range(8, len(subjects) + 1):
        split = keyed_split_subjects(subjects[:n], key)
        now = {s: part for part in ("train", "val", "test") for s in getattr(split, part)}
        assert set(now) == set(subjects[:n])
        assert all(now[s] == where[s] for s in where), f"adding {subjects[n - 1]} moved a subject"
        where = now
    assert {"train", "val", "test"} == set(where.values())
    assert keyed_split_subjects(subjects, b"another key") != keyed_split_subjects(subjects, key)
    # a site whose every subject would be held out still trains on one
    for k in range(50):
        tiny = keyed_split_subjects(["sub-01", "sub-02"], bytes([k]) * 32)
        assert tiny.train and set(tiny.train + tiny.val + tiny.test) == {"sub-01", "sub-02"}
    with pytest.raises(ValueError, match="non-empty key"):
        keyed_split_subjects(subjects, b"")


def _split_of(data: site.SiteSplit) -> dict[str, str]:
    train, val = set(data.train.subjects.tolist()), set(data.val.subjects.tolist())
    return {s: "train" if s in train else "val" for s in train | val}


def test_a_deployed_sites_split_ignores_the_seed_and_survives_a_subject_more_or_less(
    small_fmri_sites, tmp_path, monkeypatch
):
    """On a deployed site the run config's ``seed`` moves no subject, and a subject removed from
    (or added to) the site's folder moves no other: the split is the site's keyed one. A
    simulated node keeps ``split_subjects(seed)`` (reproducible simulations)."""
    import shutil

    from fedneurogen.shared.splits import keyed_split_subjects

    folder = tmp_path / "site-01"
    shutil.copytree(small_fmri_sites[0], folder)
    subjects = sorted(p.name for p in folder.glob("sub-*"))
    assert len(subjects) == 3
    # a site secret whose split trains one subject and holds out one of the two that stay
    state = tmp_path / "state"
    state.mkdir()
    for k in range(256):
        (state / privacy.SECRET_FILE).write_bytes(bytes([k]) * 32)
        split = keyed_split_subjects(subjects, privacy.site_key(state, "split"))
        if set(split.train) & set(subjects[:2]) and set(split.val) & set(subjects[:2]):
            break
    else:
        pytest.fail("no key among 256 splits the first two subjects apart")
    node = {"data-path": str(folder), "state-dir": str(state)}

    def loaded(**run_changes) -> dict[str, str]:
        monkeypatch.setattr(site, "_SITES", {})
        raw = {**DEFAULTS, **run_changes}
        return _split_of(client_app._site(_context(node, raw), RunConfig.model_validate(raw)))

    full = loaded(seed=0)
    assert full == {s: "train" for s in split.train} | {s: "val" for s in split.val}
    assert loaded(seed=1) == loaded(seed=12345) == full  # the coordinator's seed moves nobody
    # the checkpoint's record of the split (content hashes of its runs) follows the keyed split
    from fedneurogen.shared.data import load_site
    from fedneurogen.shared.splits import REPORT_KEYS, subject_keys

    data = client_app._site(_context(node, DEFAULTS), RunConfig())
    windows = load_site(folder, progress=False)
    keys = subject_keys(folder, windows.runs, windows.subjects)
    report = site.split_report(data)
    for part in ("train", "val"):
        assert report[REPORT_KEYS[part]] == sorted(h for s in getattr(split, part) for h in keys[s].split(":"))
    shutil.rmtree(folder / subjects[2])  # a subject less (the same as one more, read backwards)
    fewer = loaded(seed=7)
    assert fewer == {s: where for s, where in full.items() if s != subjects[2]}

    # a simulated node: the run's seed still splits (reproducible, as the benchmarks' split)
    from fedneurogen.shared.splits import split_subjects

    monkeypatch.setattr(site, "_SITES", {})
    raw = {**DEFAULTS, "seed": 3, "data-root": str(small_fmri_sites[0].parent), "site-state-dir": str(tmp_path / "s")}
    data = client_app._site(_context({"partition-id": 0}, raw), RunConfig.model_validate(raw))
    expected = split_subjects(subjects, seed=3)
    assert set(data.train.subjects.tolist()) == set(expected.train)


# ---------------------------------------------------------------------------------------------
# Item 2: every epsilon is a subject-level epsilon


def test_the_subject_level_epsilon_of_a_dp_run_is_the_group_privacy_figure(
    small_fmri_sites, tmp_path, monkeypatch, task_identity
):
    """A DP round on a deployed site: the epsilon it reports, writes in its ledger and checks
    against its target is one subject's. Computed here independently: the subject has k windows,
    so a step moves the clipped sum by at most k clips (noise multiplier sigma / k) and includes
    the subject when any of its windows is sampled (1 - (1 - q)^k); Opacus' RDP accountant of
    that, after the statistics release (one subject-level step), is the figure. The window-level
    epsilon the site used to report is far below it."""
    from opacus.accountants import RDPAccountant

    monkeypatch.setattr(site, "_SITES", {})
    settings = {"local-epochs": 1, "max-windows": 16, "eval-pcc-windows": 0, "num-server-rounds": 2}
    node = {"data-path": str(small_fmri_sites[0]), "state-dir": str(tmp_path / "state")}
    # Opacus' RDP is the independent reference here (tests/test_accountants.py checks "pld")
    raw, run = _dp_run("runs/subject", **settings, **{"dp-statistics-share": 0.1, "dp-accountant": "rdp"})
    context = _context(node, raw)
    statistics = client_app.query(
        Message(
            RecordDict({"request": ConfigRecord({"kind": "ridge-statistics"})}),
            dst_node_id=5,
            message_type=MessageType.QUERY,
        ),
        context,
    )
    assert not statistics.has_error(), statistics.error.reason
    reply = client_app.train(_train_message(server_round=1), context)
    assert not reply.has_error(), reply.error.reason
    ledger = privacy.load_ledger(privacy.ledger_path(tmp_path / "state", "runs/subject"), "rdp")

    data = client_app._site(context, run)
    _, counts = np.unique(data.train.subjects, return_counts=True)
    k, n = int(counts.max()), len(data.train)
    assert n == 16 and k >= 16 // len(counts) and ledger.group_size == k
    q = 1 / int(np.ceil(n / 8))  # the tiny preset's batch 8: Poisson rate 1 / steps per epoch
    steps = int(np.ceil(n / 8))
    sigma = ledger.noise_multiplier
    (stats_sigma, _, _) = ledger.subject_history[0]
    reference = RDPAccountant()
    reference.history = [(stats_sigma, 1.0, 1), (sigma / k, 1 - (1 - q) ** k, steps)]
    expected = reference.get_epsilon(delta=run.dp_delta)
    assert ledger.epsilon(run.dp_delta) == pytest.approx(expected, rel=1e-9)
    assert reply.content["metrics"]["epsilon"] == pytest.approx(expected, rel=1e-9)
    # calibrated for the subject: the planned 2 rounds end at (not past) the target
    planned = RDPAccountant()
    planned.history = [(stats_sigma, 1.0, 1), (sigma / k, 1 - (1 - q) ** k, 2 * steps)]
    assert 0.95 * run.dp_target_epsilon <= planned.get_epsilon(delta=run.dp_delta) <= run.dp_target_epsilon * 1.001
    window = RDPAccountant()
    window.history = [(stats_sigma, 1.0, 1), (sigma, q, steps)]
    assert ledger.window_epsilon(run.dp_delta) == pytest.approx(window.get_epsilon(delta=run.dp_delta), rel=1e-9)
    assert ledger.window_epsilon(run.dp_delta) < 0.5 * ledger.epsilon(run.dp_delta)

    # the ledger's figure is the one the CLI prints, per subject
    from fedneurogen.cli import app as cli

    shown = CliRunner().invoke(
        cli,
        ["privacy-budget", "--state-dir", str(tmp_path / "state"), "--delta", str(run.dp_delta)],
        terminal_width=200,
    )
    assert shown.exit_code == 0 and "epsilon per subject" in shown.output
    assert f"{ledger.epsilon(run.dp_delta):.3f}" in shown.output


def test_group_privacy_never_undercounts_and_the_ledger_keeps_its_group():
    """``group_step`` of one window is the step itself; more windows per subject never lower the
    epsilon (the window-level figure stays); the ledger's group size survives its JSON."""
    step = (1.1, 0.05, 200)
    assert privacy.group_step(*step, 1) == step
    epsilons = []
    for k in (1, 2, 5, 30):
        ledger = privacy.PrivacyLedger("rdp", 1.1, [step], group_size=k)
        epsilons.append(ledger.epsilon(1e-5))
        assert ledger.window_epsilon(1e-5) == pytest.approx(epsilons[0])
    assert epsilons == sorted(epsilons) and epsilons[-1] > 10 * epsilons[0]
    again = privacy.PrivacyLedger.from_json(json.loads(json.dumps(ledger.to_json())))
    assert again.group_size == 30 and again.epsilon(1e-5) == pytest.approx(epsilons[-1])


# ---------------------------------------------------------------------------------------------
# Item 4: statistics never leave exactly unless the site says so


def _statistics_request() -> Message:
    return Message(
        RecordDict({"request": ConfigRecord({"kind": "ridge-statistics"})}),
        dst_node_id=5,
        message_type=MessageType.QUERY,
    )


@pytest.mark.parametrize(
    "changes",
    [{}, {"max-windows": 1}, {"max-windows": 8}, {"preprocess": "hop_seconds=2"}],
    ids=["one-subject-validation", "max-windows-1", "max-windows-8", "hop-2"],
)
def test_exact_statistics_never_leave_under_the_default_policy(
    changes, small_fmri_sites, tmp_path, monkeypatch, task_identity
):
    """A site with no policy (the default), and one with the shipped DP-required policy, send no
    exact ridge statistics whatever the run config: not a one-subject validation sum (3
    subjects), not one window (``max-windows=1``, refused outright), not two half-overlapping
    windows at ``hop_seconds=2``."""
    monkeypatch.setattr(site, "_SITES", {})
    for policy in ({}, {"dp-required": "true"}, {"dp-max-epsilon": "8"}):
        node = {"data-path": str(small_fmri_sites[0]), "state-dir": str(tmp_path / "state"), **policy}
        raw = {**DEFAULTS, **changes}
        reply = client_app.query(_statistics_request(), _context(node, raw))
        assert reply.has_error() and reply.error.reason.startswith("site refused: ")
        assert any(
            phrase in reply.error.reason
            for phrase in (
                "only through the Gaussian mechanism",
                "trains only under differential privacy",
                "min-train-windows",
            )
        ), reply.error.reason


def test_exact_statistics_need_the_allowance_and_enough_subjects(
    small_fmri_sites, tmp_path, monkeypatch, task_identity
):
    """With ``allow-exact-statistics`` a site sends exact sums only over at least
    ``min-subjects-per-release`` subjects (default 5): a 3-subject site is refused; with a floor
    of 2 its held-out sum (one or no subject) is left out; a ``dp-max-*`` limit still refuses."""
    monkeypatch.setattr(site, "_SITES", {})
    base = {
        "data-path": str(small_fmri_sites[0]),
        "state-dir": str(tmp_path / "state"),
        "allow-exact-statistics": "true",
    }
    refused = client_app.query(_statistics_request(), _context(base, DEFAULTS))
    assert refused.has_error() and "fewer than this site's min-subjects-per-release = 5" in refused.error.reason
    data = client_app._site(_context(base, DEFAULTS), RunConfig())
    train_subjects = len(set(data.train.subjects.tolist()))
    floor = {"min-subjects-per-release": 1}
    sent = client_app.query(_statistics_request(), _context({**base, **floor}, DEFAULTS))
    assert not sent.has_error(), sent.error.reason
    assert "train.sxy" in sent.content["statistics"] and sent.content["metrics"]["private"] == 0
    if train_subjects >= 2:
        few = client_app.query(_statistics_request(), _context({**base, "min-subjects-per-release": 2}, DEFAULTS))
        assert not few.has_error() and not any(k.startswith("val.") for k in few.content["statistics"])
    with pytest.raises(SiteRefusal, match="only through the Gaussian mechanism"):
        from fedneurogen.client.refusal import exact_statistics_floor

        exact_statistics_floor({**base, "dp-max-delta": "1e-5"})


def test_the_simulation_gives_its_simulated_nodes_the_allowance_never_a_deployed_site(task_identity):
    """``fedneurogen federate`` runs without DP on simulated data: the simulation's mod gives its
    simulated nodes ``allow-exact-statistics`` (a node setting, not the run config); a node with
    its own data path is a deployed site and gets nothing."""
    from fedneurogen.simulations.drills import SimulationConfig, simulation_mod

    seen = {}

    def call_next(msg, context):
        seen.update(context.node_config)
        return Message(RecordDict(), reply_to=msg)

    msg = Message(RecordDict(), dst_node_id=5, message_type=MessageType.QUERY)
    simulation_mod(msg, _context({"partition-id": 1}, SimulationConfig.defaults()), call_next)
    assert seen["allow-exact-statistics"] == "true" and seen["min-subjects-per-release"] == 1
    seen.clear()
    simulation_mod(msg, _context({"partition-id": 1, "data-path": "/d"}, SimulationConfig.defaults()), call_next)
    assert "allow-exact-statistics" not in seen and "min-subjects-per-release" not in seen


def test_the_shipped_site_files_require_dp():
    """The systemd SuperNode unit, ``compose.site.yml`` and the local consortium's default policy
    refuse a run without DP and never allow exact statistics."""
    import inspect
    import re

    from test_deploy_kit import command, exec_start, flags, load_compose, read_unit

    from fedneurogen.client.refusal import exact_statistics_floor
    from fedneurogen.simulations.consortium import up

    shipped = {
        "systemd": flags(exec_start(read_unit("fedneurogen-supernode@.service"))[1:])["--node-config"],
        "compose": flags(command(load_compose("compose.site.yml")["services"]["supernode"]))["--node-config"],
        "consortium": inspect.signature(up).parameters["site_config"].default,
    }
    for where, text in shipped.items():
        policy = dict(re.findall(r'([\w-]+)="([^"]*)"', text))
        assert policy.get("dp-required") == "true", where
        with pytest.raises(SiteRefusal, match="trains only under differential privacy"):
            check_run(policy, RunConfig(dp_enabled=False))
        with pytest.raises(SiteRefusal, match="only through the Gaussian mechanism"):
            exact_statistics_floor(policy)


# ---------------------------------------------------------------------------------------------
# Item 6: the site can see what was asked


def test_sent_log_records_what_was_asked_and_audit_flags_a_changed_run_config(
    small_fmri_sites, tmp_path, monkeypatch, task_identity
):
    """Each line of the site's ``sent.jsonl`` holds the run config and message config it acted
    on; ``fedneurogen audit`` on it flags a run whose ``seed`` or ``max-windows`` changed between
    messages, and passes a run that kept them."""
    from fedneurogen.cli import app as cli
    from fedneurogen.server.audit import check_site_log

    monkeypatch.setattr(site, "_SITES", {})
    state = tmp_path / "state"
    node = {"data-path": str(small_fmri_sites[0]), "state-dir": str(state)}
    query = Message(
        RecordDict({"ask": ConfigRecord({"server-round": 0})}), dst_node_id=5, message_type=MessageType.QUERY
    )
    for _ in range(2):
        assert not client_app.query(query, _context(node, {**DEFAULTS, "seed": 0})).has_error()
    log = state / client_app.SENT_LOG
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(entries) == 2 and entries[0]["run_config"]["seed"] == 0
    assert entries[0]["run_config"]["preprocess"] == DEFAULTS["preprocess"]
    assert entries[0]["message_config"] == {"ask": {"server-round": 0}}
    kept = CliRunner().invoke(cli, ["audit", str(log)])
    assert kept.exit_code == 0 and "kept its seeds, windows, preprocessing" in kept.output
    assert check_site_log(log).problems == []

    assert not client_app.query(query, _context(node, {**DEFAULTS, "seed": 5, "max-windows": 8})).has_error()
    found = check_site_log(log)
    assert any("changed seed from 0 (message 1) to 5 (message 3" in p for p in found.problems)
    assert any("changed max-windows from 0" in p for p in found.problems)
    flagged = CliRunner().invoke(cli, ["audit", str(log)], terminal_width=200)
    assert flagged.exit_code == 1 and "changed seed from 0" in flagged.output


# ---------------------------------------------------------------------------------------------
# Item 3 (operator's release) and the example count under DP


def test_the_operator_releases_an_aborted_runs_reservation_unless_it_is_in_progress(tmp_path):
    """``privacy-budget --release RUN``: a run stopped before its last round keeps its whole
    target reserved until the site's operator releases it; then it counts what it spent and the
    room goes to the next run. A run with a message in progress (its ledger locked) is refused,
    and an unknown run is named."""
    from fedneurogen.cli import app as cli

    node = _site_node(tmp_path, cap=10.0)
    state = tmp_path / "state"
    raw, run = _dp_run("runs/aborted", **{"dp-target-epsilon": 8.0, "dp-statistics-share": 0.1})
    with client_app._privacy(_context(node, raw), run) as (dp, ledger, path):
        ledger.history.append((privacy.statistics_noise_multiplier(ledger, dp), 1.0, 1))
        privacy.save_ledger(path, ledger)
    spent = privacy.load_ledger(path, "rdp").epsilon(1e-5)
    other_raw, other = _dp_run("runs/next", **{"dp-target-epsilon": 8.0})
    with pytest.raises(SiteRefusal, match="lifetime limit 10"):
        with client_app._privacy(_context(node, other_raw), other):
            pass

    runner = CliRunner()
    with privacy.run_lock(path):  # a message of the run is using its ledger
        busy = runner.invoke(
            cli, ["privacy-budget", "--state-dir", str(state), "--release", "runs/aborted"], terminal_width=300
        )
    assert busy.exit_code == 1 and "is in progress at this site" in busy.output and path.name in busy.output
    assert privacy.load_ledger(path, "rdp").reserved == 8.0

    listed = runner.invoke(cli, ["privacy-budget", "--state-dir", str(state)], terminal_width=300)
    assert path.name in listed.output  # the name the operator is shown is the name --release takes
    done = runner.invoke(cli, ["privacy-budget", "--state-dir", str(state), "--release", path.name], terminal_width=300)
    assert done.exit_code == 0, done.output
    assert f"released {path.name}" in done.output and f"{spent:.3f}" in done.output
    released = privacy.load_ledger(path, "rdp")
    assert released.reserved == 0.0 and released.committed(1e-5) == pytest.approx(spent) and 0 < spent < 1
    with client_app._privacy(_context(node, other_raw), other):  # the aborted run's room is free
        pass

    unknown = runner.invoke(cli, ["privacy-budget", "--state-dir", str(state), "--release", "runs/never"])
    assert unknown.exit_code == 2 and "no privacy ledger for run 'runs/never'" in " ".join(unknown.output.split())


def test_under_dp_the_example_count_does_not_depend_on_the_sites_windows(
    small_fmri_sites, tmp_path, monkeypatch, task_identity
):
    """A window count is a function of the subjects' recordings that no DP mechanism covers: under
    DP a site's training and evaluation replies send the same ``num-examples`` whether it has 8
    or 16 training windows (and whatever its held-out windows)."""
    settings = {"local-epochs": 1, "eval-pcc-windows": 0, "num-server-rounds": 2, "dp-statistics-share": 0.0}  # DP-SGD
    node = {"data-path": str(small_fmri_sites[0]), "state-dir": str(tmp_path / "state")}
    evaluate = Message(
        RecordDict({"arrays": ArrayRecord({}), "config": ConfigRecord({"server-round": 1})}),
        dst_node_id=5,
        message_type=MessageType.EVALUATE,
    )
    sent, windows = [], []
    for max_windows in (8, 16):
        monkeypatch.setattr(site, "_SITES", {})
        raw, run = _dp_run(f"runs/count-{max_windows}", **settings, **{"max-windows": max_windows})
        context = _context(node, raw)
        data = client_app._site(context, run)
        windows.append((len(data.train), len(data.val)))
        trained = client_app.train(_train_message(server_round=1), context)
        assert not trained.has_error(), trained.error.reason
        evaluated = client_app.evaluate(evaluate, context)
        assert not evaluated.has_error(), evaluated.error.reason
        sent.append((trained.content["metrics"]["num-examples"], evaluated.content["metrics"]["num-examples"]))
    assert windows[0][0] == 8 and windows[1][0] == 16 and min(w[1] for w in windows) > 1
    assert sent == [(client_app.DP_EXAMPLES, client_app.DP_EXAMPLES)] * 2
