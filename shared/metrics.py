"""Generation quality metrics (docs/architecture.md §7).

Windows overlap, so per-run time series are first stitched back together (overlapping frames
averaged); temporal PCC is then computed per point (vertex or channel) over each run and
Fisher-z averaged. Spatial PCC and SSIM are computed per frame across points.

SSIM here is the global form of Wang et al. (2004) on one frame's map (means, variances and
covariance over all points), because surface and channel maps have no regular pixel grid for a
sliding window. Inputs are z-scored per point, so the dynamic range L is taken as the range of
the real data.
"""

from __future__ import annotations

import numpy as np


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
    return float(np.tanh(np.mean(np.arctanh(np.clip(r, -0.999999, 0.999999)))))


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
