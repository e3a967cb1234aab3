"""The cross-validation protocol of a fairness-augmentation report (docs/architecture.md §6).

What to add to a training fold (random oversampling, class weights, generated samples) is a
*strategy* supplied by the caller (``fedneurogen.shared.workflows.fairness.strategies``,
``fedneurogen.simulations.fairness_table``): ``Fold -> TrainingSet``. Here: ``subject_folds``
(``StratifiedGroupKFold`` by subject), the training set with the provenance of every row
(``TrainingSet``, ``real_training_set``, ``stack``), and ``cross_validate`` (one strategy over all
folds, scored on the real test windows only).

Its other parts, each in its own module: the features (``window_features.py``), the
classifiers (``classifiers.py``), the scores and fairness metrics (``metrics.py``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from fedneurogen.shared.errors import DataError
from fedneurogen.shared.recording import PairedWindows

from .metrics import FoldResult, StrategyResult, class_recall, score_fold

ORIGINS = ("real", "oversampled", "interpolated", "generated")


def check_class_sizes(labels: np.ndarray, classes: Sequence[str], n_folds: int, site: str | Path) -> None:
    """Check that every class has windows, and at least one per fold (stratified CV).

    Parameters
    ----------
    labels : np.ndarray
        Class of each window.
    classes : sequence of str
        The task's classes.
    n_folds : int
        Cross-validation folds.
    site : str | Path
        The site (for messages).

    Raises
    ------
    DataError
        A class has no window, or fewer windows than folds.
    """
    counts = {c: int(np.sum(labels == c)) for c in classes}
    for c, n in counts.items():
        if n == 0:
            raise DataError(site, f"no EEG windows of class {c!r} (classes present: {_present(counts)})")
        if n < n_folds:
            raise DataError(
                site,
                f"class {c!r} has {n} window(s), fewer than the {n_folds} cross-validation folds; use --folds {max(2, n)} or fewer",
            )


def _present(counts: dict[str, int]) -> str:
    return ", ".join(f"{c}: {n}" for c, n in counts.items() if n) or "none"


def subject_folds(
    labels: np.ndarray, subjects: np.ndarray, classes: Sequence[str], n_folds: int, seed: int, site: str | Path
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified, subject-grouped K-fold splits: a subject's windows are all in one test fold.

    Parameters
    ----------
    labels : np.ndarray
        Class of each window.
    subjects : np.ndarray
        Subject of each window.
    classes : sequence of str
        The task's classes.
    n_folds : int
        Number of folds (at least 2).
    seed : int
        Seed of the shuffle.
    site : str | Path
        The site (for messages).

    Returns
    -------
    list of (np.ndarray, np.ndarray)
        Sorted ``(train, test)`` window indices per fold.

    Raises
    ------
    DataError
        Fewer than 2 folds, a class with fewer windows than folds, fewer subjects than folds, or
        a training fold that would lack a class (all its windows come from the subjects of one
        fold); the message names the site and the class.
    """
    labels, subjects = np.asarray(labels), np.asarray(subjects)
    if n_folds < 2:
        raise DataError(site, f"cross-validation needs at least 2 folds, got {n_folds}")
    check_class_sizes(labels, classes, n_folds, site)
    n_subjects = len(set(subjects.tolist()))
    if n_subjects < n_folds:
        raise DataError(
            site, f"{n_subjects} subject(s) for {n_folds} subject-grouped folds; use --folds {n_subjects} or fewer"
        )
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = []
    for train, test in splitter.split(np.zeros(len(labels)), labels, groups=subjects):
        for c in classes:
            if not np.any(labels[train] == c):
                owners = sorted(set(subjects[labels == c].tolist()))
                raise DataError(
                    site,
                    f"class {c!r} comes only from subject(s) {owners}: a training fold has none of it; collect it from more subjects or use fewer folds",
                )
        folds.append((np.sort(train), np.sort(test)))
    return folds


@dataclass
class TrainingSet:
    """What a strategy trains on in one fold, with the provenance of every row.

    Attributes
    ----------
    features : np.ndarray
        ``[n_rows, n_features]``.
    labels : np.ndarray
        Class of each row.
    origin : np.ndarray
        ``real``, ``oversampled``, ``interpolated`` or ``generated`` per row.
    source_subjects : np.ndarray
        Subject whose recording each row comes from (``n/a`` for interpolated rows).
    source_ids : np.ndarray
        Window id (``window_ids``) of the recording each row comes from.
    class_weight : str | None
        Passed to the estimator factory (``'balanced'``: the class-weight strategy).
    log : dict of str to Any
        Strategy-specific notes (generation log, units not topped up, label fidelity).

    Raises
    ------
    ValueError
        The per-row arrays differ in length.
    """

    features: np.ndarray
    labels: np.ndarray
    origin: np.ndarray  # "real" | "oversampled" | "generated" per row
    source_subjects: np.ndarray  # subject whose recording each row comes from
    source_ids: np.ndarray  # window id (``window_ids``) of the recording each row comes from
    class_weight: str | None = None
    log: dict[str, Any] = field(default_factory=dict)  # strategy-specific notes (generation log)

    def __post_init__(self) -> None:
        n = len(self.labels)
        if not (len(self.features) == len(self.origin) == len(self.source_subjects) == len(self.source_ids) == n):
            raise ValueError("TrainingSet rows disagree in length")

    @property
    def n_added(self) -> dict[str, int]:
        """Rows added to the real ones, per origin (``oversampled``, ``interpolated``, ``generated``)."""
        return {o: int(np.sum(self.origin == o)) for o in ORIGINS if o != "real"}


@dataclass
class Fold:
    """One cross-validation fold: indices into the real windows.

    Attributes
    ----------
    index : int
        Fold number, from 0.
    train, test : np.ndarray
        Indices of the training and test windows.
    seed : int
        The fold's seed (``seed * 1000 + index``).
    """

    index: int
    train: np.ndarray
    test: np.ndarray
    seed: int


Strategy = Callable[[Fold], TrainingSet]


def window_ids(windows: PairedWindows) -> np.ndarray:
    """A stable id per window, for provenance across subsets.

    Parameters
    ----------
    windows : PairedWindows
        The windows.

    Returns
    -------
    np.ndarray
        object ``[n_windows]``: ``"<run>@<onset in s, 3 decimals>"``.
    """
    return np.array([f"{run}@{onset:.3f}" for run, onset in zip(windows.runs, windows.onsets)], dtype=object)


def real_training_set(
    features: np.ndarray, labels: np.ndarray, subjects: np.ndarray, ids: np.ndarray, train: np.ndarray
) -> TrainingSet:
    """The fold's real training windows as a ``TrainingSet`` (what ``none`` trains on).

    Parameters
    ----------
    features : np.ndarray
        ``[n_windows, n_features]`` features of every real window.
    labels : np.ndarray
        Class of every window.
    subjects : np.ndarray
        Subject of every window.
    ids : np.ndarray
        Window id of every window (``window_ids``).
    train : np.ndarray
        Indices of the fold's training windows.

    Returns
    -------
    TrainingSet
        Those rows, origin ``real``.
    """
    return TrainingSet(
        features[train], labels[train], np.full(len(train), "real", dtype=object), subjects[train], ids[train]
    )


def stack(
    base: TrainingSet,
    features: np.ndarray,
    labels: np.ndarray,
    origin: str,
    subjects: np.ndarray,
    ids: np.ndarray,
    **log: Any,
) -> TrainingSet:
    """``base`` plus added rows of one origin.

    Parameters
    ----------
    base : TrainingSet
        The training set so far.
    features : np.ndarray
        ``[n_added, n_features]`` added rows (cast to ``base``'s dtype).
    labels : np.ndarray
        Their classes.
    origin : str
        Their origin (``oversampled``, ``interpolated``, ``generated``).
    subjects : np.ndarray
        Subject each added row comes from.
    ids : np.ndarray
        Window id each added row comes from.
    **log
        Notes merged into the set's ``log``.

    Returns
    -------
    TrainingSet
        A new set (``base`` with the notes when nothing is added).
    """
    if len(labels) == 0:
        return TrainingSet(
            base.features,
            base.labels,
            base.origin,
            base.source_subjects,
            base.source_ids,
            base.class_weight,
            {**base.log, **log},
        )
    return TrainingSet(
        np.concatenate([base.features, features.astype(base.features.dtype)]),
        np.concatenate([base.labels, labels]),
        np.concatenate([base.origin, np.full(len(labels), origin, dtype=object)]),
        np.concatenate([base.source_subjects, subjects]),
        np.concatenate([base.source_ids, ids]),
        base.class_weight,
        {**base.log, **log},
    )


def cross_validate(
    name: str,
    strategy: Strategy,
    features: np.ndarray,
    labels: np.ndarray,
    subjects: np.ndarray,
    ids: np.ndarray,
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
    make_estimator: Callable[[str | None], Any],
    classes: Sequence[str],
    seed: int,
) -> StrategyResult:
    """Cross-validate one strategy.

    On every fold ``strategy`` builds the training set from the fold's training windows; a
    fresh estimator is fitted on it and scored on the fold's real test windows only.

    Parameters
    ----------
    name : str
        The strategy's name (for the result and messages).
    strategy : Strategy
        ``Fold -> TrainingSet``.
    features : np.ndarray
        ``[n_windows, n_features]`` features of the real windows.
    labels : np.ndarray
        Class of each window.
    subjects : np.ndarray
        Subject of each window.
    ids : np.ndarray
        Window id of each window (``window_ids``).
    folds : sequence of (np.ndarray, np.ndarray)
        ``(train, test)`` indices (``subject_folds``).
    make_estimator : callable
        ``make_estimator(class_weight)`` -> an unfitted classifier.
    classes : sequence of str
        The classes.
    seed : int
        Base of the folds' seeds.

    Returns
    -------
    StrategyResult
        Per-fold results and the out-of-fold predictions.

    Raises
    ------
    RuntimeError
        An added training row comes from a test subject (a bug in the strategy).
    """
    y_pred = np.empty(len(labels), dtype=object)
    results = []
    for i, (train, test) in enumerate(folds):
        fold = Fold(i, train, test, seed=seed * 1000 + i)
        training = strategy(fold)
        added = training.origin != "real"
        test_subjects = set(subjects[test].tolist())
        leaked = sorted(set(training.source_subjects[added].tolist()) & test_subjects)
        if leaked:  # a guard, not a report: an added row built from a test subject is a bug
            raise RuntimeError(f"strategy {name!r}, fold {i}: added training rows come from test subject(s) {leaked}")
        estimator = make_estimator(training.class_weight)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)  # e.g. LDA collinearity
            estimator.fit(training.features, training.labels)
        # The scored rows are the fold's real windows, addressed by index: nothing a strategy
        # adds can reach them.
        predicted = estimator.predict(features[test])
        y_pred[test] = predicted
        per_class, accuracy, macro = score_fold(labels[test], predicted, classes)
        results.append(
            FoldResult(
                index=i,
                test_subjects=sorted(test_subjects),
                n_train_real=int(np.sum(~added)),
                n_added=training.n_added,
                added_source_subjects=sorted(set(training.source_subjects[added].tolist())),
                test_windows_used_as_sources=len(set(ids[test].tolist()) & set(training.source_ids[added].tolist())),
                per_class_f1=per_class,
                per_class_recall=class_recall(labels[test], predicted, classes),
                accuracy=accuracy,
                macro_f1=macro,
                log=training.log,
            )
        )
    return StrategyResult(name, results, np.asarray(labels, dtype=object), y_pred)
