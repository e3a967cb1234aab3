"""Ridge regression from additive sufficient statistics (one home for every linear model here).

The model's ridge path, the continuous ridge-HRF baseline, the label-only baseline and the
EEG-informed ceiling are all per-target-point ridge regressions ``y = x B + b``. They are fitted
from ``RidgeStatistics``: counts, sums, ``XᵀX``, ``XᵀY`` and the per-point ``Σy²``. Statistics of
disjoint data add up, so statistics computed at several sites and summed give exactly the
regression fitted on the pooled data (what a federation needs), and the validation error of any
coefficients can be computed from a validation set's statistics without its rows.

Features are standardised with the training statistics; the penalty ``lam`` is relative to
that scale (``(ZᵀZ / n + lam I) B = Zᵀy / n``), so one grid suits any data size.

Reduced rank (``rank``): the coefficients are projected onto the top ``rank`` components of the
fitted training predictions (reduced-rank ridge regression). BOLD across 5124 vertices is
low-dimensional; the projection removes what the per-vertex fits learn from noise.

Banded penalties (``groups``): each group of features (an EEG band) gets its own penalty
multiplier, chosen on validation (banded ridge, as in voxel-wise encoding models): a group
that carries only noise is shrunk away instead of diluting the informative ones. A multiplier
``w`` on a group is the same as scaling its standardised features by ``1/sqrt(w)``; weight 0
drops the group.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

#: The query a federation's server sends for a site's ridge statistics (``RidgeStatistics``
#: of its training subjects as ``train.<field>``, of its held-out ones as ``val.<field>``).
STATISTICS_REQUEST = "ridge-statistics"

#: Relative penalties tried when none are given (features have unit variance).
DEFAULT_PENALTIES = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)


@dataclass
class RidgeStatistics:
    """Sufficient statistics of ``n`` rows of features ``x [n, D]`` and targets ``y [n, N]``.

    Statistics of disjoint rows add up (``a + b``).

    Attributes
    ----------
    n : float
        Number of rows.
    sx : np.ndarray
        ``[D]`` sum of the features.
    sy : np.ndarray
        ``[N]`` sum of the targets.
    sxx : np.ndarray
        ``[D, D]`` ``XᵀX``.
    sxy : np.ndarray
        ``[D, N]`` ``XᵀY``.
    syy : np.ndarray
        ``[N]`` per-point ``Σy²`` (only the diagonal of ``YᵀY`` is needed).
    """

    n: float
    sx: np.ndarray  # [D]
    sy: np.ndarray  # [N]
    sxx: np.ndarray  # [D, D]
    sxy: np.ndarray  # [D, N]
    syy: np.ndarray  # [N] (per point: only the diagonal of YᵀY is needed)

    @classmethod
    def from_rows(cls, x: np.ndarray, y: np.ndarray) -> "RidgeStatistics":
        """The statistics of rows of features and targets (in float64).

        Parameters
        ----------
        x : np.ndarray
            Features ``[..., D]`` (leading axes are flattened into rows).
        y : np.ndarray
            Targets ``[..., N]``, as many rows as ``x``.

        Returns
        -------
        RidgeStatistics
            Their statistics.

        Raises
        ------
        ValueError
            ``x`` and ``y`` have different numbers of rows.
        """
        x = np.asarray(x, dtype=np.float64).reshape(-1, np.shape(x)[-1])
        y = np.asarray(y, dtype=np.float64).reshape(-1, np.shape(y)[-1])
        if len(x) != len(y):
            raise ValueError(f"{len(x)} feature rows for {len(y)} target rows")
        return cls(float(len(x)), x.sum(0), y.sum(0), x.T @ x, x.T @ y, (y * y).sum(0))

    def __add__(self, other: "RidgeStatistics") -> "RidgeStatistics":
        return RidgeStatistics(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def as_arrays(self) -> dict[str, np.ndarray]:
        """The fields as named float64 arrays (to send or store); ``from_arrays`` inverts it.

        Returns
        -------
        dict of str to np.ndarray
            ``n`` (0-d), ``sx``, ``sy``, ``sxx``, ``sxy``, ``syy``.
        """
        return {f.name: np.asarray(getattr(self, f.name), dtype=np.float64) for f in fields(self)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "RidgeStatistics":
        """The statistics from ``as_arrays``' named arrays (``n`` may be a 1-element array).

        Parameters
        ----------
        arrays : dict of str to np.ndarray
            At least ``n``, ``sx``, ``sy``, ``sxx``, ``sxy`` and ``syy``.

        Returns
        -------
        RidgeStatistics
            The statistics, in float64.
        """
        values = {f.name: np.asarray(arrays[f.name], dtype=np.float64) for f in fields(cls)}
        values["n"] = float(values["n"].reshape(-1)[0])  # sent as a 1-element array
        return cls(**values)

    @property
    def n_features(self) -> int:
        """Number of features ``D``."""
        return int(self.sx.shape[0])

    def feature_moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation of each feature over the rows.

        Returns
        -------
        mean, std : np.ndarray
            ``[D]`` each (population standard deviation).
        """
        mean = self.sx / self.n
        return mean, np.sqrt(np.maximum(np.diag(self.sxx) / self.n - mean**2, 0.0))


def mean_only_mse(train: RidgeStatistics, val: RidgeStatistics) -> float:
    """Validation MSE of predicting every point's training mean.

    What a ridge path must beat to be worth using; on ``fit_ridge``'s scale (mean over points
    and validation rows).

    Parameters
    ----------
    train : RidgeStatistics
        Statistics of the training rows.
    val : RidgeStatistics
        Statistics of the validation rows.

    Returns
    -------
    float
        The mean squared error.
    """
    mean_y = train.sy / train.n
    sse = val.syy - 2 * mean_y * val.sy + val.n * mean_y**2
    return float(sse.sum()) / (max(val.n, 1.0) * sse.shape[0])


def sum_statistics(parts: list[RidgeStatistics]) -> RidgeStatistics:
    """The sum of statistics: those of all their rows together.

    Parameters
    ----------
    parts : list of RidgeStatistics
        At least one.

    Returns
    -------
    RidgeStatistics
        Their sum.
    """
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


@dataclass
class RidgeSolution:
    """A fitted ridge regression: ``predict(x) = x @ coef + intercept``.

    Attributes
    ----------
    coef : np.ndarray
        ``[D, N]`` coefficients on the raw (unstandardised) features.
    intercept : np.ndarray
        ``[N]`` intercepts.
    lam : float
        The chosen relative penalty.
    rank : int | None
        The chosen rank; None: full rank.
    validation_mse : float | None
        Validation MSE (mean over points) at the chosen setting; None when nothing was chosen.
    weights : np.ndarray | None
        ``[D]`` per-feature group weights (banded ridge); None: all 1.
    """

    coef: np.ndarray  # [D, N] on raw features
    intercept: np.ndarray  # [N]
    lam: float
    rank: int | None
    validation_mse: float | None = None  # mean over points, at the chosen setting
    weights: np.ndarray | None = None  # per-feature group weights (banded ridge), None: all 1

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predict targets from features.

        Parameters
        ----------
        x : np.ndarray
            Features ``[..., D]``.

        Returns
        -------
        np.ndarray
            float32 ``[..., N]``.
        """
        return (np.asarray(x, dtype=np.float64) @ self.coef + self.intercept).astype(np.float32)


class _Standardised:
    """Training statistics in standardised (and group-weighted) feature coordinates,
    eigendecomposed once. ``weights`` scale each standardised feature (banded penalties)."""

    def __init__(self, train: RidgeStatistics, weights: np.ndarray | None = None):
        n = train.n
        self.mean_x, std = train.feature_moments()
        self.mean_y = train.sy / n
        weights = np.ones_like(self.mean_x) if weights is None else np.asarray(weights, dtype=np.float64)
        # a weighted feature is z * w: divide by scale / w. Weight 0, and a feature that does not
        # vary in the training rows (nothing to learn from it), switch the feature off.
        off = (weights == 0) | (std <= 1e-6 * max(float(np.median(std)), 1e-12))
        self.scale = (std + 1e-8) / np.maximum(weights, 1e-12)
        self.scale[off] = np.inf
        centred = train.sxx - n * np.outer(self.mean_x, self.mean_x)
        gram = centred / np.outer(self.scale, self.scale) / n
        self.cross = (train.sxy - np.outer(self.mean_x, train.sy)) / self.scale[:, None] / n
        self.gram = (gram + gram.T) / 2
        self.eigval, self.eigvec = np.linalg.eigh(self.gram)
        self.eigval = np.clip(self.eigval, 0.0, None)
        self.projected_cross = self.eigvec.T @ self.cross  # [D, N]

    def coefficients(self, lam: float) -> np.ndarray:
        """Standardised coefficients ``[D, N]`` for one penalty."""
        return self.eigvec @ (self.projected_cross / (self.eigval + lam)[:, None])

    def components(self, coef: np.ndarray) -> np.ndarray:
        """Right singular vectors ``[N, r]`` of the fitted training predictions ``Z coef``, leading first.

        From the ``[D, D]`` Gram ``M Mᵀ`` (``D`` features << ``N`` points): one matrix product and a
        small eigendecomposition, many times faster than the SVD of ``M`` for the leading vectors.
        Only components of non-zero singular value are returned (fewer than ``min(D, N)`` when
        the training predictions are of lower rank)."""
        m = np.sqrt(self.eigval)[:, None] * (self.eigvec.T @ coef)  # M with MᵀM = coefᵀ(ZᵀZ/n)coef
        s2, u = np.linalg.eigh(m @ m.T)
        order = np.argsort(s2)[::-1]
        s2, u = s2[order], u[:, order]
        keep = s2 > max(float(s2[0]), 0.0) * 1e-12
        return (m.T @ u[:, keep]) / np.sqrt(s2[keep])

    def validation_terms(self, val: RidgeStatistics) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(Σ z zᵀ, Σ z ỹᵀ, Σ ỹ²)`` of the validation rows in training coordinates, with
        ``z`` the standardised features and ``ỹ = y - mean_y``."""
        m, s, my = self.mean_x, self.scale, self.mean_y
        sz = (val.sx - val.n * m) / s
        szz = (val.sxx - np.outer(m, val.sx) - np.outer(val.sx, m) + val.n * np.outer(m, m)) / np.outer(s, s)
        szy = (val.sxy - np.outer(m, val.sy)) / s[:, None] - np.outer(sz, my)
        syy = val.syy - 2 * my * val.sy + val.n * my**2
        return szz, szy, syy

    def to_raw(self, coef: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raw = coef / self.scale[:, None]  # 0 for switched-off features (scale inf)
        return raw, self.mean_y - self.mean_x @ raw


def fit_ridge(
    train: RidgeStatistics,
    val: RidgeStatistics | None = None,
    penalties: tuple[float, ...] = DEFAULT_PENALTIES,
    ranks: tuple[int | None, ...] = (None,),
    weights: np.ndarray | None = None,
) -> RidgeSolution:
    """The ridge (or reduced-rank ridge) regression of ``train``, chosen on ``val``.

    The penalty and rank are chosen by the mean squared error on ``val`` (all computed from
    statistics). Without ``val`` (or with a single setting) the first penalty and rank are used.

    Parameters
    ----------
    train : RidgeStatistics
        Statistics of the training rows.
    val : RidgeStatistics | None
        Statistics of the validation rows.
    penalties : tuple of float
        Relative penalties ``lam`` to try (features are standardised).
    ranks : tuple of int | None
        Ranks to try; None: full rank.
    weights : np.ndarray | None
        ``[D]`` scales of the standardised features (see ``fit_banded_ridge``); 0 drops a feature.

    Returns
    -------
    RidgeSolution
        Coefficients on the raw features, the chosen ``lam`` and ``rank``, and the validation
        MSE when a choice was made.
    """
    solver = _Standardised(train, weights)
    settings = [(lam, rank) for lam in penalties for rank in ranks]
    if val is None or len(settings) == 1:
        lam, rank = settings[0]
        coef = _reduce(solver, solver.coefficients(lam), rank)
        return RidgeSolution(*solver.to_raw(coef), lam=lam, rank=rank)

    # Only the total validation error is needed, so every term is a trace computed in the
    # eigenbasis of the training Gram matrix: one pass per setting costs O(D^2), not O(D^2 N).
    szz, szy, syy = solver.validation_terms(val)
    u, e, p = solver.eigvec, solver.eigval, solver.projected_cross  # coef(lam) = u diag(1/(e+lam)) p
    szz_e = u.T @ szz @ u
    cross_e = np.einsum("dn,dn->d", p, u.T @ szy)
    p_gram = p @ p.T
    total_y = float(syy.sum())
    scale = 1.0 / (max(val.n, 1.0) * syy.shape[0])  # mean over points and validation rows
    best: tuple[float, float, int | None] | None = None
    for lam in penalties:
        g = 1.0 / (e + lam)
        reduced = _reduced_sses(
            solver, lam, [r for r in ranks if r is not None and r < min(p.shape)], szz, szy, total_y
        )
        for rank in ranks:
            if rank in reduced:
                sse = reduced[rank]
            else:  # full rank: SSE = Σỹ² - 2 tr(Bᵀ Σzỹ) + tr(Bᵀ Σzz B), with B = u diag(g) p
                sse = (
                    total_y
                    - 2 * float(g @ cross_e)
                    + float(np.einsum("ij,ij->", szz_e, g[:, None] * p_gram * g[None, :]))
                )
            if best is None or sse * scale < best[0]:
                best = (sse * scale, lam, rank)
    assert best is not None
    mse, lam, rank = best
    coef = _reduce(solver, solver.coefficients(lam), rank)
    return RidgeSolution(*solver.to_raw(coef), lam=lam, rank=rank, validation_mse=mse)


def _reduced_sses(
    solver: "_Standardised", lam: float, ranks: list[int], szz: np.ndarray, szy: np.ndarray, total_y: float
) -> dict[int, float]:
    """Validation SSE of each rank-``r`` projection ``B V_r V_rᵀ`` of the ridge coefficients
    (one SVD for all ranks: the terms are sums over the leading components)."""
    if not ranks:
        return {}
    coef = solver.coefficients(lam)
    v = solver.components(coef)[:, : max(ranks)]
    w = coef @ v  # [D, r]
    # tr(B_rᵀ Σzỹ) and tr(B_rᵀ Σzz B_r) with B_r = W_r V_rᵀ (V orthonormal): sums over components
    cross = np.cumsum(np.einsum("dr,dr->r", w, szy @ v))
    quadratic = np.cumsum(np.einsum("dr,dr->r", w, szz @ w))
    # fewer components than a rank (training predictions of lower rank): that rank keeps them all
    last = {r: min(r, len(cross)) - 1 for r in ranks}
    return {r: total_y - 2 * float(cross[last[r]]) + float(quadratic[last[r]]) for r in ranks}


def _reduce(solver: _Standardised, coef: np.ndarray, rank: int | None) -> np.ndarray:
    if rank is None or rank >= min(coef.shape):
        return coef
    v = solver.components(coef)[:, :rank]
    return coef @ v @ v.T


class _WeightedValidation:
    """The best full-rank validation MSE over ``penalties`` of ``fit_ridge(train, val, ...,
    weights)``, for many ``weights``, without touching the ``[D, N]`` matrices per trial.

    A weight scales a standardised feature, so every term is ``diag(w) T diag(w)`` of a ``[D, D]``
    matrix ``T`` computed once (the Gram of the features, of their cross products with the
    targets, and of those with the validation ones): a trial costs O(D³), not O(D² N), and the
    banded search's dozen trials no longer dominate solving the ridge path (D = 640, N = 5124)."""

    def __init__(self, train: RidgeStatistics, val: RidgeStatistics, penalties: tuple[float, ...]):
        base = _Standardised(train)  # weights 1: features off only where they do not vary
        self.penalties = penalties
        self.live = np.isfinite(base.scale).astype(np.float64)
        szz, szy, syy = base.validation_terms(val)
        self.gram, self.szz = base.gram, szz
        self.cross_gram = base.cross @ base.cross.T  # Σ_n c cᵀ over the targets
        self.val_cross = base.cross @ szy.T
        self.total_y = float(syy.sum())
        self.scale = 1.0 / (max(val.n, 1.0) * syy.shape[0])

    def mse(self, weights: np.ndarray) -> float:
        """The lowest validation MSE over the penalties with these per-feature ``weights``."""
        w = np.asarray(weights, dtype=np.float64) * self.live
        outer = np.outer(w, w)
        e, u = np.linalg.eigh(self.gram * outer)
        e = np.clip(e, 0.0, None)
        p_gram = u.T @ (self.cross_gram * outer) @ u
        cross_e = np.einsum("di,di->i", u, (self.val_cross * outer) @ u)
        szz_e = u.T @ (self.szz * outer) @ u
        best = np.inf
        for lam in self.penalties:
            g = 1.0 / (e + lam)
            sse = self.total_y - 2 * float(g @ cross_e) + float(np.einsum("ij,ij->", szz_e, g[:, None] * p_gram * g))
            best = min(best, sse * self.scale)
        return best


#: Penalty multipliers a feature group may take in ``fit_banded_ridge`` (0: the group is dropped).
GROUP_WEIGHTS = (0.0, 0.5, 2.0)


def fit_banded_ridge(
    train: RidgeStatistics,
    val: RidgeStatistics,
    groups: np.ndarray,
    penalties: tuple[float, ...] = DEFAULT_PENALTIES,
    ranks: tuple[int | None, ...] = (None,),
    sweeps: int = 1,
) -> tuple[RidgeSolution, np.ndarray]:
    """Ridge with one penalty weight per feature group (banded ridge), chosen on ``val``.

    Coordinate search: each group in turn tries ``GROUP_WEIGHTS`` with the others fixed
    (full-rank fits, the cheap part); then the penalty and rank are chosen with those weights.
    At least one group keeps a non-zero weight.

    Parameters
    ----------
    train : RidgeStatistics
        Statistics of the training rows.
    val : RidgeStatistics
        Statistics of the validation rows.
    groups : np.ndarray
        ``[D]`` group of each feature (e.g. ``design.feature_bands``).
    penalties : tuple of float
        Relative penalties to try.
    ranks : tuple of int | None
        Ranks to try; None: full rank.
    sweeps : int
        Most passes of the coordinate search over the groups.

    Returns
    -------
    solution : RidgeSolution
        The fit with the chosen weights, penalty and rank.
    weights : np.ndarray
        ``[D]`` the chosen per-feature weights.
    """
    groups = np.asarray(groups)
    names = np.unique(groups)
    chosen = {g: 1.0 for g in names}

    def weights_of(choice: dict) -> np.ndarray:
        return np.array([choice[g] for g in groups], dtype=np.float64)

    search = _WeightedValidation(train, val, penalties)
    best = search.mse(weights_of(chosen))
    for _ in range(sweeps):
        changed = False
        for g in names:
            for w in GROUP_WEIGHTS:
                if w == chosen[g] or (w == 0 and sum(v > 0 for v in chosen.values()) == 1):
                    continue  # keep at least one group
                trial = {**chosen, g: w}
                mse = search.mse(weights_of(trial))
                if mse < best - 1e-9:
                    best, chosen, changed = mse, trial, True
        if not changed:
            break
    weights = weights_of(chosen)
    return fit_ridge(train, val, penalties, ranks, weights), weights


def fit_ridge_selected(
    train_parts: list[RidgeStatistics],
    val: RidgeStatistics | None,
    penalties: tuple[float, ...] = DEFAULT_PENALTIES,
    ranks: tuple[int | None, ...] = (None,),
    groups: np.ndarray | None = None,
) -> RidgeSolution:
    """Fit on the sum of ``train_parts``, the penalty, rank and group weights chosen on ``val``.

    Without validation data the choice is made by fitting on every other training subject and
    scoring the rest, then refitting on all (with a single part and no ``val``: no choice, the
    first penalty and rank).

    Parameters
    ----------
    train_parts : list of RidgeStatistics
        Training statistics, one per subject (or per fold, ``design.two_fold_statistics``).
    val : RidgeStatistics | None
        Statistics of the validation rows.
    penalties : tuple of float
        Relative penalties to try.
    ranks : tuple of int | None
        Ranks to try; None: full rank.
    groups : np.ndarray | None
        ``[D]`` feature groups for banded penalties (``fit_banded_ridge``); None: one penalty.

    Returns
    -------
    RidgeSolution
        The fit, with ``validation_mse`` and ``weights`` of the choice.
    """
    if len(train_parts) < 2 and val is None:
        return fit_ridge(sum_statistics(train_parts), None, penalties, ranks)
    fit_train, fit_val = (
        (sum_statistics(train_parts), val)
        if val is not None
        else (sum_statistics(train_parts[0::2]), sum_statistics(train_parts[1::2]))
    )
    if groups is not None:
        chosen, weights = fit_banded_ridge(fit_train, fit_val, groups, penalties, ranks)
    else:
        chosen, weights = fit_ridge(fit_train, fit_val, penalties, ranks), None
    if val is not None:
        chosen.weights = weights
        return chosen
    final = fit_ridge(sum_statistics(train_parts), None, (chosen.lam,), (chosen.rank,), weights)
    final.validation_mse, final.weights = chosen.validation_mse, weights
    return final
