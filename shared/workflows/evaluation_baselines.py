"""What an evaluation compares the model with: the noise and EEG-informed ceilings, baselines
fitted without the test subjects, and the top-10 % points (docs/architecture.md §7).

- the noise ceiling, where the site has ground truth (the simulator's
  ``derivatives/ground_truth``): the noise-free signal, read with the same readers and
  preprocessing (``ground_truth_windows``);
- the EEG-informed ceilings, on simulated sites: ridge on the simulator's expected scalp band
  power (``eeg_informed_design``), and the local path on its expected rhythm power at the cortical
  parcels (``source_informed_design``, ``source_ceiling``);
- baselines fitted on the training subjects, or cross-fitted over two halves of the test
  subjects when the checkpoint trained on none of the site's (``fit_predict``; the
  linear-Gaussian generator's samples: ``fit_sample``), with the windows of several sites pooled
  (``pool_windows``);
- the top-10 % points, chosen on the training subjects (``reliable_points``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from fedneurogen.shared.config import PreprocessConfig
from fedneurogen.shared.data import find_runs, read_fmri, read_fnirs
from fedneurogen.shared.data.fmri import repetition_time
from fedneurogen.shared.data.ground_truth_eeg import GROUND_TRUTH_DIR, read_expected_band_power
from fedneurogen.shared.design import iter_subject_rows, to_virtual_montage
from fedneurogen.shared.hrf import hemodynamic_convolution
from fedneurogen.shared.errors import DataError
from fedneurogen.shared.local_path import LocalStatistics, fit_local_path_selected, fmri_layout, fnirs_layout
from fedneurogen.shared.metrics import pearson_rows, stitch_windows
from fedneurogen.shared.recording import PairedWindows, Recording
from fedneurogen.shared.ridge import sum_statistics
from fedneurogen.shared.sources import N_PATCHES
from fedneurogen.shared.workflows.baselines import LinearGaussianGenerator

# ----------------------------------------------------------------------------------------------
# Noise ceiling from ground truth


def ground_truth_path(target: Path, site_dir: Path) -> Path:
    """Return where the simulator keeps the noise-free twin of a target file.

    Parameters
    ----------
    target : Path
        A target file of the site.
    site_dir : Path
        The site's folder.

    Returns
    -------
    Path
        The same relative path under ``derivatives/ground_truth`` (fMRIPrep outputs without
        their ``derivatives/fmriprep``).

    Raises
    ------
    ValueError
        When ``target`` is not inside ``site_dir``.
    """
    parts = Path(target).relative_to(site_dir).parts
    if parts[:2] == ("derivatives", "fmriprep"):
        parts = parts[2:]
    return site_dir.joinpath(*GROUND_TRUTH_DIR, *parts)


def read_ground_truth(run, config: PreprocessConfig) -> Recording | None:
    """Read a run's noise-free target, preprocessed like the real one.

    Parameters
    ----------
    run : RunFiles
        The run.
    config : PreprocessConfig
        Preprocessing settings.

    Returns
    -------
    Recording or None
        The ground truth; None where the site has none.
    """
    try:
        paths = [ground_truth_path(p, run.site_dir) for p in run.target]
    except ValueError:  # a target outside the site folder has no twin
        return None
    if not paths or not all(p.is_file() for p in paths):
        return None
    if run.target_modality == "fmri":
        # the TR is the real run's: the twin was acquired on the same grid
        return read_fmri(paths, config, tr=repetition_time(run.target[0], run.target_sidecars))
    return read_fnirs(paths[0], config)


def ground_truth_windows(site_dir: str | Path, windows: PairedWindows, config: PreprocessConfig) -> np.ndarray | None:
    """Cut the noise-free target of every window (same runs, onsets and points).

    Parameters
    ----------
    site_dir : path-like
        The site's folder.
    windows : PairedWindows
        The windows.
    config : PreprocessConfig
        Preprocessing settings.

    Returns
    -------
    numpy.ndarray or None
        Shaped like ``windows.target``; None when any window has no ground truth.
    """
    runs = {run.key: run for run in find_runs(site_dir)}
    n_frames = windows.target.shape[-1]
    out = np.zeros(windows.target.shape, np.float32)
    for key in np.unique(windows.runs):
        truth = read_ground_truth(runs[key], config) if key in runs else None
        if truth is None or not set(windows.target_names) <= set(truth.names):
            return None
        rows = [truth.names.index(name) for name in windows.target_names]
        for i in np.flatnonzero(windows.runs == key):
            start = int(round(windows.onsets[i] * windows.target_sfreq))
            if start + n_frames > truth.n_times:
                return None
            out[i] = truth.data[rows, start : start + n_frames]
    return out


def eeg_informed_design(site_dir: Path, windows: PairedWindows, config: PreprocessConfig) -> np.ndarray | None:
    """Build the design of the EEG-informed ceiling at every window's frames.

    The simulator's *expected* scalp band power (no spectral-estimation noise), z-scored per
    run, mapped onto the virtual montage and convolved with the same HRF basis as the model's
    design.

    Parameters
    ----------
    site_dir : Path
        The site's folder.
    windows : PairedWindows
        The windows.
    config : PreprocessConfig
        Preprocessing settings (the HRF basis).

    Returns
    -------
    numpy.ndarray or None
        ``[n_windows, n_frames, n_features]``; None without that ground truth, or when runs
        have other electrodes.
    """
    return _expected_power_design(site_dir, windows, config, "expectedpower", on_virtual_montage)


def source_informed_design(site_dir: Path, windows: PairedWindows, config: PreprocessConfig) -> np.ndarray | None:
    """The design of the source-space EEG-informed ceiling at every window's frames.

    The simulator's expected power of each rhythm at each cortical parcel (what a perfect
    inverse would recover; ``desc-expectedsourcepower``), z-scored per run, convolved with the
    model's HRF basis; features ordered (parcel, rhythm, basis) like the source design's
    (patch, band, basis), so the local path's layouts apply.

    Parameters
    ----------
    site_dir : Path
        The site's folder.
    windows : PairedWindows
        The windows.
    config : PreprocessConfig
        Preprocessing settings (the HRF basis).

    Returns
    -------
    numpy.ndarray or None
        ``[n_windows, n_frames, 324 x rhythms x bases]``; None without that ground truth.
    """
    return _expected_power_design(site_dir, windows, config, "expectedsourcepower", lambda series, power: series)


def _expected_power_design(
    site_dir: Path, windows: PairedWindows, config: PreprocessConfig, desc: str, features
) -> np.ndarray | None:
    """A ceiling's design from the simulator's expected power (``desc``): per run z-scored,
    mapped by ``features(series, power)`` (to the virtual montage, or kept per parcel),
    HRF-convolved like the model's design and cut at every window's frames. None without that
    ground truth, or when runs give designs of other widths (other electrodes)."""
    n_frames = windows.target.shape[-1]
    out: np.ndarray | None = None
    for key in np.unique(windows.runs):
        power = read_expected_band_power(site_dir, str(key), desc=desc)
        if power is None:
            return None
        series = (power.data - power.data.mean(1, keepdims=True)) / (power.data.std(1, keepdims=True) + 1e-6)
        series = features(series, power)  # scalp: onto the virtual montage, one feature space for every cap
        centres = (np.arange(power.n_times) + 0.5) / power.sfreq  # bin centres (the sidecar's StartTime)
        last = int(round(windows.onsets[windows.runs == key].max() * windows.target_sfreq)) + n_frames
        design = hemodynamic_convolution(series, centres, np.arange(last) / windows.target_sfreq, config)
        if out is None:
            out = np.zeros((len(windows), n_frames, design.shape[1]), np.float32)
        elif design.shape[1] != out.shape[2]:
            return None  # runs with other electrodes: no common ceiling model
        for i in np.flatnonzero(windows.runs == key):
            start = int(round(windows.onsets[i] * windows.target_sfreq))
            out[i] = design[start : start + n_frames]
    return out


def source_ceiling(train: PairedWindows, val: PairedWindows | None, test: PairedWindows) -> np.ndarray:
    """The local ridge path fitted on the source-space ceiling's design (``source_informed_design``
    in the windows' ``design``): each point from the true rhythm power of the parcels beneath it.

    Parameters
    ----------
    train, val, test : PairedWindows
        Windows whose design is the source-space ceiling's (val may be None: 2-fold choice).

    Returns
    -------
    numpy.ndarray
        float32 ``[W, N, F]`` predictions on ``test``.
    """
    n_per_patch = test.design.shape[-1] // N_PATCHES
    fmri = test.target_modality == "fmri"
    layout = fmri_layout(n_per_patch) if fmri else fnirs_layout(test.target_positions, n_per_patch)
    stats = lambda w: [] if w is None else [LocalStatistics.from_rows(x, y, layout) for x, y in iter_subject_rows(w)]  # noqa: E731
    held_out = stats(val)
    solution = fit_local_path_selected(stats(train), sum_statistics(held_out) if held_out else None, layout)
    return np.transpose(solution.predict(test.design), (0, 2, 1))


def on_virtual_montage(series: np.ndarray, power: Recording) -> np.ndarray:
    """Map band-power series onto the virtual montage, rhythm by rhythm.

    Parameters
    ----------
    series : numpy.ndarray
        ``[channels x rhythms, T]``, rows in the order of ``power.names``.
    power : Recording
        Gives the row names (``<channel>_<rhythm>``) and electrode positions.

    Returns
    -------
    numpy.ndarray
        ``[64 x rhythms, T]``, rhythms in sorted order.
    """
    rhythms = sorted({name.rsplit("_", 1)[1] for name in power.names})
    out = []
    for rhythm in rhythms:
        rows = [i for i, name in enumerate(power.names) if name.rsplit("_", 1)[1] == rhythm]
        out.append(to_virtual_montage(series[rows], power.positions[rows]))
    return np.concatenate(out)


def pool_windows(parts: list[tuple[str, PairedWindows]]) -> PairedWindows:
    """Pool windows of several sites into one set for the baselines.

    Parameters
    ----------
    parts : list of (str, PairedWindows)
        Site name and windows; all sites must share the target points.

    Returns
    -------
    PairedWindows
        Design, target and labels of every site (no raw EEG, whose channels differ), subjects
        and runs prefixed with the site name so they stay apart.

    Raises
    ------
    DataError
        When a site has other target points than the first.
    """
    first = parts[0][1]
    for name, w in parts[1:]:
        if w.target_names != first.target_names:
            raise DataError(Path(name), "has other target points than the first site; its baselines cannot be pooled")
    cat = lambda key: np.concatenate([getattr(w, key) for _, w in parts])  # noqa: E731
    prefixed = lambda key: np.concatenate([np.char.add(f"{name}/", getattr(w, key).astype(str)) for name, w in parts])  # noqa: E731
    n = sum(len(w) for _, w in parts)
    return replace(
        first, eeg=np.zeros((n, 0, 0), np.float32), eeg_channel_names=[], eeg_positions=np.zeros((0, 3)),
        target=cat("target"), labels=cat("labels"), subjects=prefixed("subjects"), runs=prefixed("runs"), onsets=cat("onsets"),
        design=cat("design"), participants={},
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Baselines fitted without the test subjects


def fit_predict(
    make, train: PairedWindows | None, test: PairedWindows, val: PairedWindows | None = None
) -> np.ndarray | None:
    """Predict ``test`` with a freshly made baseline.

    Parameters
    ----------
    make : callable
        Returns a new baseline with ``fit(train, val)`` and ``predict(windows)``.
    train : PairedWindows or None
        Training windows; None cross-fits over two halves of the test subjects.
    test : PairedWindows
        The windows predicted.
    val : PairedWindows, optional
        Validation windows (penalties of the baseline).

    Returns
    -------
    numpy.ndarray or None
        Predictions shaped like ``test.target``; None when cross-fitting has one subject.
    """
    if train is not None:
        return make().fit(train, val).predict(test)
    subjects = sorted(set(test.subjects.tolist()))
    if len(subjects) < 2:
        return None
    out = np.zeros(test.target.shape, np.float32)
    for fold in (subjects[::2], subjects[1::2]):
        held = np.isin(test.subjects, fold)
        out[held] = make().fit(test.subset(~held)).predict(test.subset(held))
    return out


def fit_sample(
    train: PairedWindows | None, test: PairedWindows, val: PairedWindows | None, k: int, seed: int
) -> np.ndarray | None:  # fmt: skip
    """Samples of ``test`` from a linear-Gaussian generator fitted without the test subjects.

    Parameters
    ----------
    train : PairedWindows or None
        Training windows; None: two halves of the test subjects, each sampled by a fit on the other.
    test : PairedWindows
        The windows sampled (their targets are not read).
    val : PairedWindows, optional
        Validation windows (the ridge penalty).
    k : int
        Samples per window.
    seed : int
        Seed of the noise.

    Returns
    -------
    numpy.ndarray or None
        ``[k, *test.target.shape]``; None when cross-fitting has one subject.
    """
    if train is not None:
        return LinearGaussianGenerator().fit(train, val).sample(test, k, seed)
    subjects = sorted(set(test.subjects.tolist()))
    if len(subjects) < 2:
        return None
    out = np.zeros((k, *np.shape(test.target)), np.float32)
    for fold in (subjects[::2], subjects[1::2]):
        held = np.isin(test.subjects, fold)
        out[:, held] = LinearGaussianGenerator().fit(test.subset(~held)).sample(test.subset(held), k, seed)
    return out


def reliable_points(train: PairedWindows, fitted: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    """Choose the target points the EEG predicts best *on the training subjects*.

    This is the "top-10 %" set, chosen without looking at the test subjects.

    Parameters
    ----------
    train : PairedWindows
        The training windows.
    fitted : numpy.ndarray
        The continuous ridge-HRF fit's in-sample predictions of ``train``.
    fraction : float
        Share of the points kept (at least one).

    Returns
    -------
    numpy.ndarray
        Sorted point indices.
    """
    per_point = []
    real = stitch_windows(train.target, train.runs, train.onsets, train.target_sfreq)
    for run, values in stitch_windows(fitted, train.runs, train.onsets, train.target_sfreq).items():
        per_point.append(np.arctanh(np.clip(pearson_rows(values, real[run]), -0.999999, 0.999999)))
    score = np.nan_to_num(np.mean(per_point, axis=0), nan=-np.inf)
    return np.sort(np.argsort(-score)[: max(1, int(round(fraction * len(score))))])
