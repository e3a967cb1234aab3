"""Linear-Gaussian generator: the honest generative baseline (docs/architecture.md §8).

Mean: the continuous ridge-HRF regression (``RidgeHRFBaseline``) plus, where the labels allow, a
class offset per point and frame. Residual: Gaussian, with the spatio-temporal covariance of the
training residuals, separable and low-rank plus diagonal in space,

    Cov(x[:, f], x[:, g]) = (U S^2 U^T + diag(psi)) * C[f, g],

``U S`` the leading principal components of the residual maps (every training frame a row),
``psi`` each point's variance left over, and ``C`` the frames' correlation within a window
(pooled over points). The residuals are *cross-fitted*: each training subject's residual is its
target minus the prediction of a ridge fitted without that subject (out-of-fold by subject), so
the noise is the size of the error on a new subject, not the smaller in-sample error. A generative
model earns its place only by making better data than this.
"""

from __future__ import annotations

import numpy as np

from fedneurogen.shared.model.crossfit import MIN_CLASS_SUBJECTS
from fedneurogen.shared.recording import PairedWindows
from fedneurogen.shared.splits import subject_folds
from fedneurogen.shared.workflows.baselines.ridge_hrf import RidgeHRFBaseline


def cross_fitted_predictions(train: PairedWindows, n_folds: int = 5) -> np.ndarray:
    """Ridge-HRF predictions of each training window by a fit that never saw its subject.

    Parameters
    ----------
    train : PairedWindows
        Training windows with a design.
    n_folds : int
        Folds by subject (at most one per subject).

    Returns
    -------
    np.ndarray
        float32 ``[W, N, F]``, shaped like ``train.target``.

    Raises
    ------
    ValueError
        Fewer than two subjects: nothing to cross-fit.
    """
    folds = subject_folds(train.subjects, n_folds)
    if len(folds) < 2:
        raise ValueError("cross-fitting needs at least two training subjects")
    out = np.zeros(np.shape(train.target), np.float32)
    for fold in folds:
        held = np.isin(train.subjects, fold)
        out[held] = RidgeHRFBaseline().fit(train.subset(~held)).predict(train.subset(held))
    return out


class LinearGaussianGenerator:
    """Ridge-HRF mean + class offset + separable low-rank-plus-diagonal Gaussian residual.

    ``fit(train, val)``, then ``predict(windows)`` (the mean) and ``sample(windows, k, seed)``.

    Parameters
    ----------
    rank : int
        Principal components of the spatial covariance (the rest is diagonal).
    n_folds : int
        Folds by subject of the cross-fitted residuals.
    class_conditional : bool
        Add each class's mean residual (a class seen in at least ``MIN_CLASS_SUBJECTS`` subjects).
    """

    def __init__(self, rank: int = 20, n_folds: int = 5, class_conditional: bool = True):
        self.rank = rank
        self.n_folds = n_folds
        self.class_conditional = class_conditional
        self.ridge: RidgeHRFBaseline | None = None
        self.offsets: dict[str, np.ndarray] = {}
        self.components = np.zeros((0, 0), np.float32)  # U S: [N, r]
        self.diagonal = np.zeros(0, np.float32)  # psi: [N]
        self.temporal = np.zeros((0, 0))  # C: [F, F] correlation
        self.cross_fitted = False
        self.spread = 1.0  # the noise's scale, calibrated on validation windows (``fit``)

    def fit(self, train: PairedWindows, val: PairedWindows | None = None) -> "LinearGaussianGenerator":
        """Fit the mean on ``train`` and the residual covariance on its cross-fitted residuals.

        Parameters
        ----------
        train : PairedWindows
            Training windows with a design (only these windows' targets are read).
        val : PairedWindows | None
            Validation windows (the ridge penalty, and the noise's spread: the root of their
            whitened mean square about the mean, as the model's is calibrated,
            ``shared/workflows/departure.py``); None: 2-fold CV on ``train``, spread 1.

        Returns
        -------
        LinearGaussianGenerator
            ``self``.
        """
        target = np.asarray(train.target, dtype=np.float32)
        self.ridge = RidgeHRFBaseline().fit(train, val)
        try:
            residual = target - cross_fitted_predictions(train, self.n_folds)
            self.cross_fitted = True
        except ValueError:  # one subject: in-sample residuals (the noise is then too small; recorded)
            residual = target - self.ridge.predict(train)
            self.cross_fitted = False
        self.offsets = {}
        if self.class_conditional:
            for label in sorted(set(np.asarray(train.labels).tolist())):
                mask = train.labels == label
                if len(set(train.subjects[mask].tolist())) >= MIN_CLASS_SUBJECTS:
                    self.offsets[str(label)] = residual[mask].mean(axis=0)
        residual = residual - self._offsets(train.labels, residual.shape[1:])
        self._fit_covariance(residual)
        self.spread = 1.0
        if val is not None and len(val):
            from fedneurogen.shared.workflows.departure import calibrated_spread

            mean_square = self.whitened_mean_square(np.asarray(val.target, np.float64) - self.predict(val))
            self.spread = calibrated_spread(mean_square)
        return self

    def whitened_mean_square(self, residual: np.ndarray) -> float:
        """Mean square of residuals ``[W, N, F]`` whitened by the fitted covariance (before the
        spread), through the model's noise model: ``diag(s)(I + G Gᵀ)diag(s)`` with ``s = √ψ`` and
        ``G = U / √ψ`` is ``U Uᵀ + diag ψ`` exactly (``shared/model/noise.py``)."""
        import torch

        from fedneurogen.shared.model.noise import ResidualNoise

        scale = np.sqrt(self.diagonal.astype(np.float64))
        noise = ResidualNoise(len(scale), self.components.shape[1], len(self.temporal))
        noise.set_covariance(scale, self.components / scale[:, None], self.temporal)
        white = noise.whiten(torch.as_tensor(residual, dtype=torch.float32)).double()
        return float((white**2).mean())

    def _offsets(self, labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """Each window's class offset ``[W, N, F]`` (zero for a class without one)."""
        zero = np.zeros(shape, np.float32)
        return np.stack([self.offsets.get(str(c), zero) for c in labels]) if len(labels) else np.zeros((0, *shape))

    def _fit_covariance(self, residual: np.ndarray) -> None:
        from sklearn.utils.extmath import randomized_svd

        n_windows, n_points, n_frames = residual.shape
        frames = np.moveaxis(residual, 2, 1).reshape(-1, n_points).astype(np.float64)  # every frame a row
        frames -= frames.mean(axis=0)
        rank = int(min(self.rank, max(0, min(frames.shape) - 1)))
        variance = (frames**2).mean(axis=0)
        if rank > 0:
            _, s, vt = randomized_svd(frames, rank, random_state=0)
            components = vt.T * (s / np.sqrt(len(frames)))
        else:
            components = np.zeros((n_points, 0))
        self.components = components.astype(np.float32)
        self.diagonal = np.maximum(variance - (components**2).sum(axis=1), 1e-6 * max(variance.mean(), 1e-12)).astype(
            np.float32
        )
        sd = np.sqrt(np.maximum(residual.var(axis=(0, 2)), 1e-12))[None, :, None]
        z = residual / sd  # frames' correlation around the zero-mean residual, pooled over points
        cov = np.einsum("wnf,wng->fg", z, z, optimize=True) / (n_windows * n_points)
        d = np.sqrt(np.maximum(np.diag(cov), 1e-12))
        self.temporal = cov / np.outer(d, d)

    def predict(self, windows: PairedWindows) -> np.ndarray:
        """The mean: ridge-HRF prediction plus the window's class offset.

        Parameters
        ----------
        windows : PairedWindows
            Windows with a design (their targets are not read).

        Returns
        -------
        np.ndarray
            float32 ``[W, N, F]``.

        Raises
        ------
        RuntimeError
            Called before ``fit``.
        """
        if self.ridge is None:
            raise RuntimeError("fit() first")
        mean = self.ridge.predict(windows)
        return (mean + self._offsets(windows.labels, mean.shape[1:])).astype(np.float32)

    def covariance(self) -> tuple[np.ndarray, np.ndarray]:
        """The residual covariance, dense (small problems and tests only).

        Returns
        -------
        spatial : np.ndarray
            ``[N, N]``: ``U S^2 U^T + diag(psi)``.
        temporal : np.ndarray
            ``[F, F]`` correlation; ``Cov(vec x) = kron(temporal, spatial)`` (frame-major).
        """
        spatial = self.components.astype(np.float64) @ self.components.T.astype(np.float64)
        return spatial + np.diag(self.diagonal.astype(np.float64)), self.temporal.copy()

    def sample(self, windows: PairedWindows, k: int = 1, seed: int = 0) -> np.ndarray:
        """Draw ``k`` samples of every window: the mean plus Gaussian residuals.

        Parameters
        ----------
        windows : PairedWindows
            Windows with a design (their targets are not read).
        k : int
            Samples per window.
        seed : int
            Seed of the noise.

        Returns
        -------
        np.ndarray
            float32 ``[k, W, N, F]``.

        Raises
        ------
        RuntimeError
            Called before ``fit``.
        """
        mean = self.predict(windows)
        rng = np.random.default_rng(seed)
        n_points, n_frames = mean.shape[1:]
        # a tiny jitter keeps the Cholesky factor defined when frames are almost collinear
        chol = np.linalg.cholesky(self.temporal + 1e-9 * np.eye(n_frames)).astype(np.float32)
        scale = np.sqrt(self.diagonal)[None, :, None]
        out = np.empty((k, *mean.shape), np.float32)
        for i in range(k):
            low = rng.standard_normal((len(mean), self.components.shape[1], n_frames), dtype=np.float32)
            spatial = np.einsum("nr,wrf->wnf", self.components, low, optimize=True)
            spatial += scale * rng.standard_normal(mean.shape, dtype=np.float32)
            out[i] = mean + self.spread * (spatial @ chol.T)  # frames mixed by C's Cholesky factor
        return out
