"""Bad configuration (issue 6, part 6): a wrong data path, an unreadable dataset, a preset that
differs between server and site, a site whose target the model lacks, weights that do not fit,
and an invalid run config. Each gives a clear error on the side that has it: a site refuses with
a reason that is safe to send (no paths, no subjects) and logs the full message; the server
names the site and the reason and goes on with the others; a bad run config stops the ServerApp
at start with a message naming the key, the value and what is allowed."""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MessageType, MetricRecord, RecordDict

from fedneurogen.client import app as client_app
from fedneurogen.client import site
from fedneurogen.client.refusal import (
    SiteRefusal,
    check_data_path,
    check_modality,
    check_run,
    site_run_config,
)
from fedneurogen.server.checkpointing import model_parameters
from fedneurogen.server.strategy import STRATEGIES, make_strategy
from fedneurogen.shared.errors import ConfigError
from fedneurogen.shared.model import PRESETS, NeuroGenModel, load_checkpoint, parameter_modality
from fedneurogen.shared.run_config import RunConfig, validate_run_config
from fedneurogen.simulations.federated import (
    FederationError,
    LocalSuperLink,
    app_dir,
    ensure_sites,
    flwr_run,
    run_federated,
    write_connection,
)

DEFAULTS = tomllib.loads((app_dir() / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def assert_safe(text: str, *private: object) -> None:
    """Nothing a site keeps to itself: its paths and subject identifiers."""
    assert "sub-" not in text and "/" not in text.replace("fmri, fnirs", ""), text
    for item in private:
        assert str(item) not in text, text


# ---------------------------------------------------------------------------------------------
# The run config, checked at ServerApp start and at every site


def test_run_config_model_covers_every_key_and_choice():
    config = validate_run_config(DEFAULTS)
    assert config.get("num-server-rounds") == DEFAULTS["num-server-rounds"] and config.preset == "tiny"
    fields = {f.alias for f in RunConfig.model_fields.values()}
    assert set(DEFAULTS) <= fields  # a key added to pyproject.toml gets a type here
    assert set(RunConfig.model_fields["preset"].annotation.__args__) == set(PRESETS)
    assert RunConfig.model_fields["strategy"].annotation.__args__ == STRATEGIES


def test_every_run_config_default_is_the_one_in_pyproject():
    """`flwr run` sends pyproject.toml's [tool.flwr.app.config]; RunConfig's field defaults are
    what the code falls back on. They are the same values, of the same type, key for key."""
    fields = {field.alias: field.default for field in RunConfig.model_fields.values()}
    assert set(fields) == set(DEFAULTS)  # every key in both
    differ = {
        key: (DEFAULTS[key], default)
        for key, default in fields.items()
        if DEFAULTS[key] != default or type(DEFAULTS[key]) is not type(default)
    }
    assert not differ, f"pyproject.toml vs RunConfig defaults: {differ}"
    assert RunConfig() == validate_run_config(DEFAULTS)


@pytest.mark.parametrize(
    "override, expected",
    [
        (
            {"strategy": "fedsgd"},
            "strategy = 'fedsgd' is not allowed; choose one of: fedavg, fedprox, fedadam, fedmedian, fedtrimmedavg, krum",
        ),
        ({"preset": "huge"}, "preset = 'huge' is not allowed; choose one of: tiny, small, base"),
        ({"num-server-rounds": -1}, "num-server-rounds = -1: must be greater than or equal to 1"),
        ({"dp-target-epsilon": 0.0}, "dp-target-epsilon = 0.0: must be greater than 0"),
        ({"dp-target-epsilon": -2.0}, "dp-target-epsilon = -2.0: must be greater than 0"),
        ({"fraction-train": 1.5}, "fraction-train = 1.5: must be less than or equal to 1"),
        ({"fraction-evaluate": -0.5}, "fraction-evaluate = -0.5: must be greater than or equal to 0"),
        (
            {"min-train-replies": 4, "min-available-nodes": 3},
            "min-train-replies = 4 is more than the sites a round is sure to ask (min-available-nodes = 3, min-train-nodes = 2); allowed: 1 to 3",
        ),
        ({"num-server-rounds": 2.5}, "num-server-rounds = 2.5: must be a valid integer"),
        ({"dp-accountant": "gdp"}, "dp-accountant = 'gdp' is not allowed; choose one of: rdp, prv"),
    ],
)
def test_bad_run_config_names_key_value_and_allowed(override, expected):
    with pytest.raises(ConfigError) as err:
        validate_run_config({**DEFAULTS, **override})
    assert str(err.value).startswith("run config: ") and expected in str(err.value)


def test_every_bad_key_is_named_at_once():
    with pytest.raises(ConfigError) as err:
        validate_run_config({**DEFAULTS, "strategy": "x", "num-server-rounds": 0})
    assert "strategy = 'x' is not allowed" in str(err.value) and "num-server-rounds = 0: must be" in str(err.value)
    validate_run_config({**DEFAULTS, "some-new-key": 1})  # declared in pyproject.toml later: kept, not checked


# ---------------------------------------------------------------------------------------------
# Site-side refusals: a public reason (sent) and a detail (the site's log)


def test_wrong_data_path_is_refused_without_the_path(tmp_path):
    missing = tmp_path / "site-07-data"
    with pytest.raises(SiteRefusal) as err:
        site.load(missing, seed=0)
    assert err.value.public == "data path not found (see the site's log)"
    assert str(missing) in err.value.detail and str(missing) in str(err.value)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(SiteRefusal, match="is not a folder") as err:
        check_data_path(tmp_path / "a-file")
    assert_safe(err.value.public, tmp_path)


def test_empty_dataset_is_refused_as_unreadable(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "README").write_text("not BIDS")
    with pytest.raises(SiteRefusal) as err:
        site.load(tmp_path / "site", seed=0)
    assert err.value.public == "dataset unreadable: no EEG runs found (see the site's log)"
    assert str(tmp_path / "site") in err.value.detail and "empty dataset" in err.value.detail
    with pytest.raises(SiteRefusal) as again:  # remembered: not read again every round
        site.load(tmp_path / "site", seed=0)
    assert again.value is err.value


def write_eeg_only_site(root: Path, other: str | None) -> Path:
    """A BIDS folder with one EEG run and, beside it, a recording of another datatype."""
    eeg = root / "sub-01" / "eeg"
    eeg.mkdir(parents=True)
    (eeg / "sub-01_task-rest_eeg.edf").write_bytes(b"0" * 512)
    if other:
        folder = root / "sub-01" / other
        folder.mkdir()
        (folder / f"sub-01_task-rest_{other}.nii.gz").write_bytes(b"\x1f\x8b")
    return root


@pytest.mark.parametrize("other", ["pet", "meg"])
def test_target_modality_the_model_lacks_is_refused(tmp_path, other):
    path = write_eeg_only_site(tmp_path / "site", other)
    with pytest.raises(SiteRefusal) as err:
        site.load(path, seed=0)
    assert err.value.public == f"target modality {other!r} not in the model (fmri, fnirs)"
    assert str(path) in err.value.detail
    assert_safe(err.value.public, tmp_path)


def test_eeg_without_any_target_and_windows_of_an_unknown_modality(tmp_path, monkeypatch):
    with pytest.raises(SiteRefusal) as err:
        site.load(write_eeg_only_site(tmp_path / "eeg-only", None), seed=0)
    assert err.value.public == "no target modality the model has (fmri, fnirs) paired with the EEG (found: EEG only)"

    class Windows:  # what a loader of another version could hand over
        target_modality = "pet"

    class Loaded:
        windows, skipped = Windows(), []

        def warn(self):
            pass

    monkeypatch.setattr(site, "find_runs", lambda path: [])
    monkeypatch.setattr(site, "load_site_data", lambda *a, **k: Loaded())
    (tmp_path / "other").mkdir()
    with pytest.raises(SiteRefusal) as err:
        site.load(tmp_path / "other", seed=0)
    assert err.value.public == "target modality 'pet' not in the model (fmri, fnirs)"
    with pytest.raises(SiteRefusal) as err:
        check_modality("/secret/path", tmp_path)
    assert err.value.public == "target modality 'unknown' not in the model (fmri, fnirs)"  # odd text is never echoed


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    """Three small EEG-fMRI sites, two subjects each, simulated once."""
    root = tmp_path_factory.getbasetemp() / "bad-config-sites"
    ensure_sites(root, 3, "fmri", subjects_per_site=2, seed=0, run_seconds=120)
    return root


def test_unreadable_dataset_is_refused_with_the_kind_of_problem(sites, tmp_path):
    broken = tmp_path / "site-01-broken"
    shutil.copytree(sites / "site-01", broken)
    eeg_files = sorted(broken.rglob("*_eeg.edf"))
    assert eeg_files
    for f in eeg_files:  # truncated in transfer
        f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(SiteRefusal) as err:
        site.load(broken, seed=0, cache_dir=str(tmp_path / "cache"))
    assert (
        err.value.public == "dataset unreadable: no usable runs (unreadable or corrupt EEG files; see the site's log)"
    )
    assert str(eeg_files[0]) in err.value.detail  # the site's log names the file
    assert_safe(err.value.public, broken)


def test_preset_pinned_by_the_site_and_run_config_checked_at_the_site():
    run = site_run_config({**DEFAULTS, "preset": "tiny"})
    check_run({}, run)  # no pin: any valid preset
    check_run({"preset": "tiny"}, run)
    with pytest.raises(SiteRefusal) as err:
        check_run({"preset": "small", "data-path": "/data/site-03"}, run)
    assert err.value.public == "preset mismatch — this site runs 'small', the run asks for 'tiny'"
    with pytest.raises(SiteRefusal) as err:
        site_run_config({**DEFAULTS, "strategy": "fedsgd"})
    assert err.value.public.startswith("invalid run config: strategy = 'fedsgd' is not allowed; choose one of: fedavg")


def test_a_site_given_an_invalid_run_config_refuses_with_the_reason(task_identity, tmp_path):
    """The ClientApp validates each message's run config once, before any handler runs: an
    invalid one is refused with the reason (not a crash), and the refusal is in the site's own
    record of what it sent."""
    node = {"data-path": str(tmp_path / "data"), "state-dir": str(tmp_path / "state")}
    context = Context(
        run_id=1,
        node_id=5,
        node_config=node,
        state=RecordDict(),
        run_config={**DEFAULTS, "strategy": "fedsgd", "local-epochs": 0},
    )
    for handler, kind in (
        (client_app.train, MessageType.TRAIN),
        (client_app.evaluate, MessageType.EVALUATE),
        (client_app.query, MessageType.QUERY),
    ):
        reply = handler(Message(RecordDict(), dst_node_id=5, message_type=kind), context)
        reason = reply.error.reason if reply.has_error() else ""
        assert reason.startswith("site refused: invalid run config: "), reason
        assert (
            "strategy = 'fedsgd' is not allowed; choose one of: fedavg" in reason
            and "local-epochs = 0: must be greater than or equal to 1" in reason
        )
    sent = [json.loads(line) for line in (tmp_path / "state" / client_app.SENT_LOG).read_text().splitlines()]
    assert len(sent) == 3 and all(e["error"]["reason"].startswith("site refused: invalid run config") for e in sent)


def test_a_site_refuses_runs_with_less_privacy_than_its_own_policy():
    """The privacy policy comes from the site's node config; the run config cannot lower it."""
    run = RunConfig(dp_enabled=False)
    check_run({}, run)  # no policy: the run decides
    with pytest.raises(SiteRefusal, match="trains only under differential privacy"):
        check_run({"dp-required": "true"}, run)
    private = RunConfig(dp_enabled=True, dp_target_epsilon=8.0, dp_delta=1e-5)
    check_run({"dp-required": "true", "dp-max-epsilon": "8", "dp-max-delta": "1e-5"}, private)
    with pytest.raises(SiteRefusal) as err:
        check_run({"dp-max-epsilon": "4"}, private)
    assert err.value.public == "the run's dp-target-epsilon = 8 is above this site's limit dp-max-epsilon = 4"
    with pytest.raises(SiteRefusal, match="dp-delta = 0.001 is above"):
        check_run({"dp-max-delta": "1e-5"}, private.model_copy(update={"dp_delta": 1e-3}))


def test_weights_that_do_not_fit_the_sites_model_are_refused():
    torch.manual_seed(0)
    weights = {k: v.clone() for k, v in NeuroGenModel("tiny", device="cpu").state_dict().items()}
    name = next(k for k in weights if k.endswith(".weight") and weights[k].ndim == 2)
    site.build_model("tiny", weights)  # fits
    bad = {**weights, name: torch.zeros(weights[name].shape[0] + 1, weights[name].shape[1])}
    with pytest.raises(SiteRefusal) as err:
        site.build_model("tiny", bad)
    shape, wrong = tuple(weights[name].shape), (weights[name].shape[0] + 1, weights[name].shape[1])
    assert err.value.public == (
        f"received weights do not fit this site's 'tiny' model: parameter {name} has shape {wrong}, "
        f"the site's has {shape} (another preset or package version?)"
    )
    with pytest.raises(SiteRefusal, match=r"'tiny' model: 1 parameter\(s\) missing, first " + re.escape(name)):
        site.build_model("tiny", {k: v for k, v in weights.items() if k != name})
    small = NeuroGenModel("small", device="cpu").state_dict()  # a server running another preset
    with pytest.raises(
        SiteRefusal, match=r"received weights do not fit this site's 'tiny' model: parameter \S+ has shape"
    ):
        site.build_model("tiny", small)


def test_a_site_model_is_built_fresh_each_time_whatever_the_last_one_went_through():
    """``build_model`` copies a template: what one round does to its model (trained weights,
    DP's per-sample hooks, changed buffers) never reaches the next model the process builds."""
    torch.manual_seed(0)
    weights = {k: v.clone() for k, v in NeuroGenModel("tiny", device="cpu").named_parameters()}
    first = site.build_model("tiny", weights)
    pristine = {k: v.clone() for k, v in first.state_dict().items()}
    with torch.no_grad():
        for p in first.parameters():
            p.add_(1.0)
        for b in first.buffers():
            b.zero_()
    first.register_forward_hook(lambda *args: None)
    second = site.build_model("tiny", weights)
    assert second is not first and not second._forward_hooks
    state = second.state_dict()
    assert state.keys() == pristine.keys()
    assert all(torch.equal(state[k], pristine[k]) for k in state)
    shared = {p.data_ptr() for p in first.parameters()} & {p.data_ptr() for p in second.parameters()}
    assert not shared
    # the received weights are copied in, not shared: training in place leaves what was received
    assert all(torch.equal(p, weights[k]) for k, p in second.named_parameters())
    assert not {p.data_ptr() for p in second.parameters()} & {w.data_ptr() for w in weights.values()}
    frozen = [k for k, p in NeuroGenModel("tiny", device="cpu").named_parameters() if not p.requires_grad]
    assert frozen and all(not dict(second.named_parameters())[k].requires_grad for k in frozen)


# ---------------------------------------------------------------------------------------------
# The error reply and the server's record of it


def test_error_reply_carries_the_public_reason_and_the_server_records_it(task_identity, tmp_path, caplog):
    def refusing(msg, context, run):
        raise SiteRefusal("data path not found (see the site's log)", f"data path {tmp_path}/x does not exist")

    def crashing(msg, context, run):
        raise ValueError(f"{tmp_path}/sub-01_eeg.edf is broken")

    def received(node: int) -> Message:
        return Message(RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)

    context = Context(run_id=1, node_id=5, node_config={}, state=RecordDict(), run_config={})
    with caplog.at_level(logging.ERROR):
        refused = client_app._guarded(refusing)(received(5), context)
        crashed = client_app._guarded(crashing)(received(6), context)
    assert refused.error.reason == "site refused: data path not found (see the site's log)"
    assert crashed.error.reason == "site raised ValueError"  # a generic exception: the type only
    assert f"{tmp_path}/x does not exist" in caplog.text and "sub-01_eeg.edf is broken" in caplog.text  # the site's log

    strategy = make_strategy(RunConfig(min_available_nodes=1, min_train_nodes=1))
    name = "modality_heads.fmri.final_layer.linear.weight"
    assert parameter_modality(name) == "fmri"

    class Grid:
        def get_node_ids(self):
            return [1, 2, 3]

    arrays = ArrayRecord({name: Array(np.zeros((2, 3), dtype=np.float32))})
    sent = list(strategy.configure_train(1, arrays, ConfigRecord({}), Grid()))
    by_node = {m.metadata.dst_node_id: m for m in sent}
    ok = RecordDict(
        {
            "arrays": ArrayRecord({name: Array(np.ones((2, 3), dtype=np.float32))}),
            "metrics": MetricRecord({"num-examples": 4}),
            "site": ConfigRecord({"modality": "fmri"}),
        }
    )
    replies = [
        Message(ok, reply_to=by_node[1]),
        Message(Error(code=2, reason=refused.error.reason), reply_to=by_node[2]),
        Message(Error(code=2, reason=crashed.error.reason), reply_to=by_node[3]),
    ]
    new, _ = strategy.aggregate_train(1, replies)
    failed = {f["node"]: f["reason"] for f in strategy.report[MessageType.TRAIN]["failed"]}
    assert failed == {
        2: "site refused: data path not found (see the site's log)",
        3: "error reply: site raised ValueError",
    }
    assert float(new[name].numpy()[0, 0]) == 1.0  # the one usable site's update


# ---------------------------------------------------------------------------------------------
# Local Flower simulations (flwr run against a simulation SuperLink)


def test_simulation_goes_on_without_the_misconfigured_sites(sites, tmp_path_factory):
    """Site-02 is pointed at a folder that does not exist, site-03's operator pinned preset
    'small' while the run is 'tiny': both refuse, are named with their reasons, and site-01's
    update becomes the global model."""
    base = tmp_path_factory.mktemp("refusals")
    missing = base / "nowhere" / "site-02"
    config = {
        "preset": "tiny",
        "local-epochs": 1,
        "max-windows": 8,  # a site's floor (min-train-windows, default 8)
        "eval-pcc-windows": 0,
        "departure-windows": 0,
        "round-timeout": 300.0,
        "cache-dir": str(sites.parent / "bad-config-cache"),
        "sim-node-config": f"1:data-path={missing};2:preset=small",
    }
    started = time.time()
    run_dir = run_federated(
        base / "run",
        sites,
        num_sites=3,
        rounds=1,
        modality="fmri",
        subjects_per_site=2,
        seed=0,
        run_config=config,
        timeout=400,
    )
    print(f"1-round simulation with two refusing sites: {time.time() - started:.0f} s")

    (entry,) = json.loads((run_dir / "history.json").read_text())
    expected = {
        "site refused: data path not found (see the site's log)",
        "site refused: preset mismatch — this site runs 'small', the run asks for 'tiny'",
    }
    for stage in ("train", "evaluate"):
        failed = entry[stage]["failed"]
        assert {f["reason"] for f in failed} == expected and len({f["node"] for f in failed}) == 2
        ((node, metrics),) = entry[stage]["sites"].items()  # site-01 alone
        assert metrics["modality"] == "fmri" and node not in {str(f["node"]) for f in failed}
    assert entry["train"]["aggregate"]["num-examples"] == 8
    text = json.dumps(entry)
    assert str(missing) not in text and "sub-0" not in text

    log = (run_dir / "flwr-run.log").read_text(errors="replace")
    assert re.search(r"train: site \(node \d+\) failed: site refused: data path not found", log)  # the server's log
    assert re.search(r"train: site \(node \d+\) failed: site refused: preset mismatch", log)
    assert f"site refused train: data path {missing} does not exist" in log  # the site's own log (same stream here)

    model, meta = load_checkpoint(run_dir / "checkpoint", device="cpu")
    assert meta["provenance"]["sites_count"] == 1
    torch.manual_seed(0)  # the server's initial global model
    initial = model_parameters(NeuroGenModel("tiny", device="cpu"))
    final = model_parameters(model)
    changed = {
        part: any(not torch.equal(initial[k], final[k]) for k in final if parameter_modality(k) == part)
        for part in (None, "fmri", "fnirs")
    }
    assert changed == {None: True, "fmri": True, "fnirs": False}  # site-01's backbone and fMRI head; no fNIRS site


def test_invalid_run_config_fails_before_anything_starts(tmp_path):
    with pytest.raises(ConfigError) as err:  # `fedneurogen federate` checks before starting Flower
        run_federated(
            tmp_path / "run",
            tmp_path / "data",
            num_sites=3,
            rounds=1,
            run_config={"strategy": "fedsgd", "dp-target-epsilon": 0.0},
        )
    assert "strategy = 'fedsgd' is not allowed" in str(
        err.value
    ) and "dp-target-epsilon = 0.0: must be greater than 0" in str(err.value)
    assert not (tmp_path / "data").exists() and not (tmp_path / "run").exists()  # nothing simulated, nothing written


def test_server_app_refuses_an_invalid_run_config_with_the_reason(sites, tmp_path):
    """`flwr run` with a bad config (as a coordinator would type it): the ServerApp stops at
    start and the user's error leads with the key, the value and what is allowed."""
    run_dir = tmp_path / "run"
    config = {
        "strategy": "fedsgd",
        "dp-target-epsilon": 0.0,
        "run-dir": str(run_dir),
        "data-root": str(sites),
        "num-server-rounds": 1,
    }
    with LocalSuperLink(tmp_path / "home", simulation=True) as link:
        write_connection(tmp_path / "home", "local-sim", link.address)
        with pytest.raises(FederationError) as err:
            flwr_run(
                tmp_path / "home",
                "local-sim",
                config,
                federation_config={"num-supernodes": 2},
                timeout=300,
                log_file=tmp_path / "flwr-run.log",
            )
    first = str(err.value).splitlines()[0]  # what the user reads first
    assert (
        "run config: strategy = 'fedsgd' is not allowed; choose one of: fedavg, fedprox, fedadam, fedmedian, fedtrimmedavg, krum"
        in first
    )
    assert "dp-target-epsilon = 0.0: must be greater than 0" in first
    assert not (run_dir / "history.json").exists()


def test_simulated_node_without_its_site_refuses_and_says_how_to_make_it(tmp_path):
    """A bare `flwr run .` whose data-root holds no sites: the node refuses (it never runs the
    simulator), telling the operator the command that writes the sites."""
    from fedneurogen.client import site
    from fedneurogen.client.refusal import SiteRefusal

    with pytest.raises(SiteRefusal) as err:
        site.data_path({"partition-id": 1}, RunConfig(data_root=str(tmp_path / "data")))
    assert (
        "no data for this simulated node" in err.value.public and str(tmp_path) not in err.value.public
    )  # paths stay at the site
    assert f"fedneurogen simulate --out {tmp_path / 'data'}" in err.value.detail and "site-02" in err.value.detail
    assert not (tmp_path / "data").exists()
    assert site.data_path({"data-path": "/srv/site"}, RunConfig(data_root="x")) == Path("/srv/site")
