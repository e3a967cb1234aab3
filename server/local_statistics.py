"""The sites' local-path statistics and mixing sums, checked before they are summed.

With source features (``design_space = 'scalp+source'``) an exact-statistics site sends, beside
its global ridge statistics, the local path's (``shared.local_path.LocalStatistics``: every
group's Gram block and cross-products) in a ``local`` record, and later, asked with the solved
paths, the per-point sums that choose the mix of the two paths on its held-out subjects
(``mixing_statistics``). The server trusts no site, so each is read here as ``statistics.py``
reads the global ones:

- **Form**: exactly the expected arrays, floating point, of the shapes the layout implies
  (the fixed fMRI layout, or for fNIRS the ``layout.columns`` the site sends, which must agree
  between sites), finite; the same row count as the site's global statistics.
- **Consistency** (every group at once): Gram blocks symmetric and positive semi-definite,
  ``Σy² >= 0``, and Cauchy-Schwarz between cross-products and squares.
- **Magnitude**: rows of mean square at most ``MAX_ROW_MEAN_SQUARE`` per column, as the global
  design (the source design is z-scored per patch and band).

Local statistics are only exact sums: under DP no local path is released (the private path is
the small public-prior regression of ``shared.private_path``), and the model's local share stays 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields

import numpy as np

from fedneurogen.server.statistics import MAX_ROW_MEAN_SQUARE, StatisticsRefused
from fedneurogen.shared.local_path import LocalLayout, LocalStatistics, fmri_layout
from fedneurogen.shared.ridge import sum_statistics
from fedneurogen.shared.sources import N_PATCHES

_NAMES = tuple(f.name for f in fields(LocalStatistics))
_TOL = 1e-6


def read_layout(arrays: Mapping[str, np.ndarray], n_source: int, n_points: int) -> LocalLayout:
    """An fNIRS site's local layout (``layout.columns``: one group per point), checked.

    Parameters
    ----------
    arrays : mapping of str to np.ndarray
        The ``local`` record's arrays.
    n_source : int
        Width of the model's source design.
    n_points : int
        The site's target points.

    Returns
    -------
    LocalLayout
        One group of one point per target point.

    Raises
    ------
    StatisticsRefused
        A missing, non-integer or out-of-range layout.
    """
    columns = arrays.get("layout.columns")
    if columns is None:
        raise StatisticsRefused("local statistics: no layout.columns")
    columns = np.asarray(columns)
    if columns.dtype.kind not in "iu" or columns.ndim != 2 or columns.shape[0] != n_points:
        raise StatisticsRefused(
            f"local layout.columns: {columns.dtype} {list(columns.shape)}, expected int [{n_points}, d]"
        )
    if columns.min() < -1 or columns.max() >= n_source or not (columns >= 0).any(axis=1).all():
        raise StatisticsRefused(f"local layout.columns: entries outside -1..{n_source - 1}, or a point without columns")
    return LocalLayout(columns.astype(np.int64), np.arange(n_points, dtype=np.int64)[:, None], n_points)


def check_local(arrays: Mapping[str, np.ndarray], layout: LocalLayout, n_source: int, rows: float) -> LocalStatistics:
    """One set of local statistics (``train.`` or ``val.``, prefix removed), checked.

    Parameters
    ----------
    arrays : mapping of str to np.ndarray
        ``n``, ``sx``, ``sy``, ``syy``, ``sxx``, ``sxy`` and nothing else.
    layout : LocalLayout
        The groups they must be made with.
    n_source : int
        Width of the source design.
    rows : float
        The row count of the same subjects' global statistics.

    Returns
    -------
    LocalStatistics
        In float64.

    Raises
    ------
    StatisticsRefused
        Naming what is wrong.
    """
    if set(arrays) != set(_NAMES):
        raise StatisticsRefused(f"local statistics arrays: {sorted(arrays)}, expected {sorted(_NAMES)}")
    g, d, p, n = layout.n_groups, layout.columns.shape[1], layout.points.shape[1], layout.n_points
    expected = {"n": (1,), "sx": (n_source,), "sy": (n,), "syy": (n,), "sxx": (g, d, d), "sxy": (g, d, p)}
    values = {}
    for name, shape in expected.items():
        array = np.asarray(arrays[name])
        if array.dtype.kind != "f" or array.shape != shape or not np.isfinite(array).all():
            raise StatisticsRefused(
                f"local statistics {name}: {array.dtype} {list(array.shape)}, expected finite {list(shape)}"
            )
        values[name] = array.astype(np.float64)
    values["n"] = float(values["n"][0])
    if values["n"] != rows:
        raise StatisticsRefused(f"local statistics n: {values['n']:g} rows, the global statistics {rows:g}")
    stats = LocalStatistics(**values)
    _check_consistent(stats, layout)
    return stats


def _check_consistent(s: LocalStatistics, layout: LocalLayout) -> None:
    valid_c = (layout.columns >= 0).astype(np.float64)
    pad = 1.0 - valid_c[:, :, None] * valid_c[:, None, :]
    if np.abs(s.sxx * pad).max(initial=0.0) > 0 or np.abs(s.sxy * (1 - valid_c[:, :, None])).max(initial=0.0) > 0:
        raise StatisticsRefused("local statistics: non-zero entries in the layout's padding")
    scale = max(float(np.abs(s.sxx).max()), 1e-12)
    if np.abs(s.sxx - np.swapaxes(s.sxx, 1, 2)).max() > _TOL * scale:
        raise StatisticsRefused("local statistics sxx: not symmetric")
    traces = np.trace(s.sxx, axis1=1, axis2=2)
    if (
        np.linalg.eigvalsh((s.sxx + np.swapaxes(s.sxx, 1, 2)) / 2).min(axis=1) < -1e-6 * np.maximum(traces, 1e-12)
    ).any():
        raise StatisticsRefused("local statistics sxx: a block that is not positive semi-definite")
    if (s.syy < 0).any():
        raise StatisticsRefused("local statistics syy: negative sums of squares")
    xx = np.diagonal(s.sxx, axis1=1, axis2=2)  # [G, d]
    yy = np.where(layout.points >= 0, s.syy[layout.points.clip(0)], 0.0)  # [G, P]
    if (s.sxy**2 > xx[:, :, None] * yy[:, None, :] * (1 + _TOL) + 1e-9).any():
        raise StatisticsRefused("local statistics sxy: larger than the features' and targets' squares allow")
    mean_square = float(traces.sum()) / (s.n * max(float(valid_c.sum()), 1.0))
    if mean_square > MAX_ROW_MEAN_SQUARE:
        raise StatisticsRefused(
            f"local statistics: rows of mean square {mean_square:.3g} per column (limit {MAX_ROW_MEAN_SQUARE:g})"
        )


def check_mixing(array: np.ndarray, n_points: int) -> np.ndarray:
    """A site's mixing sums (``[6, N]``: ``Σy², Σgy, Σly, Σg², Σgl, Σl²``), checked.

    Parameters
    ----------
    array : np.ndarray
        The reply's ``mixing`` array.
    n_points : int
        The modality's target points.

    Returns
    -------
    np.ndarray
        float64 ``[6, N]``.

    Raises
    ------
    StatisticsRefused
        The wrong shape, non-finite values, negative squares or a cross-product larger than the
        squares allow.
    """
    a = np.asarray(array)
    if a.dtype.kind != "f" or a.shape != (6, n_points) or not np.isfinite(a).all():
        raise StatisticsRefused(f"mixing: {a.dtype} {list(a.shape)}, expected finite [6, {n_points}]")
    a = a.astype(np.float64)
    yy, gy, ly, gg, gl, ll = a
    if (yy < 0).any() or (gg < 0).any() or (ll < 0).any():
        raise StatisticsRefused("mixing: negative sums of squares")
    slack = 1 + _TOL
    if (
        (gy**2 > yy * gg * slack + 1e-9).any()
        or (ly**2 > yy * ll * slack + 1e-9).any()
        or (gl**2 > gg * ll * slack + 1e-9).any()
    ):
        raise StatisticsRefused("mixing: cross-products larger than the squares allow (Cauchy-Schwarz)")
    return a


def solve_local(model, modality: str, sites: list, ridge: dict) -> dict:
    """The local path of ``modality`` from the kept sites' checked local statistics, installed.

    Parameters
    ----------
    model : NeuroGenModel
        With a local path, its global path already solved.
    modality : str
        ``fmri`` or ``fnirs``.
    sites : list of (int, dict, float, float | None, float)
        Per kept site: its node, its ``local`` arrays, the row counts of its global train and
        val statistics, and the factor its global statistics were weighed down by (1: not).
    ridge : dict
        The global path's choice (``solve_ridge_path``).

    Returns
    -------
    dict
        The choice (``mean.solve_local_path``) with ``refused``: the nodes whose local
        statistics failed the checks and why (left out of the local sum only); or
        ``{"fitted": False, "reason": ...}`` with the local share left at 0.
    """
    from fedneurogen.shared.model.mean import solve_local_path

    n_source, n_points = model.config.source_features, None
    if any(not arrays for _, arrays, *_ in sites):
        return {"fitted": False, "reason": "a site sent no local statistics (no source features, or DP)"}
    layout, trains, vals, refused = None, [], [], []
    for node, arrays, train_rows, val_rows, factor in sites:
        part = lambda prefix: {k[len(prefix) + 1 :]: v for k, v in arrays.items() if k.startswith(prefix + ".")}  # noqa: E731
        try:
            n_points = int(np.shape(arrays.get("train.sy", ()))[0]) if n_points is None else n_points
            mine = fmri_layout(n_source // N_PATCHES) if modality == "fmri" else read_layout(arrays, n_source, n_points)
            layout = mine if layout is None else layout
            if not np.array_equal(mine.columns, layout.columns):
                raise StatisticsRefused("its local layout differs from the first site's (another probe?)")
            train = check_local(part("train"), layout, n_source, train_rows)
            val = check_local(part("val"), layout, n_source, val_rows) if val_rows is not None and part("val") else None
        except (StatisticsRefused, IndexError) as err:
            refused.append({"node": node, "reason": f"refused local statistics: {err}"})
            continue
        trains.append(LocalStatistics(**{f: getattr(train, f) * factor for f in _NAMES}))
        if val is not None:
            vals.append(val)
    if not trains:
        return {"fitted": False, "reason": "no site's local statistics passed the checks", "refused": refused}
    choice = solve_local_path(model, modality, trains, sum_statistics(vals) if vals else None, layout, ridge)
    return choice | {"refused": refused}
