"""EEG-only sessions: simulated, read as a generation pool laid out like the paired windows,
refused with the file or site named, and never a source from a test-fold subject."""

from __future__ import annotations

import hashlib
import shutil
import warnings

import numpy as np
import pytest

from fedneurogen.shared.errors import DataError


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from fedneurogen.simulations.simulator import simulate_dataset

    out = tmp_path_factory.mktemp("eeg-only")
    (site,) = simulate_dataset(
        out,
        n_sites=1,
        subjects_per_site=3,
        modality="fmri",
        seed=4,
        run_seconds=240.0,
        progress=False,
        eeg_only_sessions={"A": 1, "B": 1},
    )
    return site


@pytest.fixture(scope="module")
def paired(site):
    from fedneurogen.shared.data import load_site

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        windows = load_site(site, use_cache=False, progress=False)
    skipped = [str(w.message) for w in caught if "EEG only" in str(w.message)]
    # one line for the site, counting its EEG-only sessions (not trained on), not one per run
    assert skipped == [
        f"{site}: 2 EEG-only run(s) skipped (sub-04, sub-05): EEG only, no fMRI or fNIRS recording to pair with; "
        "not trained on, `augment --eeg-only` can generate their target; `fedneurogen validate` lists each"
    ]
    return windows


def test_eeg_only_runs_are_one_warning_line_per_site_on_every_load(site, tmp_path):
    """Read again (from the cache, then without it), the site still says it once, with the count;
    other skipped runs keep their own line."""
    from fedneurogen.shared.data import load_site_data
    from fedneurogen.shared.data.problems import Problem
    from fedneurogen.shared.data.site import LoadedSite

    for use_cache in (True, True, False):  # the second read is a cache hit
        data = load_site_data(site, cache_dir=tmp_path, use_cache=use_cache, progress=False)
        assert len(data.skipped) == 2
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            data.warn()
        lines = [str(w.message) for w in caught]
        assert len(lines) == 1 and lines[0].startswith(f"{site}: 2 EEG-only run(s) skipped"), lines

    # another skipped run and a worked-around problem keep their own lines, after the count
    broken = Problem(site / "sub-01" / "eeg" / "sub-01_task-visual_run-1_eeg.edf", "run skipped: truncated")
    other = Problem(site / "participants.tsv", "subject sub-09 is missing", "warning")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        LoadedSite(windows=data.windows, skipped=[*data.skipped, broken], warnings=[other]).warn()
    lines = [str(w.message) for w in caught]
    assert lines[:2] == [str(broken), str(other)] and lines[2].startswith(f"{site}: 2 EEG-only run(s) skipped")
    assert len(lines) == 3


def test_eeg_only_runs_are_windowed_like_the_paired_ones(site, paired):
    from fedneurogen.shared.data.eeg_only import eeg_only_runs, load_eeg_only

    assert [r.subject for r in eeg_only_runs(site)] == ["sub-04", "sub-05"]  # after the 3 paired subjects
    pool = load_eeg_only(site, paired)
    assert len(pool) > 0 and not np.any(pool.target)  # no target exists: zeros nobody may read
    assert pool.eeg.shape[1:] == paired.eeg.shape[1:] and pool.eeg_channel_names == paired.eeg_channel_names
    assert pool.target.shape[1:] == paired.target.shape[1:] and pool.design.shape[1:] == paired.design.shape[1:]
    assert set(pool.subjects.tolist()) == {"sub-04", "sub-05"} and not set(pool.subjects.tolist()) & set(
        paired.subjects.tolist()
    )
    assert sorted(set(pool.group_of("group").tolist())) == ["A", "B"]  # their groups from participants.tsv
    assert np.abs(pool.design).sum() > 0  # the design comes from the EEG-only run's own EEG


def test_eeg_only_sessions_leave_the_paired_runs_unchanged(site, tmp_path):
    from fedneurogen.simulations.simulator import simulate_dataset

    (plain,) = simulate_dataset(
        tmp_path, n_sites=1, subjects_per_site=3, modality="fmri", seed=4, run_seconds=240.0, progress=False
    )
    digest = lambda path: hashlib.sha256(path.read_bytes()).hexdigest()  # noqa: E731
    for bold in sorted(plain.glob("derivatives/fmriprep/sub-*/func/*.gii")):
        assert digest(bold) == digest(site / bold.relative_to(plain))
    assert sorted(p.name for p in plain.glob("sub-*")) == ["sub-01", "sub-02", "sub-03"]


def test_a_site_without_eeg_only_runs_and_a_broken_one_are_named(site, paired, tmp_path):
    from fedneurogen.shared.data.eeg_only import load_eeg_only

    copy = tmp_path / "site-01"
    shutil.copytree(site, copy)
    broken = next(copy.glob("sub-05/eeg/*_eeg.*"))
    broken.write_bytes(broken.read_bytes()[:100])  # truncated EEG file
    with pytest.raises(DataError) as err:
        load_eeg_only(copy, paired)
    assert "sub-05" in str(err.value)

    for extra in ("sub-04", "sub-05"):
        shutil.rmtree(copy / extra)
    with pytest.raises(DataError, match="no EEG-only runs") as err:
        load_eeg_only(copy, paired)
    assert str(copy) in str(err.value)


def test_eeg_only_sources_are_never_test_subjects(site, paired):
    from dataclasses import replace

    from fedneurogen.shared.workflows.fairness import AugmentConfig, GenerationLog, generate_strategy, prepare_samples
    from fedneurogen.shared.workflows import fairness as fm
    from fedneurogen.shared.data.eeg_only import load_eeg_only

    pool = load_eeg_only(site, paired)
    pool = replace(
        pool, subjects=np.where(pool.subjects == "sub-05", "sub-01", pool.subjects)
    )  # one of them also has paired runs
    config = AugmentConfig(
        folds=2,
        seed=1,
        use_eeg=False,
        target_per_class=2 * int(np.bincount(np.unique(paired.labels, return_inverse=True)[1]).max()),
    )
    samples = prepare_samples(paired, config, "site-x", pool=pool)
    splits = fm.subject_folds(samples.labels, samples.windows.subjects, samples.classes, 2, 1, "site-x")
    log = GenerationLog()
    strategy = generate_strategy(samples, lambda w, seed: np.zeros_like(w.target), log)
    pool_ids = set(fm.window_ids(pool).tolist())
    used_pool = 0
    for i, (train, test) in enumerate(splits):
        strategy(fm.Fold(i, train, test, seed=i))
        test_subjects = set(samples.windows.subjects[test].tolist())
        for call in [c for c in log.calls if c["fold"] == i]:
            assert not set(call["subjects"]) & test_subjects
            used_pool += len(set(call["ids"]) & pool_ids)
    assert used_pool > 0  # the EEG-only windows were used as sources
    assert replace(config, eeg_only=True).eeg_only
