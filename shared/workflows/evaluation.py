"""Evaluating a checkpoint on a site's held-out subjects (docs/architecture.md §7).

``evaluate`` generates the target for the test subjects' windows and scores it against the real
recording: temporal PCC (per point over each stitched run, Fisher-z averaged), spatial PCC and
SSIM (per frame) from ``fedneurogen.shared.metrics``, next to
- the noise baseline: real windows shuffled between windows (``shuffled_baseline``);
- the noise ceiling, where the site has ground truth (the simulator's
  ``derivatives/ground_truth``): the same temporal PCC between the real and the noise-free
  signal, read with the same readers and preprocessing (``ground_truth_windows``);
- two baselines fitted on the training subjects: EEG band power through the canonical HRF with
  ridge regression (``RidgeHRFBaseline``) and a deterministic regression transformer
  (``RegressorBaseline``);
- the honest generative baseline, linear-Gaussian (``LinearGaussianGenerator``: ridge mean +
  Gaussian residual with the cross-fitted training residuals' covariance), fitted like the others.

Samples are scored as data too (``sample_metrics``), the model's and linear-Gaussian's, on the
same held-out windows with the same K: interval coverage and CRPS, spectrum distance, coarse FC
similarity, a classifier two-sample test and train-on-synthetic-test-on-real (``tstr_scores``:
the fairness protocol's target features and logistic regression trained on each window's first
sample, labelled with the class it was conditioned on, tested on the real windows; next to the
same classifier trained on real windows), with a figure of spectra and FC (``samples.png``).

Subjects: the checkpoint records the subjects of each split by the content of their files
(``fedneurogen.shared.splits``); only subjects it never trained or validated on are scored,
whatever the folder is called and whichever subjects load, and the report lists the excluded
ones with the reason. None left is an error; ``allow_seen`` scores every subject, each labelled.
A checkpoint without that record is refused (``read_seen``): rebuilding its split from the seed
depends on which subjects load, so it cannot tell held-out subjects from seen ones. The
baselines learn from the subjects the checkpoint trained on; where it trained on none of the
site's, they are fitted on one half of the scored subjects to predict the other (2 folds).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from fedneurogen.shared.config import PreprocessConfig
from fedneurogen.shared.errors import DataError
from fedneurogen.shared.io import write_json_atomic
from fedneurogen.shared.metrics import (
    BOLD_BAND,
    NO_LABEL,
    coarse_parcels,
    connectivity,
    generation_metrics,
    log_spectra,
    pearson_rows,
    sample_metrics,
    shuffled_baseline,
    stitch_windows,
    temporal_pcc,
    tiled_series,
    train_synthetic_test_real,
)
from fedneurogen.shared.recording import PairedWindows, Recording
from fedneurogen.shared.splits import SeenSubjects, SubjectSplit, subject_keys

log = logging.getLogger(__name__)

REPORT_FILE = "report.json"
GROUND_TRUTH_DIR = ("derivatives", "ground_truth")
METRICS = ("pcc_temporal", "pcc_spatial", "ssim")


# ----------------------------------------------------------------------------------------------
# Which subjects are scored


#: How a subject's status reads in reports.
STATUS_TEXT = {"train": "trained on", "val": "validated on", "unseen": "never seen", "unknown": "not known"}


@dataclass
class EvaluationSplit:
    """The windows scored, the windows the baselines learn from, and why.

    Parameters
    ----------
    test : PairedWindows
        The windows scored.
    train : PairedWindows or None
        The windows of this site's subjects the checkpoint trained on; None when it trained on
        none of them (the baselines are then cross-fitted on the scored subjects).
    split : SubjectSplit
        This site's subjects the checkpoint trained on (``train``) and validated on (``val``),
        and the subjects scored (``test``).
    site_in_training : bool
        Whether the checkpoint trained on any subject of this site (by content).
    note : str
        What was scored, what was left out and why, and what the baselines learn from.
    val : PairedWindows, optional
        The windows of this site's subjects the checkpoint validated on (penalties of the baselines).
    status : dict of str to str
        Every subject of the site: ``train``, ``val``, ``unseen``, or ``unknown`` (the
        checkpoint records no subjects; only with ``allow_seen``).
    allow_seen : bool
        Whether subjects the checkpoint saw (or may have seen) are scored.
    """

    test: PairedWindows
    train: PairedWindows | None  # None: no subject of the site was trained on (baselines cross-fit)
    split: SubjectSplit
    site_in_training: bool
    note: str
    val: PairedWindows | None = None  # validated-on subjects (penalties of the baselines)
    status: dict[str, str] = field(default_factory=dict)
    allow_seen: bool = False

    def held_out(self) -> dict[str, Any]:
        """The report's account of which subjects were scored and which left out.

        Returns
        -------
        dict
            ``checked_by``, ``allow_seen``, ``subjects`` (each subject's status),
            ``excluded`` (subject, reason) and its count, and ``scored_seen`` (scored subjects
            the checkpoint saw or may have seen, each labelled).
        """
        scored = set(self.split.test)
        label = lambda s: {"subject": s, "status": STATUS_TEXT[self.status[s]]}  # noqa: E731
        excluded = [label(s) for s in sorted(self.status) if s not in scored]
        return {
            "checked_by": "content hash of each subject's EEG and target files (splits.subject_keys), not folder names",
            "allow_seen": self.allow_seen,
            "subjects": {s: STATUS_TEXT[v] for s, v in sorted(self.status.items())},
            "excluded": excluded,
            "excluded_count": len(excluded),
            "scored_seen": [label(s) for s in sorted(scored) if self.status[s] != "unseen"],
        }


def subject_status(subjects: list[str], keys: dict[str, str], seen: SeenSubjects | None) -> dict[str, str]:
    """What a checkpoint knows of each subject of a site.

    Parameters
    ----------
    subjects : list of str
        The site's subject ids.
    keys : dict of str to str
        Subject id -> content key (``splits.subject_keys``).
    seen : SeenSubjects or None
        The checkpoint's record; None when it has none.

    Returns
    -------
    dict of str to str
        ``train`` / ``val`` (any of the subject's runs trained / validated on), ``unseen``, or
        ``unknown`` when there is no record.
    """
    if seen is None:
        return {s: "unknown" for s in subjects}
    return {s: seen.status(keys[s]) or "unseen" for s in subjects}


def seen_by_checkpoint(
    meta: dict[str, Any], site_dir: Path, windows: PairedWindows, cache_dir: str | Path | None = None
) -> dict[str, Any]:
    """Label a site's subjects with what a checkpoint knows of them, for reports that use every
    subject (``explain``, ``augment``) and so claim no held-out score.

    Parameters
    ----------
    meta : dict
        The checkpoint's metadata.
    site_dir : Path
        The site's folder.
    windows : PairedWindows
        The site's windows.
    cache_dir : path-like, optional
        The cache whose file-hash memo is used.

    Returns
    -------
    dict
        ``checked_by``, ``subjects`` (id -> ``trained on`` / ``validated on`` / ``never seen`` /
        ``not known``) and ``seen_count`` (trained or validated on; None when not known).

    Raises
    ------
    DataError
        A file of a run cannot be read to hash it.
    """
    try:
        seen = SeenSubjects.from_provenance(meta.get("provenance") or {})
    except ValueError as err:
        seen, why = None, str(err)
    subjects = sorted(set(windows.subjects.tolist()))
    keys = subject_keys(site_dir, windows.runs, windows.subjects, cache_dir) if seen is not None else {}
    status = subject_status(subjects, keys, seen)
    return {
        "checked_by": "content hash of each subject's EEG and target files"
        if seen is not None
        else f"not known: the checkpoint {why}",
        "subjects": {s: STATUS_TEXT[v] for s, v in status.items()},
        "seen_count": None if seen is None else sum(v in ("train", "val") for v in status.values()),
    }


def read_site_record(path: Path) -> dict[str, Any]:
    """A site's own record of its split in a run (the ``split-<run>.json`` a DP site writes beside its ledger).

    Parameters
    ----------
    path : Path
        The record.

    Returns
    -------
    dict
        Its content (checked when ``SeenSubjects.from_provenance`` reads it).

    Raises
    ------
    DataError
        The file cannot be read or is not JSON.
    """
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise DataError(path, f"cannot read this site record ({err})") from None


def read_seen(
    meta: dict[str, Any], checkpoint: Path, allow_seen: bool, site_records: Sequence[dict[str, Any]] = ()
) -> SeenSubjects | None:
    """The checkpoint's record of the subjects it saw.

    Parameters
    ----------
    meta : dict
        The checkpoint's metadata.
    checkpoint : Path
        The checkpoint (named in the error).
    allow_seen : bool
        Accept a checkpoint without a usable record (every subject is then ``unknown``).
    site_records : sequence of dict
        Sites' own records of their split in the run (``SeenSubjects.from_provenance``): what a
        DP site withheld from the server.

    Returns
    -------
    SeenSubjects or None
        None when the checkpoint has no usable record and ``allow_seen`` is set.

    Raises
    ------
    DataError
        No usable record and not ``allow_seen``: a split rebuilt from the seed would depend on
        which subjects load, so no subject could be called held-out.
    """
    try:
        return SeenSubjects.from_provenance(meta.get("provenance") or {}, site_records)
    except ValueError as err:
        if allow_seen:
            return None
        raise DataError(
            checkpoint,
            f"{err}, so no subject can be called held-out (written before subjects were recorded, or trained "
            "without its site folders); retrain it, or pass --allow-seen to score every subject labelled as possibly seen",
        ) from None


def evaluation_split(
    windows: PairedWindows,
    seen: SeenSubjects | None,
    keys: dict[str, str],
    site_dir: Path,
    *,
    allow_seen: bool = False,
    scoring: bool = True,
) -> EvaluationSplit:
    """Choose the subjects scored: those the checkpoint never trained or validated on, by content.

    A subject is seen when any of its runs' data files were in the checkpoint's training or
    validation split at any of its sites, whatever the folders are called and whichever
    subjects load now.

    Parameters
    ----------
    windows : PairedWindows
        The site's windows.
    seen : SeenSubjects or None
        The checkpoint's record (``read_seen``); None: unknown (only with ``allow_seen``).
    keys : dict of str to str
        Subject id -> content key of the site's subjects (``splits.subject_keys``).
    site_dir : Path
        The site's folder (named in errors and notes).
    allow_seen : bool
        Score every subject, each labelled with what the checkpoint knows of it.
    scoring : bool
        False for a site whose windows only teach the baselines (``pooled_sites``): no error
        when none is left to score.

    Returns
    -------
    EvaluationSplit
        The scored windows, the trained-on and validated-on ones, and the note.

    Raises
    ------
    DataError
        When ``scoring`` and no subject is left to score.
    """
    subjects = sorted(set(windows.subjects.tolist()))
    status = subject_status(subjects, keys, seen)
    trained = [s for s in subjects if status[s] == "train"]
    validated = [s for s in subjects if status[s] == "val"]
    unseen = [s for s in subjects if status[s] == "unseen"]
    scored = subjects if allow_seen else unseen
    seen_named = ", ".join(f"{s} ({STATUS_TEXT[status[s]]})" for s in trained + validated)
    if scoring and not scored:
        raise DataError(
            site_dir,
            f"no held-out subject to score: the checkpoint trained or validated on all {len(subjects)} subject(s) "
            f"({seen_named}; matched by file content); --allow-seen scores them, labelled as seen",
        )
    split = SubjectSplit(train=tuple(trained), val=tuple(validated), test=tuple(scored))
    in_training = bool(trained)
    train_mask = np.isin(windows.subjects, trained)
    val_mask = np.isin(windows.subjects, validated)
    test_mask = np.isin(windows.subjects, scored)
    if seen is None:
        note = (
            f"--allow-seen: the checkpoint records no subjects it saw; all {len(subjects)} subject(s) scored, "
            "each possibly seen in training (not a held-out score)"
        )
    elif allow_seen:
        labelled = f", {len(trained + validated)} of them seen by the checkpoint: {seen_named}" if seen_named else ""
        note = f"--allow-seen: all {len(subjects)} subject(s) scored{labelled}"
    else:
        excluded = f"; excluded {len(trained + validated)} seen by the checkpoint: {seen_named}" if seen_named else ""
        note = f"{len(scored)} held-out subject(s) scored (never seen by the checkpoint, by file content){excluded}"
    if in_training:
        note += f"; baselines fitted on the {len(trained)} subject(s) the checkpoint trained on"
        note += " (scored too: in-sample for the baselines as for the model)" if allow_seen else ""
    else:
        note += "; baselines fitted on half of the scored subjects, predicting the other half (2 folds by subject)"
    return EvaluationSplit(
        test=windows.subset(test_mask),
        train=windows.subset(train_mask) if in_training else None,
        split=split,
        site_in_training=in_training,
        note=note,
        val=windows.subset(val_mask) if val_mask.any() else None,
        status=status,
        allow_seen=allow_seen,
    )


def limit_windows(windows: PairedWindows, max_windows: int | None) -> PairedWindows:
    """Keep at most ``max_windows`` windows, spread over the subjects.

    Parameters
    ----------
    windows : PairedWindows
        The windows.
    max_windows : int or None
        The limit; None keeps all.

    Returns
    -------
    PairedWindows
        Each subject's first windows (consecutive in time, so runs still stitch into
        continuous series).
    """
    if max_windows is None or len(windows) <= max_windows:
        return windows
    subjects = sorted(set(windows.subjects.tolist()))
    per_subject = max(1, max_windows // len(subjects))
    keep = np.concatenate([np.flatnonzero(windows.subjects == s)[:per_subject] for s in subjects])
    return windows.subset(np.sort(keep)[:max_windows])


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
    from fedneurogen.shared.data import read_fmri, read_fnirs
    from fedneurogen.shared.data.fmri import repetition_time

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
    from fedneurogen.shared.data import find_runs

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
    from fedneurogen.shared.data.ground_truth_eeg import read_expected_band_power
    from fedneurogen.shared.design import hemodynamic_convolution

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
    from fedneurogen.shared.design import iter_subject_rows
    from fedneurogen.shared.local_path import LocalStatistics, fit_local_path_selected, fmri_layout, fnirs_layout
    from fedneurogen.shared.ridge import sum_statistics
    from fedneurogen.shared.sources import N_PATCHES

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
    from fedneurogen.shared.design import to_virtual_montage

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
# Baselines and scores


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
    from fedneurogen.shared.workflows.baselines import LinearGaussianGenerator

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


def conditioned_classes(labels: np.ndarray, class_names: Sequence[str] | None) -> np.ndarray:
    """The class each window's samples were conditioned on, by name.

    Parameters
    ----------
    labels : numpy.ndarray
        Label indices (``label_indices``; -1: the null label).
    class_names : sequence of str or None
        The checkpoint's classes, in label-index order.

    Returns
    -------
    numpy.ndarray
        object ``[n_windows]``: the class name, or None for a window sampled with the null label.
    """
    names = list(class_names or [])
    return np.array([names[i] if 0 <= i < len(names) else None for i in np.asarray(labels)], dtype=object)


def tstr_scores(
    generators: dict[str, np.ndarray | None], test: PairedWindows, labels: np.ndarray, seed: int = 0
) -> tuple[dict[str, dict[str, float | None]], dict[str, Any]]:  # fmt: skip
    """Train on synthetic, test on real, for each generator, and the train-on-real reference.

    The classifier is the fairness protocol's default downstream one: target features
    (``target_features``: mean and slope per ROI of ``target_parcellation`` for fMRI, per
    channel for fNIRS) and standardised logistic regression (``make_classifier("logreg")``).
    Each generator's *first* sample of every window is its training window (as for the other
    first-sample metrics), so TSTR and TRTR train on the same number of windows and their gap
    measures the data, not the size of the training set. The folds
    (``train_synthetic_test_real``) are the same for every generator and the reference.

    Parameters
    ----------
    generators : dict of str to numpy.ndarray or None
        Name -> ``[K, *test.target.shape]`` samples (None: not drawn).
    test : PairedWindows
        The held-out (real) windows; their subjects group the folds.
    labels : numpy.ndarray
        The class every window's samples were conditioned on (``conditioned_classes``); windows
        with None (sampled with the null label: no class, or one the model lacks) are left out.
    seed : int
        Random state of the logistic regression.

    Returns
    -------
    scores : dict
        Name -> ``tstr_balanced_accuracy`` and ``tstr_macro_f1`` (None where not drawn).
    reference : dict
        ``trtr_balanced_accuracy``, ``trtr_macro_f1``, ``tstr_chance`` (1 / number of classes),
        ``classes``, ``windows`` (labelled ones) and ``classifier``; the scores are None with fewer
        than 2 classes or 2 subjects.
    """
    from fedneurogen.shared.workflows.fairness.protocol import (
        Features,
        make_classifier,
        target_features,
        target_parcellation,
    )

    modality = test.target_modality
    rois = target_parcellation(test.target_positions, 64, seed=0) if modality == "fmri" else None
    real = target_features(test.target, modality, rois)
    columns = Features(real[:0], {"target": (0, real.shape[1])})
    labelled = np.array([c is not None and str(c).strip().lower() not in NO_LABEL for c in labels], dtype=bool)
    classes = sorted({str(c) for c in labels[labelled]})

    def score(generated: np.ndarray) -> dict[str, float | None]:
        return train_synthetic_test_real(
            generated, real, labels, test.subjects, lambda: make_classifier("logreg", columns, classes, seed=seed)
        )  # fmt: skip

    reference = score(real)
    scores = {
        name: None if samples is None else {
            f"tstr_{key}": value for key, value in score(target_features(samples[0], modality, rois)).items()
            if key != "chance"
        }
        for name, samples in generators.items()
    }  # fmt: skip
    return scores, {
        "trtr_balanced_accuracy": reference["balanced_accuracy"],
        "trtr_macro_f1": reference["macro_f1"],
        "tstr_chance": reference["chance"],
        "classes": classes,
        "windows": int(labelled.sum()),
        "classifier": "fairness protocol: target features (mean and slope per ROI/channel), logistic regression; "
        "trained on each window's first sample with its conditioning class, tested on the real windows, "
        "GroupKFold by subject",
    }


def samples_as_data(
    generators: dict[str, np.ndarray | None], test: PairedWindows, seed: int, labels: np.ndarray | None = None,
    tstr_only: dict[str, np.ndarray] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """Score each generator's samples as data, and what the spectra/FC figure shows.

    Parameters
    ----------
    generators : dict of str to numpy.ndarray or None
        Name -> ``[K, *test.target.shape]`` samples (None: not drawn).
    test : PairedWindows
        The held-out windows.
    seed : int
        Seed of the two-sample test and the TSTR classifier.
    labels : numpy.ndarray, optional
        The class each window's samples were conditioned on (``conditioned_classes``); None: no
        TSTR.
    tstr_only : dict of str to numpy.ndarray, optional
        More "generators" (name -> ``[K, *test.target.shape]``) scored by TSTR alone, in the same
        folds (e.g. the labelled point prediction).

    Returns
    -------
    metrics : dict
        Name -> ``sample_metrics`` plus, with ``labels``, ``tstr_balanced_accuracy`` and
        ``tstr_macro_f1`` (None where not drawn); ``real_reference`` (``tstr_scores``' train-on-real
        reference and chance; with ``labels``), ``parcels`` and ``band``.
    figure : dict
        ``freqs``, ``spectra`` and ``fcs`` of the real data and each generator's first sample.
    """
    real = np.asarray(test.target)
    parcels = coarse_parcels(test.target_positions, n_parcels=20)
    args = (test.runs, test.onsets, test.target_sfreq)
    metrics: dict[str, Any] = {
        name: None if samples is None else sample_metrics(samples, real, *args, test.subjects, parcels, seed=seed)
        for name, samples in generators.items()
    }
    if labels is not None:  # one reference and one set of folds for every generator
        tstr, metrics["real_reference"] = tstr_scores({**generators, **(tstr_only or {})}, test, labels, seed)
        for name, row in tstr.items():
            if row is not None:
                metrics[name] = row if metrics.get(name) is None else {**metrics[name], **row}
    metrics["parcels"] = f"{len(np.unique(parcels))} k-means parcels of the target points' positions (fixed seed)"
    metrics["band_hz"] = list(BOLD_BAND)
    shown = {"real": real, **{name: s[0] for name, s in generators.items() if s is not None}}
    spectra, fcs, freqs = {}, {}, np.zeros(0)
    for name, values in shown.items():
        series = tiled_series(values, *args)
        freqs, power = log_spectra(series, test.target_sfreq)
        spectra[name], fcs[name] = power.mean(axis=0), connectivity(series, parcels)
    return metrics, {"freqs": freqs, "spectra": spectra, "fcs": fcs}


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


def scores(pred: np.ndarray | None, real: PairedWindows, top: np.ndarray | None = None) -> dict[str, float] | None:
    """Score predictions against the real windows.

    Parameters
    ----------
    pred : numpy.ndarray or None
        Predictions shaped like ``real.target``.
    real : PairedWindows
        The real windows.
    top : numpy.ndarray, optional
        Point indices of the top-10 % set.

    Returns
    -------
    dict of str to float or None
        ``pcc_temporal``, ``pcc_spatial``, ``ssim`` (and ``pcc_temporal_top10`` with ``top``);
        None when ``pred`` is None.
    """
    if pred is None:
        return None
    out = {
        k: float(v) for k, v in generation_metrics(pred, real.target, real.runs, real.onsets, real.target_sfreq).items()
    }
    if top is not None:
        out["pcc_temporal_top10"] = float(
            temporal_pcc(pred, real.target, real.runs, real.onsets, real.target_sfreq, points=top)
        )
    return out


def calibration(samples: np.ndarray, mean: np.ndarray, real: np.ndarray) -> float:
    """Compare the samples' spread with the point prediction's actual error.

    Parameters
    ----------
    samples : numpy.ndarray
        ``[n_samples, ...]`` samples.
    mean : numpy.ndarray
        The point prediction, shaped like one sample.
    real : numpy.ndarray
        The real values, shaped like ``mean``.

    Returns
    -------
    float
        ``var(sample - mean) / var(real - mean)`` over all held-out values (1: calibrated; aim
        for 0.8-1.25); NaN when the error is zero.
    """
    spread = float(np.mean((samples - mean[None]) ** 2))
    error = float(np.mean((real - mean) ** 2))
    return spread / error if error > 0 else float("nan")


# ----------------------------------------------------------------------------------------------
# The evaluation


def evaluate(
    checkpoint: str | Path,
    site_dir: str | Path,
    out_dir: str | Path,
    *,
    steps: int | None = None,
    max_windows: int | None = None,
    seed: int = 0,
    guidance_scale: float = 1.0,
    n_samples: int = 1,
    baseline_epochs: int = 5,
    batch_size: int = 16,
    device: str | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    pooled_sites: tuple[str | Path, ...] = (),
    allow_seen: bool = False,
    site_records: tuple[str | Path, ...] = (),
) -> dict[str, Any]:
    """Score a checkpoint on a site's held-out subjects; write ``report.json`` and figures.

    The headline is the label-free point prediction (the model's conditional mean, no
    sampling) against the continuous ridge-HRF baseline, over all target points and the top
    10 % most reliable (chosen on the training subjects), next to what is achievable: the noise
    ceiling and, on simulated data, the EEG-informed ceiling. Samples are scored separately.

    Parameters
    ----------
    checkpoint : path-like
        Checkpoint directory (EMA weights are used; its ``preprocess``, ``class_names`` and
        ``provenance`` decide the windows, the labels and which subjects it saw).
    site_dir : path-like
        A BIDS site.
    out_dir : path-like
        Receives ``report.json`` and the PNG figures.
    steps : int, optional
        DDIM steps (default: the model's ``sampling_steps``).
    guidance_scale : float
        Classifier-free guidance scale; each window's samples are conditioned on its own class
        (the null label for classes the model lacks).
    seed : int
        Seed of the sampling noise, the noise baseline and the regressor.
    batch_size : int
        Windows per batch (sampling and regressor training).
    device : str, optional
        ``cpu`` or ``cuda`` (default: CUDA when available).
    cache_dir : path-like, optional
        Cache of preprocessed windows (see ``load_site``).
    progress : bool
        Show progress bars and status spinners on stderr.
    n_samples : int
        Samples drawn per window (0: none). One sample is scored on its own, the mean of all
        of them too, and their spread around the point prediction gives the calibration.
    max_windows : int, optional
        Score at most this many test windows (each subject's first ones).
    baseline_epochs : int
        Training epochs of the regression-transformer baseline (0: not trained).
    pooled_sites : paths
        Other sites the checkpoint was trained on: the ridge-HRF and label-only baselines, the
        EEG-informed ceiling and the top-10 % choice learn from their subjects the checkpoint
        trained (and validated) on too, found by content, so the model and the baselines see the
        same subjects. (The regression transformer reads raw EEG, whose channels differ between
        sites: this site only.)
    allow_seen : bool
        Score subjects the checkpoint trained or validated on too (and accept a checkpoint that
        records none), each labelled in the report; the headline says so.
    site_records : tuple of path-like
        Sites' own records of their split in the run (``split-<run>.json`` beside a DP
        site's ledger): they complete a checkpoint whose DP sites withheld theirs.

    Returns
    -------
    dict
        The report (also in ``out_dir/report.json``): ``point_prediction`` (label-free; the
        headline), ``point_prediction_labels``, ``linear_path`` (the model's linear paths alone:
        what its learned residual adds to), ``sample``, ``samples_mean``, ``calibration``,
        ``baselines`` (``ridge_hrf``, ``label_only``, ``regressor``, ``linear_gaussian_sample``: one
        linear-Gaussian sample), ``sample_metrics`` (``model`` and ``linear_gaussian``: coverage,
        CRPS, spectrum distance, FC similarity, two-sample accuracy of K samples, and
        train-on-synthetic-test-on-real ``tstr_balanced_accuracy`` and ``tstr_macro_f1``;
        ``real_reference``: the same classifier trained on real windows, ``trtr_balanced_accuracy``,
        ``trtr_macro_f1``, and chance, ``tstr_chance``; ``point_prediction_labels``: TSTR of the
        labelled point prediction, the class without sampling), ``noise_baseline``,
        ``ceilings`` (``noise``, ``eeg_informed``), ``relative`` (the model over the baseline
        and over its own linear paths, and as a share of the EEG-informed ceiling), ``held_out`` (``EvaluationSplit.held_out``: each
        subject's status, the excluded ones and why, the seen ones scored), and the split and
        settings. Each score holds ``pcc_temporal``, ``pcc_temporal_top10``, ``pcc_spatial`` and
        ``ssim``.

    Raises
    ------
    ConfigError
        When the checkpoint cannot be used.
    DataError
        When a site has no usable run, no subject left to score (every one seen by the
        checkpoint), the checkpoint records no subjects (without ``allow_seen``), or pooled sites
        have other target points.
    """
    from fedneurogen.shared.workflows.baselines import LabelOnlyBaseline, RegressorBaseline, RidgeHRFBaseline
    from fedneurogen.shared.data import load_site
    from fedneurogen.shared.model import count_parameters, load_checkpoint
    from fedneurogen.shared.workflows.synthesis import generate, label_indices, point_predictions

    checkpoint, site_dir, out_dir = Path(checkpoint), Path(site_dir), Path(out_dir)
    model, meta = load_checkpoint(checkpoint, device=device, use_ema=True)
    preprocess = PreprocessConfig(**(meta.get("preprocess") or {}))
    seen = read_seen(meta, checkpoint, allow_seen, [read_site_record(Path(p)) for p in site_records])
    windows = load_site(site_dir, preprocess, cache_dir=cache_dir, progress=progress)
    keys = subject_keys(site_dir, windows.runs, windows.subjects, cache_dir)
    split = evaluation_split(windows, seen, keys, site_dir, allow_seen=allow_seen)
    test = limit_windows(split.test, max_windows)
    steps = steps or model.config.sampling_steps
    real = test.target
    labels = label_indices(test, meta.get("class_names"))

    # The baselines and the ceiling learn from the training (and validation) subjects the model
    # learnt from: this site's, and those of ``pooled_sites`` when the model was trained on them.
    sites = [(site_dir, split)] + [
        (Path(other), _split_of(other, preprocess, seen, cache_dir, progress)) for other in pooled_sites
    ]
    sites = [(path, sp) for path, sp in sites if sp.train is not None]

    def pooled(which: str, design_of=None) -> PairedWindows | None:
        parts = []
        for path, sp in sites:
            windows_part = getattr(sp, which)
            if windows_part is None:
                continue
            if design_of is not None:
                design = design_of(path, windows_part)
                if design is None:
                    return None
                windows_part = replace(windows_part, design=design)
            parts.append((path.name, windows_part))
        if not parts:
            return None
        return parts[0][1] if len(parts) == 1 else pool_windows(parts)

    with _status(progress, "point prediction and baselines"):
        mean = point_predictions(model, test, batch_size=batch_size)
        mean_labelled = point_predictions(model, test, labels, batch_size=batch_size)
        linear_path = point_predictions(model, test, batch_size=batch_size, residual=False)  # what the residual adds to
        train, val = pooled("train"), pooled("val")
        top = None
        if train is not None:  # one ridge-HRF fit gives the baseline and the top-10 % choice
            ridge = RidgeHRFBaseline().fit(train, val)
            top = reliable_points(train, ridge.predict(train))
            predictions = {"ridge_hrf": ridge.predict(test)}
        else:
            predictions = {"ridge_hrf": fit_predict(RidgeHRFBaseline, None, test)}
        predictions["label_only"] = fit_predict(LabelOnlyBaseline, train, test, val)
        truth = ground_truth_windows(site_dir, test, preprocess)
        informed = None
        ceiling_design = lambda path, w: eeg_informed_design(path, w, preprocess)  # noqa: E731
        ceiling_train, ceiling_test = pooled("train", ceiling_design), ceiling_design(site_dir, test)
        if ceiling_train is not None and ceiling_test is not None:
            ceiling_val = pooled("val", ceiling_design)
            informed = RidgeHRFBaseline().fit(ceiling_train, ceiling_val).predict(replace(test, design=ceiling_test))
        informed_source = None  # the same, from the rhythms at the cortex: what a perfect inverse would give
        source_design = lambda path, w: source_informed_design(path, w, preprocess)  # noqa: E731
        source_train, source_test = pooled("train", source_design), source_design(site_dir, test)
        if source_train is not None and source_test is not None:
            informed_source = source_ceiling(
                source_train, pooled("val", source_design), replace(test, design=source_test)
            )

    regressors: list[RegressorBaseline] = []
    if baseline_epochs > 0:

        def regressor() -> RegressorBaseline:  # same size as the generator (its ModelConfig)
            regressors.append(
                RegressorBaseline(
                    model.config, epochs=baseline_epochs, batch_size=batch_size, seed=seed, device=model.device
                )
            )
            return regressors[-1]

        with _status(progress, f"fitting the regression-transformer baseline ({baseline_epochs} epochs)"):
            predictions["regressor"] = fit_predict(regressor, split.train, test, split.val)  # raw EEG: this site only

    samples = None
    if n_samples > 0:
        samples = generate(
            model, test, labels, n_samples=n_samples, steps=steps, guidance_scale=guidance_scale, seed=seed, batch_size=batch_size,
            progress=progress,
        )  # fmt: skip

    with _status(progress, "fitting the linear-Gaussian generator"):  # the same K as the model (one without samples)
        linear_gaussian = fit_sample(train, test, val, max(n_samples, 1), seed)
    # TSTR: each window's samples (the model's and linear-Gaussian's) are labelled with the class
    # the model conditioned them on; windows it sampled with the null label are left out
    conditioned = conditioned_classes(labels, meta.get("class_names"))
    # and where the class lives: the labelled point prediction alone (no sampling noise), by TSTR
    sample_scores, sample_figure = samples_as_data(
        {"model": samples, "linear_gaussian": linear_gaussian}, test, seed, conditioned,
        tstr_only={"point_prediction_labels": mean_labelled[None]},
    )  # fmt: skip

    headline, linear_scores = scores(mean, test, top), scores(linear_path, test, top)
    ridge = scores(predictions["ridge_hrf"], test, top)
    noise_ceiling = None if truth is None else {
        "pcc_temporal": float(temporal_pcc(truth, real, test.runs, test.onsets, test.target_sfreq)),
        "pcc_temporal_top10": None if top is None else float(temporal_pcc(truth, real, test.runs, test.onsets, test.target_sfreq, points=top)),
    }  # fmt: skip
    informed_scores, source_scores = scores(informed, test, top), scores(informed_source, test, top)
    report: dict[str, Any] = {
        "point_prediction": headline,
        "point_prediction_labels": scores(mean_labelled, test, top),
        "linear_path": linear_scores,
        "sample": scores(samples[0], test, top) if samples is not None else None,
        "samples_mean": scores(samples.mean(axis=0), test, top) if samples is not None and n_samples > 1 else None,
        "calibration": calibration(samples, mean_labelled, real) if samples is not None else None,
        "baselines": {
            **{name: scores(pred, test, top) for name, pred in predictions.items()},
            "linear_gaussian_sample": scores(linear_gaussian[0], test, top) if linear_gaussian is not None else None,
        },
        "sample_metrics": sample_scores,
        "noise_baseline": float(shuffled_baseline(real, test.runs, test.onsets, test.target_sfreq, seed=seed)),
        "ceilings": {"noise": noise_ceiling, "eeg_informed": informed_scores, "eeg_informed_source": source_scores},
        "relative": _relative(headline, ridge, informed_scores, source_scores, linear_scores),
        "top_points": None if top is None else {"count": int(len(top)), "chosen_on": "training subjects (in-sample ridge-HRF PCC)"},
        "baseline_training_sites": [path.name for path, _ in sites],
        "n_test_windows": len(test),
        "test_subjects": sorted(set(test.subjects.tolist())),
        "test_subjects_count": len(set(test.subjects.tolist())),
        "steps": steps,
        "guidance_scale": guidance_scale,
        "samples_drawn": n_samples,
        "seed": seed,
        "modality": test.target_modality,
        "site": str(site_dir),
        "site_in_training": split.site_in_training,
        "held_out": split.held_out(),
        "split": {**split.split.to_dict(), "note": split.note},
        "checkpoint": str(checkpoint),
        "checkpoint_hash": meta.get("content_hash"),
        "parameters": {"model": count_parameters(model), "regressor": count_parameters(regressors[0].model) if regressors else None},
        "baseline_epochs": baseline_epochs,
        "noise_ceiling_source": "derivatives/ground_truth (noise-free signal)" if truth is not None else "no ground truth in the site",
        "eeg_informed_ceiling_source": (
            "ridge on the simulator's expected scalp band power (derivatives/ground_truth/.../eeg), same HRF basis and subjects"
            if informed is not None else "no expected band power in the site (only simulated sites have it)"
        ),
        "eeg_informed_source_ceiling_source": (
            "local ridge (each point from the parcels beneath it) on the simulator's expected rhythm power at the "
            "cortical parcels: what a perfect inverse would give" if informed_source is not None
            else "no expected source power in the site (only simulated sites with linear coupling have it)"
        ),
    }  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    shown = samples[0] if samples is not None else mean
    report["plots"] = [p.name for p in write_plots(out_dir, test, mean, shown, predictions.get("ridge_hrf"), report)]
    report["plots"].append(_samples_figure(out_dir, sample_figure, report).name)
    write_json_atomic(out_dir / REPORT_FILE, report)
    log.debug("wrote %s and %d figure(s)", out_dir / REPORT_FILE, len(report["plots"]))
    return report


def _split_of(
    site: str | Path, preprocess: PreprocessConfig, seen: SeenSubjects | None, cache_dir, progress: bool
) -> EvaluationSplit:
    """A pooled site's subjects the checkpoint trained and validated on (none when it records none)."""
    from fedneurogen.shared.data import load_site

    windows = load_site(site, preprocess, cache_dir=cache_dir, progress=progress)
    keys = subject_keys(site, windows.runs, windows.subjects, cache_dir)
    return evaluation_split(windows, seen, keys, Path(site), scoring=False)


def _ratio(a: dict | None, b: dict | None, key: str) -> float | None:
    """``a[key] / b[key]``; None when either is missing or the reference is 0."""
    if not a or not b or a.get(key) is None or not b.get(key):
        return None
    return float(a[key] / b[key])


def _pooled_sample_metrics(reports: list[dict[str, Any]], weights: np.ndarray) -> dict[str, Any]:
    """Each generator's sample metrics averaged over the sites, weighted by their test windows
    (a metric missing at a site is averaged over the others; None where no site has it)."""
    out: dict[str, Any] = {}
    names = {name for r in reports for name, v in (r.get("sample_metrics") or {}).items() if isinstance(v, dict)}
    for name in sorted(names):
        entries = [((r.get("sample_metrics") or {}).get(name) or {}, w) for r, w in zip(reports, weights)]
        keys = {k for e, _ in entries for k, v in e.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        pooled = {}
        for key in sorted(keys):
            pairs = [(e[key], w) for e, w in entries if isinstance(e.get(key), (int, float)) and math.isfinite(e[key])]
            pooled[key] = float(np.average([v for v, _ in pairs], weights=[w for _, w in pairs])) if pairs else None
        out[name] = pooled
    return out


def _relative(
    model: dict | None,
    ridge: dict | None,
    informed: dict | None,
    source: dict | None = None,
    linear: dict | None = None,
) -> dict[str, float | None]:
    """The headline as a multiple of the ridge baseline and of the model's own linear paths, and
    as a share of the EEG-informed ceilings (scalp, and source space)."""

    return {
        "over_own_linear_path": _ratio(model, linear, "pcc_temporal"),
        "over_ridge_hrf": _ratio(model, ridge, "pcc_temporal"),
        "over_ridge_hrf_top10": _ratio(model, ridge, "pcc_temporal_top10"),
        "share_of_eeg_informed_ceiling": _ratio(model, informed, "pcc_temporal"),
        "share_of_eeg_informed_ceiling_top10": _ratio(model, informed, "pcc_temporal_top10"),
        "share_of_source_ceiling": _ratio(model, source, "pcc_temporal"),
    }


def _status(enabled: bool, message: str):
    import contextlib

    from rich.console import Console

    return Console(stderr=True).status(message) if enabled else contextlib.nullcontext()


#: The rows of a report, in the order tables and plots show them: (label, path into the report).
ROWS = (
    ("model: point prediction (label-free)", ("point_prediction",)),
    ("model: point prediction (labels)", ("point_prediction_labels",)),
    ("model: its linear paths alone", ("linear_path",)),
    ("model: one sample", ("sample",)),
    ("model: mean of samples", ("samples_mean",)),
    ("linear-Gaussian: one sample", ("baselines", "linear_gaussian_sample")),
    ("ridge-HRF (continuous)", ("baselines", "ridge_hrf")),
    ("label only", ("baselines", "label_only")),
    ("regression transformer", ("baselines", "regressor")),
    ("EEG-informed ceiling", ("ceilings", "eeg_informed")),
    ("EEG-informed ceiling (source space)", ("ceilings", "eeg_informed_source")),
    ("noise ceiling", ("ceilings", "noise")),
)
SCORES = ("pcc_temporal", "pcc_temporal_top10", "pcc_spatial", "ssim")


def report_row(report: dict[str, Any], path: tuple[str, ...]) -> dict[str, float | None] | None:
    """Look up one row of a report.

    Parameters
    ----------
    report : dict
        An ``evaluate`` (or ``pool_reports``) report.
    path : tuple of str
        Keys into the report, as in ``ROWS``.

    Returns
    -------
    dict or None
        The row's scores; None where any key is missing.
    """
    value: Any = report
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def pool_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Pool several sites' reports into one.

    Parameters
    ----------
    reports : list of dict
        ``evaluate`` reports.

    Returns
    -------
    dict
        The rows of ``ROWS`` (correlations Fisher-z averaged and SSIM averaged, each weighted by
        the site's test windows; a value missing at any site is None), ``relative``,
        ``noise_baseline``, ``calibration``, summed counts, ``steps`` and ``modality``.
    """
    weights = np.array([r["n_test_windows"] for r in reports], dtype=float)

    def pooled(values: list[float | None], correlation: bool) -> float | None:
        if any(v is None or not math.isfinite(v) for v in values):
            return None
        v = np.asarray(values, dtype=float)
        if correlation:
            return float(np.tanh(np.average(np.arctanh(np.clip(v, -0.999999, 0.999999)), weights=weights)))
        return float(np.average(v, weights=weights))

    pooled_report: dict[str, Any] = {}
    for _, path in ROWS:
        rows = [report_row(r, path) for r in reports]
        if all(row is None for row in rows):
            continue
        metrics = {m: pooled([row.get(m) if row else None for row in rows], m != "ssim") for m in SCORES}
        target = pooled_report
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = metrics
    headline, ridge, informed, source, linear = (
        report_row(pooled_report, p)
        for p in (
            ("point_prediction",), ("baselines", "ridge_hrf"), ("ceilings", "eeg_informed"),
            ("ceilings", "eeg_informed_source"), ("linear_path",),
        )
    )  # fmt: skip
    return {
        **pooled_report,
        "relative": _relative(headline, ridge, informed, source, linear),
        "sample_metrics": _pooled_sample_metrics(reports, weights),
        "noise_baseline": pooled([r["noise_baseline"] for r in reports], True),
        "calibration": pooled([r.get("calibration") for r in reports], False),
        "n_test_windows": int(weights.sum()),
        "test_subjects_count": sum(r["test_subjects_count"] for r in reports),
        "steps": reports[0]["steps"],
        "modality": "+".join(sorted({r["modality"] for r in reports})),
    }


# ----------------------------------------------------------------------------------------------
# Figures and the console table


def write_plots(
    out_dir: Path, test: PairedWindows, mean: np.ndarray, sample: np.ndarray, ridge: np.ndarray | None, report: dict[str, Any]
) -> list[Path]:  # fmt: skip
    """Write the evaluation figures.

    Parameters
    ----------
    out_dir : Path
        Receives the PNG files.
    test : PairedWindows
        The test windows.
    mean : numpy.ndarray
        The point prediction of every test window.
    sample : numpy.ndarray
        One sample (or the point prediction) of every test window.
    ridge : numpy.ndarray or None
        The ridge-HRF baseline's predictions.
    report : dict
        The report (the metric bars and counts).

    Returns
    -------
    list of Path
        ``maps.png`` (mean activation of the test windows' most common task class: real,
        point prediction, one sample), ``timecourses.png`` (its most active points) and
        ``metrics.png`` (the metric bars).
    """
    from fedneurogen.shared.workflows import plots

    tasks = [label for label in test.labels if label != "rest"]
    shown = max(set(tasks), key=tasks.count) if tasks else None
    chosen = test.labels == shown if shown is not None else np.ones(len(test), bool)
    what = f"class '{shown}'" if shown is not None else "all windows"
    # "prediction" = the point prediction (a short name: it titles each map)
    maps = {
        name: values[chosen].mean(axis=(0, 2))
        for name, values in (("real", test.target), ("prediction", mean), ("sample", sample))
    }
    title = f"mean activation, {what} ({int(chosen.sum())} test windows)"
    if test.target_modality == "fmri":
        written = [plots.surface_maps(maps, out_dir / "maps.png", title)]
    else:
        written = [
            plots.channel_maps(maps, test.target_positions, test.target_point_types, out_dir / "maps.png", title)
        ]

    run = test.runs[np.flatnonzero(chosen)[0]]
    in_run = test.runs == run
    series = {
        "real": test.target,
        "point prediction": mean,
        **({"ridge-HRF": ridge} if ridge is not None else {}),
        "sample": sample,
    }
    top = np.argsort(-np.abs(maps["real"]))[:3]
    stitched = {}
    for key, values in series.items():
        (stitched[key],) = stitch_windows(
            values[in_run][:, top], test.runs[in_run], test.onsets[in_run], test.target_sfreq
        ).values()
    times = _covered_times(test.onsets[in_run], test.target_sfreq, test.target.shape[-1])
    names = [test.target_names[i] for i in top]
    written.append(
        plots.time_courses(times, stitched, names, out_dir / "timecourses.png", f"{run}: most active points of {what}")
    )
    counts = f"{report['n_test_windows']} test windows, {report['test_subjects_count']} subject(s)"
    written.append(plots.metric_bars(report, out_dir / "metrics.png", f"{report['modality']}: {counts}"))
    return written


def _samples_figure(out_dir: Path, figure: dict[str, Any], report: dict[str, Any]) -> Path:
    """``samples.png``: real vs generated spectra and coarse FC, side by side."""
    from fedneurogen.shared.workflows import plots

    names = {"linear_gaussian": "linear-Gaussian"}
    rename = lambda d: {names.get(k, k): v for k, v in d.items()}  # noqa: E731
    counts = f"{report['n_test_windows']} held-out windows, {report['test_subjects_count']} subject(s), first sample"
    return plots.spectra_and_connectivity(
        figure["freqs"], rename(figure["spectra"]), rename(figure["fcs"]), out_dir / "samples.png",
        f"{report['modality']} samples as data: {counts}",
    )  # fmt: skip


#: The sample-metric columns of the report's second table: (header, key).
SAMPLE_COLUMNS = (
    ("K", "samples"),
    ("cover 50 %", "coverage_50"),
    ("cover 90 %", "coverage_90"),
    ("CRPS", "crps"),
    ("PSD dist", "psd_distance"),
    ("FC sim", "fc_similarity"),
    ("2-sample acc", "two_sample_accuracy"),
    ("TSTR bal acc", "tstr_balanced_accuracy"),
)


def _covered_times(onsets: np.ndarray, sfreq: float, n_frames: int) -> np.ndarray:
    """Times (s) of the frames ``stitch_windows`` keeps for one run, in order."""
    starts = np.round(onsets * sfreq).astype(int)
    covered = np.zeros(starts.max() + n_frames, dtype=bool)
    for s in starts:
        covered[s : s + n_frames] = True
    return np.flatnonzero(covered) / sfreq


def report_table(report: dict[str, Any]):
    """Build the report as a rich renderable, for the caller to print.

    Parameters
    ----------
    report : dict
        An ``evaluate`` (or ``pool_reports``) report.

    Returns
    -------
    rich.console.Group
        A table of the model's point prediction and samples, the baselines and the ceilings,
        then a line with the headline's ratios and, when the report has a split, its note.
    """
    from rich.console import Group
    from rich.table import Table

    def cell(value: float | None) -> str:
        return "-" if value is None or not math.isfinite(value) else f"{value:.3f}"

    counts = f"{report['n_test_windows']} test windows, {report['test_subjects_count']} subject(s)"
    held_out = report.get("held_out") or {}
    seen = held_out.get("scored_seen") or []
    what = (
        f"[bold red]subjects incl. {len(seen)} the model saw or may have seen (--allow-seen: not held-out)[/]"
        if seen
        else "held-out subjects"
    )
    table = Table(
        title=f"{report['modality']} evaluation on {what}: {counts}",
        title_justify="left",
        caption="SSIM: the global form, over each frame's whole map (not a sliding-window SSIM)",
        caption_justify="left",
    )
    for column in ("", "temporal PCC", "top-10 % PCC", "spatial PCC", "SSIM"):
        table.add_column(column, justify="right" if column else "left")
    for label, path in ROWS:
        row = report_row(report, path)
        if row is None:
            continue
        values = [cell(row.get(m)) for m in SCORES]
        table.add_row(
            *(f"[bold]{v}[/]" for v in (label, *values)) if path == ("point_prediction",) else (label, *values)
        )
    table.add_row("noise baseline (shuffled)", cell(report.get("noise_baseline")), "-", "-", "-")
    rel = report.get("relative") or {}
    parts: list[Any] = [
        table,
        f"point prediction / ridge-HRF: {cell(rel.get('over_ridge_hrf'))} (top-10 %: {cell(rel.get('over_ridge_hrf_top10'))}); "
        f"share of the EEG-informed ceiling: {cell(rel.get('share_of_eeg_informed_ceiling'))}; "
        f"sample calibration: {cell(report.get('calibration'))}",
    ]
    samples_table = _sample_table(report.get("sample_metrics") or {}, cell)
    if samples_table is not None:
        parts.append(samples_table)
    if "split" in report:
        parts.append(f"[dim]{report['split']['note']}[/]")
    if seen:
        parts.append("seen subjects scored: " + ", ".join(f"{e['subject']} ({e['status']})" for e in seen))
    return Group(*parts)


def _sample_table(metrics: dict[str, Any], cell):
    """The samples-as-data table (None when no generator's samples were scored)."""
    from rich.table import Table

    rows = [
        (label, metrics.get(key)) for label, key in (("model samples", "model"), ("linear-Gaussian", "linear_gaussian"))
    ]
    rows = [(label, row) for label, row in rows if row]
    if not rows:
        return None
    reference = metrics.get("real_reference") or {}
    table = Table(
        title="samples as data (held-out subjects)",
        title_justify="left",
        caption="coverage: ideal = nominal; CRPS, PSD dist: lower is better; FC sim: 1 is best; "
        "2-sample acc: 0.5 = indistinguishable; TSTR bal acc: a classifier of the classes trained on "
        f"the first sample, tested on real windows (chance {cell(reference.get('tstr_chance'))}; "
        "trained on real: the last row)",
        caption_justify="left",
    )
    for header, _ in (("", None), *SAMPLE_COLUMNS):
        table.add_column(header, justify="right" if header else "left")
    for label, row in rows:
        table.add_row(label, str(row.get("samples")), *(cell(row.get(key)) for _, key in SAMPLE_COLUMNS[1:]))
    blanks = ["-"] * (len(SAMPLE_COLUMNS) - 1)
    labelled_mean = metrics.get("point_prediction_labels") or {}
    if labelled_mean.get("tstr_balanced_accuracy") is not None:  # the class carried by the mean alone
        table.add_row("point prediction (labels)", *blanks, cell(labelled_mean["tstr_balanced_accuracy"]))
    if reference:  # the train-on-real reference, in the TSTR column
        table.add_row("real (TRTR)", *blanks, cell(reference.get("trtr_balanced_accuracy")))
    return table


def render_report(report: dict[str, Any], console) -> None:
    """Print ``report_table(report)`` on ``console``.

    Parameters
    ----------
    report : dict
        An ``evaluate`` (or ``pool_reports``) report.
    console : rich.console.Console
        The caller's console; nothing is printed elsewhere.
    """
    console.print(report_table(report))
