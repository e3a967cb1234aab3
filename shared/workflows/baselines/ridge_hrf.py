"""Continuous ridge-HRF: the strongest simple linear baseline (docs/architecture.md §7).

The hemodynamic design of ``fedneurogen.shared.design`` (per-run log band power on the virtual
montage, convolved with the HRF basis over the full history before each frame of the
continuous run) regressed on each target point with its own coefficients, by plain full-rank
ridge. The penalty is chosen on validation subjects (or by 2-fold cross-validation over the
training subjects when there are none). Its design is the linear one (``design.linear_part``:
without the model's alpha-gated block). With ``ranks`` and ``banded`` it is the model's own
linear path refitted (reduced rank, a penalty weight per band): what the model's nonlinear parts
are measured against. The plain baseline is what the model must beat.
"""

from __future__ import annotations

import numpy as np

from fedneurogen.shared.design import feature_bands, iter_subject_statistics, linear_part, two_fold_statistics
from fedneurogen.shared.recording import PairedWindows
from fedneurogen.shared.ridge import RidgeSolution, fit_ridge_selected, sum_statistics


class RidgeHRFBaseline:
    """Per-point ridge on the continuous hemodynamic design.

    Parameters
    ----------
    ranks : tuple of int | None
        Ranks to choose from (None: full rank, the default and the plain baseline).
    banded : bool
        A penalty weight per EEG band, chosen on validation like the model's ridge path's.
    """

    def __init__(self, ranks: tuple[int | None, ...] = (None,), banded: bool = False):
        self.ranks = ranks
        self.banded = banded
        self.solution: RidgeSolution | None = None

    def fit(self, train: PairedWindows, val: PairedWindows | None = None) -> "RidgeHRFBaseline":
        """Fit the ridge, its penalty chosen on ``val`` (or by 2-fold CV over the training subjects).

        Parameters
        ----------
        train : PairedWindows
            Training windows with a design.
        val : PairedWindows | None
            Validation windows with a design; None or empty: cross-validation on ``train``.

        Returns
        -------
        RidgeHRFBaseline
            ``self``.
        """
        linear = lambda w: iter_subject_statistics(w, part=linear_part)  # noqa: E731
        val_stats = sum_statistics(two_fold_statistics([val], linear)) if val is not None and len(val) else None
        parts = two_fold_statistics([train], linear)
        groups = feature_bands(parts[0].n_features) if self.banded else None
        self.solution = fit_ridge_selected(parts, val_stats, ranks=self.ranks, groups=groups)
        return self

    def predict(self, windows: PairedWindows) -> np.ndarray:
        """Predict the windows' targets from their design.

        Parameters
        ----------
        windows : PairedWindows
            Windows with a design ``[W, F, D]``.

        Returns
        -------
        np.ndarray
            float32 ``[W, N, F]``.

        Raises
        ------
        RuntimeError
            Called before ``fit``.
        """
        if self.solution is None:
            raise RuntimeError("fit() first")
        design = linear_part(np.asarray(windows.design))  # the scalp design, also beside gated and source columns
        return np.transpose(self.solution.predict(design), (0, 2, 1)).astype(np.float32)
