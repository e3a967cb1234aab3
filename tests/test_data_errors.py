"""Bad input: a DataError (or a skip-with-warning) that names the file and the problem."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from fedneurogen.simulations import bids_factory as bf
from fedneurogen.shared.config import PreprocessConfig
from fedneurogen.shared.data import (
    DataWarning,
    find_runs,
    load_site,
    load_site_data,
    read_eeg,
    read_fmri,
    read_fnirs,
    validate_dataset,
)
from fedneurogen.shared.errors import DataError

FAST = PreprocessConfig(eeg_ica=False)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A valid two-subject EEG-fMRI site; each test breaks its own copy."""
    return bf.make_site(tmp_path_factory.mktemp("template"), bf.SiteSpec(eog=False))


@pytest.fixture
def site(template, tmp_path):
    return shutil.copytree(template, tmp_path / "site-01")


def _run(site, subject="sub-02"):
    return next(r for r in find_runs(site) if r.subject == subject)


def _problems_about(report, path):
    return [p for p in report.problems if p.path.name == path.name]


def test_truncated_edf(site):
    run = _run(site)
    data = run.eeg.read_bytes()
    run.eeg.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as err:
        read_eeg(run.eeg, FAST, files=run)
    assert err.value.path == run.eeg and "truncated" in str(err.value) and run.eeg.name in str(err.value)
    # load_site keeps the good run, skips this one with a warning naming the file.
    with pytest.warns(DataWarning, match=f"{run.eeg.name}.*truncated"):
        windows = load_site(site, FAST, use_cache=False, progress=False)
    assert set(windows.subjects) == {"sub-01"}
    report = validate_dataset(site)
    assert not report.ok and any("truncated" in p.message for p in _problems_about(report, run.eeg))


def test_corrupt_edf(site):
    run = _run(site)
    run.eeg.write_bytes(b"this is not an EDF file" * 20)
    with pytest.raises(DataError, match="cannot be read as EEG") as err:
        read_eeg(run.eeg, FAST, files=run)
    assert run.eeg.name in str(err.value)
    data = load_site_data(site, FAST, use_cache=False, progress=False)
    assert [p.path for p in data.skipped] == [run.eeg]


def test_gifti_with_wrong_vertex_count(site):
    run = _run(site)
    bf.write_gifti(run.target[1], np.zeros((5000, 32)))
    with pytest.raises(DataError, match="5000 vertices.*10242") as err:
        read_fmri(run.target, FAST)
    assert err.value.path == run.target[1]
    assert any("5000 vertices" in p.message for p in _problems_about(validate_dataset(site), run.target[1]))


def test_corrupt_gifti(site):
    run = _run(site)
    run.target[0].write_text("<GIFTI><broken")
    with pytest.raises(DataError, match="cannot be read as GIFTI") as err:
        read_fmri(run.target, FAST)
    assert run.target[0].name in str(err.value)


def test_nan_samples_in_eeg(tmp_path):
    spec = bf.SiteSpec(eog=False)
    data = bf.eeg_signals(spec, np.random.default_rng(0), len(spec.channels))
    data[4, 1000:1010] = np.nan
    data[5, 7] = np.inf
    path = bf.write_eeg(tmp_path / "sub-01" / "eeg" / "sub-01_task-x_eeg.fif", data, 250.0, spec.channels, ["eeg"] * 12)
    with pytest.raises(DataError, match=r"11 NaN/inf samples in 2 channel\(s\): C3, C4") as err:
        read_eeg(path, FAST)
    assert err.value.path == path


def test_nan_in_bold(site):
    run = _run(site)
    left = np.ones((10242, 32))
    left[17, 3] = np.nan
    bf.write_gifti(run.target[0], left)
    with pytest.raises(DataError, match="1 NaN/inf samples.*vertex 17") as err:
        read_fmri(run.target, FAST)
    assert err.value.path == run.target[0]


def test_eeg_and_fmri_durations_do_not_match(site):
    run = _run(site)
    short = np.random.default_rng(0).standard_normal((10242, 20))  # 40 s of BOLD for 64 s of EEG
    for path in run.target:
        bf.write_gifti(path, short)
    with pytest.warns(DataWarning, match="does not match the EEG run") as record:
        data = load_site(site, FAST, use_cache=False, progress=False)
    assert any(run.target[0].name in str(w.message) and "24.0 s" in str(w.message) for w in record)
    assert set(data.subjects) == {"sub-01"}
    problems = _problems_about(validate_dataset(site), run.target[0])
    assert [p.severity for p in problems] == ["error"] and "40.0 s" in problems[0].message


def test_missing_repetition_time(site):
    run = _run(site)
    for sidecar in run.target_sidecars:
        sidecar.unlink()
    run = _run(site)
    with pytest.raises(DataError, match="missing RepetitionTime") as err:
        read_fmri(run.target, FAST)
    assert err.value.path == run.target[0]
    assert any("missing RepetitionTime" in p.message for p in validate_dataset(site).errors)


def test_channel_names_neither_standard_nor_in_electrodes(tmp_path):
    site = bf.make_site(tmp_path, bf.SiteSpec(subjects=("01",), channels=["Fp1", "Cz", "Xy7", "Q2"], eog=False))
    run = find_runs(site)[0]
    with pytest.raises(DataError, match="Xy7, Q2 are not standard 10-05 names") as err:
        read_eeg(run.eeg, FAST, files=run)
    assert err.value.path == run.eeg and "_electrodes.tsv" in str(err.value)
    # With an electrodes file that lacks one of them, the message says so.
    bf.write_tsv(run.eeg.parent / "sub-01_electrodes.tsv", {"name": ["Xy7"], "x": [0.01], "y": [0.02], "z": [0.09]})
    with pytest.raises(DataError, match="Q2 are not standard 10-05 names not in sub-01_electrodes.tsv"):
        read_eeg(run.eeg, FAST)
    with pytest.raises(DataError, match="no usable runs"):
        load_site(site, FAST, use_cache=False, progress=False)


def test_subject_missing_from_participants(site):
    participants = site / "participants.tsv"
    lines = participants.read_text().splitlines()
    participants.write_text("\n".join(lines[:2]) + "\n")  # header + sub-01 only
    report = validate_dataset(site)
    missing = _problems_about(report, participants)
    assert len(missing) == 1 and "sub-02 is missing" in missing[0].message and not report.ok
    # Loading still works; the subject's windows have no attributes and a warning says why.
    with pytest.warns(DataWarning, match="participants.tsv: subject sub-02 is missing"):
        windows = load_site(site, FAST, use_cache=False, progress=False)
    assert set(windows.group_of("group")) == {"A", "n/a"}


def test_empty_dataset(tmp_path):
    empty = tmp_path / "empty-site"
    bf.write_json(empty / "dataset_description.json", {"Name": "empty", "BIDSVersion": "1.9.0"})
    with pytest.raises(DataError, match="empty dataset: no EEG runs found") as err:
        load_site(empty, FAST, use_cache=False, progress=False)
    assert err.value.path == empty
    report = validate_dataset(empty)
    assert not report.ok and any("empty dataset" in p.message and p.path == empty for p in report.errors)
    with pytest.raises(DataError, match="is not a folder"):
        load_site(tmp_path / "does-not-exist", FAST, progress=False)


def test_corrupt_snirf(tmp_path):
    path = tmp_path / "sub-01_task-motor_nirs.snirf"
    path.write_bytes(b"\x89HDF\r\n garbage")
    with pytest.raises(DataError, match="cannot be read as SNIRF") as err:
        read_fnirs(path, FAST)
    assert err.value.path == path


def test_eeg_run_without_target_is_skipped(site):
    run = _run(site)
    for path in run.target:
        path.unlink()
    data = load_site_data(site, FAST, use_cache=False, progress=False)
    assert [p.path for p in data.skipped] == [run.eeg]
    assert "no fMRI or fNIRS recording to pair with" in data.skipped[0].message
    assert set(data.windows.subjects) == {"sub-01"}
    assert any(p.severity == "warning" and p.path == run.eeg for p in validate_dataset(site).problems)


def test_broken_events_file(site):
    run = _run(site)
    run.events.write_text("onset\tduration\ttrial_type\nsoon\t12\tfaces\n")
    with pytest.raises(DataError, match="non-numeric onset in row\\(s\\) 2") as err:
        read_eeg(run.eeg, FAST, files=run)
    assert err.value.path == run.events


@pytest.mark.parametrize("target", ["../../outside.eeg", "/etc/passwd"])
def test_brainvision_header_cannot_point_outside_its_folder(tmp_path, target):
    from fedneurogen.shared.data.eeg import load_raw_eeg

    header = tmp_path / "sub-01_task-rest_eeg.vhdr"
    header.write_text(
        f"Brain Vision Data Exchange Header File Version 1.0\n[Common Infos]\nDataFile={target}\nMarkerFile=sub-01_task-rest_eeg.vmrk\n"
    )
    with pytest.raises(
        DataError, match=rf"sub-01_task-rest_eeg.vhdr.*line 3: DataFile='{target}' points outside the header's folder"
    ):
        load_raw_eeg(header)


def test_missing_channels_tsv_is_a_warning_naming_the_file(site):
    run = _run(site)
    run.channels.unlink()
    problems = _problems_about(validate_dataset(site), run.channels)
    assert [(p.severity, p.message) for p in problems] == [
        ("warning", "missing (required by BIDS): channel types are guessed from the channel names")
    ]
    assert validate_dataset(site).ok  # still usable


def test_train_says_which_runs_it_skipped_and_goes_on(site, monkeypatch):
    """The command line loads sites like `train` does: a truncated run is one warning line naming
    the file, then one line saying how many runs were skipped and used."""
    import io
    import warnings

    from rich.console import Console

    from fedneurogen.cli import common

    run = _run(site)
    run.eeg.write_bytes(run.eeg.read_bytes()[:2000])
    out = io.StringIO()
    monkeypatch.setattr(common, "err_console", Console(file=out, width=400, force_terminal=False))
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = common._show_warning
        sites = common.load_sites([site], PreprocessConfig())
    lines = out.getvalue().splitlines()
    assert any(line.startswith("warning: ") and run.eeg.name in line and "skipped" in line for line in lines)
    assert f"{site}: 1 run(s) skipped (above), 1 used" in lines and set(sites[0].subjects) == {"sub-01"}


def test_a_federated_site_tells_the_server_how_many_runs_it_skipped(site, task_identity, caplog):
    """A site in a federation names a skipped run in its own log and sends only the count; the
    server's history and log show it per site, and it is never averaged into the aggregate."""
    import logging

    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

    from fedneurogen.client import app as client_app
    from fedneurogen.client import site as site_module
    from fedneurogen.server.audit import METRIC_KEYS
    from fedneurogen.server.strategy import make_strategy
    from fedneurogen.shared.run_config import RunConfig

    run = _run(site)
    data = run.eeg.read_bytes()
    run.eeg.write_bytes(data[: len(data) // 2])
    with pytest.warns(DataWarning, match=f"{run.eeg.name}.*truncated"):
        loaded = site_module.load(site, seed=0, preprocess=FAST)
    assert loaded.skipped_runs == 1
    reply = client_app._reply(Message(RecordDict(), dst_node_id=4, message_type=MessageType.TRAIN), loaded, {})
    assert reply.content["metrics"]["skipped-runs"] == 1 and "skipped-runs" in METRIC_KEYS
    assert run.eeg.name not in str(dict(reply.content["metrics"]))  # the count only, never the file

    strategy = make_strategy(RunConfig(min_available_nodes=1, min_train_nodes=1))
    name = "modality_heads.fmri.final_layer.linear.weight"

    class Grid:
        def get_node_ids(self):
            return [1, 2]

    sent = {
        m.metadata.dst_node_id: m
        for m in strategy.configure_train(
            1, ArrayRecord({name: Array(np.zeros((2, 3), dtype=np.float32))}), ConfigRecord({}), Grid()
        )
    }

    def answer(node: int, metrics: dict) -> Message:
        content = {
            "arrays": ArrayRecord({name: Array(np.ones((2, 3), dtype=np.float32))}),
            "metrics": MetricRecord({"num-examples": 4, **metrics}),
            "site": ConfigRecord({"modality": "fmri"}),
        }
        return Message(RecordDict(content), reply_to=sent[node])

    with caplog.at_level(logging.WARNING):
        strategy.aggregate_train(1, [answer(1, {"skipped-runs": 1}), answer(2, {"skipped-runs": 3})])
    report = strategy.report[MessageType.TRAIN]
    assert {node: m["skipped-runs"] for node, m in report["sites"].items()} == {"1": 1, "2": 3}
    assert "skipped-runs" not in report["aggregate"]
    assert "site (node 2) skipped 3 run(s) it could not use" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # the next round: in the history again, not in the log
        strategy.aggregate_train(2, [answer(1, {"skipped-runs": 1})])
    assert strategy.report[MessageType.TRAIN]["sites"]["1"]["skipped-runs"] == 1 and "skipped" not in caplog.text
