"""A model is never scored on subjects it trained or validated on: the checkpoint records its
splits by the content of each subject's files (``fedneurogen.shared.splits``), ``evaluate`` goes
by that record whatever the folders are called and whichever subjects load, and a federated
checkpoint carries each site's split hashes (``client/site.py`` reports, ``server/checkpointing.py``
checks and records)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from hypothesis import given, settings
from hypothesis import strategies as st
from test_synthesis import trained_consortium
from typer.testing import CliRunner

from fedneurogen.cli import app
from fedneurogen.server.app import checkpoint_extra
from fedneurogen.server.checkpointing import SiteSplits, parse_split_report
from fedneurogen.shared.data import find_runs, load_site
from fedneurogen.shared.errors import DataError
from fedneurogen.shared.io import write_json_atomic
from fedneurogen.shared.manifest import write_manifest
from fedneurogen.shared.run_config import RunConfig
from fedneurogen.shared.splits import (
    MAX_REPORTED_RUNS,
    PROVENANCE_KEY,
    REPORT_KEYS,
    SeenSubjects,
    split_subjects,
    subject_keys,
)
from fedneurogen.shared.workflows.evaluation_subjects import evaluation_split, read_seen, seen_by_checkpoint

FAST = ["--steps", "2", "--max-windows", "8", "--baseline-epochs", "0", "--n-samples", "0"]


@pytest.fixture(scope="session")
def consortium(tmp_path_factory):
    return trained_consortium(tmp_path_factory.getbasetemp() / "synthesis-consortium")


@pytest.fixture(scope="module")
def trained(consortium):
    """The checkpoint, its fMRI site, the site's split (as training made it) and the record."""
    checkpoint, fmri_site, _ = consortium
    meta = json.loads((checkpoint / "config.json").read_text())
    provenance = meta["provenance"]
    windows = load_site(fmri_site, progress=False)
    split = split_subjects(
        windows.subjects, provenance["split_seed"], provenance["val_fraction"], provenance["test_fraction"]
    )
    assert len(split.train) == len(split.val) == len(split.test) == 1  # 3 subjects
    return checkpoint, fmri_site, split, SeenSubjects.from_provenance(provenance)


def _split_of(site: Path, seen: SeenSubjects | None, **kwargs):
    windows = load_site(site, progress=False)
    return evaluation_split(windows, seen, subject_keys(site, windows.runs, windows.subjects), site, **kwargs)


def _evaluate(checkpoint: Path, site: Path, out: Path, *extra: str):
    args = ["evaluate", "--checkpoint", str(checkpoint), "--data", str(site), "--out", str(out), *FAST, *extra]
    return CliRunner().invoke(app, args)


def test_checkpoint_records_each_split_by_content(trained, consortium):
    checkpoint, fmri_site, split, _ = trained
    record = json.loads((checkpoint / "config.json").read_text())["provenance"][PROVENANCE_KEY]
    (entry, _fnirs) = record["sites"]
    windows = load_site(fmri_site, progress=False)
    keys = subject_keys(fmri_site, windows.runs, windows.subjects)
    assert entry["name"] == fmri_site.name  # display only
    assert {part: entry[part] for part in ("train", "val", "test")} == {
        part: [keys[s] for s in getattr(split, part)] for part in ("train", "val", "test")
    }
    assert len(entry["dataset"]) == 64 and len(set(keys.values())) == 3
    assert not any(s in json.dumps(record) for s in keys)  # no subject id in the record


def test_unreadable_subject_does_not_turn_a_training_subject_into_a_test_one(trained, tmp_path):
    """The first leak: a subject that does not load no longer shifts a rebuilt split onto a
    training subject; only the never-seen subject is scored and the report names the excluded."""
    checkpoint, fmri_site, split, seen = trained
    site = tmp_path / fmri_site.name
    shutil.copytree(fmri_site, site)
    (val_subject,) = split.val
    for run in find_runs(site):
        if run.subject == val_subject:
            run.eeg.write_bytes(b"not an EEG file")  # its runs are skipped: the subject does not load
    with pytest.warns(UserWarning):
        part = _split_of(site, seen)
    assert part.split.test == split.test and set(part.test.subjects.tolist()) == set(split.test)
    assert set(part.train.subjects.tolist()) == set(split.train)  # the baselines learn from the trained-on one

    result = _evaluate(checkpoint, site, tmp_path / "report")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["test_subjects"] == list(split.test)
    (train_subject,) = split.train
    assert report["held_out"]["excluded"] == [{"subject": train_subject, "status": "trained on"}]
    assert report["held_out"]["excluded_count"] == 1 and report["held_out"]["scored_seen"] == []
    assert "held-out subjects" in result.output and f"{train_subject} (trained on)" in result.output


def test_renamed_copy_of_a_training_site_is_recognised_as_seen(trained, tmp_path):
    """The second leak: the same site under another folder name is the same data."""
    _, fmri_site, split, seen = trained
    copy = tmp_path / "Site Zürich – 01"
    shutil.copytree(fmri_site, copy)
    part = _split_of(copy, seen)
    assert part.site_in_training
    assert part.split.test == split.test and part.split.train == split.train and part.split.val == split.val
    excluded = part.held_out()["excluded"]
    assert [e["subject"] for e in excluded] == sorted(split.train + split.val)
    assert "excluded 2 seen by the checkpoint" in part.note


def test_another_lab_site_named_like_a_training_site_is_judged_by_content(trained, tmp_path):
    from fedneurogen.simulations.simulator import simulate_dataset

    _, fmri_site, _, seen = trained
    (other,) = simulate_dataset(
        tmp_path / "other-lab",
        n_sites=1,
        subjects_per_site=2,
        modality="fmri",
        seed=41,
        run_seconds=160.0,
        progress=False,
    )
    assert other.name == fmri_site.name  # the same folder name, other recordings
    part = _split_of(other, seen)
    assert not part.site_in_training and part.train is None  # baselines cross-fit on its own subjects
    assert set(part.split.test) == set(load_site(other, progress=False).subjects.tolist())
    assert part.held_out()["excluded"] == [] and "baselines fitted on half of the scored subjects" in part.note


def test_no_subject_left_is_refused_and_allow_seen_labels_seen_subjects(trained, tmp_path):
    checkpoint, fmri_site, split, _ = trained
    site = tmp_path / "seen-only"
    shutil.copytree(fmri_site, site)
    (test_subject,) = split.test
    shutil.rmtree(site / test_subject)  # left: the trained-on and the validated-on subject

    result = _evaluate(checkpoint, site, tmp_path / "refused")
    assert result.exit_code == 1
    line = result.output.strip()
    assert "\n" not in line and "no held-out subject to score" in line and "--allow-seen" in line
    assert f"{split.train[0]} (trained on)" in line and f"{split.val[0]} (validated on)" in line
    assert not (tmp_path / "refused" / "report.json").exists()

    result = _evaluate(checkpoint, site, tmp_path / "seen", "--allow-seen")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "seen" / "report.json").read_text())
    assert report["test_subjects"] == sorted(split.train + split.val)
    assert report["held_out"]["allow_seen"] is True and report["held_out"]["excluded"] == []
    assert report["held_out"]["scored_seen"] == sorted(
        [{"subject": split.train[0], "status": "trained on"}, {"subject": split.val[0], "status": "validated on"}],
        key=lambda e: e["subject"],
    )
    assert "not held-out" in result.output and "seen subjects scored" in result.output


def test_checkpoint_without_a_record_is_refused_unless_allow_seen(trained, tmp_path):
    checkpoint, fmri_site, split, _ = trained
    old = tmp_path / "old-checkpoint"
    shutil.copytree(checkpoint, old)
    meta = json.loads((old / "config.json").read_text())
    del meta["provenance"][PROVENANCE_KEY]  # as written before subjects were recorded
    write_json_atomic(old / "config.json", meta)
    write_manifest(old, ["model.safetensors", "config.json"])

    with pytest.raises(DataError, match="records no content hashes") as err:
        read_seen(meta, old, allow_seen=False)
    assert err.value.path == old
    result = _evaluate(old, fmri_site, tmp_path / "refused")
    assert result.exit_code == 1 and str(old) in result.output and "--allow-seen" in result.output

    result = _evaluate(old, fmri_site, tmp_path / "unknown", "--allow-seen")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "unknown" / "report.json").read_text())
    assert report["test_subjects_count"] == 3 and not report["site_in_training"]
    assert {e["status"] for e in report["held_out"]["scored_seen"]} == {"not known"}


def test_pooled_site_teaches_the_baselines_its_trained_subjects_only(consortium, tmp_path):
    """``--also-trained-on``: another site's subjects the checkpoint trained and validated on,
    found by content (a renamed copy too), never an error when none of it is left to score."""
    checkpoint, _, fnirs_site = consortium
    meta = json.loads((checkpoint / "config.json").read_text())
    seen = SeenSubjects.from_provenance(meta["provenance"])
    copy = tmp_path / "renamed-fnirs"
    shutil.copytree(fnirs_site, copy)
    windows = load_site(copy, progress=False)
    split = split_subjects(windows.subjects, 0, 0.15, 0.2)
    part = evaluation_split(windows, seen, subject_keys(copy, windows.runs, windows.subjects), copy, scoring=False)
    assert set(part.train.subjects.tolist()) == set(split.train) and set(part.val.subjects.tolist()) == set(split.val)

    labels = seen_by_checkpoint(meta, copy, windows)  # what explain and augment report
    assert labels["subjects"] == {
        **{s: "trained on" for s in split.train},
        **{s: "validated on" for s in split.val},
        **{s: "never seen" for s in split.test},
    }
    assert labels["seen_count"] == 2
    unknown = seen_by_checkpoint({"provenance": {}}, copy, windows)
    assert unknown["seen_count"] is None and set(unknown["subjects"].values()) == {"not known"}


# ----------------------------------------------------------------------------------------------
# Federated: the site reports, the server checks and records


def test_site_reports_the_run_hashes_of_its_training_and_validation_subjects(consortium):
    from fedneurogen.client import site as site_mod

    _, fmri_site, _ = consortium
    data = site_mod.load(fmri_site, seed=5)
    windows = load_site(fmri_site, progress=False)
    keys = subject_keys(fmri_site, windows.runs, windows.subjects)
    split = split_subjects(windows.subjects, seed=5)
    report = site_mod.split_report(data)
    assert set(report) == set(REPORT_KEYS.values())
    for part in ("train", "val"):
        expected = sorted(h for s in getattr(split, part) for h in keys[s].split(":"))
        assert report[REPORT_KEYS[part]] == expected
    assert not any(s in json.dumps(report) for s in keys)  # hashes only
    assert parse_split_report(report) == {"train": report["train-runs"], "val": report["val-runs"]}


def _reply(node: int, config: dict, examples: int = 8) -> Message:
    out = Message(RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
    content = RecordDict({"metrics": MetricRecord({"num-examples": examples}), "site": ConfigRecord(config)})
    return Message(content=content, reply_to=out)


def test_federated_checkpoint_carries_each_site_split(task_identity):
    a, b, c = ("a" * 64, "b" * 64, "c" * 64)
    splits = SiteSplits()
    splits.add([
        _reply(11, {"modality": "fmri", "train-runs": [a], "val-runs": [b]}),
        _reply(12, {"modality": "fnirs", "train-runs": [c], "val-runs": []}),
    ])  # fmt: skip
    extra = checkpoint_extra(RunConfig(), ["rest"], 1, 2, splits.record())
    record = extra["provenance"][PROVENANCE_KEY]
    assert [(e["node"], e["train"], e["val"]) for e in record["sites"]] == [("11", [a], [b]), ("12", [c], [])]
    seen = SeenSubjects.from_provenance(extra["provenance"])
    assert seen.status(f"{a}:{'d' * 64}") == "train" and seen.status(b) == "val" and seen.status("d" * 64) is None

    # resumed: the record carries on; a site that trains without a report makes the split unknown
    resumed = SiteSplits(extra["provenance"])
    resumed.add([_reply(13, {"modality": "fmri"})])
    with pytest.raises(ValueError, match="site node 13 trained without reporting its subjects"):
        SeenSubjects.from_provenance({PROVENANCE_KEY: resumed.record()})
    # a malformed report is logged and recorded as unknown, never stored
    bad = SiteSplits()
    bad.add([_reply(11, {"modality": "fmri", "train-runs": ["sub-01"], "val-runs": []})])
    assert "train-runs item 0" in bad.sites["11"]["withheld"] and "sub-01" not in json.dumps(bad.record())


HEX = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)


@settings(max_examples=200, deadline=None)
@given(train=st.lists(HEX, max_size=20), val=st.lists(HEX, max_size=20))
def test_parser_accepts_every_well_formed_report(train, val):
    val = [v for v in val if v not in train]
    parsed = parse_split_report({"train-runs": train, "val-runs": val})
    assert parsed == {"train": sorted(set(train)), "val": sorted(set(val))}


ANYTHING = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=80) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(train=ANYTHING, val=ANYTHING)
def test_parser_returns_only_hex_hashes_or_refuses(train, val):
    """Whatever a site sends, the server keeps two bounded lists of 64-digit hex strings or
    refuses with ValueError (never another exception, never anything else stored)."""
    try:
        parsed = parse_split_report({"train-runs": train, "val-runs": val})
    except ValueError:
        return
    for values in parsed.values():
        assert len(values) <= MAX_REPORTED_RUNS
        assert all(isinstance(v, str) and len(v) == 64 and set(v) <= set("0123456789abcdef") for v in values)


@given(n=st.integers(min_value=MAX_REPORTED_RUNS + 1, max_value=MAX_REPORTED_RUNS + 3))
@settings(max_examples=3, deadline=None)
def test_parser_bounds_the_count(n):
    with pytest.raises(ValueError, match="more than"):
        parse_split_report({"train-runs": ["a" * 64] * n, "val-runs": []})
    with pytest.raises(ValueError, match="alone"):
        parse_split_report({"train-runs": []})
    assert parse_split_report({"modality": "fmri"}) is None


def test_a_dp_sites_own_record_completes_a_checkpoint_that_withheld_its_split():
    """A DP site sends the server no split (membership is what DP protects): the checkpoint
    records it as withheld, and evaluation needs the site's own record (``--site-record``). With
    it, the site's trained and validated subjects are seen, its held-out ones unseen, and a
    subject no record covers (possibly another withheld site's) unknown, never unseen."""
    from fedneurogen.shared.splits import HASH_SCHEME, PROVENANCE_KEY, SeenSubjects, seen_record

    run = lambda c: c * 64  # noqa: E731  (a run hash)
    provenance = {PROVENANCE_KEY: {"scheme": HASH_SCHEME, "sites": [{"withheld": "dp"}]}}
    with pytest.raises(ValueError, match="--site-record"):
        SeenSubjects.from_provenance(provenance)
    own = seen_record([{"name": None, "dataset": "d", "train": [run("a")], "val": [run("b")], "test": [run("c")]}])
    seen = SeenSubjects.from_provenance(provenance, [own])
    assert [seen.status(run(c)) for c in "abcd"] == ["train", "val", None, "unknown"]
    with pytest.raises(ValueError, match="site record 0"):
        SeenSubjects.from_provenance(provenance, [{"scheme": "other"}])
