"""The private ridge path: what a site releases under DP, sized for the noise it must survive.

The exact ridge path is solved from ``XᵀX`` and ``XᵀY`` over 680 design features (640 linear,
40 alpha-gated) and 5124 cortical points (3.5 million numbers). Noise scaled to one subject's whole contribution drowns
them at any ε a hospital accepts. Under DP a site releases the statistics of a small,
data-independent regression instead (``PrivateReduction``):

1. **Public reduction.** The 64 virtual electrodes are pooled into ``N_REGIONS`` scalp regions
   (k-means of the electrode positions, a fixed seed: geometry only), per band and HRF basis
   function: 640 -> 80 features (the alpha-gated block is left out: it gets no weight under DP).
   fMRI targets are expressed in the first ``MODES_PER_HEMISPHERE``
   geometric eigenmodes of each hemisphere (``surface.cortical_eigenmodes``: the mesh alone):
   5124 -> 16 coordinates. Both are the same for any data. Without DP this reduction alone
   predicts held-out BOLD as well as the full path on simulated data (the modes are smooth and
   drop vertex noise), so little is lost by it.
2. **Public prior, adapted.** ``prior`` holds coefficients (pooled features -> mode coordinates)
   fitted on simulated data only (``simulations/prior.py`` makes ``priors/fmri.npz``). The site
   does not release the 80 x 16 regression: it releases that of the prior's predictions split by
   feature group (``GAIN_GROUPS``: band x basis function, 10 inputs) on the residual of the
   target after the prior, one row per frame and mode. The server solves for 10 gain
   corrections: noise pulls the solution toward the prior (gains 1), not toward zero.
   Without a prior (``dp-prior = none``) the site releases the pooled regression (80 x 16).
3. **Adaptive regularisation** (AdaSSP's idea, Wang 2018): the penalty is never below the
   operator norm of the noise added to ``XᵀX`` (``penalty_floor``), which the server knows
   from the public noise multiplier and clip; above it, the penalty is chosen on the sites'
   (noisy) held-out statistics as for the exact path.

The release itself (per-subject clipping, the Gaussian mechanism, the ledger) is
``client.privacy.release_statistics`` with ``BLOCK_WEIGHTS``: ``Σy²`` changes no choice the
server makes (it is the same for every penalty), so it is released at a small weight and barely
spends the clip; ``XᵀX`` at a lower weight than ``XᵀY``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from importlib import resources

import numpy as np

from fedneurogen.shared.design import N_REGIONS, scalp_regions  # noqa: F401  (re-exported: the pooling's regions)
from fedneurogen.shared.errors import ConfigError
from fedneurogen.shared.features import EEG_BANDS
from fedneurogen.shared.ridge import DEFAULT_PENALTIES, RidgeSolution, RidgeStatistics, fit_ridge
from fedneurogen.shared.surface import ICO4_POINTS, cortical_eigenmodes

#: Geometric eigenmodes per hemisphere that fMRI targets are expressed in.
MODES_PER_HEMISPHERE = 8
#: How the pooled features are grouped for the prior's gains: one gain per (band, basis function).
GAIN_GROUPS = "band x basis"
#: Weights of the released blocks (see the module docstring): the clip bounds the weighted vector.
BLOCK_WEIGHTS = {"n": 1.0, "sx": 1.0, "sy": 1.0, "sxx": 0.3, "sxy": 1.0, "syy": 0.001}
#: The public per-subject clip of the weighted release (about the median subject's norm on simulated data).
PRIVATE_CLIP = 4.0
#: The shipped prior (``simulations/prior.py`` writes it).
PRIOR_FILE = "fmri.npz"


def pooling_matrix(n_features: int) -> np.ndarray:
    """The ``[N_REGIONS x bands x basis, n_features]`` matrix that averages a design's electrodes by region.

    Parameters
    ----------
    n_features : int
        Width of a scalp design (64 electrodes x 5 bands x 1 or 2 basis functions, + the
        alpha-gated block, whose columns the pooling leaves out).

    Returns
    -------
    np.ndarray
        Rows ordered (region, band, basis function), like the design's (electrode, band, basis).

    Raises
    ------
    ConfigError
        ``n_features`` is not a scalp design's width (a source design has no private path yet).
    """
    from fedneurogen.shared.design import VIRTUAL_MONTAGE, part_widths

    # the linear columns only: the alpha-gated block (its columns zero here) has no private path yet
    try:
        linear = part_widths(n_features)[0]
    except ValueError:
        linear = n_features
    n_basis, leftover = divmod(linear, len(VIRTUAL_MONTAGE) * len(EEG_BANDS))
    if leftover or n_basis not in (1, 2):
        raise ConfigError(
            f"the private ridge path needs a scalp design (64 electrodes x 5 bands x 1 or 2 basis functions), "
            f"not {n_features} features (design_space='source' has no private path yet)"
        )
    regions = scalp_regions()
    per_electrode = len(EEG_BANDS) * n_basis
    pooling = np.zeros((N_REGIONS * per_electrode, n_features))
    for electrode, region in enumerate(regions):
        columns = electrode * per_electrode + np.arange(per_electrode)
        pooling[region * per_electrode + np.arange(per_electrode), columns] = 1.0 / np.sum(regions == region)
    return pooling


def gain_groups(n_pooled: int) -> np.ndarray:
    """The gain group (band x basis function) of every pooled feature.

    Parameters
    ----------
    n_pooled : int
        Rows of ``pooling_matrix``: regions x bands x basis functions.

    Returns
    -------
    np.ndarray
        ``[n_pooled]`` ints ``0 .. bands x basis - 1``.
    """
    per_region = n_pooled // N_REGIONS
    return np.tile(np.arange(per_region), N_REGIONS)


@dataclass(frozen=True)
class PrivateReduction:
    """The data-independent regression a site releases under DP (see the module docstring).

    Attributes
    ----------
    pooling : np.ndarray
        ``[p, D]`` design features -> pooled scalp-region features.
    modes : np.ndarray | None
        ``[N, K]`` orthonormal target basis (fMRI eigenmodes); None: the targets as they are.
    prior : np.ndarray | None
        ``[p, K]`` public coefficients, pooled features -> target coordinates; None: no prior.
    groups : np.ndarray
        ``[p]`` gain group of each pooled feature.
    """

    pooling: np.ndarray
    modes: np.ndarray | None
    prior: np.ndarray | None
    groups: np.ndarray

    @property
    def n_inputs(self) -> int:
        """Features of the released regression: gain groups with a prior, pooled features without."""
        return int(self.groups.max()) + 1 if self.prior is not None else self.pooling.shape[0]

    def n_outputs(self, n_points: int) -> int:
        """Targets of the released regression.

        Parameters
        ----------
        n_points : int
            The modality's target points.

        Returns
        -------
        int
            1 (what the prior leaves), the modes, or ``n_points`` (fNIRS channels).
        """
        if self.prior is not None:
            return 1
        return self.modes.shape[1] if self.modes is not None else n_points

    def _coordinates(self, target: np.ndarray) -> np.ndarray:
        return target @ self.modes if self.modes is not None else target

    def _group_predictions(self, pooled: np.ndarray) -> np.ndarray:
        """``[F, K, g]``: the prior's prediction from each group of pooled features."""
        return np.stack(
            [pooled[:, self.groups == j] @ self.prior[self.groups == j] for j in range(self.n_inputs)], axis=-1
        )

    def rows(self, design: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The released regression's rows for frames ``design [F, D]``, ``target [F, N]``.

        Parameters
        ----------
        design : np.ndarray
            ``[F, D]`` design rows.
        target : np.ndarray
            ``[F, N]`` target rows.

        Returns
        -------
        x, y : np.ndarray
            With a prior: ``[F*K, g]`` the prior's per-group predictions of each mode and
            ``[F*K, 1]`` what the prior leaves of it; without: ``[F, p]`` and ``[F, K or N]``.
        """
        pooled = np.asarray(design, dtype=np.float64) @ self.pooling.T
        coordinates = self._coordinates(np.asarray(target, dtype=np.float64))
        if self.prior is None:
            return pooled, coordinates
        parts = self._group_predictions(pooled)
        residual = coordinates - parts.sum(-1)  # a zero correction keeps the prior (gains 1)
        return parts.reshape(-1, parts.shape[-1]), residual.reshape(-1, 1)

    def subject_statistics(self, windows) -> list[RidgeStatistics]:
        """One ``RidgeStatistics`` of the released regression per subject (each run frame once).

        Parameters
        ----------
        windows : PairedWindows
            Windows with a design.

        Returns
        -------
        list of RidgeStatistics
            In sorted subject order.
        """
        from fedneurogen.shared.design import global_part, iter_subject_rows

        # of a scalp+source design the scalp columns: no local path under DP
        return [
            RidgeStatistics.from_rows(*self.rows(global_part(np.asarray(x)), y)) for x, y in iter_subject_rows(windows)
        ]

    def to_full(self, solution: RidgeSolution, n_points: int) -> tuple[np.ndarray, np.ndarray]:
        """The solution as the model's ridge path: ``coef [D, N]`` and ``intercept [N]``.

        Parameters
        ----------
        solution : RidgeSolution
            Fitted on the released regression.
        n_points : int
            Target points ``N``.

        Returns
        -------
        coef, intercept : np.ndarray
            On the raw design, for every point.
        """
        if self.prior is not None:
            gains = 1.0 + solution.coef[:, 0]
            reduced = self.prior * gains[self.groups][:, None]  # [p, K]
            offset = np.full(reduced.shape[1], float(solution.intercept[0]))
        else:
            reduced, offset = solution.coef, solution.intercept
        coef, intercept = self.pooling.T @ reduced, offset
        if self.modes is not None:
            coef, intercept = coef @ self.modes.T, self.modes @ intercept
        return coef, np.broadcast_to(intercept, (n_points,)).copy()


@functools.lru_cache(maxsize=2)
def load_prior() -> dict[str, np.ndarray]:
    """The shipped public prior (``priors/fmri.npz``; ``simulations/prior.py`` writes it).

    Returns
    -------
    dict of str to np.ndarray
        ``coef`` ``[p, K]`` and how it was made (``seed``, ``subjects``, ``n_features``).

    Raises
    ------
    ConfigError
        The file is missing or unreadable.
    """
    path = resources.files("fedneurogen.shared") / "priors" / PRIOR_FILE
    try:
        with path.open("rb") as handle, np.load(handle) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: the public prior cannot be read ({err}); set dp-prior = none") from None


def private_reduction(modality: str, n_features: int, n_points: int, prior: bool) -> PrivateReduction:
    """The reduction a site releases for ``modality`` under DP.

    Parameters
    ----------
    modality : {"fmri", "fnirs"}
        The site's target modality.
    n_features : int
        Width of the design.
    n_points : int
        Target points (fMRI: 5124 ico4 vertices).
    prior : bool
        Adapt the shipped public prior (fMRI; an fNIRS site has none and releases the pooled regression).

    Returns
    -------
    PrivateReduction
        The same for any data.

    Raises
    ------
    ConfigError
        The design is not a scalp design, or the prior does not fit.
    """
    pooling = pooling_matrix(n_features)
    groups = gain_groups(pooling.shape[0])
    if modality == "fnirs":  # channels differ by probe: no mesh basis, and the prior is fMRI's only
        return PrivateReduction(pooling, None, None, groups)
    if n_points != ICO4_POINTS:
        raise ConfigError(f"the private ridge path expects {ICO4_POINTS} fMRI points, not {n_points}")
    modes = cortical_eigenmodes(MODES_PER_HEMISPHERE)
    coef = None
    if prior:
        shipped = load_prior()
        coef = shipped["coef"]
        if coef.shape != (pooling.shape[0], modes.shape[1]):
            raise ConfigError(
                f"the public prior is {list(coef.shape)}, this design's private path needs "
                f"{[pooling.shape[0], modes.shape[1]]} (another hrf_basis?); set dp-prior = none"
            )
    return PrivateReduction(pooling, modes, coef, groups)


def penalty_floor(train: RidgeStatistics, noise_std: float) -> float:
    """The smallest relative penalty the noisy ``XᵀX`` allows (AdaSSP's adaptive regularisation).

    Symmetric Gaussian noise of entry std ``s`` on a ``d x d`` matrix has operator norm about
    ``2 s sqrt(d)``; in the standardised coordinates ``fit_ridge`` works in (divided by ``n`` and
    the features' variance) that is the penalty below which the noise, not the data, decides.

    Parameters
    ----------
    train : RidgeStatistics
        The summed noisy training statistics.
    noise_std : float
        Standard deviation of the noise on each released entry of ``XᵀX``.

    Returns
    -------
    float
        The floor (0 for exact statistics).
    """
    if noise_std <= 0:
        return 0.0
    _, std = train.feature_moments()
    variance = float(np.mean(std**2))  # the mean: noise can zero a few features' variance
    return 2.0 * noise_std * math.sqrt(train.n_features) / (max(train.n, 1.0) * max(variance, 1e-12))


def fit_private(train: RidgeStatistics, val: RidgeStatistics | None, noise_std: float) -> RidgeSolution:
    """The released regression solved with the penalty never below ``penalty_floor``.

    Parameters
    ----------
    train : RidgeStatistics
        Summed (noisy) training statistics of the released regression.
    val : RidgeStatistics | None
        Summed (noisy) held-out statistics: they choose the penalty above the floor.
    noise_std : float
        The noise on each released entry of ``XᵀX`` (0: exact statistics).

    Returns
    -------
    RidgeSolution
        As ``fit_ridge`` returns it; with exact statistics, exactly ``fit_ridge``'s choice.
    """
    floor = penalty_floor(train, noise_std)
    # the grid above the floor keeps a choice to make on val, however loud the noise
    above = {floor * 10, floor * 100} if floor > 0 else set()
    penalties = tuple(sorted({max(floor, p) for p in DEFAULT_PENALTIES} | above))
    return fit_ridge(train, val, penalties=penalties)


def release_noise_std(noise_multiplier: float, clip: float, block: str) -> float:
    """Standard deviation of the Gaussian mechanism's noise on one released entry of ``block``.

    Parameters
    ----------
    noise_multiplier : float
        The release's noise multiplier.
    clip : float
        The per-subject clip of the weighted vector.
    block : str
        ``"sxx"``, ``"sxy"``, ... (``BLOCK_WEIGHTS``).

    Returns
    -------
    float
        ``noise_multiplier * sqrt(2) * clip / weight``.
    """
    return noise_multiplier * math.sqrt(2.0) * clip / BLOCK_WEIGHTS[block]
