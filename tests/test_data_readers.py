"""Readers on factory data, checked against independent readers (edfio, nibabel, nilearn, h5py)."""

from __future__ import annotations

import json

import edfio
import nibabel as nib
import numpy as np
import pytest

from fedneurogen.shared.errors import DataError
from scipy import signal

from fedneurogen.simulations import bids_factory as bf
from fedneurogen.shared.config import PreprocessConfig
from fedneurogen.shared.data import find_runs, read_eeg, read_fmri, read_fnirs, validate_dataset
from fedneurogen.shared.montage import standard_positions
from fedneurogen.shared.surface import ico4_names, load_ico4_positions

NO_ICA = PreprocessConfig(eeg_ica=False)


def _zscore(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(axis=-1, keepdims=True)) / x.std(axis=-1, keepdims=True)


def _band(x: np.ndarray, sfreq: float, lo: float, hi: float) -> np.ndarray:
    sos = signal.butter(4, [lo, hi], btype="bandpass", fs=sfreq, output="sos")
    return signal.sosfiltfilt(sos, x, axis=-1)


def _line_ratio(x: np.ndarray, sfreq: float, freq: float) -> float:
    """Power at ``freq`` relative to the median power 3-8 Hz around it."""
    f, p = signal.welch(x, fs=sfreq, nperseg=int(4 * sfreq))
    at = p[np.argmin(np.abs(f - freq))]
    around = p[(np.abs(f - freq) > 3) & (np.abs(f - freq) < 8)]
    return float(at / np.median(around))


@pytest.fixture(scope="module")
def fmri_site(tmp_path_factory):
    return bf.make_site(tmp_path_factory.mktemp("readers"), bf.SiteSpec(subjects=("01",)))


# --- EEG -----------------------------------------------------------------------------------------


def test_read_eeg_matches_edfio(fmri_site):
    run = find_runs(fmri_site)[0]
    rec, events = read_eeg(run.eeg, NO_ICA, files=run)
    assert rec.modality == "eeg" and rec.sfreq == 200.0
    assert rec.names == bf.STANDARD_CHANNELS  # EOG used for ICA only, never a window channel
    assert rec.n_times == 64 * 200

    edf = edfio.read_edf(run.eeg)
    by_label = {s.label.strip(): s for s in edf.signals}
    for name in ("Fp1", "C3", "O2"):
        sig = by_label[name]
        assert sig.physical_dimension == "uV"
        ref = signal.resample_poly(sig.data * 1e-6, 4, 5)  # V at 200 Hz
        ours = rec.data[rec.names.index(name)] / 1e4  # units of 100 uV -> V
        a, b = _band(ref, 200, 2, 30), _band(ours, 200, 2, 30)  # clear of the 50 Hz line
        core = slice(1000, -1000)  # filter edges differ between the two pipelines
        assert np.corrcoef(a[core], b[core])[0, 1] > 0.999
        assert np.std(b[core]) / np.std(a[core]) == pytest.approx(1.0, abs=0.02)
    # The 50 Hz line noise written by the factory is notched out.
    raw_ratio = _line_ratio(by_label["Cz"].data, 250, 50)
    our_ratio = _line_ratio(rec.data[rec.names.index("Cz")], 200, 50)
    assert raw_ratio > 100 and our_ratio < 5
    # Positions are the standard 10-05 ones, in mm.
    np.testing.assert_allclose(rec.positions[rec.names.index("Cz")], standard_positions()["cz"][1])
    assert 70 < np.linalg.norm(rec.positions, axis=1).mean() < 120
    # Events straight from the events.tsv.
    assert list(events.columns) == ["onset", "duration", "trial_type"]
    assert events["trial_type"].tolist()[:4] == bf.FMRI_CLASSES
    assert events["onset"].tolist()[:2] == [2.0, 18.0]


def test_brainvision_and_fif_read_like_edf(tmp_path):
    spec = bf.SiteSpec(subjects=("01",), eog=False)
    rng = np.random.default_rng(3)
    data = bf.eeg_signals(spec, rng, len(spec.channels))
    recs = {}
    for ext in (".edf", ".vhdr", ".fif"):
        path = bf.write_eeg(tmp_path / ext[1:] / f"sub-01_task-x_eeg{ext}", data, 250.0, spec.channels, ["eeg"] * 12)
        recs[ext], _ = read_eeg(path, NO_ICA)
    assert recs[".vhdr"].names == recs[".fif"].names == recs[".edf"].names
    # EDF stores 16-bit integers: agreement up to its quantisation step.
    np.testing.assert_allclose(recs[".vhdr"].data, recs[".fif"].data, atol=1e-5)
    np.testing.assert_allclose(recs[".edf"].data, recs[".fif"].data, atol=2e-3)


def test_channel_types_and_case_insensitive_names(tmp_path):
    channels = ["FP1", "fp2", "CZ", "c3", "C4", "PZ", "ECG"]
    site = bf.make_site(tmp_path, bf.SiteSpec(subjects=("01",), channels=channels, eog=False))
    run = find_runs(site)[0]
    # ECG is typed in channels.tsv: it must go, whatever its name.
    tsv = run.channels.read_text().replace("ECG\tEEG", "ECG\tECG")
    run.channels.write_text(tsv)
    rec, _ = read_eeg(run.eeg, NO_ICA, files=run)
    assert rec.names == ["Fp1", "Fp2", "Cz", "C3", "C4", "Pz"]
    std = standard_positions()
    np.testing.assert_allclose(rec.positions, [std[n.lower()][1] for n in rec.names])


def test_electrodes_tsv_gives_positions_in_mm(tmp_path):
    electrodes = {
        "E1": (-30.0, 40.0, 60.0),
        "E2": (30.0, 40.0, 60.0),
        "E3": (0.0, -20.0, 95.0),
        "E4": (0.0, -90.0, 40.0),
    }
    site = bf.make_site(
        tmp_path, bf.SiteSpec(subjects=("01",), channels=list(electrodes) + ["Oz"], electrodes=electrodes, eog=False)
    )
    run = find_runs(site)[0]
    assert run.electrodes is not None and run.coordsystem is not None
    rec, _ = read_eeg(run.eeg, NO_ICA, files=run)
    assert rec.names == ["E1", "E2", "E3", "E4", "Oz"]
    # electrodes.tsv is in metres (coordsystem says so); positions come back in mm.
    np.testing.assert_allclose(rec.positions[:4], np.array(list(electrodes.values())), atol=1e-9)
    np.testing.assert_allclose(rec.positions[4], standard_positions()["oz"][1])  # fallback: standard name


@pytest.mark.parametrize("sfreq", [250.0, 2500.0])  # at kHz rates components are scored on a 200 Hz copy
def test_ica_removes_blinks_from_frontal_channels(tmp_path, sfreq):
    site = bf.make_site(tmp_path, bf.SiteSpec(subjects=("01",), duration=120.0, eeg_sfreq=sfreq))
    run = find_runs(site)[0]
    with_ica, _ = read_eeg(run.eeg, PreprocessConfig(), files=run)
    without, _ = read_eeg(run.eeg, NO_ICA, files=run)
    eog_signal = next(s for s in edfio.read_edf(run.eeg).signals if s.label.strip() == "EOG")
    eog = signal.resample_poly(_band(eog_signal.data, sfreq, 1, 40), 200, int(sfreq))
    fp1 = with_ica.names.index("Fp1")
    r_with = abs(np.corrcoef(with_ica.data[fp1], eog)[0, 1])
    r_without = abs(np.corrcoef(without.data[fp1], eog)[0, 1])
    assert r_without > 0.4 and r_with < 0.75 * r_without  # blink variance at least ~45% lower
    o1 = with_ica.names.index("O1")  # a channel without blinks is left nearly alone
    assert np.corrcoef(with_ica.data[o1], without.data[o1])[0, 1] > 0.95


def test_line_frequency_comes_from_sidecar(tmp_path):
    site = bf.make_site(tmp_path, bf.SiteSpec(subjects=("01",), line_freq=60.0, eog=False))
    run = find_runs(site)[0]
    assert json.loads(run.eeg_sidecar.read_text())["PowerLineFrequency"] == 60.0
    rec, _ = read_eeg(run.eeg, PreprocessConfig(eeg_ica=False, eeg_line_freq=50.0), files=run)
    assert _line_ratio(rec.data[rec.names.index("Cz")], 200, 60) < 5


# --- fMRI ----------------------------------------------------------------------------------------


def test_ico4_geometry_is_fsaverage5_pial_prefix():
    from nilearn import datasets

    positions, names = load_ico4_positions(), ico4_names()
    pial = datasets.load_fsaverage("fsaverage5")["pial"]
    assert positions.shape == (5124, 3) and len(names) == 5124
    np.testing.assert_array_equal(positions[:2562], pial.parts["left"].coordinates[:2562])
    np.testing.assert_array_equal(positions[2562:], pial.parts["right"].coordinates[:2562])
    assert names[0] == "L0" and names[2561] == "L2561" and names[2562] == "R0"


def test_read_fmri_surface_matches_nibabel(fmri_site):
    run = find_runs(fmri_site)[0]
    rec = read_fmri(run.target, PreprocessConfig())
    assert rec.modality == "fmri" and rec.sfreq == 0.5 and rec.data.shape == (5124, 32)
    expected = []
    for path in run.target:  # hemi-L then hemi-R
        img = nib.load(path)
        data = np.stack([d.data for d in img.darrays], axis=1)
        assert data.shape[0] == 10242
        expected.append(_zscore(data[:2562].astype(np.float64)))
    np.testing.assert_allclose(rec.data, np.vstack(expected), atol=1e-4)
    np.testing.assert_allclose(rec.data.mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(rec.data.std(axis=1), 1, atol=1e-4)
    np.testing.assert_array_equal(rec.positions, load_ico4_positions())


def test_tr_2p1_resampled_onto_2s_grid(tmp_path):
    tr, n_vols, period = 2.1, 40, 40.0
    t = np.arange(n_vols) * tr
    phases = np.linspace(0, np.pi, 10242)
    data = np.sin(2 * np.pi * t[None, :] / period + phases[:, None])
    deriv = tmp_path / "derivatives" / "fmriprep" / "sub-01" / "func"
    paths = [bf.write_gifti(deriv / f"sub-01_task-visual_hemi-{h}_space-fsaverage5_bold.func.gii", data) for h in "LR"]
    bf.write_json(deriv / "sub-01_task-visual_space-fsaverage5_bold.json", {"RepetitionTime": tr})
    rec = read_fmri(paths, PreprocessConfig())
    n_grid = int(np.floor((n_vols - 1) * tr / 2.0)) + 1  # 41 points of 2 s within the 81.9 s span
    assert rec.sfreq == 0.5 and rec.n_times == n_grid
    grid = np.arange(n_grid) * 2.0
    expected = _zscore(np.sin(2 * np.pi * grid[None, :] / period + phases[:2562, None]))
    assert np.abs(rec.data[:2562] - expected).max() < 0.03  # linear interpolation of a 40 s sine
    # Not simply the input re-labelled: sample 20 of the grid (40 s) is volume 19.05 of the input.
    assert np.abs(rec.data[:2562, 20] - _zscore(data[:2562])[:, 20]).max() > 0.05


def test_read_fmri_volume_projected_with_nilearn(tmp_path):
    site = bf.make_site(tmp_path, bf.SiteSpec(subjects=("01",), fmri_space="volume", duration=40.0))
    run = find_runs(site)[0]
    assert run.target[0].name.endswith("_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz")
    rec = read_fmri(run.target, PreprocessConfig())
    assert rec.data.shape == (5124, 20)
    # The volume is a wave whose phase follows x: each vertex must carry the wave at its x.
    positions = load_ico4_positions()
    t = np.arange(20) * 2.0
    expected = _zscore(np.sin(2 * np.pi * t[None, :] / bf.WAVE_PERIOD + bf.WAVE_PHASE_PER_MM * positions[:, :1]))
    r = (_zscore(rec.data) * expected).mean(axis=1)
    assert np.median(r) > 0.95
    # ... and not the wave of a mirrored x (left/right hemispheres swapped would fail here).
    mirrored = _zscore(np.sin(2 * np.pi * t[None, :] / bf.WAVE_PERIOD - bf.WAVE_PHASE_PER_MM * positions[:, :1]))
    assert np.median((_zscore(rec.data) * mirrored).mean(axis=1)) < 0.8


def test_tr_search_order(tmp_path):
    site = bf.make_site(tmp_path, bf.SiteSpec(subjects=("01",)))
    run = find_runs(site)[0]
    deriv_json, raw_json = run.target_sidecars
    assert "derivatives" in deriv_json.parts and "derivatives" not in raw_json.parts
    bf.write_json(raw_json, {"RepetitionTime": 2.5})
    assert read_fmri(run.target, PreprocessConfig(), sidecars=run.target_sidecars).n_times == 32  # derivative's 2.0
    deriv_json.unlink()
    (site / "sub-01" / "func" / raw_json.name).unlink()
    bf.write_json(site / "task-visual_bold.json", {"RepetitionTime": 4.0})  # inherited, dataset root
    run = find_runs(site)[0]
    assert run.target_sidecars == [site / "task-visual_bold.json"]
    # the inherited TR is found, and checked against the spacing the GIFTI records itself
    with pytest.raises(
        DataError,
        match=r"RepetitionTime 4 s disagrees with the 2000 ms volume spacing recorded in .*func.gii \(62.0 s drift over its 32 volumes\)",
    ) as err:
        read_fmri(run.target, PreprocessConfig())
    assert err.value.path == site / "task-visual_bold.json"  # the sidecar is named, not the GIFTI


def test_a_slightly_wrong_tr_is_caught_small_differences_pass(tmp_path):
    site = bf.make_site(tmp_path, bf.SiteSpec(subjects=("01",)))
    run = find_runs(site)[0]
    deriv_json = run.target_sidecars[0]
    bf.write_json(deriv_json, {"RepetitionTime": 2.03})  # 0.93 s over 32 volumes: within a second
    assert read_fmri(run.target, PreprocessConfig()).n_times > 0
    bf.write_json(deriv_json, {"RepetitionTime": 2.05})  # 1.55 s: the pairing would slide
    with pytest.raises(DataError, match=r"RepetitionTime 2.05 s disagrees with the 2000 ms"):
        read_fmri(run.target, PreprocessConfig())
    from fedneurogen.shared.data.validate import validate_dataset

    assert any(
        "disagrees with the 2000 ms volume spacing" in p.message for p in validate_dataset(site).errors
    )  # validate agrees


# --- fNIRS ---------------------------------------------------------------------------------------


def _hb_truth(n: int, sfreq: float) -> np.ndarray:
    rng = np.random.default_rng(7)
    t = np.arange(n) / sfreq
    hb = np.empty((8, n))
    hb[0::2] = 1e-6 * bf.slow_signal(t, rng, n=4)
    hb[1::2] = -0.3 * hb[0::2] + 0.2e-6 * bf.slow_signal(t, rng, n=4)
    return hb


def test_read_fnirs_recovers_haemoglobin(tmp_path):
    sfreq, n = 10.0, 3000
    hb = _hb_truth(n, sfreq)
    path = bf.write_snirf(tmp_path / "sub-01_task-motor_nirs.snirf", bf.hb_to_intensity(hb), sfreq)
    rec = read_fnirs(path, PreprocessConfig())
    assert rec.modality == "fnirs" and rec.sfreq == 1.0 and rec.n_times == 300
    assert rec.names[:2] == ["S1_D1 hbo", "S1_D1 hbr"] and rec.point_types == ["hbo", "hbr"] * 4
    # Independent pipeline from the known concentrations: same band-pass, decimate, micromolar.
    sos = signal.butter(3, [0.01, 0.1], btype="bandpass", fs=sfreq, output="sos")
    # Same documented filter: 6th order in total, zero phase, mirror-padded by 1 / 0.01 Hz = 100 s.
    expected = signal.resample_poly(signal.sosfiltfilt(sos, hb, axis=1, padlen=1000), 1, 10, axis=1) * 1e6
    core = slice(30, -30)
    for i in range(8):
        assert np.corrcoef(rec.data[i, core], expected[i, core])[0, 1] > 0.999
    np.testing.assert_allclose(rec.data[:, core], expected[:, core], atol=0.02 * np.abs(expected).max())
    # Points sit at source-detector midpoints (mm).
    midpoints = [(bf.SOURCES[s - 1] + bf.DETECTORS[d - 1]) / 2 for s, d in bf.PAIRS for _ in range(2)]
    np.testing.assert_allclose(rec.positions, midpoints)


def test_read_fnirs_processed_hb_used_as_is(tmp_path):
    sfreq, n = 10.0, 3000
    hb = _hb_truth(n, sfreq)
    from_intensity = read_fnirs(bf.write_snirf(tmp_path / "a_nirs.snirf", bf.hb_to_intensity(hb), sfreq))
    from_hb = read_fnirs(bf.write_snirf(tmp_path / "b_nirs.snirf", hb, sfreq, kind="hb"))
    assert from_hb.names == from_intensity.names and from_hb.point_types == from_intensity.point_types
    np.testing.assert_allclose(from_hb.data, from_intensity.data, atol=1e-3 * np.abs(from_hb.data).max())


# --- discovery and validation --------------------------------------------------------------------


def test_find_runs_sessions_zero_padded_runs_and_companions(tmp_path):
    spec = bf.SiteSpec(subjects=("01",), eeg_format=".vhdr")
    site = bf.make_site(tmp_path, spec)
    # Move every file of sub-01 into ses-1 (raw and derivatives); zero-pad the run in func names.
    for path in sorted(p for p in site.rglob("sub-01_*") if p.is_file()):
        parts = list(path.relative_to(site).parts)
        parts.insert(parts.index("sub-01") + 1, "ses-1")
        parts[-1] = parts[-1].replace("sub-01_", "sub-01_ses-1_")
        if "func" in parts:
            parts[-1] = parts[-1].replace("run-1", "run-01")
        dest = site.joinpath(*parts)
        dest.parent.mkdir(parents=True, exist_ok=True)
        path.rename(dest)
    # The BrainVision header names its data and marker files: follow the rename.
    for header in (*site.rglob("*.vhdr"), *site.rglob("*.vmrk")):
        header.write_text(header.read_text().replace("sub-01_task", "sub-01_ses-1_task"))
    runs = find_runs(site)
    assert len(runs) == 1
    run = runs[0]
    assert run.key == "sub-01_ses-1_task-visual_run-1"
    assert run.target_modality == "fmri" and [p.name.split("_hemi-")[1][0] for p in run.target] == ["L", "R"]
    assert sorted(p.suffix for p in run.eeg_companions) == [".eeg", ".vmrk"]
    assert run.events is not None and run.channels is not None and run.eeg_sidecar is not None
    assert all(p.exists() for p in run.inputs())
    assert validate_dataset(site).ok


def test_validate_summary(fmri_site):
    # a 6 s history so this 64 s run yields windows of every class (the default history is 30 s)
    report = validate_dataset(fmri_site, PreprocessConfig(history_seconds=6.0))
    assert report.ok, report.problems
    s = report.summary
    assert s["subjects"] == ["sub-01"] and s["runs"] == 1 and s["modalities"] == ["eeg", "fmri"]
    assert s["classes"] == {"faces": 1, "scenes": 1, "tools": 1}
    assert s["groups"]["group"] == {"A": 1} and s["tr"] == [2.0] and s["sfreqs"] == [250.0]
    assert s["channels"]["eeg_counts"] == {"12": 1} and s["durations"]["total_s"] == 64.0
    json.dumps(s)  # plain data, ready for --json output


def test_bad_channel_is_interpolated_not_dropped(tmp_path):
    site = bf.make_site(tmp_path, bf.SiteSpec(subjects=("01",), eog=False))
    run = find_runs(site)[0]
    original, _ = read_eeg(run.eeg, NO_ICA, files=run)
    lines = run.channels.read_text().splitlines()
    marked = [line.replace("good", "bad") if line.startswith("C3\t") else line for line in lines]
    run.channels.write_text("\n".join(marked) + "\n")
    repaired, _ = read_eeg(run.eeg, NO_ICA, files=run)
    assert repaired.names == original.names  # every run keeps the site montage
    c3 = original.names.index("C3")
    # Rebuilt from its neighbours: the channel's own (independent) noise is gone.
    assert abs(np.corrcoef(repaired.data[c3], original.data[c3])[0, 1]) < 0.7
    others = [i for i in range(len(original.names)) if i != c3]
    np.testing.assert_array_equal(repaired.data[others], original.data[others])
