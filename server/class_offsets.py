"""The sites' per-class residual sums, checked before they are summed: the class offsets.

After the ridge path is solved, an exact-statistics site is asked (with the solved paths) for
each class's summed residual of its training windows and of its held-out ones
(``shared.model.crossfit.ClassResiduals``: sums and sums of squares per class, frame and point,
windows and subjects per class). The server sums them, sets each class's mean as the ridge
path's class offset (a class needs windows of ``MIN_CLASS_SUBJECTS`` subjects over all sites),
and keeps the offsets only where they lower the held-out windows' summed error. The server
trusts no site, so each reply is read here first:

- **Form**: exactly the expected arrays, floating point, ``[C, F, N]`` sums and squares and
  ``[C]`` counts, finite; counts whole and non-negative, subjects at most windows, nothing where
  a class has no window.
- **Consistency**: squares non-negative and Cauchy-Schwarz, ``(Σr)² <= n Σr²`` per class, frame
  and point: a site cannot send a large offset without the squares that go with it.
- **Magnitude**: each class's residual mean square per entry at most ``MAX_ROW_MEAN_SQUARE``
  times the targets' in the sites' summed ridge statistics (about 1 for z-scored fMRI).
- **Weight**: no site's windows count more than ``MAX_SHARE_RATIO`` times the median site's
  (``cap_windows``).

Exact sums only: a site refuses the query in a DP run, and releases no class of fewer subjects
than its ``min-subjects-per-release``.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Mapping

import numpy as np

from fedneurogen.server.statistics import MAX_ROW_MEAN_SQUARE, MAX_SHARE_RATIO, StatisticsRefused
from fedneurogen.shared.model.crossfit import ClassResiduals, install_class_offsets

#: The arrays of one part (``train`` or ``val``) of a reply (``ClassResiduals.to_arrays``).
PART_ARRAYS = ("sums", "squares", "windows", "subjects")
_TOL = 1e-6


def check_part(
    arrays: Mapping[str, np.ndarray], part: str, shape: tuple[int, int, int], target_mean_square: float
) -> ClassResiduals | None:  # fmt: skip
    """One part of a site's reply, checked (None when the site sent no such part).

    Parameters
    ----------
    arrays : mapping of str to np.ndarray
        The reply's arrays.
    part : str
        ``train`` or ``val``.
    shape : tuple of int
        ``(C, F, N)``: the model's classes, frames and the modality's points.
    target_mean_square : float
        The targets' mean square per frame and point in the sites' summed ridge statistics
        (about 1 for z-scored fMRI): a residual's is at most ``MAX_ROW_MEAN_SQUARE`` times it.

    Returns
    -------
    ClassResiduals | None
        The checked sums.

    Raises
    ------
    StatisticsRefused
        Missing or extra arrays, wrong shapes or types, non-finite values, impossible counts,
        squares that do not cover the sums, or residuals far larger than the targets.
    """
    names = {f"{part}.{k}" for k in PART_ARRAYS}
    present = {k for k in arrays if k.startswith(f"{part}.")}
    if not present:
        return None
    if present != names:
        raise StatisticsRefused(f"class residuals: {part} needs exactly {sorted(names)}, got {sorted(present)}")
    got = {k: np.asarray(arrays[f"{part}.{k}"]) for k in PART_ARRAYS}
    expected = {"sums": shape, "squares": shape, "windows": shape[:1], "subjects": shape[:1]}
    for key, a in got.items():
        if a.dtype.kind != "f" or a.shape != expected[key] or not np.isfinite(a).all():
            raise StatisticsRefused(
                f"class residuals {part}.{key}: {a.dtype} {list(a.shape)}, expected finite float {list(expected[key])}"
            )
    sums, squares, windows, subjects = (got[k].astype(np.float64) for k in PART_ARRAYS)
    if (
        (windows < 0).any()
        or (subjects < 0).any()
        or (windows != np.round(windows)).any()
        or (subjects != np.round(subjects)).any()
    ):
        raise StatisticsRefused(f"class residuals {part}: window and subject counts must be whole and >= 0")
    if (subjects > windows).any() or ((windows == 0) & (subjects > 0)).any():
        raise StatisticsRefused(f"class residuals {part}: more subjects than windows in a class")
    empty = windows == 0
    if (sums[empty] != 0).any() or (squares[empty] != 0).any():
        raise StatisticsRefused(f"class residuals {part}: sums for a class without windows")
    if (squares < 0).any():
        raise StatisticsRefused(f"class residuals {part}: negative sums of squares")
    if (sums**2 > windows[:, None, None] * squares * (1 + _TOL) + 1e-9).any():
        raise StatisticsRefused(f"class residuals {part}: sums larger than the windows' squares allow (Cauchy-Schwarz)")
    limit = MAX_ROW_MEAN_SQUARE * max(float(target_mean_square), 1e-12)
    for c in np.flatnonzero(windows):  # every class: a large offset needs large squares
        mean_square = float(squares[c].sum()) / (windows[c] * shape[1] * shape[2])
        if mean_square > limit:
            raise StatisticsRefused(
                f"class residuals {part}: mean square {mean_square:.3g} per entry in class {c}, where the targets "
                f"have {target_mean_square:.3g} (limit {limit:.3g})"
            )
    return ClassResiduals(sums, squares, windows, subjects)


def cap_windows(parts: list[ClassResiduals]) -> list[ClassResiduals]:
    """Scale each site's sums and window counts so that none weighs more than ``MAX_SHARE_RATIO``
    times the median site's windows (its subjects' count is kept: it gates, it does not weigh).

    Parameters
    ----------
    parts : list of ClassResiduals
        One per site.

    Returns
    -------
    list of ClassResiduals
        The scaled parts.
    """
    if not parts:
        return []
    totals = np.array([p.windows.sum() for p in parts])
    cap = MAX_SHARE_RATIO * float(np.median(totals))
    out = []
    for p, total in zip(parts, totals):
        factor = min(1.0, cap / total) if total > 0 else 1.0
        out.append(ClassResiduals(p.sums * factor, p.squares * factor, p.windows * factor, p.subjects))
    return out


def solve_class_offsets(
    head, replies: list[tuple[ClassResiduals, ClassResiduals | None]], min_subjects: int
) -> dict:  # fmt: skip
    """Sum the sites' checked residuals (each weighed at most ``MAX_SHARE_RATIO`` times the median
    site's windows) and install the class offsets where they lower the held-out error.

    Parameters
    ----------
    head : torch.nn.Module
        The modality head's ``MeanHead``.
    replies : list of (ClassResiduals, ClassResiduals | None)
        Each site's training and held-out sums.
    min_subjects : int
        Training subjects (over all sites) a class needs for an offset.

    Returns
    -------
    dict
        As ``install_class_offsets``, with ``sites``.
    """
    trains = cap_windows([train for train, _ in replies])
    vals = cap_windows([val for _, val in replies if val is not None])
    total = functools.reduce(operator.add, trains)
    val_total = functools.reduce(operator.add, vals) if vals else None
    return {**install_class_offsets(head, total, val_total, min_subjects), "sites": len(replies)}
