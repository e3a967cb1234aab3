"""Continuous ridge-HRF: the strongest simple linear baseline (docs/architecture.md §7).

The hemodynamic design of ``fedneurogen.shared.design`` (per-run log band power on the virtual
montage, convolved with the HRF basis over the full history before each frame of the
continuous run) regressed on each target point with its own coefficients, by plain full-rank
ridge. The penalty is chosen on validation subjects (or by 2-fold cross-validation over the
training subjects when there are none). The model's ridge path is the same regression with a
reduced rank; this baseline is what the model must beat.
"""

from __future__ import annotations

import numpy as np

from fedneurogen.shared.design import global_part, two_fold_statistics
from fedneurogen.shared.recording import PairedWindows
from fedneurogen.shared.ridge import RidgeSolution, fit_ridge_selected, sum_statistics


class RidgeHRFBaseline:
    """Per-point ridge on the continuous hemodynamic design.

    Parameters
    ----------
    ranks : tuple of int | None
        Ranks to choose from (None: full rank, the default and the plain baseline).
    """

    def __init__(self, ranks: tuple[int | None, ...] = (None,)):
        self.ranks = ranks
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
        val_stats = sum_statistics(two_fold_statistics([val])) if val is not None and len(val) else None
        self.solution = fit_ridge_selected(two_fold_statistics([train]), val_stats, ranks=self.ranks)
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
        design = global_part(np.asarray(windows.design))  # the scalp design, also beside source columns
        return np.transpose(self.solution.predict(design), (0, 2, 1)).astype(np.float32)
