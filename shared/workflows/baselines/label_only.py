"""Label-only baseline: what the task labels alone predict, without EEG.

Each window's class (its ``trial_type``, ``rest`` outside events) as a one-hot regressor per
frame; the per-point ridge then learns each class's mean map. It tells how much of a
generator's score the labels could give for free.
"""

from __future__ import annotations

import numpy as np

from fedneurogen.shared.design import subject_statistics
from fedneurogen.shared.recording import PairedWindows
from fedneurogen.shared.ridge import RidgeSolution, fit_ridge_selected


class LabelOnlyBaseline:
    """Per-point ridge on the one-hot class of each window (see the module docstring).

    ``fit`` then ``predict``, like the other baselines.
    """

    def __init__(self) -> None:
        self.classes: list[str] = []
        self.solution: RidgeSolution | None = None

    def _design(self, windows: PairedWindows) -> np.ndarray:
        onehot = (windows.labels[:, None] == np.array(self.classes)[None, :]).astype(np.float32)  # [W, C]
        return np.repeat(onehot[:, None, :], windows.target.shape[-1], axis=1)  # [W, F, C]

    def fit(self, train: PairedWindows, val: PairedWindows | None = None) -> "LabelOnlyBaseline":
        """Learn each class's mean map from the training windows (each run frame once).

        Parameters
        ----------
        train : PairedWindows
            Training windows.
        val : PairedWindows | None
            Accepted like the other baselines' and not used (one fixed small penalty).

        Returns
        -------
        LabelOnlyBaseline
            ``self``.
        """
        self.classes = sorted(set(train.labels.tolist()))
        parts = subject_statistics(train, design=self._design(train))
        self.solution = fit_ridge_selected(parts, None, penalties=(1e-3,))
        return self

    def predict(self, windows: PairedWindows) -> np.ndarray:
        """Predict each window's target from its class alone.

        Parameters
        ----------
        windows : PairedWindows
            The windows (classes unseen in training predict the intercept).

        Returns
        -------
        np.ndarray
            float32 ``[n_windows, n_points, n_frames]``.

        Raises
        ------
        RuntimeError
            Called before ``fit``.
        """
        if self.solution is None:
            raise RuntimeError("fit() first")
        return np.transpose(self.solution.predict(self._design(windows)), (0, 2, 1)).astype(np.float32)
