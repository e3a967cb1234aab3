"""Scores of the cross-validation (docs/architecture.md §6): per-class F1 and recall per fold
(mean ± std over folds), accuracy, macro F1, and per-group metrics from fairlearn's
``MetricFrame`` (worst group, difference, ratio; equalized-odds difference for binary tasks).

Test folds hold real windows only, so they keep the site's class imbalance: a minority class's
precision, and so its F1, is capped by its rarity in the test fold, whatever is added to
training; recall is not.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, recall_score

from fedneurogen.shared.data.bids import MISSING


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
