"""The sites' sketches of their residuals' covariance, checked before they are combined: the noise model.

After the ridge path and the class offsets are set, an exact-statistics site is asked (with the
model) for a sketch of its training windows' residual covariance (``shared.model.noise.NoiseSketch``:
frames, each point's summed squares, the leading components of the summed second moment, the
frames' summed products). The server combines them into the residual's noise model, whose
whitened coordinates the diffusion trains in (``shared/model/noise.py``). The server trusts no
site, so each reply is read here first:

- **Form**: exactly the sketch's arrays, floating point, finite, of the model's points and frames,
  at most twice the noise rank of components; frame counts whole and positive, and the windows x
  points the frames' products cover consistent with them.
- **Consistency**: squares non-negative; no point's share of the components above its summed
  squares (the leading part of a second moment cannot hold more than the whole); the frames'
  products symmetric, Cauchy-Schwarz, and summing to what unit-mean-square residuals give.
- **Magnitude**: the residual's mean square per entry at most ``MAX_ROW_MEAN_SQUARE`` times the
  targets' in the sites' summed ridge statistics.
- **Weight**: no site's frames count more than ``MAX_SHARE_RATIO`` times the median site's.

Exact sums only: a site refuses the query in a DP run (a covariance fitted on the site's data
would whiten its DP-SGD gradients with data no mechanism covers) and releases nothing from fewer
subjects than its ``min-subjects-per-release``; a DP run's noise model stays the identity.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedneurogen.server.statistics import MAX_ROW_MEAN_SQUARE, MAX_SHARE_RATIO, StatisticsRefused
from fedneurogen.shared.model.noise import SKETCH_ARRAYS, NoiseSketch, combine_sketches, install_covariance

_TOL = 1e-6


def check_sketch(
    arrays: Mapping[str, np.ndarray], n_points: int, n_frames: int, rank: int, target_mean_square: float
) -> NoiseSketch | None:  # fmt: skip
    """A site's sketch, checked (None when the site sent none: it released nothing).

    Parameters
    ----------
    arrays : mapping of str to np.ndarray
        The reply's ``noise`` record.
    n_points, n_frames : int
        The modality's points (those the ridge path was solved for) and frames per window.
    rank : int
        The model's noise rank: a sketch holds at most ``2 * rank`` components.
    target_mean_square : float
        The targets' mean square per frame and point in the sites' summed ridge statistics.

    Returns
    -------
    NoiseSketch | None
        The checked sketch.

    Raises
    ------
    StatisticsRefused
        Missing or extra arrays, wrong shapes or types, non-finite values, impossible counts,
        components or frame products that their squares do not cover, or residuals far larger
        than the targets.
    """
    if not arrays:
        return None
    if set(arrays) != set(SKETCH_ARRAYS):
        raise StatisticsRefused(f"noise sketch needs exactly {sorted(SKETCH_ARRAYS)}, got {sorted(arrays)}")
    got = {k: np.asarray(arrays[k]) for k in SKETCH_ARRAYS}
    components = got["components"]
    expected = {
        "rows": (1,),
        "squares": (n_points,),
        "components": (n_points, components.shape[1] if components.ndim == 2 else -1),
        "temporal": (n_frames, n_frames),
        "temporal_count": (1,),
    }
    for key, a in got.items():
        if a.dtype.kind != "f" or a.shape != expected[key] or not np.isfinite(a).all():
            raise StatisticsRefused(
                f"noise sketch {key}: {a.dtype} {list(a.shape)}, expected finite float {list(expected[key])}"
            )
    if components.shape[1] > 2 * rank:
        raise StatisticsRefused(f"noise sketch: {components.shape[1]} components, at most {2 * rank}")
    rows, count = float(got["rows"][0]), float(got["temporal_count"][0])
    if rows <= 0 or rows != round(rows) or count <= 0 or count != round(count):
        raise StatisticsRefused("noise sketch: frame and window counts must be whole and > 0")
    if abs(count * n_frames - rows * n_points) > _TOL * rows * n_points:
        raise StatisticsRefused("noise sketch: the frames' products cover other windows than the frames")
    squares, temporal = got["squares"].astype(np.float64), got["temporal"].astype(np.float64)
    components = components.astype(np.float64)
    if (squares < 0).any():
        raise StatisticsRefused("noise sketch: negative sums of squares")
    if ((components**2).sum(axis=1) > squares * (1 + _TOL) + 1e-9).any():
        raise StatisticsRefused("noise sketch: components larger than their points' squares allow")
    diagonal = np.diag(temporal)
    if (
        (diagonal < 0).any()
        or np.abs(temporal - temporal.T).max() > _TOL * max(float(diagonal.max()), 1.0)
        or (temporal**2 > np.outer(diagonal, diagonal) * (1 + _TOL) + 1e-9).any()
        or diagonal.sum() > rows * n_points * (1 + _TOL) + 1e-9
    ):
        raise StatisticsRefused(
            "noise sketch: frame products that unit-mean-square residuals cannot give (Cauchy-Schwarz)"
        )
    limit = MAX_ROW_MEAN_SQUARE * max(float(target_mean_square), 1e-12)
    mean_square = float(squares.sum()) / (rows * n_points)
    if mean_square > limit:
        raise StatisticsRefused(
            f"noise sketch: mean square {mean_square:.3g} per entry, where the targets have "
            f"{target_mean_square:.3g} (limit {limit:.3g})"
        )
    return NoiseSketch(rows, squares, components, temporal, count)


def cap_frames(sketches: list[NoiseSketch]) -> list[NoiseSketch]:
    """Scale each site's sketch so that none weighs more than ``MAX_SHARE_RATIO`` times the median
    site's frames.

    Parameters
    ----------
    sketches : list of NoiseSketch
        One per site.

    Returns
    -------
    list of NoiseSketch
        The scaled sketches.
    """
    if not sketches:
        return []
    cap = MAX_SHARE_RATIO * float(np.median([s.rows for s in sketches]))
    return [s.scaled(min(1.0, cap / s.rows)) for s in sketches]


def solve_noise_model(head, sketches: list[NoiseSketch]) -> dict:
    """Combine the sites' checked sketches (each weighed at most ``MAX_SHARE_RATIO`` times the
    median site's frames) into a ``ModalityHead``'s noise model and install it.

    Parameters
    ----------
    head : ModalityHead
        The modality's head (its noise model is set; points in the ridge path's first slots).
    sketches : list of NoiseSketch
        The sites' checked sketches.

    Returns
    -------
    dict
        ``install_covariance``'s record, with the sites and frames combined.
    """
    capped = cap_frames(sketches)
    record = install_covariance(head, combine_sketches(capped, head.noise.basis.shape[1]))
    return {**record, "sites": len(capped), "frames": float(sum(s.rows for s in capped))}
