"""Subject-level splits: a subject's windows are all in one split, so test subjects are unseen."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SubjectSplit:
    """Subject ids in each split; a subject is in exactly one.

    Attributes
    ----------
    train, val, test : tuple of str
        Subject ids (``sub-01``) of the training, validation and test splits.
    """

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    def masks(self, subjects: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-window membership of each split.

        Parameters
        ----------
        subjects : np.ndarray
            Subject id of each window, ``[n_windows]`` (``PairedWindows.subjects``).

        Returns
        -------
        train, val, test : np.ndarray
            Boolean masks ``[n_windows]``.
        """
        return np.isin(subjects, self.train), np.isin(subjects, self.val), np.isin(subjects, self.test)

    def to_dict(self) -> dict[str, list[str]]:
        """The split as JSON-ready lists.

        Returns
        -------
        dict of str to list of str
            ``{"train": [...], "val": [...], "test": [...]}``.
        """
        return {"train": list(self.train), "val": list(self.val), "test": list(self.test)}


def split_subjects(
    subjects: np.ndarray | list[str], seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.2
) -> SubjectSplit:
    """Shuffle the unique subjects with ``seed`` and cut them into train/val/test.

    With three or more subjects, validation and test each get at least one subject and
    training keeps at least one; with fewer, everything goes to training.

    Parameters
    ----------
    subjects : np.ndarray | list of str
        Subject ids, repeated or not (e.g. one per window).
    seed : int
        Seed of the shuffle.
    val_fraction, test_fraction : float
        Shares of the subjects for validation and test (rounded, at least one each).

    Returns
    -------
    SubjectSplit
        The sorted subject ids of each split.
    """
    unique = sorted(set(np.asarray(subjects).tolist()))
    order = np.random.default_rng(seed).permutation(len(unique))
    shuffled = [unique[i] for i in order]
    n = len(shuffled)
    if n < 3:
        return SubjectSplit(tuple(shuffled), (), ())
    n_test = max(1, int(round(test_fraction * n)))
    n_val = max(1, int(round(val_fraction * n)))
    if n_test + n_val > n - 1:
        n_test, n_val = 1, 1
    test = tuple(sorted(shuffled[:n_test]))
    val = tuple(sorted(shuffled[n_test : n_test + n_val]))
    train = tuple(sorted(shuffled[n_test + n_val :]))
    return SubjectSplit(train, val, test)
