"""What to balance in a site's fairness augmentation (docs/architecture.md §6).

- ``AugmentConfig``: what ``run_augmentation`` does (``fedneurogen augment``'s options, one to one);
- ``task_labels`` / ``select_windows``: the label to predict per window, and the task's classes;
- ``plan_balance`` -> ``BalancePlan``: the balancing unit of every window, each unit's target
  size and the under-represented units; ``BalancePlan.fold_deficits`` what a training fold lacks.

Rules (stated in every report; what each strategy adds is in ``strategies``):

- Balancing units are classes, or (class, group) cells with a sensitive attribute. The target
  size of a class is ``target_per_class`` (default: the largest class's window count); a cell's
  is that divided by the number of groups. A unit is under-represented when it has fewer than
  ``minority_ratio`` (default 0.8) x its target size windows.
- In each fold, an under-represented unit is topped up to its target size scaled by the fold's
  training share (``target x n_train / n``), so "30 + 120(Gen)" on the whole site means about
  24 + 96 in a 5-fold training set. Only training folds are topped up; test folds hold real
  windows only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedneurogen.shared.data.bids import MISSING, attribute_kind, participants_sidecar, read_participants
from fedneurogen.shared.errors import ConfigError, DataError
from fedneurogen.shared.recording import PairedWindows

from . import classifiers

STRATEGIES = (
    "none",
    "oversample",
    "class-weight",
    "smote",
    "generate",
    "linear-gaussian",
)  # built in ``strategies``; named here for AugmentConfig
REST = "rest"
CELL_SEP = " | "


@dataclass(frozen=True)
class AugmentConfig:
    """What ``run_augmentation`` does; the CLI options map onto it one to one.

    Attributes
    ----------
    target : str
        Label to predict: ``trial_type`` or a ``participants.tsv`` column.
    sensitive_attribute : str | None
        ``participants.tsv`` column for per-group metrics and class x group balancing.
    strategies : tuple of str
        Strategies compared, from ``STRATEGIES``.
    folds : int
        Subject-grouped cross-validation folds (at least 2).
    target_per_class : int | None
        Target size of a class; None: the largest class's window count.
    classifier : str
        ``logreg``, ``lda`` or ``riemann``.
    use_eeg, use_target : bool
        Use EEG / fMRI-fNIRS features in the classifier (the riemann classifier always uses EEG).
    classes : tuple of str | None
        Classes of the task; None: every class but ``rest`` (``trial_type``) or ``n/a``.
    minority_ratio : float
        A unit is under-represented below this fraction of its target size, in (0, 1].
    steps : int | None
        Sampling steps; None: the checkpoint's default.
    guidance_scale : float
        Classifier-free guidance scale of generation.
    seed : int
        Seed of the folds, classifiers and generation.
    C : float
        Inverse regularisation of the logistic regression.
    n_rois : int
        fMRI ROIs of the target features.
    eeg_only : bool
        Generate from the site's EEG-only runs too (``augment --eeg-only``).
    generation_choices : tuple of (str, float)
        Generation settings (estimate ``sample``/``mean``, guidance) tried on an inner validation
        split of each training fold; the best one generates for the fold. One entry: no choice.

    Raises
    ------
    ConfigError
        An unknown strategy or classifier, ``minority_ratio`` outside (0, 1], or fewer than 2 folds.
    """

    target: str = "trial_type"  # label to predict: trial_type or a participants.tsv column
    sensitive_attribute: str | None = None  # participants.tsv column for per-group metrics
    strategies: tuple[str, ...] = STRATEGIES
    folds: int = 5
    target_per_class: int | None = None
    classifier: str = "logreg"
    use_eeg: bool = True  # EEG features in the classifier (the riemann classifier always uses them)
    use_target: bool = True  # fMRI/fNIRS features in the classifier
    classes: tuple[str, ...] | None = None  # default: every class but "rest" (trial_type)
    minority_ratio: float = 0.8
    steps: int | None = None  # sampling steps; None = the checkpoint's default
    guidance_scale: float = 2.0
    seed: int = 0
    C: float = 1.0  # inverse regularisation of the logistic regression
    n_rois: int = 64  # fMRI ROIs for the target features
    eeg_only: bool = False  # generate from the site's EEG-only runs too (``augment --eeg-only``)
    # generation settings (estimate, guidance) tried on an inner validation split of each
    # training fold; the best one generates for the fold. One entry: no choice.
    generation_choices: tuple[tuple[str, float], ...] = (("sample", 2.0), ("sample", 0.0), ("mean", 0.0))

    def __post_init__(self) -> None:
        unknown = sorted(set(self.strategies) - set(STRATEGIES))
        if unknown:
            raise ConfigError(f"unknown strategies {unknown}; choose from {list(STRATEGIES)}")
        if self.classifier not in classifiers.CLASSIFIERS:
            raise ConfigError(f"unknown classifier {self.classifier!r}; choose one of {list(classifiers.CLASSIFIERS)}")
        if not 0 < self.minority_ratio <= 1:
            raise ConfigError(f"minority_ratio must be in (0, 1], got {self.minority_ratio}")
        if self.folds < 2:
            raise ConfigError(f"need at least 2 folds, got {self.folds}")


# -- what to balance --------------------------------------------------------------------------


def task_labels(windows: PairedWindows, target: str) -> np.ndarray:
    """The label to predict per window.

    Parameters
    ----------
    windows : PairedWindows
        The windows.
    target : str
        ``trial_type`` (the window labels) or a participant attribute.

    Returns
    -------
    np.ndarray
        ``[n_windows]`` strings (``n/a`` where a subject has no value for the attribute).
    """
    if target == "trial_type":
        return np.asarray(windows.labels).astype(str)
    return windows.group_of(target).astype(str)


def check_attribute(windows: PairedWindows, column: str, site: str | Path, option: str) -> None:
    """Refuse a participant column that is not a set of groups (free text, a measurement such as age).

    The column is classified over every row of the site's ``participants.tsv`` (else the
    subjects of ``windows``) with the rules of
    ``fedneurogen.shared.data.bids.attribute_kind`` (the ``participants.json`` sidecar's
    ``Levels``/``Units`` where the site has one). Missing values (``n/a``) are not a group.

    Parameters
    ----------
    windows : PairedWindows
        The site's windows (their ``participants``).
    column : str
        The ``participants.tsv`` column.
    site : str | Path
        The site (its ``participants.tsv`` is named in the message).
    option : str
        The option that named the column (``--sensitive-attribute``, ``--target``).

    Raises
    ------
    DataError
        The column is free text or numeric (naming ``participants.tsv``, the column and why).
    """
    try:  # judged on every row of participants.tsv, as validate does, where the site has one
        sidecar, rows = participants_sidecar(site), read_participants(site)
    except (DataError, OSError):
        sidecar, rows = {}, {}
    rows = rows or windows.participants
    kind = attribute_kind(column, [attrs.get(column, "n/a") for attrs in rows.values()], sidecar)
    if not kind.is_group:
        raise DataError(Path(site) / "participants.tsv", f"column {column!r} cannot be {option}: {kind.reason}")


def _no_attribute(site: str | Path, column: str, option: str) -> DataError:
    """Why a participant attribute has no values: the file is missing, or the column is."""
    table = Path(site) / "participants.tsv"
    if not table.is_file():
        return DataError(table, f"participants.tsv is missing; {option} {column!r} reads the column {column!r} from it")
    return DataError(table, f"has no column {column!r} for {option} (or no subject has a value)")


def select_windows(windows: PairedWindows, config: AugmentConfig, site: str | Path) -> tuple[PairedWindows, list[str]]:
    """The windows of the task's classes.

    Parameters
    ----------
    windows : PairedWindows
        The site's windows.
    config : AugmentConfig
        ``target`` and ``classes``.
    site : str | Path
        The site (for messages).

    Returns
    -------
    windows : PairedWindows
        The windows of the classes.
    classes : list of str
        The sorted classes (``config.classes``, or every class present but ``rest``/``n/a``).

    Raises
    ------
    DataError
        A requested class has no window, fewer than two classes remain, or the target attribute
        has no values (naming the site and the class or column).
    """
    labels = task_labels(windows, config.target)
    present = sorted(set(labels.tolist()))
    if config.target != "trial_type" and present == ["n/a"]:
        raise _no_attribute(site, config.target, "--target")
    if config.target != "trial_type":
        check_attribute(windows, config.target, site, "--target")
    if config.classes:
        classes = sorted(config.classes)
        for c in classes:
            if c not in present:
                raise DataError(
                    site, f"no EEG windows of class {c!r} (classes present: {', '.join(present) or 'none'})"
                )
    else:
        drop = {REST} if config.target == "trial_type" else {"n/a"}
        classes = [c for c in present if c not in drop]
    if len(classes) < 2:
        raise DataError(site, f"need at least two classes to classify, found {classes} (labels present: {present})")
    keep = np.isin(labels, classes)
    return windows.subset(np.flatnonzero(keep)), classes


@dataclass
class BalancePlan:
    """Balancing units per window and their target sizes (whole-site counts).

    Attributes
    ----------
    units : np.ndarray
        Unit of each window: its class, or ``"class | group"`` with a sensitive attribute.
    targets : dict of str to float
        Unit -> target size on the whole site.
    counts : dict of str to int
        Unit -> windows on the whole site.
    minority : list of str
        The under-represented units (units with no window are not topped up).
    rule : str
        The rule in words, for the report.
    """

    units: np.ndarray  # unit of each window: class, or "class | group"
    targets: dict[str, float]  # unit -> target size on the whole site
    counts: dict[str, int]
    minority: list[str]  # under-represented units
    rule: str

    def fold_deficits(self, train: np.ndarray, n_total: int) -> dict[str, int]:
        """Windows to add per under-represented unit in a training fold.

        A unit's target is scaled by the fold's share of the windows.

        Parameters
        ----------
        train : np.ndarray
            Indices of the fold's training windows.
        n_total : int
            Windows on the whole site.

        Returns
        -------
        dict of str to int
            Unit -> windows missing (units that need none are left out).
        """
        share = len(train) / n_total
        train_units = self.units[train]
        out = {}
        for unit in self.minority:
            need = int(round(self.targets[unit] * share)) - int(np.sum(train_units == unit))
            if need > 0:
                out[unit] = need
        return out


def plan_balance(
    labels: np.ndarray, classes: Sequence[str], groups: np.ndarray | None, target_per_class: int | None, ratio: float
) -> BalancePlan:
    """What to balance on a site (the rules are in the module docstring).

    Parameters
    ----------
    labels : np.ndarray
        Class of each window.
    classes : sequence of str
        The task's classes.
    groups : np.ndarray | None
        Group of each window (sensitive attribute); None: balance classes only. ``n/a`` (a
        subject without a value) is no group: its windows' cells are neither targets nor topped up.
    target_per_class : int | None
        Target size of a class; None: the largest class's count (of windows with a group, when
        there are groups). A cell's target is that divided by the number of groups.
    ratio : float
        Under-represented below ``ratio`` x the target size.

    Returns
    -------
    BalancePlan
        The units, targets, counts and under-represented units.
    """
    # with groups, windows without a group (n/a) count for no cell, so not for the class's size either
    counted = labels if groups is None else labels[groups != MISSING]
    class_counts = {c: int(np.sum(counted == c)) for c in classes}
    per_class = float(target_per_class or max(class_counts.values()))
    if groups is None:
        units = labels.astype(object)
        names = list(classes)
        targets = {c: per_class for c in names}
        rule = f"class with fewer than {ratio:g} x {per_class:g} windows (target per class {per_class:g})"
    else:
        group_names = sorted(set(groups.tolist()) - {MISSING})
        units = np.array([f"{c}{CELL_SEP}{g}" for c, g in zip(labels, groups)], dtype=object)
        names = [f"{c}{CELL_SEP}{g}" for c in classes for g in group_names]
        per_cell = per_class / max(len(group_names), 1)
        targets = {u: per_cell for u in names}
        rule = (
            f"class x group cell with fewer than {ratio:g} x {per_cell:g} windows "
            f"(target per class {per_class:g} split over {len(group_names)} groups)"
        )
    counts = {u: int(np.sum(units == u)) for u in names}
    # a cell with no window at all cannot be generated from its own EEG: it is reported, not topped up
    minority = [u for u in names if 0 < counts[u] < ratio * targets[u]]
    return BalancePlan(units, targets, counts, minority, rule)


def unit_class(unit: str) -> str:
    """The class of a balancing unit.

    Parameters
    ----------
    unit : str
        A class or a ``"class | group"`` cell.

    Returns
    -------
    str
        The class.
    """
    return unit.split(CELL_SEP)[0]
