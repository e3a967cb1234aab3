"""Windowing (the 6 s lag, labels, channel sets) and the on-disk cache."""

from __future__ import annotations

import os
import time

import numpy as np
import pandas as pd
import pytest

from fedneurogen.simulations import bids_factory as bf
from fedneurogen.shared.config import PreprocessConfig
from fedneurogen.shared.data import DataWarning, load_site, load_site_data, site as site_module
from fedneurogen.shared.data import cache as cache_module
from fedneurogen.shared.data.bids import find_runs
from fedneurogen.shared.data.pairing import combine_runs, cut_windows, label_windows
from fedneurogen.shared.data.site import site_inputs
from fedneurogen.shared.data.cache import SiteCache
from fedneurogen.shared.errors import ConfigError
from fedneurogen.shared.recording import PairedWindows, Recording, WindowView

# A history as short as the lag: these tests check the raw EEG/target window geometry on short
# runs; the full-history rule (windows from history_seconds on) is tested in test_fidelity.
CFG = PreprocessConfig(eeg_ica=False, history_seconds=6.0)


def _events(rows):
    return pd.DataFrame(rows, columns=["onset", "duration", "trial_type"])


def _rec(data, sfreq, names, modality):
    return Recording(data=data, sfreq=sfreq, positions=np.zeros((len(names), 3)), names=names, modality=modality)


# --- pairing -------------------------------------------------------------------------------------


def test_target_window_is_eeg_envelope_six_seconds_later():
    duration, eeg_sfreq, lag = 120.0, 200.0, CFG.lag_seconds
    t = np.arange(int(duration * eeg_sfreq)) / eeg_sfreq
    envelope = 2.5 + np.sin(2 * np.pi * t / 23.0) + 0.5 * np.sin(2 * np.pi * t / 9.0 + 1.0)
    eeg = _rec((envelope * np.sin(2 * np.pi * 20.0 * t))[None, :], eeg_sfreq, ["Cz"], "eeg")
    grid = np.arange(int(duration * 0.5)) * 2.0
    shifted = 2.5 + np.sin(2 * np.pi * (grid - lag) / 23.0) + 0.5 * np.sin(2 * np.pi * (grid - lag) / 9.0 + 1.0)
    target = _rec(shifted[None, :], 0.5, ["V0"], "fmri")
    run = cut_windows(eeg, target, _events([]), CFG, run="r", subject="sub-01")

    assert len(run.labels) == 13 and set(run.labels) == {"rest"}
    np.testing.assert_allclose(run.onsets, 6.0 + 8.0 * np.arange(13))  # first window: EEG from 0 s
    assert run.eeg_windows.shape == (13, 1, 3200) and run.target_windows.shape == (13, 1, 8)
    # The EEG envelope (RMS over 1 s around each target sample's cause) equals the target.
    half = int(0.5 * eeg_sfreq)
    for k in range(len(run.labels)):
        x = run.eeg_windows[k, 0]
        centres = (np.arange(8) * 2.0 * eeg_sfreq).astype(int)
        env = [np.sqrt(2 * np.mean(x[max(0, c - half) : c + half] ** 2)) for c in centres]
        np.testing.assert_allclose(env[1:], run.target_windows[k, 0, 1:], rtol=0.02)
    # Sanity of the check itself: one target sample (2 s) off would not match.
    assert not np.allclose(env[1:-1], run.target_windows[k, 0, 2:], rtol=0.02)


def test_windows_fit_inside_both_recordings():
    def onsets(eeg_seconds, target_seconds, config=CFG):
        eeg = _rec(np.zeros((2, int(eeg_seconds * 200))), 200.0, ["Cz", "Pz"], "eeg")
        target = _rec(np.zeros((3, int(target_seconds / 2))), 0.5, ["a", "b", "c"], "fmri")
        return cut_windows(eeg, target, _events([]), config, run="r", subject="s").onsets.tolist()

    # EEG span [t - 6, t + 10] must end by 40 s; target span [t, t + 16] by 60 s.
    assert onsets(40, 60) == [6.0, 14.0, 22.0, 30.0]
    # Now the target is the shorter one: [t, t + 16] must end by 40 s.
    assert onsets(60, 40) == [6.0, 14.0, 22.0]
    assert onsets(20, 20) == []
    # A 5 s lag: the first onset is snapped up onto the 2 s grid (6 s); EEG then starts at 1 s.
    assert onsets(40, 60, CFG.model_copy(update={"lag_seconds": 5.0, "history_seconds": 5.0}))[0] == 6.0
    # The default 30 s history: the first window starts 30 s into the run.
    assert onsets(80, 80, CFG.model_copy(update={"history_seconds": 30.0})) == [30.0, 38.0, 46.0, 54.0, 62.0]


def test_labels_majority_rule():
    events = _events([(0.0, 10.0, "faces"), (10.0, 4.0, "tools"), (20.0, 10.0, "scenes"), (40.0, 16.0, "motion")])
    labels, keep = label_windows(np.array([0.0, 8.0, 16.0, 40.0, 60.0]), 16.0, events, 0.5)
    # [0,16]: faces 10 s -> faces.  [8,24]: faces 2, tools 4, rest 6, scenes 4 -> no majority.
    # [16,32]: scenes 10 -> scenes.  [40,56]: motion.  [60,76]: rest.
    assert labels.tolist()[:1] + labels.tolist()[2:] == ["faces", "scenes", "motion", "rest"]
    assert keep.tolist() == [True, False, True, True, True]
    _, keep_all = label_windows(np.array([8.0]), 16.0, events, 0.0)
    assert keep_all.tolist() == [True]


def test_site_channel_set_is_the_intersection(tmp_path):
    def run_windows(names, subject):
        eeg = _rec(np.ones((len(names), 64 * 200)), 200.0, names, "eeg")
        target = _rec(np.zeros((2, 32)), 0.5, ["a", "b"], "fmri")
        return cut_windows(eeg, target, _events([]), CFG, run=f"{subject}_task-x", subject=subject)

    a = run_windows(["Fp1", "Cz", "Pz", "O1"], "sub-01")
    b = run_windows(["Cz", "O1", "Fp1"], "sub-02")
    windows, problems = combine_runs([a, b], {"sub-01": {"group": "A"}}, CFG, tmp_path)
    assert windows.eeg_channel_names == ["Fp1", "Cz", "O1"]
    assert windows.eeg.shape[1] == 3 and len(windows) == len(a.labels) + len(b.labels)
    assert [p.message for p in problems] == ["EEG channels not in every run, dropped site-wide: Pz"]
    assert problems[0].path == tmp_path / "sub-01_task-x"
    assert windows.group_of("group").tolist() == ["A"] * len(a.labels) + ["n/a"] * len(b.labels)


def test_load_site_fnirs(tmp_path):
    site = bf.make_site(tmp_path, bf.SiteSpec(modality="fnirs", subjects=("01",), eog=False))
    windows = load_site(site, CFG, use_cache=False, progress=False)
    assert windows.target_modality == "fnirs" and windows.target_sfreq == 1.0
    assert windows.target.shape[1:] == (8, 16) and windows.target_point_types == ["hbo", "hbr"] * 4
    assert set(windows.labels) <= {"left", "right", "rest"}
    assert windows.participants == {"sub-01": {"sex": "F", "age": "20", "group": "A"}}


# --- cache ---------------------------------------------------------------------------------------


@pytest.fixture
def counted(monkeypatch):
    """Count calls of the run loader (all readers go through it)."""
    calls = []
    original = site_module.load_run

    def load_run(run, config):
        calls.append(run.key)
        return original(run, config)

    monkeypatch.setattr(site_module, "load_run", load_run)
    return calls


@pytest.fixture
def small_site(tmp_path):
    return bf.make_site(tmp_path, bf.SiteSpec(eog=False))


def test_cache_hit_returns_same_windows_without_reading(small_site, tmp_path, counted):
    cache = tmp_path / "cache"
    first = load_site_data(small_site, CFG, cache_dir=cache, progress=False)
    assert not first.from_cache and len(counted) == 2
    second = load_site_data(small_site, CFG, cache_dir=cache, progress=False)
    assert second.from_cache and len(counted) == 2  # no reader ran
    a, b = first.windows, second.windows
    for name in (
        "eeg",
        "target",
        "labels",
        "subjects",
        "runs",
        "onsets",
        "eeg_positions",
        "target_positions",
        "design",
    ):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert (a.eeg_channel_names, a.target_names, a.participants, a.lag) == (
        b.eeg_channel_names, b.target_names, b.participants, b.lag,
    )  # fmt: skip
    assert b.eeg.dtype == np.float32 and len(SiteCache(cache).entries()) == 1
    # a cached site is read memory-mapped: its windows are views, nothing is loaded up front
    assert isinstance(b.eeg, WindowView) and isinstance(b.eeg.data, np.memmap) and isinstance(b.design.data, np.memmap)
    # the cache holds patient data and participant attributes: this user's only
    import stat

    assert stat.S_IMODE((cache / "sites").stat().st_mode) == 0o700
    inside = list((cache / "sites").rglob("*"))
    assert {stat.S_IMODE(f.stat().st_mode) for f in inside if f.is_file()} == {0o600}
    assert {stat.S_IMODE(f.stat().st_mode) for f in inside if f.is_dir()} == {0o700}
    assert not [f for f in inside if ".partial-" in f.name]  # the staging folder was published


def test_cache_invalidated_by_content_and_config(small_site, tmp_path, counted):
    cache = tmp_path / "cache"
    load_site(small_site, CFG, cache_dir=cache, progress=False)
    assert len(counted) == 2
    # Same size, same mtime, different content: still a miss.
    events = find_runs(small_site)[0].events
    stat = events.stat()
    text = events.read_text()
    events.write_text(text.replace("faces", "cards"))
    os.utime(events, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert events.stat().st_size == stat.st_size and events.stat().st_mtime_ns == stat.st_mtime_ns
    windows = load_site(small_site, CFG, cache_dir=cache, progress=False)
    assert len(counted) == 4 and "cards" in set(windows.labels)
    # The stale entry of this site and config was replaced, not kept.
    assert len(SiteCache(cache).entries()) == 1 and len([p for p in (cache / "sites").iterdir() if p.is_dir()]) == 1
    load_site(small_site, CFG.model_copy(update={"window_seconds": 12.0}), cache_dir=cache, progress=False)
    assert len(counted) == 6
    load_site(small_site, CFG, cache_dir=cache, progress=False)
    assert len(counted) == 6  # back to the first config: its entry is still there


def test_cache_replays_skipped_runs(small_site, tmp_path, counted):
    run = next(r for r in find_runs(small_site) if r.subject == "sub-02")
    run.eeg.write_bytes(run.eeg.read_bytes()[:1000])
    for _ in range(2):
        with pytest.warns(DataWarning, match=f"{run.eeg.name}.*truncated"):
            load_site(small_site, CFG, cache_dir=tmp_path / "cache", progress=False)
    assert len(counted) == 2  # second time from the cache, same warning


def test_hash_memo_skips_unchanged_files_but_sees_changes(small_site, tmp_path, monkeypatch):
    monkeypatch.setattr(cache_module, "SETTLE_NS", 0)  # files are fresh: trust the memo at once
    files = site_inputs(small_site, find_runs(small_site))
    first = cache_module.SiteCache(tmp_path / "cache")
    key = first.key(small_site, files, CFG)
    assert first.memo.hashed == len(set(files))
    second = cache_module.SiteCache(tmp_path / "cache")  # a new process: memo read from disk
    assert second.key(small_site, files, CFG) == key and second.memo.hashed == 0
    time.sleep(0.05)  # past the filesystem clock tick of the files' creation
    target = files[0]
    stat = target.stat()
    blob = bytearray(target.read_bytes())
    blob[-1] ^= 0xFF
    target.write_bytes(bytes(blob))
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ctime still moves
    third = cache_module.SiteCache(tmp_path / "cache")
    assert third.key(small_site, files, CFG) != key and third.memo.hashed == 1


def test_the_hash_memo_is_parsed_once_per_process_until_another_writer_replaces_it(tmp_path, monkeypatch):
    """A simulation actor loads hundreds of sites in turn: the memo of every site's files is not
    parsed again for each while the file is unchanged; a memo another process wrote (an atomic
    replace) or broke is read as it now is."""
    import json

    memo_file = tmp_path / "file-hashes.json"
    data = tmp_path / "a.bin"
    data.write_bytes(b"x" * 100)
    monkeypatch.setattr(cache_module, "SETTLE_NS", 0)
    first = cache_module.HashMemo(memo_file)
    digest = first.sha256(data)
    first.save()
    parsed = []
    real_loads = json.loads
    monkeypatch.setattr(cache_module.json, "loads", lambda text: parsed.append(1) or real_loads(text))
    again = cache_module.HashMemo(memo_file)
    assert again.sha256(data) == digest and again.hashed == 0 and parsed == []
    entries = real_loads(memo_file.read_text())
    other = {str(data.resolve()): {**entries[str(data.resolve())], "sha256": "0" * 64}}
    cache_module.write_json_atomic(memo_file, other, indent=0, mode=0o600)  # another process's write
    assert cache_module.HashMemo(memo_file).sha256(data) == "0" * 64 and parsed == [1]
    memo_file.write_text("{broken")
    assert cache_module.HashMemo(memo_file).sha256(data) == digest  # empty: hashed again


def test_cache_key_of_files_with_non_utf8_names(tmp_path):
    """File names that are not UTF-8 (bytes from another locale) key the cache like any other."""
    import os

    from fedneurogen.shared.data.cache import SiteCache

    odd = tmp_path / os.fsdecode(b"sub-01_acq-caf\xe9_events.tsv")
    odd.write_text("onset\tduration\ttrial_type\n")
    cache = SiteCache(tmp_path / "cache")
    key = cache.key(tmp_path, [odd], CFG)
    odd.write_text("onset\tduration\ttrial_type\n0\t1\tx\n")
    assert len(key) == 64 and cache.key(tmp_path, [odd], CFG) != key  # and it follows the content


def test_cache_command_lists_and_purges(small_site, tmp_path):
    """`fedneurogen cache` shows what patient data is kept and removes it."""
    import os
    import time

    from typer.testing import CliRunner

    from fedneurogen.cli import app
    from fedneurogen.shared.data.cache import SiteCache

    cache = tmp_path / "cache"
    load_site_data(small_site, CFG, cache_dir=cache, progress=False)
    runner = CliRunner()
    listed = runner.invoke(app, ["cache", "--dir", str(cache)])
    assert listed.exit_code == 0 and "1 site(s)" in listed.output
    (entry,) = SiteCache(cache).entries()
    assert entry["site_dir"] == str(small_site.resolve()) and entry["n_windows"] > 0 and entry["bytes"] > 0
    kept = runner.invoke(app, ["cache", "--dir", str(cache), "--purge", "--older-than", "1"])  # written just now: kept
    assert kept.exit_code == 0 and len(SiteCache(cache).entries()) == 1
    old = time.time() - 3 * 86400
    for path in entry["files"]:
        os.utime(path, (old, old))
    purged = runner.invoke(app, ["cache", "--dir", str(cache), "--purge", "--older-than", "2"])
    assert purged.exit_code == 0 and "1 site(s)" in purged.output and "removed" in purged.output
    assert SiteCache(cache).entries() == [] and not list((cache / "sites").iterdir())


def test_window_view_cuts_like_materialised_windows():
    """A view over continuous data indexes, selects and converts exactly as the copied windows."""
    rng = np.random.default_rng(0)
    data = rng.normal(size=(3, 100)).astype(np.float32)
    starts = np.array([0, 10, 20, 85])
    copied = np.stack([data[:, s : s + 15] for s in starts])
    view = WindowView(data, starts, 15, time_axis=1)
    assert view.shape == copied.shape and len(view) == 4 and view.ndim == 3
    np.testing.assert_array_equal(np.asarray(view), copied)
    np.testing.assert_array_equal(view[2], copied[2])
    np.testing.assert_array_equal(view[1:3], copied[1:3])
    np.testing.assert_array_equal(view[np.array([3, 0, 3])], copied[[3, 0, 3]])
    np.testing.assert_array_equal(view[np.array([True, False, True, False])], copied[[0, 2]])
    w, f = np.array([3, 0, 3, 1]), np.array([0, 14, 2, 7])
    np.testing.assert_array_equal(view[w, :, f], copied[w, :, f])  # paired indices, repeated windows
    np.testing.assert_array_equal(view[:, [2, 0]], copied[:, [2, 0]])
    np.testing.assert_array_equal(np.asarray(view.select(np.array([1, 3]))), copied[[1, 3]])
    design = WindowView(data.T.copy(), starts, 15, time_axis=0)  # [times, features]
    np.testing.assert_array_equal(design[w, f], np.transpose(copied, (0, 2, 1))[w, f])
    with pytest.raises(ValueError, match="outside"):
        WindowView(data, np.array([90]), 15, time_axis=1)


def test_subset_of_loaded_windows_stays_a_view(small_site, tmp_path):
    windows = load_site(small_site, CFG, cache_dir=tmp_path / "cache", progress=False)
    part = windows.subset(windows.subjects == windows.subjects[0])
    assert isinstance(part, PairedWindows) and isinstance(part.eeg, WindowView)
    assert part.eeg.data is windows.eeg.data  # shares the mapped runs: nothing copied
    np.testing.assert_array_equal(part.eeg[0], windows.eeg[0])


def test_cache_entries_unused_past_retention_are_deleted(small_site, tmp_path, monkeypatch):
    """Entries not used for FEDNEUROGEN_CACHE_DAYS go when the next entry is written; a hit
    counts as a use."""
    cache = tmp_path / "cache"
    load_site(small_site, CFG, cache_dir=cache, progress=False)
    (entry,) = SiteCache(cache).entries()
    old = time.time() - 10 * 86400
    for path in entry["files"]:
        os.utime(path, (old, old))
    monkeypatch.setenv("FEDNEUROGEN_CACHE_DAYS", "30")
    load_site(small_site, CFG.model_copy(update={"window_seconds": 12.0}), cache_dir=cache, progress=False)
    assert len(SiteCache(cache).entries()) == 2  # 10 days unused: within 30 days, kept
    load_site(small_site, CFG, cache_dir=cache, progress=False)  # a hit: used today
    monkeypatch.setenv("FEDNEUROGEN_CACHE_DAYS", "5")
    for path in [p for e in SiteCache(cache).entries() if e["n_windows"] != entry["n_windows"] for p in e["files"]]:
        os.utime(path, (old, old))  # the 12 s entry: unused for 10 days
    load_site(small_site, CFG.model_copy(update={"window_seconds": 14.0}), cache_dir=cache, progress=False)
    kept = SiteCache(cache).entries()
    assert len(kept) == 2 and entry["n_windows"] in {e["n_windows"] for e in kept}
    monkeypatch.setenv("FEDNEUROGEN_CACHE_DAYS", "soon")
    with pytest.raises(ConfigError, match="FEDNEUROGEN_CACHE_DAYS must be a number of days, got 'soon'"):
        load_site(small_site, CFG.model_copy(update={"window_seconds": 10.0}), cache_dir=cache, progress=False)


def test_failed_load_leaves_no_staging_folder(tmp_path):
    site = bf.make_site(tmp_path / "site", bf.SiteSpec(eog=False))
    for eeg in site.rglob("*_eeg.edf"):
        eeg.write_bytes(eeg.read_bytes()[:300])  # every run broken
    cache = tmp_path / "cache"
    with pytest.raises(Exception, match="no usable runs"):
        load_site_data(site, CFG, cache_dir=cache, progress=False)
    assert not [p for p in (cache / "sites").iterdir()]


def test_a_cached_design_of_another_width_is_remade_not_used(small_site, tmp_path, counted, caplog):
    """An entry whose design has other columns than this preprocessing makes (another form of the
    design under the same key) is remade with a warning, never read as if it fitted."""
    cache = tmp_path / "cache"
    first = load_site(small_site, CFG, cache_dir=cache, progress=False)
    (entry,) = [p for p in (cache / "sites").iterdir() if p.is_dir()]
    design = np.load(entry / "design.npy")
    np.save(entry / "design.npy", np.concatenate([design, design[:, :8]], axis=1))  # 8 columns too many
    again = load_site(small_site, CFG, cache_dir=cache, progress=False)
    width = first.design.shape[-1]
    assert f"the cached design has {width + 8} columns where this preprocessing gives {width}" in caplog.text
    assert len(counted) == 4 and again.design.shape == first.design.shape
    assert load_site(small_site, CFG, cache_dir=cache, progress=False).design.shape == first.design.shape
    assert len(counted) == 4  # the remade entry is read from then on
