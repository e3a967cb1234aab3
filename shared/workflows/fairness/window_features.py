"""The downstream classifiers' features (docs/architecture.md §6): one row per window, in named
column blocks.

``eeg`` (log band power per channel), ``eeg_cov`` (EEG spatial covariance, for the Riemannian
classifier) and ``target`` (fMRI: mean and slope of BOLD per cortical ROI over the window; fNIRS:
mean and slope of each HbO/HbR channel). Every feature is a function of its own window only, so
computing them once for the whole site leaks nothing across folds; anything fitted (scaling,
tangent-space reference, classifier) lives in the scikit-learn pipeline (``classifiers.py``)
and is fitted on training folds only. Not ``fedneurogen.shared.features`` (the EEG band
definitions and filters the whole package shares), which this module builds on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedneurogen.shared.features import band_power
from fedneurogen.shared.recording import PairedWindows


def target_parcellation(positions: np.ndarray, n_rois: int = 64, seed: int = 0) -> np.ndarray:
    """ROI index of each fMRI vertex: k-means on vertex positions.

    Label-free, so it can be computed on the whole site without leaking anything into the
    classifier.

    Parameters
    ----------
    positions : np.ndarray
        ``[n_vertices, 3]`` mm.
    n_rois : int
        Number of ROIs (at most the number of vertices).
    seed : int
        Seed of k-means.

    Returns
    -------
    np.ndarray
        int ``[n_vertices]`` ROI index.
    """
    from sklearn.cluster import KMeans

    positions = np.asarray(positions, dtype=np.float64)
    n_rois = min(n_rois, len(positions))
    return KMeans(n_clusters=n_rois, n_init=1, random_state=seed).fit_predict(positions)


def _mean_and_slope(x: np.ndarray) -> np.ndarray:
    """``[n, units, frames]`` -> ``[n, 2 * units]``: mean over the window, then least-squares slope."""
    t = np.arange(x.shape[-1], dtype=np.float64)
    t -= t.mean()
    slope = (x * t).sum(-1) / max(float((t**2).sum()), 1e-12)
    return np.concatenate([x.mean(-1), slope], axis=1)


def target_features(target: np.ndarray, modality: str, rois: np.ndarray | None = None) -> np.ndarray:
    """Target-modality features: the mean and the slope over the window, per ROI or channel.

    Parameters
    ----------
    target : np.ndarray
        ``[n_windows, n_points, n_frames]`` target windows.
    modality : str
        ``"fmri"``: averaged per ROI first; otherwise (fNIRS) per HbO/HbR point.
    rois : np.ndarray | None
        ``[n_points]`` ROI of each vertex (``target_parcellation``); needed for fMRI.

    Returns
    -------
    np.ndarray
        float32 ``[n_windows, 2 * units]``: all means, then all slopes.

    Raises
    ------
    ValueError
        fMRI without ``rois``.
    """
    target = np.asarray(target, dtype=np.float64)
    if modality == "fmri":
        if rois is None:
            raise ValueError("fMRI target features need the ROI of each vertex (target_parcellation)")
        n_rois = int(rois.max()) + 1
        onehot = np.zeros((n_rois, len(rois)))
        onehot[rois, np.arange(len(rois))] = 1.0
        onehot /= onehot.sum(1, keepdims=True)
        target = np.einsum("rv,nvf->nrf", onehot, target)
    return _mean_and_slope(target).astype(np.float32)


def eeg_band_power(eeg: np.ndarray, sfreq: float, chunk: int = 64) -> np.ndarray:
    """Log band power per channel and band of each EEG window.

    Parameters
    ----------
    eeg : np.ndarray
        ``[n_windows, C, T]`` EEG windows (an array or a ``WindowView``).
    sfreq : float
        EEG rate, Hz.
    chunk : int
        Windows filtered at a time (the filters work in float64).

    Returns
    -------
    np.ndarray
        float32 ``[n_windows, C * n_bands]`` (``EEG_BANDS``).
    """
    parts = [
        band_power(eeg[i : i + chunk], sfreq).reshape(min(chunk, len(eeg) - i), -1) for i in range(0, len(eeg), chunk)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def eeg_covariances(eeg: np.ndarray, chunk: int = 64) -> np.ndarray:
    """OAS-shrunk spatial covariance of each EEG window, flattened.

    Shrinkage keeps average-referenced, rank-deficient EEG positive definite for the
    Riemannian metric.

    Parameters
    ----------
    eeg : np.ndarray
        ``[n_windows, C, T]`` EEG windows (an array or a ``WindowView``).
    chunk : int
        Windows estimated at a time.

    Returns
    -------
    np.ndarray
        float64 ``[n_windows, C * C]``.
    """
    from pyriemann.estimation import Covariances

    estimator = Covariances(estimator="oas")
    parts = [estimator.transform(np.asarray(eeg[i : i + chunk], dtype=np.float64)) for i in range(0, len(eeg), chunk)]
    covs = np.concatenate(parts) if parts else np.zeros((0, 0, 0))
    return covs.reshape(len(covs), -1)


@dataclass
class Features:
    """Downstream features: one row per window, in named column blocks.

    Attributes
    ----------
    values : np.ndarray
        float32 ``[n_windows, n_features]``.
    blocks : dict of str to (int, int)
        Block name (``eeg``, ``eeg_cov``, ``target``) -> its ``[start, stop)`` columns.
    """

    values: np.ndarray
    blocks: dict[str, tuple[int, int]]

    def columns(self, names: Sequence[str]) -> list[int]:
        """Column indices of some blocks.

        Parameters
        ----------
        names : sequence of str
            Block names; absent blocks are skipped.

        Returns
        -------
        list of int
            Their columns, in the order of ``names``.
        """
        return [c for name in names if name in self.blocks for c in range(*self.blocks[name])]


def compute_features(windows: PairedWindows, blocks: Sequence[str], rois: np.ndarray | None = None) -> Features:
    """The feature blocks of every window, concatenated in the order given.

    Parameters
    ----------
    windows : PairedWindows
        The windows.
    blocks : sequence of str
        ``eeg`` (band power), ``eeg_cov`` (covariances) and/or ``target``.
    rois : np.ndarray | None
        fMRI ROI of each vertex (for the ``target`` block).

    Returns
    -------
    Features
        float32 values and the column range of each block.

    Raises
    ------
    ValueError
        An unknown block, or fMRI target features without ``rois``.
    """
    parts, spans, start = [], {}, 0
    for name in blocks:
        if name == "eeg":
            values = eeg_band_power(windows.eeg, windows.eeg_sfreq)
        elif name == "eeg_cov":
            values = eeg_covariances(windows.eeg)
        elif name == "target":
            values = target_features(windows.target, windows.target_modality, rois)
        else:
            raise ValueError(f"unknown feature block {name!r}")
        values = values.reshape(len(windows), -1)
        parts.append(values.astype(np.float32))
        spans[name] = (start, start + values.shape[1])
        start += values.shape[1]
    return Features(np.concatenate(parts, axis=1), spans)
