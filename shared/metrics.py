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
    """Average correlations through Fisher's z (clipped away from +-1)."""
    r = np.asarray(r, dtype=np.float64)
    r = r[np.isfinite(r)]
    if r.size == 0:
        return float("nan")
    return float(np.tanh(np.mean(np.arctanh(np.clip(r, -0.999999, 0.999999)))))


def pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r between matching rows of ``a`` and ``b`` (``[..., n]``); NaN for flat rows."""
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    denom = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (a * b).sum(-1) / denom, np.nan)


def stitch_windows(values: np.ndarray, runs: np.ndarray, onsets: np.ndarray, sfreq: float) -> dict[str, np.ndarray]:
    """Rebuild continuous ``[n_points, n_times]`` series per run from overlapping windows."""
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
    """Fisher-z mean over points and runs of the per-point correlation over time."""
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
    """Fisher-z mean over windows and frames of the correlation across points."""
    p = np.moveaxis(pred, 1, -1).reshape(-1, pred.shape[1])
    r = np.moveaxis(real, 1, -1).reshape(-1, real.shape[1])
    return fisher_mean(pearson_rows(p, r))


def ssim(pred: np.ndarray, real: np.ndarray) -> float:
    """Mean global SSIM over windows and frames (maps across points)."""
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
    """Temporal PCC of a 'generator' that ignores the EEG: each window replaced by a random
    other real window (same statistics, no information about this window)."""
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
    """``pcc_temporal``, ``pcc_spatial`` and ``ssim`` of predicted vs real target windows."""
    return {
        "pcc_temporal": temporal_pcc(pred, real, runs, onsets, sfreq),
        "pcc_spatial": spatial_pcc(pred, real),
        "ssim": ssim(pred, real),
    }
