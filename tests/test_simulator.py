"""The paired-data simulator: files read back with independent readers, physics, determinism."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import mne
import nibabel as nib
import numpy as np
import pytest
from nilearn.surface import load_surf_data
from scipy import signal

from fedneurogen.shared.errors import ConfigError
from fedneurogen.simulations import bids_writer as bw
from fedneurogen.simulations.geometry import eeg_lead_field, load_cortex, motor_probe, standard_positions
from fedneurogen.simulations.hemodynamics import WAVELENGTHS, hb_to_optical_density
from fedneurogen.simulations.latent import MOTOR_CLASSES, VISUAL_CLASSES
from fedneurogen.simulations.physiology import draw_physiology, hrf, hrf_peak_time
from fedneurogen.simulations.scenarios import CAP_64, make_participants, make_site_specs
from fedneurogen.simulations.ownership import claim
from fedneurogen.simulations.simulator import SITE_NAME, _prepare_site, _remove_stale_sites, simulate_dataset

RUN_SECONDS = 200.0
POSTERIOR = ["O1", "Oz", "O2", "PO7", "PO8", "POz", "PO3", "PO4"]


@pytest.fixture(scope="module")
def fmri_data(tmp_path_factory) -> Path:
    """Two EEG-fMRI sites (EDF 64 ch / BrainVision 32 ch), three subjects each, 200 s runs."""
    out = tmp_path_factory.mktemp("sim_fmri")
    simulate_dataset(
        out, n_sites=2, subjects_per_site=3, modality="fmri", seed=0, run_seconds=RUN_SECONDS, progress=False
    )
    return out


@pytest.fixture(scope="module")
def mixed_data(tmp_path_factory) -> Path:
    """One EEG-fMRI site and one EEG-fNIRS site, two subjects each."""
    out = tmp_path_factory.mktemp("sim_mixed")
    simulate_dataset(out, n_sites=2, subjects_per_site=2, modality="mixed", seed=1, run_seconds=150.0, progress=False)
    return out


def _summary(out: Path) -> dict:
    return json.loads((out / "simulation.json").read_text())


def _read_tsv(path: Path) -> tuple[list[str], list[list[str]]]:
    lines = path.read_text(encoding="utf-8").strip().split("\n")
    return lines[0].split("\t"), [line.split("\t") for line in lines[1:]]


def _bold(site: Path, sub: str, deriv: str) -> np.ndarray:
    func = site / "derivatives" / deriv / sub / "func"
    hemis = [
        load_surf_data(str(func / f"{sub}_task-visual_run-1_hemi-{h}_space-fsaverage5_bold.func.gii")) for h in "LR"
    ]
    return np.vstack(hemis).astype(np.float64)


# ----------------------------------------------------------------------------------------------
# Sites


def test_sites_differ_in_cap_rate_tr_format_noise_and_group_mix():
    specs = make_site_specs(3, "fmri", seed=0)
    assert {s.n_channels for s in specs} == {64, 32}
    assert {s.eeg_sfreq for s in specs} == {500.0, 250.0}
    assert {s.tr for s in specs} == {2.0, 2.1}
    assert {s.eeg_format for s in specs} == {"edf", "brainvision"}
    assert len({s.noise_level for s in specs}) == 3
    minority = [s for s in specs if s.minority_fraction < 0.2]
    assert minority, "one site must have a group under 20%"
    roster = make_participants(minority[0], 8, seed=0, site_index=specs.index(minority[0]))
    assert 0 < sum(p.group == "B" for p in roster) / 8 < 0.2

    assert [s.modality for s in make_site_specs(3, "mixed", 0)] == ["fmri", "fmri", "fnirs"]
    assert [s.modality for s in make_site_specs(2, "mixed", 0)] == ["fmri", "fnirs"]
    assert all(s.eeg_format == "brainvision" for s in make_site_specs(2, "fmri", 0)[1:])
    with pytest.raises(ConfigError):
        make_site_specs(1, "mixed", 0)


def test_bad_arguments_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="run_seconds"):
        simulate_dataset(tmp_path, n_sites=1, subjects_per_site=1, run_seconds=10, progress=False)
    with pytest.raises(ConfigError, match="subjects_per_site"):
        simulate_dataset(tmp_path, n_sites=1, subjects_per_site=0, progress=False)


def test_leftovers_of_an_earlier_larger_simulation_are_removed(tmp_path):
    spec = make_site_specs(1, "fmri", 0)[0]
    site = tmp_path / spec.site_id
    (site / "sub-05" / "eeg").mkdir(parents=True)
    (site / "derivatives" / "fmriprep" / "sub-05").mkdir(parents=True)
    claim(site)  # made by an earlier simulation
    _prepare_site(site, spec, make_participants(spec, 2, 0, 0))
    assert not (site / "sub-05").exists()
    assert not (site / "derivatives" / "fmriprep" / "sub-05").exists()
    header, rows = _read_tsv(site / "participants.tsv")
    assert [r[0] for r in rows] == ["sub-01", "sub-02"]

    ours, theirs = tmp_path / "site-09", tmp_path / "site-10"
    claim(ours)
    theirs.mkdir()  # the simulator's name in its description does not make it the simulator's
    (theirs / "dataset_description.json").write_text(json.dumps({"Name": f"{SITE_NAME} 10"}))
    _remove_stale_sites(tmp_path, {"site-01"})
    assert not ours.exists() and theirs.exists() and site.exists()


# ----------------------------------------------------------------------------------------------
# Files, read back with independent readers


def test_layout_participants_and_summary(fmri_data):
    summary = _summary(fmri_data)
    assert [s["site_id"] for s in summary["sites"]] == ["site-01", "site-02"]
    for site_summary in summary["sites"]:
        site = fmri_data / site_summary["site_id"]
        desc = json.loads((site / "dataset_description.json").read_text())
        assert desc["Name"].startswith(SITE_NAME) and desc["BIDSVersion"]
        header, rows = _read_tsv(site / "participants.tsv")
        assert header == ["participant_id", "sex", "age", "group"]
        assert [r[0] for r in rows] == ["sub-01", "sub-02", "sub-03"]
        assert {r[1] for r in rows} <= {"F", "M"} and {r[3] for r in rows} <= {"A", "B"}
        assert all(18 <= int(r[2]) <= 90 for r in rows)
        assert sorted(p.name for p in site.glob("sub-*")) == ["sub-01", "sub-02", "sub-03"]
        assert 0.4 < site_summary["noise_ceiling"] < 0.9
        for sub in site_summary["subjects"]:
            assert 4.0 <= sub["physiology"]["hrf_peak_s"] <= 7.0
            assert 0.3 < sub["noise_ceiling"] < 0.95


def test_edf_eeg_reads_back_with_its_sidecars(fmri_data):
    eeg_dir = fmri_data / "site-01" / "sub-01" / "eeg"
    raw = mne.io.read_raw_edf(eeg_dir / "sub-01_task-visual_run-1_eeg.edf", preload=True, verbose="error")
    assert raw.ch_names == list(CAP_64)
    assert raw.info["sfreq"] == 500.0
    assert raw.n_times == int(RUN_SECONDS * 500)
    rms_uv = raw.get_data().std(axis=1) * 1e6
    assert np.all((rms_uv > 5) & (rms_uv < 100)), rms_uv
    sidecar = json.loads((eeg_dir / "sub-01_task-visual_run-1_eeg.json").read_text())
    assert sidecar["SamplingFrequency"] == 500.0 and sidecar["PowerLineFrequency"] == 50.0
    header, rows = _read_tsv(eeg_dir / "sub-01_task-visual_run-1_channels.tsv")
    assert header == ["name", "type", "units", "status"]
    assert [r[0] for r in rows] == raw.ch_names
    _, events = _read_tsv(eeg_dir / "sub-01_task-visual_run-1_events.tsv")
    assert list(raw.annotations.description) == [e[2] for e in events]
    np.testing.assert_allclose(raw.annotations.onset, [float(e[0]) for e in events], atol=1e-3)
    assert not list(eeg_dir.glob("*electrodes.tsv")), "standard 10-05 caps need no electrodes file"


def test_brainvision_eeg_and_custom_electrodes(fmri_data):
    eeg_dir = fmri_data / "site-02" / "sub-02" / "eeg"
    raw = mne.io.read_raw_brainvision(eeg_dir / "sub-02_task-visual_run-1_eeg.vhdr", preload=True, verbose="error")
    assert len(raw.ch_names) == 32 and raw.info["sfreq"] == 250.0
    assert {"E1", "E2", "E3", "E4"} <= set(raw.ch_names)
    assert raw.n_times == int(RUN_SECONDS * 250)
    _, events = _read_tsv(eeg_dir / "sub-02_task-visual_run-1_events.tsv")
    assert [d.split("/")[-1] for d in raw.annotations.description] == [e[2] for e in events]

    header, rows = _read_tsv(eeg_dir / "sub-02_electrodes.tsv")
    assert header == ["name", "x", "y", "z"] and [r[0] for r in rows] == raw.ch_names
    pos = {r[0]: np.array([float(v) for v in r[1:]]) for r in rows}
    coords = json.loads((eeg_dir / "sub-02_coordsystem.json").read_text())
    assert coords["EEGCoordinateUnits"] == "mm"
    standard = standard_positions(["Cz", "Oz", "T7", "T8", "Fpz", "TP9", "PO9", "TP10", "PO10"])
    centre = standard.mean(axis=0)
    for name in ("E1", "E2", "E3", "E4"):
        # on the scalp, but not at any standard 10-05 position
        assert 60 < np.linalg.norm(pos[name] - centre) < 130
        assert np.min(np.linalg.norm(standard - pos[name], axis=1)) > 5
    np.testing.assert_allclose(pos["Cz"], standard_positions(["Cz"])[0], atol=0.01)


def test_fmri_gifti_on_fsaverage5_with_tr_and_ground_truth(fmri_data):
    for site_id, tr in (("site-01", 2.0), ("site-02", 2.1)):
        site = fmri_data / site_id
        func = site / "derivatives" / "fmriprep" / "sub-01" / "func"
        sidecar = json.loads((func / "sub-01_task-visual_run-1_space-fsaverage5_bold.json").read_text())
        assert sidecar["RepetitionTime"] == tr
        n_tr = int(np.floor(RUN_SECONDS / tr + 1e-9))
        img = nib.load(func / "sub-01_task-visual_run-1_hemi-L_space-fsaverage5_bold.func.gii")
        assert len(img.darrays) == n_tr and img.darrays[0].data.shape == (10242,)
        noisy, clean = _bold(site, "sub-01", "fmriprep"), _bold(site, "sub-01", "ground_truth")
        assert noisy.shape == clean.shape == (20484, n_tr)
        assert np.all(np.isfinite(noisy)) and 300 < noisy.mean() < 1500  # scanner units
        assert not np.allclose(noisy, clean)


def test_events_are_balanced_blocks_shared_by_eeg_and_fmri(fmri_data):
    for sub in ("sub-01", "sub-02", "sub-03"):
        eeg_events = (fmri_data / "site-01" / sub / "eeg" / f"{sub}_task-visual_run-1_events.tsv").read_text()
        func_events = (fmri_data / "site-01" / sub / "func" / f"{sub}_task-visual_run-1_events.tsv").read_text()
        assert eeg_events == func_events
        header, rows = _read_tsv(fmri_data / "site-01" / sub / "func" / f"{sub}_task-visual_run-1_events.tsv")
        assert header == ["onset", "duration", "trial_type"]
        types = [r[2] for r in rows]
        assert set(types) <= set(VISUAL_CLASSES) and len(set(types)) >= 3
        counts = [types.count(c) for c in VISUAL_CLASSES]
        assert max(counts) - min(counts) <= 1
        onsets, durations = np.array([float(r[0]) for r in rows]), np.array([float(r[1]) for r in rows])
        assert np.all((durations >= 16) & (durations <= 20))
        assert np.all(onsets[1:] >= onsets[:-1] + durations[:-1] + 8 - 1e-6)  # rest between blocks
        assert onsets[-1] + durations[-1] <= RUN_SECONDS


# ----------------------------------------------------------------------------------------------
# Physics


def test_noise_ceiling_is_well_below_one(fmri_data):
    """At the voxels that respond most, noisy BOLD follows the noise-free BOLD, but not perfectly."""
    site = fmri_data / "site-01"
    for sub in ("sub-01", "sub-02"):
        noisy, clean = _bold(site, sub, "fmriprep"), _bold(site, sub, "ground_truth")
        top = np.argsort(clean.std(axis=1) / clean.mean(axis=1))[-300:]
        a = noisy[top] - noisy[top].mean(axis=1, keepdims=True)
        b = clean[top] - clean[top].mean(axis=1, keepdims=True)
        r = np.sum(a * b, axis=1) / np.sqrt(np.sum(a * a, axis=1) * np.sum(b * b, axis=1))
        assert 0.4 < np.tanh(np.mean(np.arctanh(r))) < 0.9


def _band_power_vs_bold(site: Path, sub: str, band: tuple[float, float], lags_s: tuple[float, ...]) -> list[float]:
    """Correlation of posterior EEG band power (log, per TR) with task-network BOLD ``lag`` later."""
    raw = mne.io.read_raw_edf(site / sub / "eeg" / f"{sub}_task-visual_run-1_eeg.edf", preload=True, verbose="error")
    raw.pick(POSTERIOR).filter(*band, verbose="error")
    power = (np.abs(signal.hilbert(raw.get_data(), axis=1)) ** 2).mean(axis=0)
    noisy, clean = _bold(site, sub, "fmriprep"), _bold(site, sub, "ground_truth")
    top = np.argsort(clean.std(axis=1) / clean.mean(axis=1))[-300:]  # the task networks
    bold = (noisy[top] / noisy[top].mean(axis=1, keepdims=True)).mean(axis=0)
    per_tr = int(2.0 * raw.info["sfreq"])
    n_tr = len(bold)
    power_tr = np.log(power[: n_tr * per_tr].reshape(n_tr, per_tr).mean(axis=1))
    out = []
    for lag_s in lags_s:
        k = int(round(lag_s / 2.0))
        out.append(float(np.corrcoef(power_tr[: n_tr - k], bold[k:])[0, 1]))
    return out


def test_eeg_alpha_falls_and_gamma_rises_with_bold_six_seconds_later(fmri_data):
    """Alpha power anticorrelates (gamma correlates) with BOLD of the task networks, and most
    strongly when BOLD is taken one haemodynamic delay (6 s) after the EEG."""
    site = fmri_data / "site-01"  # TR 2.0: a 6 s lag is exactly 3 volumes
    alpha = np.array([_band_power_vs_bold(site, s, (8.0, 12.0), (0.0, 6.0)) for s in ("sub-01", "sub-02", "sub-03")])
    gamma = np.array([_band_power_vs_bold(site, s, (30.0, 45.0), (0.0, 6.0)) for s in ("sub-01", "sub-02", "sub-03")])
    alpha_at0, alpha_at6 = alpha.mean(axis=0)
    gamma_at0, gamma_at6 = gamma.mean(axis=0)
    assert alpha_at6 < -0.35, alpha
    assert alpha_at6 < alpha_at0 - 0.15, alpha
    assert gamma_at6 > 0.25, gamma
    assert gamma_at6 > gamma_at0 + 0.1, gamma


def test_hrf_peaks_between_4_and_7_seconds_and_groups_shift_physiology():
    assert 4.5 <= hrf_peak_time(1.0) <= 5.5  # the canonical Glover HRF
    for scale in (0.85, 1.0, 1.3):  # the range subject physiology is clipped to
        assert 4.0 <= hrf_peak_time(scale) <= 7.0
    kernel = hrf(20.0)
    assert np.isclose(kernel.sum(), 1.0) and kernel.min() < 0  # unit gain, with an undershoot

    rng = np.random.default_rng(0)
    a = [draw_physiology(rng, "A", "F", 35) for _ in range(200)]
    b = [draw_physiology(rng, "B", "F", 35) for _ in range(200)]
    assert np.mean([p.alpha_peak_hz for p in a]) - np.mean([p.alpha_peak_hz for p in b]) > 0.5
    assert np.mean([p.hrf_peak_s for p in b]) > np.mean([p.hrf_peak_s for p in a]) + 0.3
    assert np.mean([p.bold_amplitude for p in b]) < np.mean([p.bold_amplitude for p in a])
    assert all(4.0 <= p.hrf_peak_s <= 7.0 for p in a + b)


def test_lead_field_is_a_volume_conductor_not_random_weights():
    """Each dipole's topography is the smooth field of a dipole: close to the analytic
    infinite-medium dipole pattern, peaking at the electrodes nearest a radial source."""
    cortex = load_cortex()
    names = tuple(CAP_64)
    pos = standard_positions(names)
    gain = eeg_lead_field(names, pos)
    assert gain.shape == (64, len(cortex.source_vertices))
    rr, nn = cortex.mid[cortex.source_vertices], cortex.normals[cortex.source_vertices]

    r = []
    for s in range(0, gain.shape[1], 5):
        d = pos - rr[s]
        analytic = d @ nn[s] / np.linalg.norm(d, axis=1) ** 3
        r.append(np.corrcoef(gain[:, s] - gain[:, s].mean(), analytic - analytic.mean())[0, 1])
    assert np.median(r) > 0.8

    # The most radial superficial dipole under C3: largest gain within ~4 cm, falling with distance.
    c3 = pos[names.index("C3")]
    near = np.flatnonzero(np.linalg.norm(rr - c3, axis=1) < 40)
    radial = (rr[near] - rr.mean(axis=0)) / np.linalg.norm(rr[near] - rr.mean(axis=0), axis=1, keepdims=True)
    s = near[np.argmax(np.sum(radial * nn[near], axis=1))]
    dist = np.linalg.norm(pos - rr[s], axis=1)
    assert dist[np.argmax(gain[:, s])] < dist.min() + 40
    rho = np.corrcoef(np.argsort(np.argsort(dist)), np.argsort(np.argsort(gain[:, s])))[0, 1]
    assert rho < -0.5


# ----------------------------------------------------------------------------------------------
# fNIRS


def test_beer_lambert_inverse_roundtrips_through_snirf_and_mne(tmp_path):
    """HbO/HbR -> intensity (written as SNIRF) -> MNE optical density -> MNE Beer-Lambert gives
    the same HbO/HbR back."""
    probe = motor_probe()
    n = 300
    t = np.arange(n) / 10.0
    rng = np.random.default_rng(0)
    hbo = 0.5 * np.sin(2 * np.pi * 0.05 * t + rng.uniform(0, 6, size=(probe.n_channels, 1)))
    hbr = -0.3 * hbo + 0.05 * np.cos(2 * np.pi * 0.03 * t)
    od = hb_to_optical_density(hbo, hbr, probe.distances)
    intensity = rng.uniform(0.5, 2.0, size=(probe.n_channels, 2, 1)) * np.exp(-od)
    path = tmp_path / "roundtrip_nirs.snirf"
    bw.write_snirf(
        path, intensity.reshape(-1, n).T, 10.0,
        measurements=[dict(source=s + 1, detector=d + 1, wavelength=w + 1) for s, d in probe.pairs for w in range(2)],
        wavelengths=WAVELENGTHS, source_pos_mm=probe.source_pos, detector_pos_mm=probe.detector_pos,
        source_labels=[f"S{i + 1}" for i in range(len(probe.source_pos))],
        detector_labels=[f"D{i + 1}" for i in range(len(probe.detector_pos))], events=[], subject_id="sub-01",
    )  # fmt: skip
    raw = mne.io.read_raw_snirf(path, preload=True, verbose="error")
    hb = mne.preprocessing.nirs.beer_lambert_law(mne.preprocessing.nirs.optical_density(raw), ppf=6.0)
    # MNE references optical density to the mean intensity, so compare changes about the mean.
    centred = lambda x: x - x.mean(axis=1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(centred(hb.get_data(picks="hbo") * 1e6), centred(hbo), atol=1e-4)
    np.testing.assert_allclose(centred(hb.get_data(picks="hbr") * 1e6), centred(hbr), atol=1e-4)


def test_fnirs_site_snirf_reads_back_and_tracks_ground_truth(mixed_data):
    summary = _summary(mixed_data)
    assert [s["modality"] for s in summary["sites"]] == ["fmri", "fnirs"]
    site = mixed_data / "site-02"
    assert 0.4 < summary["sites"][1]["noise_ceiling"] < 0.9
    correlations = []
    for sub in ("sub-01", "sub-02"):
        nirs_dir = site / sub / "nirs"
        raw = mne.io.read_raw_snirf(nirs_dir / f"{sub}_task-motor_run-1_nirs.snirf", preload=True, verbose="error")
        assert raw.info["sfreq"] == 10.0 and len(raw.ch_names) == 48  # 16 long + 8 short channels, 2 wavelengths
        assert set(raw.get_channel_types()) == {"fnirs_cw_amplitude"}
        dist_mm = mne.preprocessing.nirs.source_detector_distances(raw.info) * 1000
        assert np.all((dist_mm[:32] > 25) & (dist_mm[:32] < 45))
        np.testing.assert_allclose(dist_mm[32:], 8.0, atol=0.05)  # short-separation channels, listed last
        raw.pick(range(32))  # the long channels, those of the ground truth
        mid = np.array([ch["loc"][:3] for ch in raw.info["chs"]]) * 1000
        assert np.all(np.abs(mid[:, 0]) > 20) and np.all(mid[:, 2] > 40)  # over the motor strips
        assert set(raw.annotations.description) == set(MOTOR_CLASSES)
        _, rows = _read_tsv(nirs_dir / f"{sub}_task-motor_run-1_events.tsv")
        assert {r[2] for r in rows} == set(MOTOR_CLASSES)
        header, _ = _read_tsv(nirs_dir / f"{sub}_optodes.tsv")
        assert header == ["name", "type", "x", "y", "z"]

        hb = mne.preprocessing.nirs.beer_lambert_law(mne.preprocessing.nirs.optical_density(raw), ppf=6.0)
        truth = mne.io.read_raw_snirf(
            site / "derivatives" / "ground_truth" / sub / "nirs" / f"{sub}_task-motor_run-1_nirs.snirf",
            preload=True, verbose="error",
        )  # fmt: skip
        true_hbo, true_hbr = truth.get_data(picks="hbo"), truth.get_data(picks="hbr")
        assert np.all(np.corrcoef(true_hbo.ravel(), true_hbr.ravel())[0, 1] < -0.8)
        ratio = true_hbr.std(axis=1) / true_hbo.std(axis=1)
        assert np.all((ratio > 0.2) & (ratio < 0.45))
        sos = signal.butter(6, [0.01, 0.1], btype="bandpass", fs=10.0, output="sos")
        measured = signal.sosfiltfilt(sos, hb.get_data(picks="hbo"), axis=1)
        expected = signal.sosfiltfilt(sos, true_hbo, axis=1)
        best = np.argsort(expected.std(axis=1))[-4:]  # channels over the active hand area
        correlations += [np.corrcoef(measured[c], expected[c])[0, 1] for c in best]
    assert np.mean(correlations) > 0.35, correlations
    assert max(correlations) < 0.99  # noisy, not a copy


# ----------------------------------------------------------------------------------------------
# Determinism


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    kwargs = dict(n_sites=2, subjects_per_site=1, modality="mixed", run_seconds=60.0, progress=False)
    simulate_dataset(tmp_path / "a", seed=7, **kwargs)
    simulate_dataset(tmp_path / "b", seed=7, n_jobs=1, **kwargs)
    simulate_dataset(tmp_path / "c", seed=8, **kwargs)
    a, b, c = _hashes(tmp_path / "a"), _hashes(tmp_path / "b"), _hashes(tmp_path / "c")
    assert any(k.endswith(".edf") for k in a) and any(k.endswith(".eeg") for k in a)
    assert any(k.endswith(".snirf") for k in a) and any(k.endswith(".func.gii") for k in a)
    assert a == b  # EDF, BrainVision, GIFTI and SNIRF bytes included
    gii = "site-01/derivatives/fmriprep/sub-01/func/sub-01_task-visual_run-1_hemi-L_space-fsaverage5_bold.func.gii"
    assert a[gii] != c[gii]
    x = load_surf_data(str(tmp_path / "a" / gii)).astype(float)
    y = load_surf_data(str(tmp_path / "c" / gii)).astype(float)
    assert not np.allclose(x, y)


# ----------------------------------------------------------------------------------------------
# Physiologies: ``default`` and ``shifted`` (another HRF, EEG-BOLD coupling and noise)


@pytest.fixture(scope="module")
def physiology_pair(tmp_path_factory) -> dict[str, Path]:
    """The same seed simulated under both physiologies: one EEG-fMRI site, one subject, 120 s."""
    out = tmp_path_factory.mktemp("sim_physiology")
    for name in ("default", "shifted"):
        simulate_dataset(
            out / name, n_sites=1, subjects_per_site=1, modality="fmri", seed=3, run_seconds=120.0, progress=False,
            physiology=name,
        )  # fmt: skip
    return {name: out / name for name in ("default", "shifted")}


def test_shifted_physiology_changes_the_signals_not_the_design_and_is_recorded(physiology_pair):
    from fedneurogen.simulations.physiology import SHIFTED

    default, shifted = _hashes(physiology_pair["default"]), _hashes(physiology_pair["shifted"])
    assert default.keys() == shifted.keys()
    events = "site-01/sub-01/func/sub-01_task-visual_run-1_events.tsv"
    assert (
        default[events] == shifted[events]
        and default["site-01/participants.tsv"] == shifted["site-01/participants.tsv"]
    )
    changed = {k for k in default if default[k] != shifted[k]}
    for signal_file in (
        "site-01/sub-01/eeg/sub-01_task-visual_run-1_eeg.edf",
        "site-01/derivatives/fmriprep/sub-01/func/sub-01_task-visual_run-1_hemi-L_space-fsaverage5_bold.func.gii",
        "site-01/derivatives/ground_truth/sub-01/func/sub-01_task-visual_run-1_hemi-R_space-fsaverage5_bold.func.gii",
        "site-01/derivatives/ground_truth/sub-01/eeg/sub-01_task-visual_run-1_desc-expectedpower_timeseries.tsv.gz",
    ):
        assert signal_file in changed, signal_file

    summaries = {name: _summary(folder) for name, folder in physiology_pair.items()}
    assert summaries["default"]["physiology"] == "default" and summaries["shifted"]["physiology"] == "shifted"
    assert summaries["shifted"]["physiology_parameters"] == json.loads(json.dumps(SHIFTED.to_dict()))
    subject = {name: s["sites"][0]["subjects"][0]["physiology"] for name, s in summaries.items()}
    assert subject["shifted"]["hrf_peak_s"] > subject["default"]["hrf_peak_s"] + 0.8
    # Noisier BOLD (same draws, larger levels): the noise-free vs noisy residual grows, the ceiling falls.
    residual = {
        name: _bold(folder / "site-01", "sub-01", "fmriprep") - _bold(folder / "site-01", "sub-01", "ground_truth")
        for name, folder in physiology_pair.items()
    }
    assert residual["shifted"].std() > 1.15 * residual["default"].std()
    ceilings = {name: s["sites"][0]["noise_ceiling"] for name, s in summaries.items()}
    assert 0.2 < ceilings["shifted"] < ceilings["default"] < 1.0


def test_shifted_expected_power_follows_the_shifted_eeg(physiology_pair):
    """The EEG-informed ceiling's ground truth is computed with the physiology the EEG was made
    with: the occipital gamma power of the shifted EEG rises with the shifted expectation at a
    slope of ~1 (log-log), but ~2.3 against the default expectation (half the coupling)."""
    from fedneurogen.shared.data.ground_truth_eeg import read_expected_band_power
    from fedneurogen.shared.features import band_power_timecourse

    key = "sub-01_task-visual_run-1"
    raw = mne.io.read_raw(
        physiology_pair["shifted"] / "site-01" / "sub-01" / "eeg" / f"{key}_eeg.edf", preload=True, verbose="error"
    )
    measured = band_power_timecourse(raw.get_data(picks=["O1"]) * 1e6, raw.info["sfreq"], bands={"g": (35.0, 45.0)})
    measured = measured[0, 0]
    slopes = {}
    for name, folder in physiology_pair.items():
        rec = read_expected_band_power(folder / "site-01", key)
        expected = rec.data[rec.names.index("O1_gamma")].astype(np.float64)
        slopes[name] = np.cov(measured, expected)[0, 1] / np.var(expected, ddof=1)
        assert np.corrcoef(measured, expected)[0, 1] > 0.6
    assert 0.75 < slopes["shifted"] < 1.3, slopes
    assert slopes["default"] > 1.6, slopes


def test_shifted_hrf_peaks_later_with_a_shallower_undershoot():
    from fedneurogen.simulations.physiology import DEFAULT, SHIFTED

    assert hrf_peak_time(SHIFTED.hrf_latency, SHIFTED.hrf_undershoot_ratio) > hrf_peak_time() + 0.8
    default, shifted = hrf(20.0), hrf(20.0, SHIFTED.hrf_latency, undershoot_ratio=SHIFTED.hrf_undershoot_ratio)
    assert np.isclose(shifted.sum(), 1.0) and shifted.min() < 0
    assert shifted.min() / shifted.max() > 0.8 * default.min() / default.max()  # relative undershoot
    # The kernel built for another undershoot is nilearn's Glover HRF when given Glover's ratio.
    np.testing.assert_allclose(hrf(20.0, undershoot_ratio=DEFAULT.hrf_undershoot_ratio + 1e-12), default, atol=1e-9)

    draws = {}
    for p in (DEFAULT, SHIFTED):
        rng = np.random.default_rng(0)
        draws[p.name] = [draw_physiology(rng, g, "F", 35, p) for g in "AB" * 50]
    peaks = {name: np.mean([s.hrf_peak_s for s in subjects]) for name, subjects in draws.items()}
    assert peaks["shifted"] > peaks["default"] + 0.8
    assert [s.alpha_peak_hz for s in draws["default"]] == [s.alpha_peak_hz for s in draws["shifted"]]


def test_unknown_physiology_is_a_one_line_usage_error(tmp_path):
    from typer.testing import CliRunner

    from fedneurogen.cli import app

    result = CliRunner().invoke(app, ["simulate", "--out", str(tmp_path / "sim"), "--physiology", "warped"])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "physiology" in result.output and "shifted" in result.output
    assert not (tmp_path / "sim").exists()  # refused before anything is written
    with pytest.raises(ConfigError, match="physiology"):
        simulate_dataset(tmp_path / "api", n_sites=1, subjects_per_site=1, physiology="Shifted", progress=False)


# ----------------------------------------------------------------------------------------------
# Neurovascular coupling: ``linear`` (the default) and ``nonlinear`` (saturation, alpha gate)


@pytest.fixture(scope="module")
def coupling_pair(tmp_path_factory) -> dict[str, Path]:
    """The same seed under the default call and both couplings: one EEG-fMRI site, one subject, 60 s."""
    out = tmp_path_factory.mktemp("sim_coupling")
    kwargs = dict(n_sites=1, subjects_per_site=1, modality="fmri", seed=3, run_seconds=60.0, progress=False, n_jobs=1)
    simulate_dataset(out / "default", **kwargs)
    for name in ("linear", "nonlinear"):
        simulate_dataset(out / name, coupling=name, **kwargs)
    return {name: out / name for name in ("default", "linear", "nonlinear")}


def test_nonlinear_coupling_changes_the_target_and_the_alpha_tone_and_is_recorded(coupling_pair):
    from fedneurogen.shared.data.ground_truth_eeg import read_expected_band_power
    from fedneurogen.simulations.physiology import NONLINEAR

    hashes = {name: _hashes(folder) for name, folder in coupling_pair.items()}
    assert hashes["default"] == hashes["linear"]  # the default is the linear coupling, byte for byte
    linear, nonlinear = hashes["linear"], hashes["nonlinear"]
    changed = {k for k in linear if linear[k] != nonlinear.get(k)}
    eeg = "site-01/sub-01/eeg/sub-01_task-visual_run-1_eeg.edf"
    assert eeg in changed  # the alpha tone is in the EEG
    assert "site-01/sub-01/func/sub-01_task-visual_run-1_events.tsv" not in changed  # the same design
    for target in (
        "site-01/derivatives/fmriprep/sub-01/func/sub-01_task-visual_run-1_hemi-L_space-fsaverage5_bold.func.gii",
        "site-01/derivatives/ground_truth/sub-01/func/sub-01_task-visual_run-1_hemi-R_space-fsaverage5_bold.func.gii",
    ):
        assert target in changed, target
    truth = {n: _bold(coupling_pair[n] / "site-01", "sub-01", "ground_truth") for n in ("linear", "nonlinear")}
    active = np.argsort(truth["linear"].std(axis=1))[-200:]  # the most task-driven vertices
    r = [np.corrcoef(truth["linear"][v], truth["nonlinear"][v])[0, 1] for v in active]
    assert np.median(r) < 0.97  # a different signal, not a rescaled one

    # The ceiling's features: the EEG's own expected power, the alpha rhythm's moved by the tone and
    # the others unchanged, plus the true map's ``drive`` rhythm.
    key = "sub-01_task-visual_run-1"
    power = {n: read_expected_band_power(coupling_pair[n] / "site-01", key) for n in ("linear", "nonlinear")}
    rhythm_rows = [i for i, name in enumerate(power["nonlinear"].names) if not name.endswith("_drive")]
    assert [power["nonlinear"].names[i] for i in rhythm_rows] == power["linear"].names
    alpha = np.array([name.endswith("_alpha") for name in power["linear"].names])
    shown, plain = power["nonlinear"].data[rhythm_rows], power["linear"].data
    np.testing.assert_array_equal(shown[~alpha], plain[~alpha])
    tone = shown[alpha] - plain[alpha]  # 2 tau, the same at every electrode
    assert tone.std(axis=-1).mean() > 0.5 and np.abs(tone - tone.mean(axis=0)).max() < 0.15  # within 1-s bins
    assert len(power["nonlinear"].names) == len(power["linear"].names) * 4 // 3  # one drive column per electrode

    summaries = {n: _summary(coupling_pair[n]) for n in ("linear", "nonlinear")}
    assert summaries["linear"]["coupling"] == "linear" and summaries["nonlinear"]["coupling"] == "nonlinear"
    assert summaries["nonlinear"]["coupling_parameters"] == NONLINEAR.to_dict()


def test_nonlinear_bold_follows_the_documented_equations():
    """``BOLD% = a * (h * d)(kTR)`` with ``d = tanh(u / s) / tanh(1 / s) G_p(t)`` and ``G_p`` a sigmoid of
    the vertex's parcel's standardised alpha state ``k_alpha u_p + tau`` (the independent alpha
    tone), recomputed here from the latent activity, the tone, the cortex parcels and the HRF; the
    EEG's expected alpha power carries the tone (``+ 2 tau``)."""
    from dataclasses import replace

    from fedneurogen.simulations.eeg import expected_band_power
    from fedneurogen.simulations.hemodynamics import expected_drive_power, simulate_bold
    from fedneurogen.simulations.latent import alpha_tone, block_design, simulate_latent
    from fedneurogen.simulations.physiology import DEFAULT, LINEAR, NONLINEAR

    rng = np.random.default_rng(4)
    events, duration = block_design(rng, "visual", VISUAL_CLASSES, 60.0)
    latent = simulate_latent(rng, "visual", events, duration)
    c = NONLINEAR
    tone = alpha_tone(rng, latent.n_times, latent.sfreq, c.alpha_tone_sd, c.alpha_tone_hz)
    assert tone.std() == pytest.approx(c.alpha_tone_sd) and abs(tone.mean()) < 1e-9
    toned = replace(latent, alpha_tone=tone)
    phys = draw_physiology(rng, "A", "F", 30)
    tr, n_tr = 2.0, int(duration // 2.0)
    bold = simulate_bold(np.random.default_rng(0), toned, phys, tr, n_tr, noise_level=0.0, coupling=NONLINEAR)

    cortex = load_cortex()
    u_parcels = cortex.parcel_mean(latent.spatial.astype(np.float64)) @ latent.temporal
    state = DEFAULT.alpha_coupling * u_parcels + tone  # each parcel's alpha state
    z = (state - state.mean(axis=1, keepdims=True)) / state.std(axis=1, keepdims=True)
    gate = c.gate_floor + (1 - c.gate_floor) / (1 + np.exp(-(-z - c.gate_threshold) / c.gate_width))
    assert np.all(gate.max(axis=1) - gate.min(axis=1) > 0.5)  # every parcel's gate opens and closes
    vertices = np.concatenate([latent.active_vertices[:300], np.arange(0, 20484, 97)])
    u = latent.spatial[vertices].astype(np.float64) @ latent.temporal
    drive = np.tanh(u / c.saturation) / np.tanh(1 / c.saturation) * gate[cortex.parcel[vertices]]
    assert np.mean(np.abs(u) > 2 * c.saturation) > 0.01  # the saturation binds on part of the run
    kernel = hrf(latent.sfreq, phys.hrf_latency_scale, undershoot_ratio=phys.hrf_undershoot_ratio)
    grid = np.arange(latent.n_times) / latent.sfreq
    convolved = np.array([np.convolve(row, kernel)[: latent.n_times] for row in drive])
    pct = phys.bold_amplitude * np.array([np.interp(np.arange(n_tr) * tr, grid, row) for row in convolved])
    # clean = baseline * (1 + pct / 100) with an unknown baseline per vertex: solve it, then compare.
    clean = bold.clean[vertices].astype(np.float64)
    shape = 1.0 + pct / 100.0
    baseline = (clean * shape).sum(axis=1, keepdims=True) / (shape**2).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(clean, baseline * shape, rtol=2e-6)
    assert np.abs(pct).max() > 0.5  # a real response, not a flat line the check would pass trivially

    # The ceiling's ``drive`` rhythm is the gamma rhythm's expected power under the linear coupling.
    gain = np.random.default_rng(1).standard_normal((8, 324))
    gamma = expected_band_power(latent, phys, gain)[0][:, 2]
    np.testing.assert_allclose(expected_drive_power(latent, phys, gain, LINEAR)[:, 0], gamma, rtol=1e-12)
    assert not np.allclose(expected_drive_power(toned, phys, gain, NONLINEAR)[:, 0], gamma)
    # The tone multiplies every parcel's alpha envelope by exp(tau): alpha power gains 2 tau (1-s bins
    # of a tone slower than 0.05 Hz), the other rhythms nothing.
    plain, with_tone = expected_band_power(latent, phys, gain)[0], expected_band_power(toned, phys, gain)[0]
    per_bin = int(latent.sfreq)
    binned = tone[: plain.shape[-1] * per_bin].reshape(-1, per_bin).mean(axis=1)
    np.testing.assert_allclose(with_tone[:, 0] - plain[:, 0], np.broadcast_to(2 * binned, plain[:, 0].shape), atol=0.05)
    np.testing.assert_array_equal(with_tone[:, 1:], plain[:, 1:])


def test_unknown_coupling_is_a_one_line_usage_error(tmp_path):
    from typer.testing import CliRunner

    from fedneurogen.cli import app

    result = CliRunner().invoke(app, ["simulate", "--out", str(tmp_path / "sim"), "--coupling", "quadratic"])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "coupling" in result.output and "nonlinear" in result.output
    assert not (tmp_path / "sim").exists()  # refused before anything is written
    with pytest.raises(ConfigError, match="coupling"):
        simulate_dataset(tmp_path / "api", n_sites=1, subjects_per_site=1, coupling="Nonlinear", progress=False)
