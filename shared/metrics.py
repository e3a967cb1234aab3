"""Generation quality metrics (docs/architecture.md §7).

Windows overlap, so per-run time series are first stitched back together (overlapping frames
averaged); temporal PCC is then computed per point (vertex or channel) over each run and
Fisher-z averaged. Spatial PCC and SSIM are computed per frame across points.

SSIM here is the global form of Wang et al. (2004) on one frame's map (means, variances and
covariance over all points), because surface and channel maps have no regular pixel grid for a
sliding window. Inputs are z-scored per point, so the dynamic range L is taken as the range of
the real data.

Samples are scored as data (``sample_metrics``): coverage of the 50 % and 90 % predictive
intervals and the ensemble CRPS of K samples per window; on one sample, the log-power spectrum
distance per point (Welch over the concatenated frames of non-overlapping windows of each run),
the similarity of coarse functional connectivity (k-means parcels of the points' positions) and
a classifier two-sample test (real vs generated, subject-grouped CV, balanced accuracy). Their
usefulness as training data is ``train_synthetic_test_real`` (TSTR): a classifier of the windows'
classes trained on generated windows, tested on real ones (subject-grouped CV).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

#: Labels that mean "no class" (BIDS spells a missing value ``n/a``).
NO_LABEL = ("", "n/a", "none")


def fisher_mean(r: np.ndarray) -> float:
    """Average correlations through Fisher's z (clipped away from +-1).

    Parameters
    ----------
    r : np.ndarray
        Correlations, any shape; non-finite values are ignored.

    Returns
    -------
    float
        ``tanh(mean(arctanh(r)))``; NaN when no value is finite.
    """
    r = np.asarray(r, dtype=np.float64)
    r = r[np.isfinite(r)]
    if r.size == 0:
        return float("nan")
    return float(np.tanh(np.mean(fisher_z(r))))


def fisher_z(r):
    """Fisher's z of correlations, clipped away from +-1 so it stays finite.

    Parameters
    ----------
    r : float or np.ndarray
        Correlations, any shape.

    Returns
    -------
    float or np.ndarray
        ``arctanh(r)``, the same shape as ``r``.
    """
    return np.arctanh(np.clip(r, -0.999999, 0.999999))


def pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r between matching rows of ``a`` and ``b``.

    Parameters
    ----------
    a, b : np.ndarray
        Arrays of the same shape ``[..., n]``; correlated along the last axis.

    Returns
    -------
    np.ndarray
        ``[...]`` correlations; NaN for a row that is constant in either array.
    """
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    denom = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (a * b).sum(-1) / denom, np.nan)


def stitch_windows(values: np.ndarray, runs: np.ndarray, onsets: np.ndarray, sfreq: float) -> dict[str, np.ndarray]:
    """Rebuild continuous series per run from overlapping windows (overlapping frames averaged).

    Parameters
    ----------
    values : np.ndarray
        Windows ``[n_windows, n_points, n_frames]``.
    runs : np.ndarray
        Run key of each window, ``[n_windows]``.
    onsets : np.ndarray
        Onset of each window in seconds from the start of its run, ``[n_windows]``.
    sfreq : float
        Frame rate of ``values``, Hz.

    Returns
    -------
    dict of str to np.ndarray
        ``{run: [n_points, n_times]}``, frames no window covers left out.
    """
    n_frames = values.shape[-1]
    out: dict[str, np.ndarray] = {}
    for run in np.unique(runs):
        idx = np.flatnonzero(runs == run)
        starts = np.round(onsets[idx] * sfreq).astype(int)
        length = starts.max() - starts.min() + n_frames
        total = np.zeros((values.shape[1], length))
        count = np.zeros(length)
        for i, s in zip(idx, starts - starts.min()):
            total[:, s : s + n_frames] += values[i]
            count[s : s + n_frames] += 1
        covered = count > 0
        out[str(run)] = total[:, covered] / count[covered]
    return out


def temporal_pcc(
    pred: np.ndarray,
    real: np.ndarray,
    runs: np.ndarray,
    onsets: np.ndarray,
    sfreq: float,
    points: np.ndarray | None = None,
) -> float:
    """Temporal PCC: Fisher-z mean over points and runs of the per-point correlation over time.

    Windows are first stitched into continuous runs (``stitch_windows``).

    Parameters
    ----------
    pred, real : np.ndarray
        Predicted and real windows ``[n_windows, n_points, n_frames]``.
    runs : np.ndarray
        Run key of each window, ``[n_windows]``.
    onsets : np.ndarray
        Onset of each window in its run, seconds, ``[n_windows]``.
    sfreq : float
        Frame rate, Hz.
    points : np.ndarray | None
        Indices of the points to score; None: all.

    Returns
    -------
    float
        The mean correlation (NaN when none is defined).
    """
    p_runs = stitch_windows(pred, runs, onsets, sfreq)
    r_runs = stitch_windows(real, runs, onsets, sfreq)
    rs = []
    for run, p in p_runs.items():
        r = r_runs[run]
        if points is not None:
            p, r = p[points], r[points]
        rs.append(pearson_rows(p, r))
    return fisher_mean(np.concatenate(rs))


def spatial_pcc(pred: np.ndarray, real: np.ndarray) -> float:
    """Spatial PCC: Fisher-z mean over windows and frames of the correlation across points.

    Parameters
    ----------
    pred, real : np.ndarray
        Predicted and real windows ``[n_windows, n_points, n_frames]``.

    Returns
    -------
    float
        The mean correlation.
    """
    p = np.moveaxis(pred, 1, -1).reshape(-1, pred.shape[1])
    r = np.moveaxis(real, 1, -1).reshape(-1, real.shape[1])
    return fisher_mean(pearson_rows(p, r))


def ssim(pred: np.ndarray, real: np.ndarray) -> float:
    """Mean global SSIM over windows and frames (each frame's map across points).

    The dynamic range ``L`` is the range of ``real`` (1 when it is constant).

    Parameters
    ----------
    pred, real : np.ndarray
        Predicted and real windows ``[n_windows, n_points, n_frames]``.

    Returns
    -------
    float
        The mean SSIM.
    """
    p = np.moveaxis(pred, 1, -1).reshape(-1, pred.shape[1]).astype(np.float64)
    r = np.moveaxis(real, 1, -1).reshape(-1, real.shape[1]).astype(np.float64)
    dynamic_range = float(r.max() - r.min()) or 1.0
    c1, c2 = (0.01 * dynamic_range) ** 2, (0.03 * dynamic_range) ** 2
    mp, mr = p.mean(1), r.mean(1)
    vp, vr = p.var(1), r.var(1)
    cov = ((p - mp[:, None]) * (r - mr[:, None])).mean(1)
    s = ((2 * mp * mr + c1) * (2 * cov + c2)) / ((mp**2 + mr**2 + c1) * (vp + vr + c2))
    return float(np.mean(s))


def shuffled_baseline(real: np.ndarray, runs: np.ndarray, onsets: np.ndarray, sfreq: float, seed: int = 0) -> float:
    """Temporal PCC of a 'generator' that ignores the EEG.

    Each window is replaced by a random other real window (same statistics, no information
    about this window); no window is compared with itself.

    Parameters
    ----------
    real : np.ndarray
        Real windows ``[n_windows, n_points, n_frames]``.
    runs : np.ndarray
        Run key of each window, ``[n_windows]``.
    onsets : np.ndarray
        Onset of each window in its run, seconds, ``[n_windows]``.
    sfreq : float
        Frame rate, Hz.
    seed : int
        Seed of the permutation.

    Returns
    -------
    float
        The chance-level temporal PCC.
    """
    rng = np.random.default_rng(seed)
    n = len(real)
    perm = rng.permutation(n)
    # avoid fixed points so no window is compared with itself
    fixed = perm == np.arange(n)
    perm[fixed] = (perm[fixed] + 1) % n
    return temporal_pcc(real[perm], real, runs, onsets, sfreq)


def generation_metrics(
    pred: np.ndarray, real: np.ndarray, runs: np.ndarray, onsets: np.ndarray, sfreq: float
) -> dict[str, float]:
    """The generation metrics of predicted vs real target windows.

    Parameters
    ----------
    pred, real : np.ndarray
        Predicted and real windows ``[n_windows, n_points, n_frames]``.
    runs : np.ndarray
        Run key of each window, ``[n_windows]``.
    onsets : np.ndarray
        Onset of each window in its run, seconds, ``[n_windows]``.
    sfreq : float
        Frame rate, Hz.

    Returns
    -------
    dict of str to float
        ``pcc_temporal`` (``temporal_pcc``), ``pcc_spatial`` (``spatial_pcc``) and ``ssim``.
    """
    return {
        "pcc_temporal": temporal_pcc(pred, real, runs, onsets, sfreq),
        "pcc_spatial": spatial_pcc(pred, real),
        "ssim": ssim(pred, real),
    }


# ----------------------------------------------------------------------------------------------
# Samples as data: distributions, spectra, connectivity, distinguishability

#: Band of the power-spectrum distance for BOLD, Hz (below: drift; above: mostly noise at usual TRs).
BOLD_BAND = (0.01, 0.15)


def interval_coverage(
    samples: np.ndarray, real: np.ndarray, levels: tuple[float, ...] = (0.5, 0.9)
) -> dict[str, float]:
    """Share of real values inside the central predictive intervals, from their ranks (PIT).

    A real value's rank among K samples from the right distribution is uniform on 0..K, so its
    probability integral transform is uniform on ``[r, r + 1] / (K + 1)`` (ties spread it over
    their ranks); the coverage of a central interval ``[(1 - L) / 2, (1 + L) / 2]`` is the
    expected share of that PIT inside it, exactly L for a calibrated generator at any K. (The
    span of the K samples' quantiles is not: 8 draws enclose a ninth only 7/9 of the time, so a
    calibrated generator would read 0.78 at 90 % that way.)

    Parameters
    ----------
    samples : np.ndarray
        ``[K, ...]`` samples (K >= 2).
    real : np.ndarray
        The real values, shaped like one sample.
    levels : tuple of float
        Nominal levels of the central intervals.

    Returns
    -------
    dict of str to float
        ``coverage_50`` etc. (perfect: the nominal level).

    Raises
    ------
    ValueError
        Fewer than two samples.
    """
    if len(samples) < 2:
        raise ValueError("coverage needs at least two samples")
    k = len(samples)
    low = np.sum(samples < real[None], axis=0) / (k + 1)
    high = (np.sum(samples <= real[None], axis=0) + 1) / (k + 1)
    out = {}
    for level in levels:
        inside = np.minimum(high, (1 + level) / 2) - np.maximum(low, (1 - level) / 2)
        out[f"coverage_{round(100 * level)}"] = float(np.mean(np.clip(inside, 0, None) / (high - low)))
    return out


def ensemble_crps(samples: np.ndarray, real: np.ndarray) -> float:
    """Mean fair ensemble CRPS: ``E|X - y| - E|X - X'| / 2`` over the K samples, averaged over values.

    ``E|X - X'|`` is the mean over the K (K - 1) pairs of distinct samples (Ferro 2014's fair
    CRPS): unbiased for the CRPS of the distribution the samples come from, so the best score
    goes to the right spread at any K. The plain estimator (over all K^2 pairs, the zero
    self-pairs included) favours ensembles too narrow: with K = 4 Gaussian samples its
    expected score is least at 0.63 x the true standard deviation.

    Parameters
    ----------
    samples : np.ndarray
        ``[K, ...]`` samples.
    real : np.ndarray
        The real values, shaped like one sample.

    Returns
    -------
    float
        0 for samples all equal to the real value; ``1/sqrt(pi)`` (0.564) for a standard-normal
        ensemble scored on independent standard-normal values (large K).
    """
    k = len(samples)
    x = np.sort(samples.astype(np.float64), axis=0)
    accuracy = np.mean(np.abs(x - real[None]), axis=0)
    # sum over pairs |x_i - x_j| = 2 * sum_i (2i - K - 1) x_(i) for sorted x (i from 1)
    weights = (2 * np.arange(1, k + 1) - k - 1).reshape(-1, *([1] * real.ndim))
    spread = 2 * np.sum(weights * x, axis=0) / (k * (k - 1)) if k > 1 else 0.0
    return float(np.mean(accuracy - spread / 2))


def tiled_series(
    values: np.ndarray, runs: np.ndarray, onsets: np.ndarray, sfreq: float
) -> dict[str, np.ndarray]:  # fmt: skip
    """Concatenate the frames of non-overlapping windows of each run (earliest first).

    Overlapping *samples* must not be averaged (as ``stitch_windows`` does): independent draws
    would smooth each other and lose power. Each run keeps windows that do not overlap the last
    kept one, and their frames are concatenated in time order.

    Parameters
    ----------
    values : np.ndarray
        Windows ``[n_windows, n_points, n_frames]``.
    runs : np.ndarray
        Run key of each window.
    onsets : np.ndarray
        Onset of each window in its run, seconds.
    sfreq : float
        Frame rate, Hz.

    Returns
    -------
    dict of str to np.ndarray
        ``{run: [n_points, n_kept * n_frames]}``.
    """
    n_frames = values.shape[-1]
    out: dict[str, np.ndarray] = {}
    for run in np.unique(runs):
        idx = np.flatnonzero(runs == run)
        idx = idx[np.argsort(onsets[idx], kind="stable")]
        kept, end = [], -np.inf
        for i in idx:
            start = int(round(onsets[i] * sfreq))
            if start >= end:
                kept.append(i)
                end = start + n_frames
        out[str(run)] = np.concatenate([values[i] for i in kept], axis=-1)
    return out


def log_spectra(
    series: dict[str, np.ndarray], sfreq: float, band: tuple[float, float] = BOLD_BAND
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Welch log10 power per point in a band, averaged over runs.

    Parameters
    ----------
    series : dict of str to np.ndarray
        ``{run: [n_points, n_times]}`` (``tiled_series``).
    sfreq : float
        Frame rate, Hz.
    band : tuple of float
        Frequencies kept, Hz.

    Returns
    -------
    freqs : np.ndarray
        The frequencies in the band.
    log_power : np.ndarray
        ``[n_points, n_freqs]`` mean over runs of log10 power (runs of one length segment: the
        shortest run's length, at most 64 frames).
    """
    from scipy.signal import welch

    nperseg = min(64, min(v.shape[-1] for v in series.values()))
    logs = []
    for values in series.values():
        freqs, power = welch(values, fs=sfreq, nperseg=nperseg, axis=-1)
        logs.append(np.log10(np.maximum(power, 1e-20)))
    keep = (freqs >= band[0]) & (freqs <= band[1])
    if not keep.any():  # a band narrower than the resolution: the nearest bin
        keep = np.abs(freqs - np.mean(band)) == np.abs(freqs - np.mean(band)).min()
    return freqs[keep], np.mean(logs, axis=0)[:, keep]


def psd_distance(
    generated: np.ndarray, real: np.ndarray, runs: np.ndarray, onsets: np.ndarray, sfreq: float,
    band: tuple[float, float] = BOLD_BAND,
) -> float:  # fmt: skip
    """Power-spectrum distance: per point, the RMS difference of log10 Welch power in the band.

    Parameters
    ----------
    generated, real : np.ndarray
        Windows ``[n_windows, n_points, n_frames]``.
    runs : np.ndarray
        Run key of each window.
    onsets : np.ndarray
        Onset of each window in its run, seconds.
    sfreq : float
        Frame rate, Hz.
    band : tuple of float
        Frequencies compared, Hz.

    Returns
    -------
    float
        Mean over points (0: the same spectra; 1: a factor 10 in power everywhere).
    """
    _, g = log_spectra(tiled_series(generated, runs, onsets, sfreq), sfreq, band)
    _, r = log_spectra(tiled_series(real, runs, onsets, sfreq), sfreq, band)
    return float(np.mean(np.sqrt(np.mean((g - r) ** 2, axis=1))))


def coarse_parcels(positions: np.ndarray, n_parcels: int = 20, seed: int = 0) -> np.ndarray:
    """A fixed coarse parcellation: k-means on the points' positions.

    Parameters
    ----------
    positions : np.ndarray
        ``[n_points, 3]``.
    n_parcels : int
        Parcels (at most the number of points).
    seed : int
        Seed of k-means (fixed: the parcels never depend on the data's values).

    Returns
    -------
    np.ndarray
        int ``[n_points]`` parcel of each point.
    """
    from sklearn.cluster import KMeans

    positions = np.asarray(positions, dtype=np.float64)
    n = min(n_parcels, len(positions))
    return KMeans(n_clusters=n, n_init=1, random_state=seed).fit_predict(positions)


def parcel_means(values: np.ndarray, parcels: np.ndarray) -> np.ndarray:
    """Average the points of each parcel (axis 1 of ``values``).

    Parameters
    ----------
    values : np.ndarray
        ``[n, n_points, ...]``.
    parcels : np.ndarray
        Parcel of each point.

    Returns
    -------
    np.ndarray
        ``[n, n_parcels, ...]``.
    """
    ids = np.unique(parcels)
    return np.stack([values[:, parcels == p].mean(axis=1) for p in ids], axis=1)


def connectivity(series: dict[str, np.ndarray], parcels: np.ndarray) -> np.ndarray:
    """Functional connectivity of the parcels: correlation matrix, Fisher-z averaged over runs.

    Parameters
    ----------
    series : dict of str to np.ndarray
        ``{run: [n_points, n_times]}``.
    parcels : np.ndarray
        Parcel of each point.

    Returns
    -------
    np.ndarray
        ``[n_parcels, n_parcels]``.
    """
    zs = []
    for values in series.values():
        fc = np.corrcoef(parcel_means(values[None], parcels)[0])
        zs.append(np.arctanh(np.clip(np.nan_to_num(fc), -0.999999, 0.999999)))
    return np.tanh(np.mean(zs, axis=0))


def fc_similarity(
    generated: np.ndarray, real: np.ndarray, runs: np.ndarray, onsets: np.ndarray, sfreq: float, parcels: np.ndarray
) -> float:  # fmt: skip
    """Correlation between the upper triangles of the real and the generated FC matrices.

    Parameters
    ----------
    generated, real : np.ndarray
        Windows ``[n_windows, n_points, n_frames]``.
    runs : np.ndarray
        Run key of each window.
    onsets : np.ndarray
        Onset of each window in its run, seconds.
    sfreq : float
        Frame rate, Hz.
    parcels : np.ndarray
        Parcel of each point (``coarse_parcels``).

    Returns
    -------
    float
        1 for the same connectivity; about 0 for independent noise.
    """
    upper = np.triu_indices(len(np.unique(parcels)), k=1)
    g = connectivity(tiled_series(generated, runs, onsets, sfreq), parcels)[upper]
    r = connectivity(tiled_series(real, runs, onsets, sfreq), parcels)[upper]
    return float(pearson_rows(g, r))


def two_sample_accuracy(
    generated: np.ndarray, real: np.ndarray, subjects: np.ndarray, parcels: np.ndarray, seed: int = 0
) -> float:  # fmt: skip
    """Classifier two-sample test: can logistic regression tell real from generated windows?

    Features: each window's parcel means at every frame, standardised. Cross-validated by
    subject (a subject's real and generated windows are always in the same fold).

    Parameters
    ----------
    generated, real : np.ndarray
        Windows ``[n_windows, n_points, n_frames]`` (generated window i is made for real window i).
    subjects : np.ndarray
        Subject of each window.
    parcels : np.ndarray
        Parcel of each point.
    seed : int
        Seed of the fold assignment.

    Returns
    -------
    float
        Balanced accuracy (0.5: indistinguishable; 1: always told apart); NaN with one subject.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    ids = np.unique(subjects)
    if len(ids) < 2:
        return float("nan")
    x = np.concatenate([parcel_means(real, parcels), parcel_means(generated, parcels)]).reshape(2 * len(real), -1)
    y = np.repeat([0, 1], len(real))
    groups = np.concatenate([subjects, subjects])
    predicted = np.zeros_like(y)
    for train, test in GroupKFold(n_splits=min(5, len(ids))).split(x, y, groups):
        classifier = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000, random_state=seed))
        predicted[test] = classifier.fit(x[train], y[train]).predict(x[test])
    return float(balanced_accuracy_score(y, predicted))


def train_synthetic_test_real(
    generated: np.ndarray, real: np.ndarray, labels: np.ndarray, subjects: np.ndarray,
    make_classifier: Callable[[], Any], n_folds: int = 5,
) -> dict[str, float | None]:  # fmt: skip
    """Train on synthetic, test on real (TSTR): do generated windows teach a classifier the classes?

    Subject-grouped cross-validation (``GroupKFold``, at most ``n_folds`` folds): each fold's
    classifier is trained on the *generated* windows made for the training-fold subjects, each
    labelled with the class it was generated for, and tested on the *real* windows of the
    test-fold subjects, so no subject is on both sides. Passing the real windows as
    ``generated`` gives the reference, train on real (TRTR), with the same folds and classifier.
    Balanced accuracy and macro F1 are computed over the pooled out-of-fold predictions.

    Parameters
    ----------
    generated, real : np.ndarray
        Feature rows ``[n_windows, n_features]``; generated row i was made for real window i.
    labels : np.ndarray
        Class of each window (generated row i was conditioned on ``labels[i]``); None, empty and
        ``n/a`` mean none: those windows are left out.
    subjects : np.ndarray
        Subject of each window.
    make_classifier : callable
        Returns a fresh, unfitted scikit-learn classifier.
    n_folds : int
        Most folds (fewer with fewer subjects).

    Returns
    -------
    dict
        ``balanced_accuracy``, ``macro_f1`` and ``chance`` (1 / number of classes); all None with
        fewer than 2 classes or 2 subjects among the labelled windows.
    """
    from sklearn.metrics import balanced_accuracy_score, f1_score
    from sklearn.model_selection import GroupKFold

    labels = np.array(["" if c is None else str(c) for c in np.asarray(labels, dtype=object)], dtype=object)
    keep = np.array([c.strip().lower() not in NO_LABEL for c in labels], dtype=bool)
    x_gen, x_real = np.asarray(generated)[keep], np.asarray(real)[keep]
    y, groups = labels[keep].astype(str), np.asarray(subjects)[keep]
    classes, ids = np.unique(y), np.unique(groups)
    out: dict[str, float | None] = {"balanced_accuracy": None, "macro_f1": None, "chance": None}
    if len(classes) < 2 or len(ids) < 2:
        return out
    predicted = np.empty_like(y)
    for train, test in GroupKFold(n_splits=min(n_folds, len(ids))).split(x_real, y, groups):
        seen = np.unique(y[train])
        if len(seen) < 2:  # one class in the training fold: the classifier can only answer it
            predicted[test] = seen[0]
        else:
            predicted[test] = make_classifier().fit(x_gen[train], y[train]).predict(x_real[test])
    out["balanced_accuracy"] = float(balanced_accuracy_score(y, predicted))
    out["macro_f1"] = float(f1_score(y, predicted, labels=classes, average="macro", zero_division=0))
    out["chance"] = 1.0 / len(classes)
    return out


def _mean_over(samples: np.ndarray, metric: Callable[[np.ndarray], float | None]) -> float | None:
    """``metric`` of each sample's windows, averaged (None or NaN where any is)."""
    values = [metric(x) for x in samples]
    if any(v is None for v in values):
        return None
    return float(np.mean(values))


def sample_metrics(
    samples: np.ndarray, real: np.ndarray, runs: np.ndarray, onsets: np.ndarray, sfreq: float,
    subjects: np.ndarray, parcels: np.ndarray, band: tuple[float, float] = BOLD_BAND, seed: int = 0,
) -> dict[str, float | None]:  # fmt: skip
    """The sample metrics of a generator's K samples of every held-out window.

    Parameters
    ----------
    samples : np.ndarray
        ``[K, n_windows, n_points, n_frames]``.
    real : np.ndarray
        The real windows ``[n_windows, n_points, n_frames]``.
    runs : np.ndarray
        Run key of each window.
    onsets : np.ndarray
        Onset of each window in its run, seconds.
    sfreq : float
        Frame rate, Hz.
    subjects : np.ndarray
        Subject of each window.
    parcels : np.ndarray
        Parcel of each point.
    band : tuple of float
        Band of the spectrum distance, Hz.
    seed : int
        Seed of the two-sample test's classifier.

    Returns
    -------
    dict
        ``coverage_50``, ``coverage_90`` (None with one sample), ``coverage_error`` (mean absolute
        gap to the nominal levels), ``crps``, and, averaged over the K samples, ``psd_distance``,
        ``fc_similarity`` and ``two_sample_accuracy``; ``samples`` (K).
    """
    out: dict[str, float | None] = {"coverage_50": None, "coverage_90": None, "coverage_error": None}
    if len(samples) >= 2:
        out.update(interval_coverage(samples, real))
        out["coverage_error"] = float(np.mean([abs(out["coverage_50"] - 0.5), abs(out["coverage_90"] - 0.9)]))
    out["crps"] = ensemble_crps(samples, real)
    # each sample is a full set of generated windows: the per-sample metrics are averaged over
    # them (one set's two-sample accuracy on 40 windows a side has a standard deviation near 0.06)
    out["psd_distance"] = _mean_over(samples, lambda x: psd_distance(x, real, runs, onsets, sfreq, band))
    out["fc_similarity"] = _mean_over(samples, lambda x: fc_similarity(x, real, runs, onsets, sfreq, parcels))
    out["two_sample_accuracy"] = _mean_over(samples, lambda x: two_sample_accuracy(x, real, subjects, parcels, seed))
    out["samples"] = int(len(samples))
    return out
