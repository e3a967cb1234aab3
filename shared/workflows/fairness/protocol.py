"""Downstream classifiers, the cross-validation protocol and fairness metrics (docs/architecture.md §6).

The reusable half of a fairness-augmentation report; what to add to a training fold (random
oversampling, class weights, generated samples) is a *strategy* supplied by the caller
(``fedneurogen.shared.workflows.fairness.strategies``, ``fedneurogen.simulations.fairness_table``).

- features: ``compute_features`` turns paired windows into one row per window, in named column
  blocks: ``eeg`` (log band power per channel), ``eeg_cov`` (EEG spatial covariance, for the
  Riemannian classifier) and ``target`` (fMRI: mean and slope of BOLD per cortical ROI over the
  window; fNIRS: mean and slope of each HbO/HbR channel). Every feature is a function of its own
  window only, so computing them once for the whole site leaks nothing across folds; anything
  fitted (scaling, tangent-space reference, classifier) lives in the scikit-learn pipeline and
  is fitted on training folds only.
- classifiers: ``make_classifier`` -> a scikit-learn ``Pipeline`` (``logreg``, shrinkage
  ``lda``, ``riemann`` = tangent space of EEG covariances [+ target features] + logistic
  regression).
- protocol: ``subject_folds`` (``StratifiedGroupKFold`` by subject), ``cross_validate`` (one
  strategy over all folds, with the provenance of every training row).
- metrics: per-class F1 and recall per fold (mean ± std), accuracy, macro F1, and per-group
  metrics from fairlearn's ``MetricFrame`` (worst group, difference, ratio; equalized-odds
  difference for binary tasks). Test folds hold real windows only, so they keep the site's
  class imbalance: a minority class's precision, and so its F1, is capped by its rarity in the
  test fold, whatever is added to training; recall is not.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, recall_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from fedneurogen.shared.data.bids import MISSING
from fedneurogen.shared.errors import DataError
from fedneurogen.shared.features import band_power
from fedneurogen.shared.recording import PairedWindows

CLASSIFIERS = ("logreg", "lda", "riemann")
ORIGINS = ("real", "oversampled", "interpolated", "generated")

# -- features -------------------------------------------------------------------------------


def target_parcellation(positions: np.ndarray, n_rois: int = 64, seed: int = 0) -> np.ndarray:
    """ROI index of each fMRI vertex: k-means on vertex positions.

    Label-free, so it can be computed on the whole site without leaking anything into the
    classifier.

    Parameters
    ----------
    positions : np.ndarray
        ``[n_vertices, 3]`` mm.
    n_rois : int
        Number of ROIs (at most the number of vertices).
    seed : int
        Seed of k-means.

    Returns
    -------
    np.ndarray
        int ``[n_vertices]`` ROI index.
    """
    from sklearn.cluster import KMeans

    positions = np.asarray(positions, dtype=np.float64)
    n_rois = min(n_rois, len(positions))
    return KMeans(n_clusters=n_rois, n_init=1, random_state=seed).fit_predict(positions)


def _mean_and_slope(x: np.ndarray) -> np.ndarray:
    """``[n, units, frames]`` -> ``[n, 2 * units]``: mean over the window, then least-squares slope."""
    t = np.arange(x.shape[-1], dtype=np.float64)
    t -= t.mean()
    slope = (x * t).sum(-1) / max(float((t**2).sum()), 1e-12)
    return np.concatenate([x.mean(-1), slope], axis=1)


def target_features(target: np.ndarray, modality: str, rois: np.ndarray | None = None) -> np.ndarray:
    """Target-modality features: the mean and the slope over the window, per ROI or channel.

    Parameters
    ----------
    target : np.ndarray
        ``[n_windows, n_points, n_frames]`` target windows.
    modality : str
        ``"fmri"``: averaged per ROI first; otherwise (fNIRS) per HbO/HbR point.
    rois : np.ndarray | None
        ``[n_points]`` ROI of each vertex (``target_parcellation``); needed for fMRI.

    Returns
    -------
    np.ndarray
        float32 ``[n_windows, 2 * units]``: all means, then all slopes.

    Raises
    ------
    ValueError
        fMRI without ``rois``.
    """
    target = np.asarray(target, dtype=np.float64)
    if modality == "fmri":
        if rois is None:
            raise ValueError("fMRI target features need the ROI of each vertex (target_parcellation)")
        n_rois = int(rois.max()) + 1
        onehot = np.zeros((n_rois, len(rois)))
        onehot[rois, np.arange(len(rois))] = 1.0
        onehot /= onehot.sum(1, keepdims=True)
        target = np.einsum("rv,nvf->nrf", onehot, target)
    return _mean_and_slope(target).astype(np.float32)


def eeg_band_power(eeg: np.ndarray, sfreq: float, chunk: int = 64) -> np.ndarray:
    """Log band power per channel and band of each EEG window.

    Parameters
    ----------
    eeg : np.ndarray
        ``[n_windows, C, T]`` EEG windows (an array or a ``WindowView``).
    sfreq : float
        EEG rate, Hz.
    chunk : int
        Windows filtered at a time (the filters work in float64).

    Returns
    -------
    np.ndarray
        float32 ``[n_windows, C * n_bands]`` (``EEG_BANDS``).
    """
    parts = [
        band_power(eeg[i : i + chunk], sfreq).reshape(min(chunk, len(eeg) - i), -1) for i in range(0, len(eeg), chunk)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def eeg_covariances(eeg: np.ndarray, chunk: int = 64) -> np.ndarray:
    """OAS-shrunk spatial covariance of each EEG window, flattened.

    Shrinkage keeps average-referenced, rank-deficient EEG positive definite for the
    Riemannian metric.

    Parameters
    ----------
    eeg : np.ndarray
        ``[n_windows, C, T]`` EEG windows (an array or a ``WindowView``).
    chunk : int
        Windows estimated at a time.

    Returns
    -------
    np.ndarray
        float64 ``[n_windows, C * C]``.
    """
    from pyriemann.estimation import Covariances

    estimator = Covariances(estimator="oas")
    parts = [estimator.transform(np.asarray(eeg[i : i + chunk], dtype=np.float64)) for i in range(0, len(eeg), chunk)]
    covs = np.concatenate(parts) if parts else np.zeros((0, 0, 0))
    return covs.reshape(len(covs), -1)


@dataclass
class Features:
    """Downstream features: one row per window, in named column blocks.

    Attributes
    ----------
    values : np.ndarray
        float32 ``[n_windows, n_features]``.
    blocks : dict of str to (int, int)
        Block name (``eeg``, ``eeg_cov``, ``target``) -> its ``[start, stop)`` columns.
    """

    values: np.ndarray
    blocks: dict[str, tuple[int, int]]

    def columns(self, names: Sequence[str]) -> list[int]:
        """Column indices of some blocks.

        Parameters
        ----------
        names : sequence of str
            Block names; absent blocks are skipped.

        Returns
        -------
        list of int
            Their columns, in the order of ``names``.
        """
        return [c for name in names if name in self.blocks for c in range(*self.blocks[name])]


def blocks_for(classifier: str, use_eeg: bool = True, use_target: bool = True) -> tuple[str, ...]:
    """Feature blocks a classifier reads.

    Band power for the linear models, covariances for the Riemannian one (always); the target
    block for all when ``use_target``.

    Parameters
    ----------
    classifier : str
        ``logreg``, ``lda`` or ``riemann``.
    use_eeg : bool
        Use EEG features (ignored by ``riemann``, which always does).
    use_target : bool
        Use target features.

    Returns
    -------
    tuple of str
        Block names, EEG first.

    Raises
    ------
    ValueError
        An unknown classifier, or no block at all.
    """
    if classifier not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {classifier!r}; choose one of {CLASSIFIERS}")
    eeg = ("eeg_cov",) if classifier == "riemann" else ("eeg",)
    blocks = (eeg if use_eeg or classifier == "riemann" else ()) + (("target",) if use_target else ())
    if not blocks:
        raise ValueError("no features: use EEG, target features or both")
    return blocks


def compute_features(windows: PairedWindows, blocks: Sequence[str], rois: np.ndarray | None = None) -> Features:
    """The feature blocks of every window, concatenated in the order given.

    Parameters
    ----------
    windows : PairedWindows
        The windows.
    blocks : sequence of str
        ``eeg`` (band power), ``eeg_cov`` (covariances) and/or ``target``.
    rois : np.ndarray | None
        fMRI ROI of each vertex (for the ``target`` block).

    Returns
    -------
    Features
        float32 values and the column range of each block.

    Raises
    ------
    ValueError
        An unknown block, or fMRI target features without ``rois``.
    """
    parts, spans, start = [], {}, 0
    for name in blocks:
        if name == "eeg":
            values = eeg_band_power(windows.eeg, windows.eeg_sfreq)
        elif name == "eeg_cov":
            values = eeg_covariances(windows.eeg)
        elif name == "target":
            values = target_features(windows.target, windows.target_modality, rois)
        else:
            raise ValueError(f"unknown feature block {name!r}")
        values = values.reshape(len(windows), -1)
        parts.append(values.astype(np.float32))
        spans[name] = (start, start + values.shape[1])
        start += values.shape[1]
    return Features(np.concatenate(parts, axis=1), spans)


# -- classifiers ------------------------------------------------------------------------------


def _as_matrices(x: np.ndarray) -> np.ndarray:
    """Flattened ``[n, C * C]`` covariances back to ``[n, C, C]`` for pyriemann."""
    c = math.isqrt(x.shape[1])
    return np.asarray(x, dtype=np.float64).reshape(len(x), c, c)


def make_classifier(
    kind: str,
    features: Features,
    classes: Sequence[str],
    *,
    class_weight: str | None = None,
    C: float = 1.0,
    seed: int = 0,
) -> Pipeline:
    """A fresh, unfitted scikit-learn pipeline over ``features``' blocks.

    Parameters
    ----------
    kind : str
        ``logreg`` (standardised features, logistic regression), ``lda`` (shrinkage LDA) or
        ``riemann`` (tangent space of the EEG covariances [+ target features], logistic regression).
    features : Features
        The features the pipeline selects its columns from.
    classes : sequence of str
        The task's classes (LDA's priors).
    class_weight : str | None
        ``'balanced'`` reweights the classes (logistic regression) or sets equal priors (LDA):
        the class-weight baseline.
    C : float
        Inverse regularisation of the logistic regression.
    seed : int
        Random state of the logistic regression.

    Returns
    -------
    Pipeline
        Column selection, scaling and the classifier.

    Raises
    ------
    ValueError
        An unknown kind, or ``riemann`` without the ``eeg_cov`` block.
    """
    linear = features.columns(["eeg", "target"])
    if kind == "logreg":
        select = ColumnTransformer([("features", "passthrough", linear)])
        clf = LogisticRegression(C=C, class_weight=class_weight, max_iter=2000, random_state=seed)
        return Pipeline([("select", select), ("scale", StandardScaler()), ("clf", clf)])
    if kind == "lda":
        priors = np.full(len(classes), 1.0 / len(classes)) if class_weight == "balanced" else None
        select = ColumnTransformer([("features", "passthrough", linear)])
        clf = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto", priors=priors)
        return Pipeline([("select", select), ("scale", StandardScaler()), ("clf", clf)])
    if kind == "riemann":
        from pyriemann.tangentspace import TangentSpace  # imported here: it takes seconds

        if "eeg_cov" not in features.blocks:
            raise ValueError("the riemann classifier needs the 'eeg_cov' feature block")
        tangent = Pipeline(
            [("matrices", FunctionTransformer(_as_matrices)), ("tangent", TangentSpace(metric="riemann"))]
        )
        parts = [("eeg", tangent, features.columns(["eeg_cov"]))]
        if "target" in features.blocks:
            parts.append(("target", "passthrough", features.columns(["target"])))
        clf = LogisticRegression(C=C, class_weight=class_weight, max_iter=2000, random_state=seed)
        return Pipeline([("select", ColumnTransformer(parts)), ("scale", StandardScaler()), ("clf", clf)])
    raise ValueError(f"unknown classifier {kind!r}; choose one of {CLASSIFIERS}")


# -- cross-validation protocol ----------------------------------------------------------------


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


@dataclass
class FoldResult:
    """One strategy's result on one fold.

    Attributes
    ----------
    index : int
        Fold number.
    test_subjects : list of str
        The fold's test subjects.
    n_train_real : int
        Real training windows.
    n_added : dict of str to int
        Added rows per origin.
    added_source_subjects : list of str
        Subjects whose recordings gave the added rows.
    test_windows_used_as_sources : int
        Test windows that an added training row was made from (must be 0).
    per_class_f1, per_class_recall : dict of str to float
        Scores on the fold's real test windows (NaN where undefined).
    accuracy, macro_f1 : float
        Scores on the fold's real test windows.
    log : dict of str to Any
        The training set's notes.
    """

    index: int
    test_subjects: list[str]
    n_train_real: int
    n_added: dict[str, int]
    added_source_subjects: list[str]  # subjects whose recordings gave the added rows
    test_windows_used_as_sources: int  # test windows that an added training row was made from (must be 0)
    per_class_f1: dict[str, float]
    per_class_recall: dict[str, float]
    accuracy: float
    macro_f1: float
    log: dict[str, Any]


@dataclass
class StrategyResult:
    """One strategy cross-validated over all folds.

    Attributes
    ----------
    name : str
        The strategy.
    folds : list of FoldResult
        Per fold.
    y_true : np.ndarray
        The real windows' classes, in site order.
    y_pred : np.ndarray
        Out-of-fold prediction of every window.
    """

    name: str
    folds: list[FoldResult]
    y_true: np.ndarray  # the real windows, in site order
    y_pred: np.ndarray  # out-of-fold prediction of every window


def class_recall(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]) -> dict[str, float]:
    """Per-class recall.

    Unlike F1 it does not depend on how rare the class is in the test fold, which real-only
    test folds keep imbalanced.

    Parameters
    ----------
    y_true, y_pred : np.ndarray
        True and predicted classes.
    classes : sequence of str
        The classes.

    Returns
    -------
    dict of str to float
        Class -> recall (NaN for a class absent from ``y_true``).
    """
    recall = recall_score(y_true, y_pred, labels=list(classes), average=None, zero_division=np.nan)
    return {c: float(v) for c, v in zip(classes, recall)}


def score_fold(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]) -> tuple[dict[str, float], float, float]:
    """Scores of one fold's predictions.

    Parameters
    ----------
    y_true, y_pred : np.ndarray
        True and predicted classes.
    classes : sequence of str
        The classes.

    Returns
    -------
    per_class_f1 : dict of str to float
        Class -> F1 (NaN for a class neither present nor predicted).
    accuracy : float
        Accuracy.
    macro_f1 : float
        Mean of the finite per-class F1 (NaN when none is).
    """
    f1 = f1_score(y_true, y_pred, labels=list(classes), average=None, zero_division=np.nan)
    macro = float(np.nanmean(f1)) if np.any(np.isfinite(f1)) else float("nan")
    return {c: float(v) for c, v in zip(classes, f1)}, float(accuracy_score(y_true, y_pred)), macro


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


# -- summaries and fairness metrics -----------------------------------------------------------


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) over folds, ignoring NaN folds."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def summarize(result: StrategyResult, classes: Sequence[str]) -> dict[str, Any]:
    """Per-class F1 and recall, accuracy and macro F1 as mean ± std over folds.

    Parameters
    ----------
    result : StrategyResult
        A cross-validated strategy.
    classes : sequence of str
        The classes.

    Returns
    -------
    dict of str to Any
        ``per_class_{f1,recall}_{mean,std}`` (class -> value), ``accuracy_{mean,std}`` and
        ``macro_f1_{mean,std}``; NaN folds are ignored, std has ddof=1.
    """
    out: dict[str, Any] = {}
    for metric in ("f1", "recall"):
        out[f"per_class_{metric}_mean"], out[f"per_class_{metric}_std"] = {}, {}
        for c in classes:
            mean, std = _mean_std([getattr(f, f"per_class_{metric}")[c] for f in result.folds])
            out[f"per_class_{metric}_mean"][c] = mean
            out[f"per_class_{metric}_std"][c] = std
    for key in ("accuracy", "macro_f1"):
        mean, std = _mean_std([getattr(f, key) for f in result.folds])
        out[f"{key}_mean"], out[f"{key}_std"] = mean, std
    return out


def group_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, sensitive: np.ndarray, classes: Sequence[str], positive: str | None = None
) -> dict[str, Any]:
    """Per-group metrics of the pooled out-of-fold predictions (fairlearn ``MetricFrame``).

    ``by_group``: accuracy, macro F1, per-class F1 and window count per group; ``worst_group``
    (lowest macro F1); ``difference`` / ``ratio`` (between groups, max - min and min / max) of
    accuracy and macro F1; for a binary task, the equalized-odds difference with ``positive``
    (default: the second class) as the positive label. Windows whose group is ``n/a`` (a subject
    without a value) are no group: they are left out of every figure and counted in ``left_out``.

    Parameters
    ----------
    y_true, y_pred : np.ndarray
        True and out-of-fold predicted classes of every window.
    sensitive : np.ndarray
        Group of every window.
    classes : sequence of str
        The classes.
    positive : str | None
        Positive class of the equalized-odds difference (binary tasks).

    Returns
    -------
    dict of str to Any
        ``by_group``, ``worst_group``, ``difference``, ``ratio``,
        ``equalized_odds_difference`` (None unless binary) and ``left_out`` (windows without a
        group).
    """
    from fairlearn.metrics import MetricFrame, equalized_odds_difference

    y_true, y_pred, sensitive = (np.asarray(a).astype(str) for a in (y_true, y_pred, sensitive))
    grouped = sensitive != MISSING
    left_out = int(np.sum(~grouped))
    y_true, y_pred, sensitive = y_true[grouped], y_pred[grouped], sensitive[grouped]
    classes = list(classes)
    if not len(sensitive):
        return {
            "by_group": {}, "worst_group": None, "difference": {"accuracy": float("nan"), "macro_f1": float("nan")},
            "ratio": {"accuracy": float("nan"), "macro_f1": float("nan")}, "equalized_odds_difference": None,
            "left_out": left_out,
        }  # fmt: skip
    metrics: dict[str, Callable] = {
        "accuracy": accuracy_score,
        "macro_f1": partial(f1_score, labels=classes, average="macro", zero_division=0),
        "n": lambda yt, yp: len(yt),
    }
    for c in classes:
        metrics[f"f1:{c}"] = partial(f1_score, labels=[c], average="macro", zero_division=0)
    frame = MetricFrame(metrics=metrics, y_true=y_true, y_pred=y_pred, sensitive_features=sensitive)
    by_group = {}
    for group, row in frame.by_group.iterrows():
        by_group[str(group)] = {
            "accuracy": float(row["accuracy"]),
            "macro_f1": float(row["macro_f1"]),
            "n": int(row["n"]),
            "per_class_f1": {c: float(row[f"f1:{c}"]) for c in classes},
        }
    difference = frame.difference(method="between_groups")
    ratio = frame.ratio(method="between_groups")
    worst = min(by_group, key=lambda g: by_group[g]["macro_f1"]) if by_group else None
    out: dict[str, Any] = {
        "by_group": by_group,
        "worst_group": None
        if worst is None
        else {"group": worst, **{k: by_group[worst][k] for k in ("accuracy", "macro_f1")}},
        "difference": {k: float(difference[k]) for k in ("accuracy", "macro_f1")},
        "ratio": {k: float(ratio[k]) for k in ("accuracy", "macro_f1")},
        "equalized_odds_difference": None,
        "left_out": left_out,
    }
    if len(classes) == 2:
        positive = positive if positive in classes else classes[1]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a group without positives or negatives gives NaN
            eod = equalized_odds_difference(y_true == positive, y_pred == positive, sensitive_features=sensitive)
        out["equalized_odds_difference"] = {"value": float(eod), "positive_class": positive}
    return out


def group_fold_scores(
    result: StrategyResult,
    sensitive: np.ndarray,
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
    classes: Sequence[str],
) -> dict[str, dict[str, float]]:
    """Macro F1 of each group per fold (folds where the group is tested), as mean ± std.

    Parameters
    ----------
    result : StrategyResult
        A cross-validated strategy.
    sensitive : np.ndarray
        Group of every window.
    folds : sequence of (np.ndarray, np.ndarray)
        The ``(train, test)`` indices the result used.
    classes : sequence of str
        The classes.

    Returns
    -------
    dict of str to dict
        Group -> ``macro_f1_fold_mean``, ``macro_f1_fold_std`` and ``folds`` (count); ``n/a``
        (no value) is no group.
    """
    sensitive = np.asarray(sensitive).astype(str)
    out = {}
    for group in sorted(set(sensitive.tolist()) - {MISSING}):
        scores = []
        for _, test in folds:
            rows = test[sensitive[test] == group]
            if len(rows):
                scores.append(score_fold(result.y_true[rows], result.y_pred[rows], classes)[2])
        mean, std = _mean_std(scores)
        out[group] = {"macro_f1_fold_mean": mean, "macro_f1_fold_std": std, "folds": len(scores)}
    return out
