"""In-scanner EEG (issue 31): the simulator's raw recordings, their cleaning, and ``validate``.

Two one-minute, one-subject consortia from the same seed, with and without
``--scanner-artifacts``: site-01 is EDF (64 ch, 500 Hz, TR 2 s), site-02 BrainVision (32 ch,
250 Hz, TR 2.1 s).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mne
import numpy as np
import pandas as pd
import pytest

from fedneurogen.shared.config import PreprocessConfig
from fedneurogen.shared.data import validate_dataset
from fedneurogen.shared.data.bids import find_runs, read_events
from fedneurogen.shared.data.eeg import load_raw_eeg, prepare_channels, read_eeg
from fedneurogen.shared.data.bcg import find_r_peaks, pca_obs
from fedneurogen.shared.data import scanner as scanner_module
from fedneurogen.shared.data.scanner import (
    average_artifact_subtraction,
    clean_scanner_artifacts,
    events_from_first_volume,
    volume_epochs,
    volume_triggers,
)
from fedneurogen.shared.data.scanner_metrics import line_power, pulse_locked_power
from fedneurogen.shared.errors import DataError
from fedneurogen.simulations.scanner import ScannerSetup, simulate_scanner_artifacts
from fedneurogen.simulations.simulator import simulate_dataset

SEED = 11
FAST = PreprocessConfig(eeg_ica=False)


@pytest.fixture(scope="module")
def consortia(tmp_path_factory) -> tuple[Path, Path]:
    """(raw in-scanner, clean) simulations of the same seed."""
    root = tmp_path_factory.mktemp("scanner")
    common = dict(n_sites=2, subjects_per_site=1, seed=SEED, run_seconds=60.0, progress=False, n_jobs=1)
    simulate_dataset(root / "raw", scanner_artifacts=True, **common)
    simulate_dataset(root / "clean", **common)
    return root / "raw", root / "clean"


LEAD_IN_S, LEAD_OUT_S = 5.0, 3.0


@pytest.fixture(scope="module")
def lead_in(tmp_path_factory) -> Path:
    """The raw consortium's seed written as a lab records it without a SyncBox: the EEG starts
    5 s before the first volume and goes on 3 s after the run, the triggers alternately N and
    N + 1 samples apart (``ScannerSetup``)."""
    root = tmp_path_factory.mktemp("scanner-lead-in")
    setup = ScannerSetup(lead_in_s=LEAD_IN_S, lead_out_s=LEAD_OUT_S, unsynced_clock=True)
    simulate_dataset(
        root / "raw", scanner_artifacts=setup, n_sites=2, subjects_per_site=1, seed=SEED, run_seconds=60.0,
        progress=False, n_jobs=1,
    )  # fmt: skip
    return root / "raw"


def _truth_events(site: Path) -> pd.DataFrame:
    (path,) = (site / "derivatives" / "ground_truth").rglob("*_desc-scanner_events.tsv")
    return pd.read_csv(path, sep="\t")


def _prepared(site: Path):
    run = find_runs(site)[0]
    raw, _ = prepare_channels(load_raw_eeg(run.eeg), run)
    return run, raw


def _copy_site(site: Path, dest: Path) -> Path:
    shutil.copytree(site, dest)
    return dest


# ----------------------------------------------------------------------------------------------
# Average artefact subtraction and PCA-OBS on synthetic signals


def test_aas_removes_an_exactly_periodic_artifact_to_numerical_precision():
    rng = np.random.default_rng(0)
    period, n_volumes, lead = 250, 40, 37
    epoch = rng.normal(0, 1e-3, (3, period)) * np.hanning(period)  # ~1 mV, different per channel
    artefact = np.zeros((3, lead + period * n_volumes + 50))
    artefact[:, lead : lead + period * n_volumes] = np.tile(epoch, n_volumes)
    triggers = lead + period * np.arange(n_volumes)
    eeg = rng.normal(0, 10e-6, artefact.shape)

    cleaned = average_artifact_subtraction(artefact, triggers, n_template=10)
    assert np.abs(cleaned).max() < 1e-12 * np.abs(artefact).max() * 1e3  # ~1e-15 V left of ~3 mV
    # without alignment AAS is linear: the EEG under the artefact is what AAS of the EEG alone gives
    both = average_artifact_subtraction(eeg + artefact, triggers, n_template=10, align=False)
    alone = average_artifact_subtraction(eeg, triggers, 10, align=False)
    np.testing.assert_allclose(both, alone, rtol=0, atol=1e-15)
    # aligned, the shifts fitted to the EEG's noise are small: nearly the same
    aligned = average_artifact_subtraction(eeg + artefact, triggers, n_template=10)
    assert 0 < np.sqrt(np.mean((aligned - alone) ** 2)) < 0.1 * np.std(eeg)
    assert np.array_equal(both[:, :lead], (eeg + artefact)[:, :lead])  # before the first trigger: untouched
    # the template leaves most of the EEG: each epoch loses the mean of 10 others
    assert np.std(both[:, lead:-50] - eeg[:, lead:-50]) < 0.5 * np.std(eeg)


def _periodic(period: float, start: float, n_times: int, rng) -> np.ndarray:
    """``[3, n_times]`` an exactly periodic artefact (harmonics of 1/period below Nyquist) from
    ``start``, sampled where the phase is computed in one period (``mod``): two samples at the
    same phase are the same bits, wherever they are in the run."""
    harmonics = np.arange(1, int(period / 2) - 2)
    amplitude = rng.normal(0, 1e-3, (3, len(harmonics), 1)) * np.exp(-harmonics / 40)[None, :, None]
    offset = rng.uniform(0, 2 * np.pi, (3, len(harmonics), 1))
    phase = np.mod(np.arange(n_times) - start, period) / period
    return np.sum(amplitude * np.cos(2 * np.pi * harmonics[None, :, None] * phase + offset), axis=1)


def test_aas_is_exact_when_the_triggers_alternate_by_a_sample(monkeypatch):
    """TR = 250.5 samples (no SyncBox): the triggers are 250 and 251 samples apart in turn, and
    every other volume is sampled half a sample later. Each epoch's template comes from epochs of
    its own phase: an exactly periodic artefact goes to the rounding of the template's sums
    (< 1e-14 of its peak; measured ~7e-16), the EEG before the first volume and after the last
    one untouched; one template for all phases (as before) leaves half of it."""
    rng = np.random.default_rng(3)
    period, start, n_volumes = 250.5, 37.25, 40
    triggers = np.ceil(start + period * np.arange(n_volumes)).astype(np.int64)  # the first sample after each pulse
    assert set(np.diff(triggers)) == {250, 251} and np.all(np.diff(np.diff(triggers)) != 0)  # alternating
    epochs = volume_epochs(triggers)
    assert epochs.window == 251 and np.array_equal(np.bincount(epochs.groups), [20, 20])
    first, stop = epochs.span
    assert first == triggers[0] and stop == np.ceil(start + period * n_volumes)  # the last lasts as its group's do
    n_times = stop + 60
    artefact = _periodic(period, start, n_times, rng)
    artefact[:, :first] = artefact[:, stop:] = 0  # the scanner runs from the first trigger to the last volume's end
    eeg = rng.normal(0, 10e-6, artefact.shape)
    cleaned = average_artifact_subtraction(artefact, triggers, n_template=10)
    assert np.abs(cleaned).max() < 1e-14 * np.abs(artefact).max()
    both = average_artifact_subtraction(eeg + artefact, triggers, n_template=10)
    assert np.array_equal(both[:, :first], eeg[:, :first]) and np.array_equal(both[:, stop:], eeg[:, stop:])
    monkeypatch.setattr(scanner_module, "PHASE_GAP", 1.0)  # every phase in one group: the old templates
    assert np.abs(average_artifact_subtraction(artefact, triggers, n_template=10)).max() > 0.1 * np.abs(artefact).max()


def test_pca_obs_does_at_least_as_well_as_mne_apply_pca_obs():
    """The vectorised PCA-OBS leaves less of a pulse artefact than MNE's on the same R-peaks
    (MNE's +-RR/2 windows cut a BCG that lasts past half the next interval)."""
    sfreq, seconds = 250.0, 40.0
    rng = np.random.default_rng(1)
    n = int(sfreq * seconds)
    beats = np.cumsum(rng.uniform(0.8, 1.0, 60))
    beats = beats[beats < seconds - 1.0]
    shape = np.sin(2 * np.pi * 5 * np.arange(int(0.5 * sfreq)) / sfreq) * np.hanning(int(0.5 * sfreq))
    bcg = np.zeros((4, n))
    for beat in beats:
        start = int((beat + 0.2) * sfreq)
        bcg[:, start : start + len(shape)] += np.outer(rng.uniform(50e-6, 100e-6, 4), shape)
    eeg = mne.filter.filter_data(rng.normal(0, 10e-6, (4, n)), sfreq, 1.0, 30.0, verbose="error")

    ours = pca_obs(eeg + bcg, beats, sfreq, n_components=1)
    view = mne.io.RawArray(eeg + bcg, mne.create_info(4, sfreq, "eeg"), verbose="error")
    theirs = mne.preprocessing.apply_pca_obs(view, picks="eeg", qrs_times=beats, n_components=1, verbose="error")
    inner = slice(int(2 * sfreq), int((seconds - 2) * sfreq))
    left = []
    for cleaned in (ours, theirs.get_data()):
        residual = cleaned[:, inner] - cleaned[:, inner].mean(axis=1, keepdims=True) - eeg[:, inner]
        left.append(np.mean(residual**2) / np.mean(eeg[:, inner] ** 2))
    assert np.mean(bcg[:, inner] ** 2) > 10 * np.mean(eeg[:, inner] ** 2)  # the BCG dominated
    assert left[0] < 0.3 and left[0] < left[1], left  # ours: a residual under a third of the EEG's power
    before = pulse_locked_power(eeg + bcg, sfreq, beats).power
    assert pulse_locked_power(ours, sfreq, beats).power < 0.01 * before


# ----------------------------------------------------------------------------------------------
# The simulator


def test_scanner_artifacts_leave_the_clean_ground_truth_byte_identical(consortia):
    raw, clean = consortia
    for site in ("site-01", "site-02"):
        truth = raw / site / "derivatives" / "ground_truth"
        # the clean EEG, kept under the ground truth, is the EEG a run without artefacts writes
        clean_eeg = sorted((clean / site / "sub-01" / "eeg").glob("sub-01_task-*"))
        assert len(clean_eeg) >= 4
        for path in clean_eeg:
            assert (truth / "sub-01" / "eeg" / path.name).read_bytes() == path.read_bytes(), path.name
        # every ground-truth file of the run without artefacts is there, the same bytes
        for path in (clean / site / "derivatives").rglob("*"):
            if path.is_file():
                twin = raw / site / path.relative_to(clean / site)
                assert twin.read_bytes() == path.read_bytes(), path
    assert "scanner_artifacts" not in json.loads((clean / "simulation.json").read_text())
    assert json.loads((raw / "simulation.json").read_text())["scanner_artifacts"] is True


def test_simulated_artifacts_are_those_of_a_scanner(consortia):
    raw_root, _ = consortia
    run, raw = _prepared(raw_root / "site-02")
    assert "ECG" in raw.ch_names and raw.get_channel_types(picks=["ECG"]) == ["ecg"]
    assert "Response/R128" in set(raw.annotations.description)
    triggers = volume_triggers(raw)
    assert len(triggers) == 28 and set(np.diff(triggers)) == {525}  # TR 2.1 s at 250 Hz
    eeg = raw.get_data(picks="eeg")
    peaks = np.abs(eeg).max(axis=1)
    assert 100e-6 < np.median(peaks) < 10e-3  # hundreds to thousands of uV
    lines = line_power(eeg, raw.info["sfreq"])
    assert lines.fraction > 0.8
    slice_hz = 30 / (2.1 - 0.1)
    assert min(abs(lines.strongest_hz / slice_hz - k) for k in range(1, 9)) < 0.02  # a slice-frequency harmonic
    onsets = _truth_events(raw_root / "site-02").query("trial_type == 'volume'").onset.to_numpy()
    jitter = onsets - 2.1 * np.arange(len(onsets))
    assert 0 < np.abs(jitter).max() < 1e-4  # small timing jitter
    # seeded: the same stream draws the same artefacts, another one others
    positions = np.random.default_rng(0).normal(0, 80, (4, 3))
    same = [simulate_scanner_artifacts(np.random.default_rng(5), positions, 250.0, 5000, 2.0, 9) for _ in range(2)]
    other = simulate_scanner_artifacts(np.random.default_rng(6), positions, 250.0, 5000, 2.0, 9)
    assert np.array_equal(same[0].gradient, same[1].gradient) and np.array_equal(same[0].bcg, same[1].bcg)
    assert not np.allclose(same[0].gradient, other.gradient)
    bcg_peak = np.abs(same[0].bcg).max(axis=1)
    assert np.all((10e-6 < bcg_peak) & (bcg_peak < 500e-6))  # tens to hundreds of uV, per channel
    assert len(set(np.round(bcg_peak, 9))) == 4


# ----------------------------------------------------------------------------------------------
# Cleaning


@pytest.mark.parametrize("site", ["site-01", "site-02"])
def test_r_peaks_within_20_ms_of_the_true_beats(consortia, site):
    raw_root, _ = consortia
    _, raw = _prepared(raw_root / site)
    raw.apply_function(
        average_artifact_subtraction, picks=["eeg", "ecg"], channel_wise=False, triggers=volume_triggers(raw)
    )
    true = _truth_events(raw_root / site).query("trial_type == 'R-peak'").onset.to_numpy()
    found, source = find_r_peaks(raw)
    assert source == "ECG"
    inner = true[(true > 1.0) & (true < 59.0)]
    error = np.abs(inner[:, None] - found[None, :]).min(axis=1)
    assert error.max() < 0.020, error.max()
    assert len(found) <= len(true) + 1  # no extra beats
    # without an ECG channel, from the EEG: BCG peaks, at the same delay after (nearly) every R-peak
    raw.drop_channels(["ECG"])
    found, source = find_r_peaks(raw)
    assert source == "EEG"
    delay = found[:, None] - true[None, :]
    delay = delay[np.arange(len(found)), np.abs(delay).argmin(axis=1)]
    steady = np.abs(delay - np.median(delay)) < 0.020
    assert 0.15 < np.median(delay) < 0.5 and steady.sum() >= 0.9 * len(true), (np.median(delay), steady.sum())


def test_cleaning_recovers_the_clean_eeg(consortia):
    raw_root, clean_root = consortia
    site = "site-02"
    run = find_runs(raw_root / site)[0]
    cleaned, _ = read_eeg(run.eeg, FAST, files=run)
    reference, _ = read_eeg(find_runs(clean_root / site)[0].eeg, FAST)
    untouched, _ = read_eeg(
        run.eeg, FAST.model_copy(update={"gradient_artifact": "off", "bcg_artifact": "off"}), files=run
    )
    assert cleaned.names == reference.names and "ECG" not in cleaned.names
    assert cleaned.duration == pytest.approx(28 * 2.1)  # cropped to the 28 volumes (60 s of EEG)
    r_clean, r_raw = _mean_r(cleaned.data, reference.data), _mean_r(untouched.data, reference.data)
    assert r_clean > 0.75 and r_raw < 0.2, (r_clean, r_raw)


def _mean_r(data: np.ndarray, reference: np.ndarray, edge: int = 200) -> float:
    """Mean correlation over channels, the first ``n - edge`` samples of the shorter: the last
    volume's epoch keeps a spike where the other epochs' templates hold the next volume's onset
    (the simulator's pulses start a few samples before their trigger), ringing in the filters
    at the end of a run cropped there."""
    n = min(data.shape[1], reference.shape[1]) - edge
    return float(np.mean([np.corrcoef(a[:n], b[:n])[0, 1] for a, b in zip(data, reference)]))


def test_eeg_recorded_around_the_volumes_is_cleaned_and_cropped_to_them(consortia, lead_in):
    """EEG from 5 s before the first volume to 3 s after the run, triggers 525 and 526 samples
    apart in turn (TR 2.1 s at 250 Hz, half a sample more per volume): cleaned as well as the
    synchronised run without a lead-in, and cropped to the volumes (t = 0 at the first trigger:
    the fMRI's first volume), so it pairs with the fMRI as the clean twin does."""
    from fedneurogen.shared.data import load_site

    raw_root, clean_root = consortia
    site = "site-02"
    run, raw = _prepared(lead_in / site)
    sfreq, n_file = raw.info["sfreq"], raw.n_times
    triggers = volume_triggers(raw)
    assert triggers[0] == round(LEAD_IN_S * sfreq) and set(np.diff(triggers)) == {525, 526}
    assert np.all(np.diff(np.diff(triggers)) != 0)  # alternating
    result = clean_scanner_artifacts(raw, FAST, run)
    first, stop = result.span
    assert result.gradient and result.bcg and first == triggers[0] and result.time_zero == first / sfreq
    assert stop == round(first + 0.25 + 525.5 * len(triggers))  # when a 29th volume would start
    assert raw.n_times == stop - first < n_file - (LEAD_OUT_S + LEAD_IN_S) * sfreq  # the volumes only
    # the EEG's _events.tsv counts from the EEG file's first sample (BIDS): moved back to the first volume,
    # it is the fMRI's (func/, from the first volume); the target's events stay as they are
    eeg_events = read_events(run.events, run.task)
    func_events = run.eeg.parents[1] / "func" / run.events.name
    assert run.events.parent == run.eeg.parent and func_events.is_file()
    moved = events_from_first_volume(eeg_events, result, run.events, run.eeg)
    np.testing.assert_allclose(moved.onset, read_events(func_events, run.task).onset, rtol=0, atol=1e-9)
    assert events_from_first_volume(eeg_events, result, func_events, run.eeg) is eeg_events
    reference, _ = read_eeg(find_runs(clean_root / site)[0].eeg, FAST)
    cleaned, _ = read_eeg(run.eeg, FAST, files=run)
    synced_run = find_runs(raw_root / site)[0]
    synced, _ = read_eeg(synced_run.eeg, FAST, files=synced_run)
    assert cleaned.duration == pytest.approx((stop - first) / sfreq, abs=0.01)
    r_lead, r_synced = _mean_r(cleaned.data, reference.data), _mean_r(synced.data, reference.data)
    assert r_lead > 0.75 and r_lead > r_synced - 0.02, (r_lead, r_synced)
    # one template for both phases (as before) leaves more of the artefact
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scanner_module, "PHASE_GAP", 1.0)
        one_group, _ = read_eeg(run.eeg, FAST, files=run)
    assert _mean_r(one_group.data, reference.data) < r_lead
    # paired with the fMRI by time from the first volume: the clean twin's windows
    windows = load_site(lead_in / site, FAST, use_cache=False, progress=False)
    twin = load_site(clean_root / site, FAST, use_cache=False, progress=False)
    assert len(windows) == len(twin) > 0
    assert np.array_equal(np.asarray(windows.target[0]), np.asarray(twin.target[0]))
    r_windows = [np.corrcoef(np.ravel(windows.eeg[i]), np.ravel(twin.eeg[i]))[0, 1] for i in range(len(twin))]
    assert np.median(r_windows) > 0.75, np.median(r_windows)


def test_a_raw_run_without_triggers_is_refused_by_name(consortia, tmp_path):
    raw_root, clean_root = consortia
    site = _copy_site(raw_root / "site-02", tmp_path / "site-02")
    (marker,) = site.glob("sub-01/eeg/*.vmrk")
    marker.write_text("\n".join(line for line in marker.read_text().splitlines() if "R128" not in line) + "\n")
    run = find_runs(site)[0]
    with pytest.raises(DataError) as err:
        read_eeg(run.eeg, FAST, files=run)
    assert err.value.path == run.eeg
    assert "raw in-scanner" in err.value.problem and "0 volume trigger" in err.value.problem
    assert "R128" in err.value.problem and "ScannerArtifactsRemoved" in err.value.problem  # what to do
    report = validate_dataset(site)
    (error,) = [p for p in report.errors if p.path == run.eeg]  # (and the site's "no usable run")
    assert "raw in-scanner" in error.message and report.summary["skipped_runs"] == [run.key]
    # gradient_artifact=on says the same without looking at the spectrum, even for clean EEG
    clean_run = find_runs(clean_root / "site-02")[0]
    with pytest.raises(DataError, match="gradient_artifact=on but it has 0 volume trigger"):
        read_eeg(clean_run.eeg, FAST.model_copy(update={"gradient_artifact": "on"}), files=clean_run)


def test_data_flagged_as_cleaned_is_left_alone(consortia, tmp_path):
    raw_root, _ = consortia
    site = _copy_site(raw_root / "site-02", tmp_path / "site-02")
    (sidecar,) = site.glob("sub-01/eeg/*_eeg.json")
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "ScannerArtifactsRemoved": True}))
    run, raw = _prepared(site)
    before = raw.get_data()
    result = clean_scanner_artifacts(raw, FAST, run)
    assert not result.gradient and not result.bcg and result.already_removed == ["gradient", "bcg"]
    assert len(result.triggers) == 28  # the triggers are there: only the flag stops the cleaning
    assert result.span == (0, 28 * 525)  # and the run is the volumes (the fMRI's time), not cleaned
    assert np.array_equal(raw.get_data(), before[:, : 28 * 525])
    # the config switch does the same; without either, the run is cleaned
    _, raw = _prepared(raw_root / "site-02")
    off = FAST.model_copy(update={"gradient_artifact": "off", "bcg_artifact": "off"})
    assert not clean_scanner_artifacts(raw, off).gradient and np.array_equal(raw.get_data(), before)
    assert clean_scanner_artifacts(raw, FAST, find_runs(raw_root / "site-02")[0]).gradient
    assert not np.array_equal(raw.get_data(), before)
    # validate says what the sidecar claims and that the data does not look it
    report = validate_dataset(site)
    assert report.summary["scanner"][run.key]["already_removed"] == ["gradient", "bcg"]
    assert any("narrow spectral lines" in p.message for p in report.warnings)


def test_validate_tells_raw_from_clean(consortia):
    raw_root, clean_root = consortia
    raw_report = validate_dataset(raw_root / "site-01")
    clean_report = validate_dataset(clean_root / "site-01")
    assert raw_report.ok and clean_report.ok
    (raw_run,) = raw_report.summary["scanner"].values()
    (clean_run,) = clean_report.summary["scanner"].values()
    assert raw_run["volume_triggers"] == 30 and raw_run["gradient_removed"] and raw_run["bcg_removed"]
    assert raw_run["line_power"] > 0.8 and clean_run["line_power"] < 0.05 and not clean_run["gradient_removed"]
    assert raw_run["gradient_removed_db"] >= 30 and raw_run["bcg_removed_db"] >= 10
    assert raw_run["pulse_locked"] > 10 * raw_run["pulse_locked_after"]
    text = str(raw_report)
    assert "raw in-scanner, 30 volume triggers" in text and "dB of line power removed" in text
    assert "no volume triggers; clean EEG" in str(clean_report)


def test_default_config_keeps_the_cache_keys():
    default = PreprocessConfig()
    assert default.cache_key() == PreprocessConfig(gradient_artifact="auto", bcg_artifact="auto").cache_key()
    assert default.cache_key() != PreprocessConfig(gradient_artifact="off").cache_key()
    assert default.cache_key() != PreprocessConfig(bcg_components=default.bcg_components + 1).cache_key()
    assert PreprocessConfig.from_overrides("bcg_artifact=off;gradient_artifact=on").gradient_artifact == "on"


def test_simulate_command_takes_the_option(tmp_path):
    from typer.testing import CliRunner

    from fedneurogen.cli import app

    out = tmp_path / "sim"
    args = ["simulate", "--out", str(out), "--sites", "1", "--subjects-per-site", "1", "--run-seconds", "60"]
    result = CliRunner().invoke(app, [*args, "--scanner-artifacts"])
    assert result.exit_code == 0, result.output
    sidecar = json.loads((out / "site-01" / "sub-01" / "eeg" / "sub-01_task-visual_run-1_eeg.json").read_text())
    assert sidecar["ECGChannelCount"] == 1 and sidecar["ScannerArtifactsRemoved"] is False
    assert (
        out / "site-01" / "derivatives" / "ground_truth" / "sub-01" / "eeg" / "sub-01_task-visual_run-1_eeg.edf"
    ).is_file()


def test_scanner_sites_pass_the_bids_validator(consortia, lead_in):
    """Both formats (EDF site-01, BrainVision site-02), their derivatives, and a run recorded
    around its volumes: no error from bids-validator-deno (the validator test's helpers)."""
    from test_bids_validator import _validate, _validator

    validator = _validator()
    raw_root, _ = consortia
    for site in (raw_root / "site-01", raw_root / "site-02", lead_in / "site-02"):
        for dataset in [site, *sorted(p for p in (site / "derivatives").iterdir() if p.is_dir())]:
            issues = _validate(validator, dataset)["issues"]["issues"]
            errors = [
                f"{i['code']} {i.get('subCode') or ''} {i.get('location', '')}"
                for i in issues
                if i["severity"] == "error"
            ]
            assert not errors, f"{dataset}: {errors}"
            if site.parent == lead_in:  # written by write_in_scanner_eeg: the scanner's events in order, described
                codes = {(i["code"], i.get("location", "").rsplit("/", 1)[-1]) for i in issues}
                assert not any(code == "EVENT_ONSET_ORDER" for code, _ in codes), dataset
                assert ("SIDECAR_KEY_RECOMMENDED", "sub-01_task-visual_run-1_desc-scanner_events.tsv") not in codes
