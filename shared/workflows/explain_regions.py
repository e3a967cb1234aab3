"""Where the explained points lie, and which of them an explanation summarises.

Regions: no cortical surface atlas ships with nilearn offline (``fetch_atlas_surf_destrieux``
downloads), so points and electrodes are grouped into coarse lobes per hemisphere from their MNI
coordinates (``coarse_regions``); the output says so (``REGION_SOURCE``). Points: the
best-predicted ones, all, or a region's (``select_points``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from fedneurogen.shared.errors import ConfigError

REGION_SOURCE = (
    "coarse lobes per hemisphere from MNI coordinates (frontal, central, parietal, temporal, occipital): no cortical surface "
    "atlas ships with nilearn offline (fetch_atlas_surf_destrieux downloads one)"
)
#: Fraction of target points the ``top`` selection keeps (best in-sample PCC on the site).
TOP_FRACTION = 0.1


def lobe(position_mm: Sequence[float]) -> str:
    """Coarse lobe of a point from its MNI/fsaverage coordinates.

    Boundaries follow the parieto-occipital sulcus (y ~ -72), the central sulcus region
    (-40 < y < -5 above z = 5) and the Sylvian fissure (z ~ 5).

    Parameters
    ----------
    position_mm : sequence of float
        ``(x, y, z)`` in mm.

    Returns
    -------
    str
        ``frontal``, ``central``, ``parietal``, ``temporal`` or ``occipital``.
    """
    _, y, z = (float(v) for v in position_mm)
    if y < -72:
        return "occipital"
    if z < 5 and y < 10:
        return "temporal"
    if y < -40:
        return "parietal"
    if y < -5:
        return "central"
    return "frontal"


def coarse_regions(positions: np.ndarray, names: Sequence[str] | None = None) -> list[str]:
    """A ``'left occipital'``-style region for each point.

    The hemisphere comes from an ``L``/``R`` vertex name (ico4), else from the sign of x
    (``'midline'`` within 2 mm of x = 0); the lobe from ``lobe``.

    Parameters
    ----------
    positions : np.ndarray
        ``[n_points, 3]`` mm.
    names : sequence of str | None
        Point names (``L123``, ``S1_D1 hbo``); None: hemisphere from x only.

    Returns
    -------
    list of str
        ``"<hemisphere> <lobe>"`` per point.
    """
    out = []
    for i, position in enumerate(np.asarray(positions, dtype=float)):
        name = names[i] if names is not None else ""
        if name[:1] in ("L", "R") and name[1:].isdigit():
            hemi = "left" if name[0] == "L" else "right"
        else:
            hemi = "left" if position[0] < -2 else "right" if position[0] > 2 else "midline"
        out.append(f"{hemi} {lobe(position)}")
    return out


def point_pcc(prediction: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-point Pearson r between prediction and target over the rows.

    Parameters
    ----------
    prediction, target : np.ndarray
        ``[n, N]`` each.

    Returns
    -------
    np.ndarray
        ``[N]``; 0 where either is constant.
    """
    p = prediction - prediction.mean(0)
    t = target - target.mean(0)
    denominator = np.sqrt((p**2).sum(0) * (t**2).sum(0))
    return np.where(denominator > 0, (p * t).sum(0) / np.where(denominator > 0, denominator, 1.0), 0.0)


def select_points(selection: str, pcc: np.ndarray, regions: list[str]) -> tuple[np.ndarray, str]:
    """The points an explanation summarises.

    Parameters
    ----------
    selection : str
        ``top``: the best-predicted ``TOP_FRACTION`` of points (at least one); ``all``; or a
        region name (``occipital``, ``left occipital``: every point whose region ends with /
        equals it). Case-insensitive.
    pcc : np.ndarray
        ``[N]`` per-point PCC (``point_pcc``).
    regions : list of str
        Region of each point (``coarse_regions``).

    Returns
    -------
    points : np.ndarray
        Sorted point indices.
    rule : str
        The selection in words, for the report.

    Raises
    ------
    ConfigError
        An unknown region (the message lists the known ones).
    """
    key = selection.strip().lower()
    if key == "top":
        count = max(1, int(round(TOP_FRACTION * len(pcc))))
        return np.sort(
            np.argsort(-pcc)[:count]
        ), f"top {TOP_FRACTION:.0%} of points by in-sample PCC of the label-free point prediction on this site"
    if key == "all":
        return np.arange(len(pcc)), "all points"
    chosen = np.array([i for i, r in enumerate(regions) if r == key or r.split(" ", 1)[1] == key], dtype=int)
    if not len(chosen):
        known = sorted(set(regions) | {r.split(" ", 1)[1] for r in regions})
        raise ConfigError(f"--points {selection!r}: expected top, all or a region ({', '.join(known)})")
    return chosen, f"points of region '{key}'"
