"""The local ridge path: each target point predicted from the cortical sources beneath it (issue 29).

``fedneurogen.shared.sources`` takes the EEG back to the cortex: band power per source patch,
HRF-convolved (the *source design*, 324 patches x bands x basis functions). Here each target
point gets a small design of its own — the columns of the patches under it — and a ridge of
its own on it:

- an fMRI vertex: its patch and the ``N_NEIGHBOURS - 1`` nearest patches of its hemisphere
  (60 columns); all vertices of a patch share these columns, so they form one *group*;
- an fNIRS channel: the patches under its sensitivity region (``channel_neighbourhoods``), at
  most ``MAX_CHANNEL_PATCHES`` of them; each point (a channel's HbO or HbR) is its own group.

A ``LocalLayout`` says which columns and points every group has (padded with -1).
``LocalStatistics`` are the sufficient statistics of all groups at once: per group the Gram
block of its columns and their cross-products with its points — a few million numbers instead
of the full source design's ``XᵀX`` (3240²) and ``XᵀY`` (3240 x 5124). They add over subjects
and sites, so a federation's summed statistics give exactly the pooled fit, as for the global
path (``fedneurogen.shared.ridge``). ``fit_local_path`` solves every group's ridge with its
penalty chosen on validation statistics.

The model's point prediction mixes the two paths, ``(1 - a) global + a local``; ``a`` is chosen
on validation subjects from additive per-point sums (``mixing_statistics``, ``choose_mixing``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields

import numpy as np

from fedneurogen.shared.ridge import DEFAULT_PENALTIES, RidgeStatistics, fit_ridge, sum_statistics
from fedneurogen.shared.sources import (
    N_PATCHES,
    channel_neighbourhoods,
    local_columns,
    patch_columns,
    source_space,
)

#: The query a federation's server sends, with the solved paths, for a site's mixing sums.
MIXING_REQUEST = "mixing-statistics"
#: An fNIRS channel's local design takes at most this many patches (the nearest first).
MAX_CHANNEL_PATCHES = 16
#: Weights of the local path tried when stacking it with the global path.
MIXING_GRID = tuple(float(a) for a in np.linspace(0.0, 1.0, 11))


@dataclass(frozen=True)
class LocalLayout:
    """Which source-design columns and target points every group of the local path has.

    Attributes
    ----------
    columns : np.ndarray
        ``[G, d]`` int64 source-design columns of each group's local design; -1 pads.
    points : np.ndarray
        ``[G, P]`` int64 target points of each group; -1 pads.
    n_points : int
        Number of target points ``N`` (every point is in exactly one group).
    """

    columns: np.ndarray
    points: np.ndarray
    n_points: int

    @property
    def n_groups(self) -> int:
        """Number of groups ``G``."""
        return int(self.columns.shape[0])

    def point_slots(self) -> np.ndarray:
        """Where every point sits in the flattened ``[G * P]`` group outputs.

        Returns
        -------
        np.ndarray
            ``[N]`` int64 index ``g * P + p`` of point ``n``.
        """
        g, p = np.nonzero(self.points >= 0)
        slots = np.empty(self.n_points, dtype=np.int64)
        slots[self.points[g, p]] = g * self.points.shape[1] + p
        return slots


def _padded(rows: list[np.ndarray], width: int | None = None) -> np.ndarray:
    """Rows of indices as one ``[len(rows), width]`` array, -1 padding (width: the longest row's)."""
    width = max(len(r) for r in rows) if width is None else width
    out = np.full((len(rows), width), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


@functools.lru_cache(maxsize=2)
def fmri_layout(n_per_patch: int) -> LocalLayout:
    """The fMRI layout: one group per patch, its vertices, its own and neighbouring patches' columns.

    Parameters
    ----------
    n_per_patch : int
        Columns per patch in the source design (bands x basis functions).

    Returns
    -------
    LocalLayout
        324 groups over the 5124 ico4 vertices (the same on every site and the server).
    """
    space = source_space()
    columns = np.stack([local_columns(p, n_per_patch) for p in range(N_PATCHES)])
    points = _padded([np.flatnonzero(space.patch == p) for p in range(N_PATCHES)])
    return LocalLayout(columns, points, space.n_sources)


def fnirs_layout(positions_mm: np.ndarray, n_per_patch: int) -> LocalLayout:
    """The fNIRS layout: one group per point, the columns of the patches under its channel.

    Parameters
    ----------
    positions_mm : np.ndarray
        ``[N, 3]`` target point positions (channel midpoints), mm.
    n_per_patch : int
        Columns per patch in the source design.

    Returns
    -------
    LocalLayout
        ``N`` groups of one point each; at most ``MAX_CHANNEL_PATCHES`` patches per channel.
    """
    groups, neighbourhoods = channel_neighbourhoods(positions_mm)
    columns = [patch_columns(neighbourhoods[g][:MAX_CHANNEL_PATCHES], n_per_patch) for g in groups]
    padded = _padded(columns, MAX_CHANNEL_PATCHES * n_per_patch)  # one width for every probe
    n = len(groups)
    return LocalLayout(padded, np.arange(n, dtype=np.int64)[:, None], n)


def _gather(a: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``a[..., index]`` with -1 reading zero."""
    padded = np.concatenate([a, np.zeros(a.shape[:-1] + (1,), dtype=a.dtype)], axis=-1)
    return padded[..., np.where(index >= 0, index, a.shape[-1])]


@dataclass
class LocalStatistics:
    """Sufficient statistics of the local path: every group's Gram block and cross-products.

    Statistics of disjoint rows add up (``a + b``); padded entries are zero.

    Attributes
    ----------
    n : float
        Number of rows.
    sx : np.ndarray
        ``[D]`` sum of the source-design features.
    sy : np.ndarray
        ``[N]`` sum of the targets.
    syy : np.ndarray
        ``[N]`` per-point ``Σy²``.
    sxx : np.ndarray
        ``[G, d, d]`` each group's ``XᵀX`` over its columns.
    sxy : np.ndarray
        ``[G, d, P]`` each group's ``XᵀY`` over its columns and points.
    """

    n: float
    sx: np.ndarray
    sy: np.ndarray
    syy: np.ndarray
    sxx: np.ndarray
    sxy: np.ndarray

    @classmethod
    def from_rows(cls, x: np.ndarray, y: np.ndarray, layout: LocalLayout) -> "LocalStatistics":
        """The statistics of rows of the source design and the targets (float64).

        Parameters
        ----------
        x : np.ndarray
            ``[..., D]`` source design.
        y : np.ndarray
            ``[..., N]`` targets, as many rows.
        layout : LocalLayout
            The groups.

        Returns
        -------
        LocalStatistics
            Their statistics.

        Raises
        ------
        ValueError
            Rows or points that do not match.
        """
        x = np.asarray(x, dtype=np.float64).reshape(-1, np.shape(x)[-1])
        y = np.asarray(y, dtype=np.float64).reshape(-1, np.shape(y)[-1])
        if len(x) != len(y) or y.shape[1] != layout.n_points:
            raise ValueError(f"rows {x.shape} and {y.shape} do not fit a local layout of {layout.n_points} points")
        xg, yg = _gather(x, layout.columns), _gather(y, layout.points)  # [T, G, d], [T, G, P]
        return cls(
            float(len(x)), x.sum(0), y.sum(0), (y * y).sum(0),
            np.einsum("tgd,tge->gde", xg, xg, optimize=True), np.einsum("tgd,tgp->gdp", xg, yg, optimize=True),
        )  # fmt: skip

    @classmethod
    def from_ridge(cls, stats: RidgeStatistics, layout: LocalLayout) -> "LocalStatistics":
        """The local statistics inside a full source design's ``RidgeStatistics`` (its sub-blocks).

        Parameters
        ----------
        stats : RidgeStatistics
            Statistics of the whole source design and all points.
        layout : LocalLayout
            The groups.

        Returns
        -------
        LocalStatistics
            The same rows' local statistics.
        """
        d, n_p = layout.columns.shape[1], layout.points.shape[1]
        sxx, sxy = np.zeros((layout.n_groups, d, d)), np.zeros((layout.n_groups, d, n_p))
        for g, (cols, pts) in enumerate(zip(layout.columns, layout.points)):
            c, p = cols >= 0, pts >= 0
            sxx[g][np.ix_(c, c)] = stats.sxx[np.ix_(cols[c], cols[c])]
            sxy[g][np.ix_(c, p)] = stats.sxy[np.ix_(cols[c], pts[p])]
        return cls(stats.n, stats.sx, stats.sy, stats.syy, sxx, sxy)

    def __add__(self, other: "LocalStatistics") -> "LocalStatistics":
        return LocalStatistics(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def as_arrays(self) -> dict[str, np.ndarray]:
        """The fields as named float64 arrays (to send); ``from_arrays`` inverts it.

        Returns
        -------
        dict of str to np.ndarray
            ``n`` (1 element), ``sx``, ``sy``, ``syy``, ``sxx``, ``sxy``.
        """
        return {f.name: np.atleast_1d(np.asarray(getattr(self, f.name), dtype=np.float64)) for f in fields(self)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "LocalStatistics":
        """The statistics from ``as_arrays``' named arrays.

        Parameters
        ----------
        arrays : dict of str to np.ndarray
            ``n``, ``sx``, ``sy``, ``syy``, ``sxx``, ``sxy``.

        Returns
        -------
        LocalStatistics
            In float64.
        """
        values = {f.name: np.asarray(arrays[f.name], dtype=np.float64) for f in fields(cls)}
        values["n"] = float(values["n"].reshape(-1)[0])
        return cls(**values)

    def group(self, layout: LocalLayout, g: int) -> RidgeStatistics:
        """One group's statistics as an ordinary ridge problem (padding dropped).

        Parameters
        ----------
        layout : LocalLayout
            The groups these statistics were made with.
        g : int
            The group.

        Returns
        -------
        RidgeStatistics
            ``D = `` its columns, ``N = `` its points.
        """
        c, p = layout.columns[g] >= 0, layout.points[g] >= 0
        cols, pts = layout.columns[g][c], layout.points[g][p]
        return RidgeStatistics(
            self.n, self.sx[cols], self.sy[pts], self.sxx[g][np.ix_(c, c)], self.sxy[g][np.ix_(c, p)], self.syy[pts]
        )


@dataclass
class LocalSolution:
    """A fitted local path.

    Attributes
    ----------
    layout : LocalLayout
        The groups.
    coef : np.ndarray
        ``[G, d, P]`` coefficients on the raw source features (0 at padding).
    intercept : np.ndarray
        ``[N]`` intercepts.
    penalties : np.ndarray
        ``[G]`` the chosen relative penalty of each group.
    validation_mse : float | None
        Validation MSE (mean over points and rows) at the chosen penalties.
    """

    layout: LocalLayout
    coef: np.ndarray
    intercept: np.ndarray
    penalties: np.ndarray
    validation_mse: float | None = None

    def predict(self, design: np.ndarray) -> np.ndarray:
        """Predict targets from the source design.

        Parameters
        ----------
        design : np.ndarray
            ``[..., D]`` source design.

        Returns
        -------
        np.ndarray
            float32 ``[..., N]``.
        """
        design = np.asarray(design, dtype=np.float64)
        grouped = np.einsum("...gd,gdp->...gp", _gather(design, self.layout.columns), self.coef, optimize=True)
        flat = grouped.reshape(design.shape[:-1] + (-1,))
        return (flat[..., self.layout.point_slots()] + self.intercept).astype(np.float32)


def fit_local_path(
    train: LocalStatistics,
    val: LocalStatistics | None,
    layout: LocalLayout,
    penalties: tuple[float, ...] = DEFAULT_PENALTIES,
) -> LocalSolution:
    """Every group's ridge on its own columns, its penalty chosen on ``val``.

    Parameters
    ----------
    train : LocalStatistics
        Statistics of the training rows (summed over subjects and sites).
    val : LocalStatistics | None
        The same over validation rows; None: the first penalty everywhere.
    layout : LocalLayout
        The groups the statistics were made with.
    penalties : tuple of float
        Relative penalties to try.

    Returns
    -------
    LocalSolution
        The fit.

    Raises
    ------
    ValueError
        Statistics that do not fit the layout.
    """
    if train.sxx.shape[:2] != layout.columns.shape or len(train.sy) != layout.n_points:
        raise ValueError(
            f"local statistics {list(train.sxx.shape)} over {len(train.sy)} points do not fit a layout of "
            f"{list(layout.columns.shape)} columns and {layout.n_points} points"
        )
    coef = np.zeros(layout.columns.shape + (layout.points.shape[1],))
    intercept, chosen = np.zeros(layout.n_points), np.zeros(layout.n_groups)
    sse, count = 0.0, 0
    for g in range(layout.n_groups):
        c, p = layout.columns[g] >= 0, layout.points[g] >= 0
        solution = fit_ridge(train.group(layout, g), None if val is None else val.group(layout, g), penalties)
        coef[g][np.ix_(c, p)] = solution.coef
        intercept[layout.points[g][p]] = solution.intercept
        chosen[g] = solution.lam
        if solution.validation_mse is not None:
            sse += solution.validation_mse * int(p.sum())
            count += int(p.sum())
    return LocalSolution(layout, coef, intercept, chosen, sse / count if count else None)


def fit_local_path_selected(
    train_parts: list[LocalStatistics],
    val: LocalStatistics | None,
    layout: LocalLayout,
    penalties: tuple[float, ...] = DEFAULT_PENALTIES,
) -> LocalSolution:
    """``fit_local_path`` on the sum of ``train_parts``; without ``val``, penalties by 2-fold.

    As ``ridge.fit_ridge_selected``: with no validation statistics each group's penalty is
    chosen by fitting on every other part and scoring the rest, then refitted on all parts.

    Parameters
    ----------
    train_parts : list of LocalStatistics
        Training statistics (per subject, per fold or per site).
    val : LocalStatistics | None
        Validation statistics.
    layout : LocalLayout
        The groups.
    penalties : tuple of float
        Relative penalties to try.

    Returns
    -------
    LocalSolution
        The fit on all training parts.
    """
    total = sum_statistics(train_parts)
    if val is not None or len(train_parts) < 2:
        return fit_local_path(total, val, layout, penalties)
    trial = fit_local_path(sum_statistics(train_parts[0::2]), sum_statistics(train_parts[1::2]), layout, penalties)
    final = fit_local_path(total, None, layout, penalties[:1])
    for g, lam in enumerate(trial.penalties.tolist()):  # refit each group at its chosen penalty
        c, p = layout.columns[g] >= 0, layout.points[g] >= 0
        solution = fit_ridge(total.group(layout, g), None, (lam,))
        final.coef[g][np.ix_(c, p)] = solution.coef
        final.intercept[layout.points[g][p]] = solution.intercept
    final.penalties, final.validation_mse = trial.penalties, trial.validation_mse
    return final


# ----------------------------------------------------------------------------------------------
# Stacking with the global path


def mixing_statistics(global_pred: np.ndarray, local_pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-point sums that score any mix ``(1 - a) g + a l`` (additive over rows, subjects, sites).

    Parameters
    ----------
    global_pred, local_pred, target : np.ndarray
        ``[..., N]`` the two predictions and the target over the same rows.

    Returns
    -------
    np.ndarray
        ``[6, N]``: ``Σy², Σgy, Σly, Σg², Σgl, Σl²``.
    """
    n = np.shape(target)[-1]
    g, l, y = (np.asarray(a, dtype=np.float64).reshape(-1, n) for a in (global_pred, local_pred, target))
    return np.stack([(y * y).sum(0), (g * y).sum(0), (l * y).sum(0), (g * g).sum(0), (g * l).sum(0), (l * l).sum(0)])


def mixing_errors(stats: np.ndarray, grid: tuple[float, ...] = MIXING_GRID) -> np.ndarray:
    """The summed squared error of every mix on the grid.

    Parameters
    ----------
    stats : np.ndarray
        ``[6, N]`` from ``mixing_statistics`` (summed over validation subjects).
    grid : tuple of float
        Weights ``a`` of the local path.

    Returns
    -------
    np.ndarray
        ``[len(grid)]`` squared errors.
    """
    yy, gy, ly, gg, gl, ll = np.asarray(stats, dtype=np.float64).sum(axis=1)
    a = np.asarray(grid)
    return yy - 2 * ((1 - a) * gy + a * ly) + (1 - a) ** 2 * gg + 2 * a * (1 - a) * gl + a**2 * ll


def choose_mixing(stats: np.ndarray, grid: tuple[float, ...] = MIXING_GRID) -> float:
    """The weight ``a`` of the local path with the smallest summed squared error.

    Parameters
    ----------
    stats : np.ndarray
        ``[6, N]`` from ``mixing_statistics`` (summed over validation subjects).
    grid : tuple of float
        Weights to try.

    Returns
    -------
    float
        The chosen weight.
    """
    return float(grid[int(np.argmin(mixing_errors(stats, grid)))])


# ----------------------------------------------------------------------------------------------
# From windows


def windows_layout(windows) -> LocalLayout:
    """The local layout of a site's windows: the fixed fMRI one, or its fNIRS channels'.

    Parameters
    ----------
    windows : PairedWindows
        Windows with a ``scalp+source`` (or ``source``) design.

    Returns
    -------
    LocalLayout
        Their groups.
    """
    from fedneurogen.shared.design import split_design

    n_per_patch = split_design(windows.design[:1])[1].shape[-1] // N_PATCHES
    if windows.target_modality == "fmri":
        return fmri_layout(n_per_patch)
    return fnirs_layout(windows.target_positions, n_per_patch)


def subject_local_statistics(windows, layout: LocalLayout) -> list[LocalStatistics]:
    """``LocalStatistics`` of the source part of the windows' design, one per subject (each run
    frame once, as ``design.iter_subject_statistics``).

    Parameters
    ----------
    windows : PairedWindows
        Windows with a ``scalp+source`` (or ``source``) design.
    layout : LocalLayout
        The groups (``windows_layout``).

    Returns
    -------
    list of LocalStatistics
        In sorted subject order.
    """
    from fedneurogen.shared.design import iter_subject_rows, split_design

    return [LocalStatistics.from_rows(split_design(x)[1], y, layout) for x, y in iter_subject_rows(windows)]
