"""Every reader tried on real-like variants of one small site (simulations/bids_variants.py).

The base site (3 subjects, one 80 s EEG-fMRI run each) is written once per session; each variant
is a transformed copy. ``validate`` must give each variant its expected answer (OK, usable with
runs skipped, unusable), loading must give the expected runs and rates, and a tiny model trained
on the base site must synthesize from the read-only and oddly named copies. Loads run without ICA
(the readers are under test, not the ocular cleaning) except for the 5 kHz variant, whose ICA at
kHz rates is part of what it tries.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedneurogen.cli import app
from fedneurogen.shared.config import PreprocessConfig
from fedneurogen.shared.data import load_site, load_site_data, validate_dataset
from fedneurogen.shared.data.bids import MISSING, attribute_kind, find_runs, read_participants
from fedneurogen.shared.errors import ConfigError, DataError
from fedneurogen.simulations.bids_variants import EXPECTED, ODD_NAME, VARIANTS, make_base, make_variant, make_writable

FAST = PreprocessConfig(eeg_ica=False)
runner = CliRunner()


@pytest.fixture(scope="session")
def variant_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("variants")
    make_base(root)
    yield root
    if (root / "read-only").exists():
        make_writable(root / "read-only")  # so that pytest can remove its temporary folder


@pytest.fixture(scope="session")
def variant(variant_root):
    """``variant(name)`` -> the variant's site, made once per session."""
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            made[name] = make_variant(variant_root / "base", name, variant_root)
        return made[name]

    return get


@pytest.fixture(scope="session")
def tiny_checkpoint(variant_root, tmp_path_factory) -> Path:
    """An untrained tiny model saved as a checkpoint of the base site's classes and preprocessing
    (what is under test is the data path around the model, not what it learned)."""
    import torch

    from fedneurogen.shared.model import EMA, NeuroGenModel, save_checkpoint

    windows = load_site(variant_root / "base", FAST, progress=False)
    torch.manual_seed(0)
    model = NeuroGenModel("tiny", fmri_positions=windows.target_positions, device="cpu")
    extra = {"preprocess": FAST.model_dump(), "class_names": sorted(set(windows.labels.tolist()))}
    return save_checkpoint(tmp_path_factory.mktemp("variant-model") / "checkpoint", model, EMA(model), extra)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_validate_gives_each_variant_its_answer(variant, name):
    report = validate_dataset(variant(name))
    expected = EXPECTED[name]
    assert (report.ok, report.usable) == {"ok": (True, True), "usable": (False, True), "unusable": (False, False)}[
        expected
    ], report.problems
    result = runner.invoke(app, ["validate", "--json", str(variant(name))])
    assert result.exit_code == (1 if expected == "unusable" else 0), result.output
    assert json.loads(result.stdout)["usable"] is (expected != "unusable")


@pytest.mark.parametrize(
    ("name", "subjects", "runs"),
    [
        ("sessions", ["sub-01"], ["sub-01_ses-1_task-visual_run-1"]),
        ("task-digits", ["sub-01"], ["sub-01_task-nback2_run-1"]),  # EEG run-01, BOLD run-1: one run
        ("brainvision", ["sub-01"], ["sub-01_task-visual_run-1"]),
        ("eeglab", ["sub-01"], ["sub-01_task-visual_run-1"]),
        ("volume", ["sub-01"], ["sub-01_task-visual_run-1"]),
        ("odd-path", ["sub-01"], ["sub-01_task-visual_run-1"]),
        ("versioned-fmriprep", ["sub-01"], ["sub-01_task-visual_run-1"]),
        ("unequal-lengths", ["sub-01", "sub-02"], ["sub-01_task-visual_run-1", "sub-02_task-visual_run-1"]),
    ],
)
def test_variants_load_like_the_base_site(variant, variant_root, name, subjects, runs):
    windows = load_site(variant(name), FAST, progress=False, subjects=subjects)
    assert sorted(set(windows.runs.tolist())) == runs
    assert windows.eeg_sfreq == 200.0 and len(windows.eeg_channel_names) == 12
    assert windows.target.shape[1] == 5124  # ico4, both hemispheres (volumes are projected to it)
    base = load_site(variant_root / "base", FAST, progress=False, subjects=["sub-01"])
    if name in ("brainvision", "eeglab"):  # the same samples in another format give the same windows
        np.testing.assert_allclose(np.asarray(windows.eeg), np.asarray(base.eeg), atol=1e-3)
    if name == "unequal-lengths":
        short = windows.subset(windows.subjects == "sub-02")
        assert 0 < len(short) < len(base)
        durations = validate_dataset(variant(name)).summary["durations"]
        assert (durations["min_s"], durations["max_s"]) == (56.0, 80.0)


def test_5khz_eeg_with_ecg(variant):
    site = variant("eeg-5khz-ecg")
    summary = validate_dataset(site).summary
    assert summary["sfreqs"] == [5000.0] and summary["channels"]["eeg_counts"] == {"12": 3}  # ECG and EOG are not EEG
    windows = load_site(site, progress=False, subjects=["sub-01"])  # the default preprocessing, ICA included
    assert windows.eeg_sfreq == 200.0 and "ECG" not in windows.eeg_channel_names and len(windows) > 0


def test_na_and_free_text_are_not_groups(variant):
    site = variant("na-participants")
    rows = read_participants(site)
    assert rows["sub-02"]["sex"] == MISSING and rows["sub-02"]["handedness"] == MISSING  # -999: "not recorded"
    assert rows["sub-03"]["handedness"] == MISSING  # an empty cell
    summary = validate_dataset(site).summary
    assert summary["groups"]["sex"] == {"F": 1, "M": 1}  # sub-02's n/a is missing, not a group
    assert summary["attributes"]["sex"]["missing"] == 1
    assert "notes" not in summary["groups"] and "free text" in summary["attributes"]["notes"]["reason"]
    assert "age" not in summary["groups"] and summary["attributes"]["age"]["kind"] == "numeric"
    assert attribute_kind("group", ["A", "B", "A", "n/a"]).levels == {"A": 2, "B": 1}


def test_augment_leaves_na_out_of_group_metrics_and_says_why_nothing_was_added(variant, tmp_path):
    from fedneurogen.shared.workflows.fairness import AugmentConfig, run_augmentation

    site = variant("na-participants")
    windows = load_site(site, FAST, progress=False)
    config = AugmentConfig(
        sensitive_attribute="sex", strategies=("none", "oversample"), folds=2, use_eeg=False, n_rois=8
    )
    with pytest.warns(UserWarning) as caught:
        report, _ = run_augmentation(windows, config, site)
    messages = " ".join(str(w.message) for w in caught)
    assert "2 window(s) of 1 subject(s) without a 'sex' value" in messages  # sub-02: n/a
    assert "sex = 'M' has 1 subject(s), fewer than the 2 folds" in messages
    assert "oversample, smote, generate and linear-gaussian add no windows" in messages
    for entry in report["strategies"].values():
        assert set(entry["per_group"]["by_group"]) == {"F", "M"} and entry["per_group"]["left_out"] == 2
        assert entry["per_group"]["worst_group"]["group"] in ("F", "M")
    for column in ("notes", "age"):
        with pytest.raises(DataError, match=f"column '{column}' cannot be --sensitive-attribute"):
            run_augmentation(windows, AugmentConfig(sensitive_attribute=column, folds=2, use_eeg=False), site)

    result = runner.invoke(
        app,
        ["augment", "--data", str(site), "--out", str(tmp_path / "fair"), "--sensitive-attribute", "sex",
         "--strategy", "oversample", "--folds", "2", "--features", "target"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "No strategy added windows: no class x group cell is under-represented" in result.stdout
    markdown = (tmp_path / "fair" / "report.md").read_text()
    assert "No strategy added windows" in markdown and "left out of the group metrics" in markdown


def test_some_runs_broken_is_usable_and_says_so(variant):
    site = variant("one-run-broken")
    result = runner.invoke(app, ["validate", str(site)])
    assert result.exit_code == 0, result.output
    assert "USABLE: 1 of 3 run(s) will be skipped" in result.stdout
    assert "run(s) with errors will be skipped (sub-03_task-visual_run-1)" in result.stdout
    unusable = runner.invoke(app, ["validate", str(variant("every-run-broken"))])
    assert unusable.exit_code == 1 and "UNUSABLE" in unusable.stdout
    assert "Exit 1: UNUSABLE" in " ".join(runner.invoke(app, ["validate", "--help"]).stdout.split())


def test_brainvision_header_naming_a_missing_data_file(variant):
    site = variant("vhdr-missing-data")
    (problem,) = validate_dataset(site).errors
    assert problem.path.name == "sub-01_task-visual_run-1_eeg.vhdr"
    assert problem.message.startswith("line 6: DataFile=sub-01_task-visual_run-1_eeg.eeg names a data file")


def test_class_in_one_subject_is_warned_about(variant):
    warnings = [p.message for p in validate_dataset(variant("class-in-one-subject")).warnings]
    assert any("class 'oddball' has windows from one subject only (sub-01)" in w for w in warnings)


def test_eeg_only_says_where_targets_were_looked_for(variant):
    site = variant("other-pipeline")
    warning = validate_dataset(site).warnings[0].message
    assert "in derivatives/fmriprep/sub-01/func and for its *_nirs.snirf in sub-01/nirs" in warning
    assert "derivatives/ also holds preproc, not read" in warning


def test_unversioned_fmriprep_is_preferred_to_a_versioned_one(variant, tmp_path):
    import shutil

    site = tmp_path / "both"
    shutil.copytree(variant("versioned-fmriprep"), site)
    shutil.copytree(site / "derivatives" / "fmriprep-23.2.1", site / "derivatives" / "fmriprep")
    assert all(r.target[0].parent.parts[-3] == "fmriprep" for r in find_runs(site))
    assert validate_dataset(site).problems == []  # the versioned copies are not reported as unpairable


def test_read_only_site_is_left_as_it_was(variant, tiny_checkpoint, tmp_path):
    site = variant("read-only")
    assert not os.stat(site).st_mode & stat.S_IWUSR

    def snapshot():
        return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in site.rglob("*")}

    before = snapshot()
    assert validate_dataset(site).ok
    load_site(site, FAST, progress=False, subjects=["sub-01"])
    out = tmp_path / "generated"
    result = runner.invoke(
        app,
        ["synthesize", "--checkpoint", str(tiny_checkpoint), "--data", str(site), "--out", str(out),
         "--subjects", "sub-01", "--estimate", "mean", "--device", "cpu", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    files = json.loads(result.stdout)["files"]
    assert any(f.endswith("hemi-L_space-fsaverage5_desc-mean_bold.func.gii") for f in files)
    assert snapshot() == before


def test_odd_path_stays_whole_in_piped_output(variant, tiny_checkpoint, tmp_path):
    site = variant("odd-path")
    assert site.name == ODD_NAME
    out = tmp_path / ("a folder with a long name " * 4).strip() / "Zürich – generated"
    result = runner.invoke(
        app,
        ["synthesize", "--checkpoint", str(tiny_checkpoint), "--data", str(site), "--out", str(out),
         "--subjects", "01", "--estimate", "mean", "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    # not a terminal: no line is broken inside a path
    assert f"Wrote 5 files under {out}:" in result.stdout.splitlines()  # with the .bidsignore
    assert f"  {out / 'dataset_description.json'}" in result.stdout.splitlines()


def test_synthesize_refuses_an_unknown_label_before_reading_the_site(tiny_checkpoint, tmp_path):
    missing = tmp_path / "no-such-site"  # never read: the label is refused first
    result = runner.invoke(
        app,
        ["synthesize", "--checkpoint", str(tiny_checkpoint), "--data", str(missing), "--out", str(tmp_path / "o"),
         "--label", "oddball"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "label 'oddball' is not a class of checkpoint" in " ".join(result.output.split())


def test_synthesize_reads_only_the_named_subjects_and_warns_about_the_null_label(variant, tiny_checkpoint, tmp_path):
    from fedneurogen.shared.workflows.synthesis import synthesize

    broken = variant("one-run-broken")  # sub-03 is broken: never read for sub-01
    data = load_site_data(broken, FAST, progress=False, subjects=["sub-01"])
    assert data.skipped == [] and set(data.windows.subjects.tolist()) == {"sub-01"}
    with pytest.raises(ConfigError, match=r"subjects \['sub-09'\] have no EEG run"):
        load_site_data(broken, FAST, progress=False, subjects=["09"])

    with pytest.warns(UserWarning, match=r"class\(es\) 'oddball' \(2 windows\) are not among the model's classes"):
        synthesize(
            tiny_checkpoint, variant("class-in-one-subject"), tmp_path / "gen", subjects=["sub-01"], estimate="mean",
            device="cpu", progress=False,
        )  # fmt: skip


def test_cache_is_private(variant_root, tmp_path):
    cache = tmp_path / "new" / "cache"
    load_site_data(variant_root / "base", FAST, cache_dir=cache, progress=False, subjects=["sub-01"])
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert stat.S_IMODE((cache / "file-hashes.json").stat().st_mode) == 0o600
    for path in cache.rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path
