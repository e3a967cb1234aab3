"""The sites' ridge statistics, checked before they are summed: the server trusts no site.

The ridge path is solved from the sum of every site's ``XᵀX``, ``XᵀY``, ... (``server/app.py``),
so one site that sends ``M·A``, ``M·B`` with a huge ``M`` would otherwise choose the coefficients
``≈ A⁻¹B`` for everyone, and a single NaN would poison the model. Each reply is read here:

1. **Form.** Exactly the expected arrays, floating point, of the shapes the model implies
   (``D`` design features, ``N`` target points), finite, ``n >= 1``.
2. **Consistency** (exact releases only; a DP release is noisy and skips it). Statistics of real
   rows obey inequalities no scaling hides from a check that looks at them together: ``XᵀX``
   symmetric and positive semi-definite, ``Σy² >= 0``, and Cauchy–Schwarz
   (``(Σx_d)² <= n·Σx_d²``, ``(Σx_d y_j)² <= Σx_d²·Σy_j²``).
3. **Magnitude.** The design is built from band power z-scored per run (``shared/design.py``;
   about 3-5 per column after the HRF basis) and fMRI targets are z-scored per vertex and run
   (about 1), so ``trace(XᵀX)/(n·D)`` and, for fMRI, ``Σ syy/(n·N)`` above
   ``MAX_ROW_MEAN_SQUARE`` are refused. fNIRS targets keep the site's units, so only their
   design is bounded. A DP release is noisy: no consistency check, and ``PRIVATE_SLACK`` times
   the limit plus ``NOISE_SIGMAS`` standard deviations of the noise the site states it added
   (enough to stop a scaled capture, not a subtle one; a site that overstates its noise raises
   everyone's penalty floor and shrinks toward the prior, and ``cap_shares`` bounds its weight
   like every site's).

What passes can still weigh too much: one site claiming far more rows than the others would
dominate the sum. ``cap_shares`` scales each site's statistics (all of them, which weighs its rows
less and keeps its own solution unchanged) so that no site counts more than ``MAX_SHARE_RATIO``
times the median site's rows. ``screen_sites`` then applies the coordinator's policy: a site whose
removal alone moves the pooled solution (``leave_one_out_outliers``) is named and, with
``drop-inconsistent-sites`` (default), left out of the sum. Under DP the comparison fits are made
stable against the noise, so that honest noisy releases are not named.

Hundreds of sites: each site's two matrices (``XᵀX``, ``XᵀY``: ~30 MB of float64 on fsaverage5)
wait in a file of the server's own (``SpilledStatistics``) from the moment its reply is checked,
and are read back one site at a time by the sums and fits; the server never holds every site's
statistics in memory at once (13 GB at 256 sites otherwise).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from fedneurogen.shared.private_path import release_noise_std
from fedneurogen.shared.ridge import RidgeStatistics

#: Per-column mean square allowed for a row of the z-scored design or target (honest: about 1).
MAX_ROW_MEAN_SQUARE = 25.0
#: A DP release's limit is this many times larger (its noise adds to the squares).
PRIVATE_SLACK = 100.0
#: A DP release may exceed the limit by this many standard deviations of its stated noise.
NOISE_SIGMAS = 6.0
#: No site's rows count more than this many times the median site's.
MAX_SHARE_RATIO = 4.0
#: With a DP release in the sum, the leave-one-site-out fits' penalty is at least this many times the noise per row.
NOISE_PENALTY = 4.0
_TOL = 1e-6
_NAMES = tuple(f.name for f in fields(RidgeStatistics))


class StatisticsRefused(ValueError):
    """A site's statistics cannot be used; the message is the public reason."""


class SpilledStatistics(RidgeStatistics):
    """A site's ridge statistics whose matrices ``sxx`` and ``sxy`` wait in files until read.

    Everything that takes ``RidgeStatistics`` takes it (each read of ``sxx`` or ``sxy`` loads a
    copy; sums and fits read one site at a time). The vectors stay in memory.

    Parameters
    ----------
    stats : RidgeStatistics
        The statistics to keep.
    folder : Path
        A folder of the server's own (a temporary one); the files live as long as it does.
    """

    _MATRICES = ("sxx", "sxy")

    def __init__(self, stats: RidgeStatistics, folder: Path) -> None:  # noqa: D107 (documented above)
        self.n, self.sx, self.sy, self.syy = stats.n, stats.sx, stats.sy, stats.syy
        self._files = {}
        for name in self._MATRICES:
            fd, path = tempfile.mkstemp(prefix=f"{name}-", suffix=".npy", dir=folder)
            with os.fdopen(fd, "wb") as f:
                np.save(f, getattr(stats, name))
            self._files[name] = path

    @property
    def sxx(self) -> np.ndarray:
        """``XᵀX`` ``[D, D]``, read from its file."""
        return np.load(self._files["sxx"])

    @property
    def sxy(self) -> np.ndarray:
        """``XᵀY`` ``[D, N]``, read from its file."""
        return np.load(self._files["sxy"])


@dataclass
class SiteStatistics:
    """One site's checked statistics.

    Attributes
    ----------
    modality : str
        ``fmri`` or ``fnirs``.
    train : RidgeStatistics
        Its training subjects' statistics.
    val : RidgeStatistics | None
        Its held-out subjects' statistics, when sent.
    points : list of str | None
        Target point names (fNIRS channels), when sent.
    private : bool
        Released through the Gaussian mechanism.
    """

    modality: str
    train: RidgeStatistics
    val: RidgeStatistics | None
    points: list[str] | None
    private: bool


def check_statistics(
    arrays: Mapping[str, np.ndarray],
    width: int,
    n_points: int | None,
    exact: bool,
    z_scored_targets: bool = True,
    noise_scale: float = 0.0,
) -> RidgeStatistics:
    """One set of statistics (the ``train.`` or ``val.`` arrays, prefix removed), checked.

    Parameters
    ----------
    arrays : mapping of str to np.ndarray
        ``n``, ``sx``, ``sy``, ``sxx``, ``sxy``, ``syy`` and nothing else.
    width : int
        ``D``, the model's design features.
    n_points : int | None
        ``N``, the target points; None: taken from the arrays (fNIRS montages differ by site).
    exact : bool
        The statistics claim to be exact sums (no DP noise): the consistency checks apply.
    z_scored_targets : bool
        The targets are z-scored (fMRI): their magnitude is bounded too.
    noise_scale : float
        A DP release's noise multiplier x clip, as the site states it (0: none stated).

    Returns
    -------
    RidgeStatistics
        The statistics (float64; a noisy count kept at least 1).

    Raises
    ------
    StatisticsRefused
        Naming what is wrong.
    """
    if set(arrays) != set(_NAMES):
        missing, extra = sorted(set(_NAMES) - set(arrays)), sorted(set(arrays) - set(_NAMES))
        raise StatisticsRefused(f"statistics arrays: missing {missing or 'none'}, unexpected {extra or 'none'}")
    values = {}
    for name in _NAMES:
        array = np.asarray(arrays[name])
        if array.dtype.kind != "f":
            raise StatisticsRefused(f"statistics {name}: dtype {array.dtype}, not floating point")
        values[name] = array.astype(np.float64)
    n_points = values["sy"].shape[0] if n_points is None and values["sy"].ndim == 1 else n_points
    expected = {"n": (1,), "sx": (width,), "sy": (n_points,), "sxx": (width, width),
                "sxy": (width, n_points), "syy": (n_points,)}  # fmt: skip
    for name, shape in expected.items():
        got = values[name].shape if name != "n" else (values[name].size,)
        if got != shape:
            raise StatisticsRefused(f"statistics {name}: shape {values[name].shape}, expected {shape}")
        if not np.isfinite(values[name]).all():
            raise StatisticsRefused(f"statistics {name}: NaN or infinite values")
    values["n"] = float(values["n"].reshape(-1)[0])
    if exact and (values["n"] < 1 or values["n"] != round(values["n"])):
        raise StatisticsRefused(f"statistics n: {values['n']:g} is not a count of rows")
    stats = RidgeStatistics(**values)
    stats.n = max(stats.n, 1.0)  # a noisy count: post-processing costs no privacy
    if exact:
        _check_consistent(stats)
        _check_magnitude(stats, MAX_ROW_MEAN_SQUARE, z_scored_targets)
    elif stats.n >= 10:  # a DP release: noise inflates its squares, and a tiny noisy count says nothing
        _check_magnitude(stats, PRIVATE_SLACK * MAX_ROW_MEAN_SQUARE, z_scored_targets, noise_scale)
    return stats


def _check_consistent(s: RidgeStatistics) -> None:
    scale = max(float(np.abs(s.sxx).max()), 1e-12)
    if np.abs(s.sxx - s.sxx.T).max() > _TOL * scale:
        raise StatisticsRefused("statistics sxx: not symmetric")
    if np.linalg.eigvalsh((s.sxx + s.sxx.T) / 2).min() < -1e-6 * max(float(np.trace(s.sxx)), 1e-12):
        raise StatisticsRefused("statistics sxx: not positive semi-definite")
    if (s.syy < 0).any():
        raise StatisticsRefused("statistics syy: negative sums of squares")
    xx = np.diag(s.sxx)
    if (s.sx**2 > s.n * xx * (1 + _TOL) + 1e-9).any() or (s.sy**2 > s.n * s.syy * (1 + _TOL) + 1e-9).any():
        raise StatisticsRefused("statistics: sums larger than n rows of their squares allow (Cauchy-Schwarz)")
    if (s.sxy**2 > np.outer(xx, s.syy) * (1 + _TOL) + 1e-9).any():
        raise StatisticsRefused("statistics sxy: larger than the features' and targets' squares allow (Cauchy-Schwarz)")


def _check_magnitude(s: RidgeStatistics, limit: float, targets_z_scored: bool, noise_scale: float = 0.0) -> None:
    features = float(np.trace(s.sxx)) / (s.n * s.n_features)
    targets = float(s.syy.sum()) / (s.n * len(s.syy))
    # the stated noise's standard deviation on each mean (D diagonal entries, N target sums)
    feature_limit = limit + NOISE_SIGMAS * release_noise_std(noise_scale, 1.0, "sxx") / (s.n * math.sqrt(s.n_features))
    target_limit = limit + NOISE_SIGMAS * release_noise_std(noise_scale, 1.0, "syy") / (s.n * math.sqrt(len(s.syy)))
    if abs(features) > feature_limit or (targets_z_scored and abs(targets) > target_limit):
        raise StatisticsRefused(
            f"statistics: rows of mean square {features:.3g} (design) and {targets:.3g} (target) per column, "
            f"where z-scored data gives about 1 (limits {feature_limit:.3g} and {target_limit:.3g})"
        )


def read_reply(
    statistics: Mapping[str, np.ndarray],
    site: Mapping,
    private: bool,
    width: int,
    n_fmri_points: int,
    noise_scale: float = 0.0,
) -> SiteStatistics:
    """A site's statistics reply, checked.

    Parameters
    ----------
    statistics : mapping of str to np.ndarray
        The reply's ``statistics`` arrays: ``train.*`` and optionally ``val.*``.
    site : mapping
        The reply's ``site`` config: ``modality`` and, for fNIRS, ``points``.
    private : bool
        The site says the statistics went through the Gaussian mechanism.
    width : int
        The model's design features ``D``.
    n_fmri_points : int
        Target points of the fMRI head (fNIRS sites name theirs).
    noise_scale : float
        The noise multiplier x clip a DP site states (``server.app.release_noise_scale``): its
        noise loosens the magnitude check by as much as it can move the means.

    Returns
    -------
    SiteStatistics
        The checked reply.

    Raises
    ------
    StatisticsRefused
        Naming what is wrong.
    """
    modality = site.get("modality") if hasattr(site, "get") else None
    if modality not in ("fmri", "fnirs"):
        raise StatisticsRefused(f"unknown modality {modality!r}")
    points = None
    if "points" in site:
        raw = site["points"]
        if not isinstance(raw, list | tuple) or not all(isinstance(p, str) and 0 < len(p) <= 64 for p in raw):
            raise StatisticsRefused("points: not a list of channel names")
        points = [str(p) for p in raw]
    n_points = n_fmri_points if modality == "fmri" else (len(points) if points is not None else None)
    prefixes = {name.split(".", 1)[0] for name in statistics}
    if not prefixes <= {"train", "val"} or "train" not in prefixes:
        raise StatisticsRefused(f"statistics: expected train.* (and val.*) arrays, got {sorted(prefixes)}")
    parts = {
        prefix: check_statistics(
            {k[len(prefix) + 1 :]: v for k, v in statistics.items() if k.startswith(prefix + ".")},
            width,
            n_points,
            exact=not private,
            z_scored_targets=modality == "fmri",
            noise_scale=noise_scale if private else 0.0,
        )  # fmt: skip
        for prefix in sorted(prefixes)
    }
    return SiteStatistics(modality, parts["train"], parts.get("val"), points, private)


def cap_shares(
    parts: Sequence[RidgeStatistics], ratio: float = MAX_SHARE_RATIO
) -> tuple[list[RidgeStatistics], list[int]]:
    """Weigh down the statistics of sites that claim far more rows than the median site.

    Parameters
    ----------
    parts : sequence of RidgeStatistics
        One per site.
    ratio : float
        The most rows a site may count, as a multiple of the median site's.

    Returns
    -------
    parts : list of RidgeStatistics
        The statistics, those above the cap scaled to it (every field by the same factor).
    capped : list of int
        Indices of the sites that were scaled.
    """
    cap = ratio * float(np.median([p.n for p in parts]))
    out, capped = [], []
    for i, p in enumerate(parts):
        if len(parts) > 2 and p.n > cap:
            factor = cap / p.n
            out.append(RidgeStatistics(**{f: getattr(p, f) * factor for f in _NAMES}))
            capped.append(i)
        else:
            out.append(p)
    return out, capped


def _comparison_fit(s: RidgeStatistics, noisy: bool) -> tuple[np.ndarray, np.ndarray]:
    """``XᵀX`` and ``XᵀY`` of a comparison fit: centred, or with a DP release in the sum (``noisy``)
    not, since a noisy count near 1 would turn the centring term into the noise squared (the
    sites' rows are z-scored per run, so their means are about 0 anyway)."""
    if noisy:
        return s.sxx, s.sxy
    return s.sxx - np.outer(s.sx, s.sx) / s.n, s.sxy - np.outer(s.sx, s.sy) / s.n


def _comparison_penalty(s: RidgeStatistics, penalty: float, noisy: bool) -> float:
    """A comparison fit's penalty: ``penalty`` times the mean variance (of each fit's own
    statistics: removing an honest site of any size then leaves the shrinkage as it was) and, with
    a DP release in the sum, at least ``NOISE_PENALTY`` times the off-diagonal noise's scale per
    row, above the spectral radius of symmetric Gaussian noise (``2·std·sqrt(D)``), so that the
    fits are stable against the noise. Under DP it is the pooled statistics' for every fit (the
    noise, not the rows, sets it): a fit without a site then differs from the pooled one by that
    site's release alone."""
    xx, _ = _comparison_fit(s, noisy)
    scale = float(np.trace(xx)) / len(xx)
    if noisy:
        scale = max(scale, NOISE_PENALTY * float(np.linalg.norm(xx - np.diag(np.diag(xx)))) / math.sqrt(len(xx)))
    return penalty * max(scale, 1e-12)


def _fixed_ridge(s: RidgeStatistics, ridge: float, noisy: bool) -> np.ndarray:
    """Coefficients of a ridge with the absolute penalty ``ridge``."""
    xx, xy = _comparison_fit(s, noisy)
    return np.linalg.solve(xx + ridge * np.eye(len(xx)), xy)


@dataclass
class Screened:
    """The sites of one modality after ``screen_sites``.

    Attributes
    ----------
    parts : list of RidgeStatistics
        The statistics to sum: the kept sites', weighed down where capped.
    kept : list of int
        Indices (into the input) of the sites whose statistics are summed.
    capped : list of int
        Indices of the kept sites that were weighed down.
    inconsistent : list of int
        Indices of the sites named by the leave-one-site-out check (left out when dropping).
    """

    parts: list[RidgeStatistics]
    kept: list[int]
    capped: list[int]
    inconsistent: list[int]


def screen_sites(parts: Sequence[RidgeStatistics], noisy: bool = False, drop_inconsistent: bool = True) -> Screened:
    """The coordinator's policy on checked statistics: weigh down (``cap_shares``), name the sites
    that alone move the pooled solution (``leave_one_out_outliers``) and, with
    ``drop_inconsistent``, leave those out and weigh the others among themselves.

    Parameters
    ----------
    parts : sequence of RidgeStatistics
        One per site, each checked (``read_reply``).
    noisy : bool
        Some are DP releases.
    drop_inconsistent : bool
        Leave the named sites out (run-config ``drop-inconsistent-sites``); False: only name them.

    Returns
    -------
    Screened
        What to sum, and which sites were kept, weighed down and named.
    """
    capped_parts, capped = cap_shares(parts)
    inconsistent = leave_one_out_outliers(capped_parts, noisy=noisy)
    kept = [i for i in range(len(parts)) if not (drop_inconsistent and i in inconsistent)]
    if len(kept) < len(parts):  # the others' statistics, weighed among themselves
        capped_parts, capped_kept = cap_shares([parts[i] for i in kept])
        capped = [kept[i] for i in capped_kept]
    return Screened(capped_parts, kept, capped, inconsistent)


def leave_one_out_outliers(
    parts: Sequence[RidgeStatistics], ratio: float = 3.0, penalty: float = 1.0, noisy: bool = False
) -> list[int]:
    """Sites whose removal moves the pooled solution far more than removing any other does.

    A leave-one-site-out consistency check: with three or more sites, the ridge coefficients of
    the sum are compared with those of the sum without each site; a site whose removal changes
    them more than ``ratio`` times the median change is named (it steers the solution alone).

    Parameters
    ----------
    parts : sequence of RidgeStatistics
        One per site (already checked and capped).
    ratio : float
        How many median changes make an outlier.
    penalty : float
        The fixed relative penalty of the comparison fits.
    noisy : bool
        Some of the statistics are DP releases: the comparison fits are made stable against the
        noise (``_comparison_penalty``), so that honest noisy releases are not named.

    Returns
    -------
    list of int
        Indices of the outlying sites (empty with fewer than three sites).
    """
    if len(parts) < 3:
        return []
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    ridge = _comparison_penalty(total, penalty, noisy)
    pooled = _fixed_ridge(total, ridge, noisy)
    changes = []
    for p in parts:
        rest = RidgeStatistics(**{f: getattr(total, f) - getattr(p, f) for f in _NAMES})
        fit = _fixed_ridge(rest, ridge if noisy else _comparison_penalty(rest, penalty, noisy), noisy)
        changes.append(float(np.linalg.norm(fit - pooled)) / max(float(np.linalg.norm(pooled)), 1e-12))
    median = float(np.median(changes))
    return [i for i, c in enumerate(changes) if c > ratio * max(median, 1e-12)]
