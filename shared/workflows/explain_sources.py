"""The local path's source view: which cortical patches and EEG bands drive each point's local prediction.

A model with a local path (``fedneurogen.shared.local_path``) predicts each target point from
the band power of the cortical patches beneath it, ``local_n = Σ_k b_kn x_k + c_n`` over its own
columns ``k`` of the source design. Its attributions are exact, as the ridge path's
(``explain.py``): column ``k`` carries ``b_kn (x_k - m_k)``, and its share of the point's
local-prediction variance over the explained frames is ``b_kn (Σ b_n)_k / b_nᵀ Σ b_n`` with ``Σ``
the covariance of the point's columns; the shares of a point sum to 1. Summaries over points
weight each point by its local-prediction variance, as ``explain`` does.

Groups: the column's EEG band; the region of its patch (``explain`` passes the coarse region
of each patch centre: the source the band power was taken from, not the target point); and whether
the patch is the point's own (fMRI: the vertex's patch; fNIRS: the patch under the channel's
projection), which says how local the prediction really is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fedneurogen.shared.design import split_design, unique_frames
from fedneurogen.shared.features import EEG_BANDS
from fedneurogen.shared.local_path import fmri_layout
from fedneurogen.shared.recording import PairedWindows
from fedneurogen.shared.sources import N_PATCHES, source_space

BANDS = tuple(EEG_BANDS)
METHOD = "exact: b_k (Sigma b)_k / b^T Sigma b per point over the explained frames (Sigma: its columns' covariance)"


def _point_columns(head, n_points: int, slots) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per group of points: its source columns ``[d]``, points ``[P]`` and coefficients ``[d, P]``."""
    local = head.local
    coef = local.coef.detach().double().cpu().numpy()
    if local.fixed_layout:
        layout = fmri_layout(local.n_source // N_PATCHES)
        out = []
        for g in range(layout.n_groups):
            c, p = layout.columns[g] >= 0, layout.points[g] >= 0
            out.append((layout.columns[g][c], layout.points[g][p], coef[g][np.ix_(c, p)]))
        return out
    slot_of = np.arange(n_points) if slots is None else np.asarray(slots.cpu())
    out = []
    for point, slot in enumerate(slot_of):
        cols = np.flatnonzero(coef[:, slot])
        if len(cols):
            out.append((cols, np.array([point]), coef[cols][:, [slot]]))
    return out


def local_path_view(
    model, windows: PairedWindows, patch_regions: Sequence[str], max_rows: int | None = None
) -> dict[str, Any] | None:
    """The source view of the model's local path on some windows (None: the model has none in use).

    Parameters
    ----------
    model : NeuroGenModel
        A model whose head for the windows' modality may carry a local path.
    windows : PairedWindows
        Windows with a ``scalp+source`` design.
    patch_regions : sequence of str
        The region of every source patch (324).
    max_rows : int | None
        Use at most this many frames (evenly spaced); None: all.

    Returns
    -------
    dict or None
        ``weight`` (the local path's share ``a`` of the linear prediction), ``band_shares``,
        ``region_shares`` (of the source patches), ``band_by_region``, ``own_patch_share``,
        ``frames``, ``points`` and ``method``.
    """
    head = model.modality_heads[windows.target_modality].mean
    if head.local is None or float(head.local.weight) <= 0:
        return None
    rows_w, rows_f = unique_frames(windows)
    if max_rows is not None and len(rows_w) > max_rows:
        keep = np.unique(np.linspace(0, len(rows_w) - 1, max_rows).round().astype(int))
        rows_w, rows_f = rows_w[keep], rows_f[keep]
    source = split_design(np.asarray(windows.design[rows_w, rows_f], dtype=np.float64))[1]
    n_per_patch = source.shape[1] // N_PATCHES
    names = list(windows.target_names) if windows.target_modality == "fnirs" else None
    n_points = windows.target.shape[1]
    slots = head.ridge.slots(names, n_points)
    regions = list(patch_regions)
    region_names = sorted(set(regions))
    n_basis = n_per_patch // len(BANDS)
    by_band_region = np.zeros((len(BANDS), len(region_names)))
    own, total = 0.0, 0.0
    own_patch = source_space().patch if windows.target_modality == "fmri" else None
    for cols, points, coef in _point_columns(head, n_points, slots):
        x = source[:, cols]
        x = x - x.mean(0)
        cov = x.T @ x / len(x)
        contrib = coef * (cov @ coef)  # [d, P]: each column's covariance with each point's local prediction
        patch, band = cols // n_per_patch, (cols % n_per_patch) // n_basis
        region = np.array([region_names.index(regions[p]) for p in patch])
        np.add.at(by_band_region, (band, region), contrib.sum(1))
        for j, point in enumerate(points):
            mine = own_patch[point] if own_patch is not None else patch[0]  # fNIRS: the projection's patch first
            own += float(contrib[patch == mine, j].sum())
        total += float(contrib.sum())
    if total <= 0:
        return None
    shares = by_band_region / total
    return {
        "weight": float(head.local.weight),
        "band_shares": {b: float(shares[i].sum()) for i, b in enumerate(BANDS)},
        "region_shares": {r: float(shares[:, j].sum()) for j, r in enumerate(region_names)},
        "band_by_region": {
            r: {b: float(shares[i, j]) for i, b in enumerate(BANDS)} for j, r in enumerate(region_names)
        },
        "own_patch_share": own / total,
        "frames": int(len(source)),
        "points": n_points,
        "method": METHOD,
        "regions": "of the source patches the band power comes from (coarse lobes per hemisphere, explain_regions.REGION_SOURCE)",
    }
