"""What each strategy adds to a training fold (docs/architecture.md §6).

``prepare_samples`` computes once what every strategy reads (``SiteSamples``: the task's real
windows, labels, features, balance plan and EEG-only pool); each ``*_strategy`` turns it into a
``protocol.Strategy`` (fold -> training set). ``ModelSynthesizer`` generates targets from EEG
with a NeuroGen model; any ``Synthesizer`` will do (both live in ``synthesizers``, with
``GenerationLog``, and are importable from here too).

Rules (stated in every report; what to balance and how far is in ``plan``):

- A generated sample is (real EEG window of a training subject, target generated from it). Its
  EEG comes from the fold's training windows of the same unit, each used in turn (a seeded
  permutation, cycled) so that with few windows every window gives several samples, each from
  its own noise. This is the paper's setting: the framework turns the under-represented
  class's own EEG into its missing expensive modality; EEG windows of other classes are not
  relabelled (their EEG features would contradict the label). The model is conditioned on the
  window's trial type when its checkpoint has that label (classifier-free guidance), else
  unconditionally. Optional ``pool`` windows (EEG recorded without a usable target: the site's
  EEG-only sessions, ``augment --eeg-only``, or the cut windows of
  ``fedneurogen.simulations.fairness_table``) join the candidates, from any subject but the
  fold's test subjects (a subject with EEG only is never a test subject: it has no target).
- ``linear-gaussian`` tops up the same units from the same EEG windows with the honest generative
  baseline (``LinearGaussianGenerator``: ridge-HRF mean + class offset + Gaussian residual of
  the cross-fitted residuals' covariance), fitted anew in each fold on the fold's training
  windows only, so no test subject's target ever shapes it.
- ``oversample`` tops up the same units to the same sizes by drawing training windows with
  replacement; ``smote`` by SMOTE interpolation (imbalanced-learn) between a unit's training
  windows in feature space; ``class-weight`` weights classes inversely to their frequency.
- Label fidelity of the generated windows: a *class-balanced* classifier fitted on the fold's
  real training windows labels them; its accuracy on them is reported next to its accuracy on
  the fold's held-out real windows of the same units (the same classifier, so the two compare).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from fedneurogen.shared.data.bids import MISSING
from fedneurogen.shared.data.problems import DataWarning
from fedneurogen.shared.recording import PairedWindows

from . import classifiers, metrics, protocol, window_features
from .plan import (
    CELL_SEP,
    AugmentConfig,
    BalancePlan,
    _no_attribute,
    check_attribute,
    plan_balance,
    select_windows,
    task_labels,
    unit_class,
)
from .synthesizers import GenerationLog, LinearGaussianSynthesizer, ModelSynthesizer, Synthesizer, concat_windows

# the synthesizers live in ``synthesizers``; they are importable from here too
__all__ = [
    "GenerationLog", "LinearGaussianSynthesizer", "ModelSynthesizer", "SiteSamples", "Synthesizer",
    "class_weight_strategy", "concat_windows", "generate_strategy", "linear_gaussian_strategy", "none_strategy",
    "oversample_strategy", "prepare_samples", "smote_strategy",
]  # fmt: skip

# -- what the strategies read -----------------------------------------------------------------


@dataclass
class SiteSamples:
    """The real windows of the task and everything computed from them once (``prepare_samples``).

    Attributes
    ----------
    windows : PairedWindows
        The windows of the task's classes.
    labels : np.ndarray
        Task label of each window.
    classes : list of str
        The sorted classes.
    features : Features
        Downstream features of each window.
    ids : np.ndarray
        Window id of each window (``window_ids``).
    blocks : tuple of str
        The feature blocks the classifier reads.
    rois : np.ndarray | None
        fMRI ROI of each vertex (None without fMRI target features).
    plan : BalancePlan
        What to balance.
    groups : np.ndarray | None
        Group of each window (sensitive attribute); None without one.
    pool : PairedWindows | None
        EEG-only candidates for generation (no real target used).
    pool_units : np.ndarray | None
        Balancing unit of each pool window.
    """

    windows: PairedWindows
    labels: np.ndarray
    classes: list[str]
    features: window_features.Features
    ids: np.ndarray
    blocks: tuple[str, ...]
    rois: np.ndarray | None
    plan: BalancePlan
    groups: np.ndarray | None
    pool: PairedWindows | None = None  # EEG-only candidates for generation (no real target used)
    pool_units: np.ndarray | None = None

    def featurize(self, windows: PairedWindows) -> np.ndarray:
        """The downstream features of other windows (e.g. generated ones), as for the real ones.

        Parameters
        ----------
        windows : PairedWindows
            The windows.

        Returns
        -------
        np.ndarray
            float32 ``[n_windows, n_features]``, same columns as ``features``.
        """
        return window_features.compute_features(windows, self.blocks, self.rois).values


def prepare_samples(
    windows: PairedWindows,
    config: AugmentConfig,
    site: str | Path,
    *,
    pool: PairedWindows | None = None,
    rois: np.ndarray | None = None,
) -> SiteSamples:
    """Compute once what every strategy reads.

    Parameters
    ----------
    windows : PairedWindows
        The site's windows.
    config : AugmentConfig
        The task, classifier, features and balancing settings.
    site : str | Path
        The site (for messages).
    pool : PairedWindows | None
        EEG-only windows that may be generation sources.
    rois : np.ndarray | None
        fMRI ROI of each vertex; None: ``target_parcellation`` with ``config.n_rois``.

    Returns
    -------
    SiteSamples
        The task's windows, labels, features, plan and pool.

    Raises
    ------
    DataError
        As in ``select_windows``, or the sensitive attribute has no values or is not a set of
        groups (free text, a measurement: ``check_attribute``).

    Warns
    -----
    DataWarning
        Windows whose subject has no value of the sensitive attribute (left out of the group
        metrics), a group with fewer subjects than folds, and a site where no unit is
        under-represented (then no strategy adds a window).
    """
    windows, classes = select_windows(windows, config, site)
    labels = task_labels(windows, config.target)
    groups = None
    if config.sensitive_attribute:
        groups = windows.group_of(config.sensitive_attribute).astype(str)
        if set(groups.tolist()) == {MISSING}:
            raise _no_attribute(site, config.sensitive_attribute, "--sensitive-attribute")
        check_attribute(windows, config.sensitive_attribute, site, "--sensitive-attribute")
        _warn_about_groups(windows.subjects, groups, config.sensitive_attribute, config.folds, site)
    plan = plan_balance(labels, classes, groups, config.target_per_class, config.minority_ratio)
    if not plan.minority and set(config.strategies) & {"oversample", "smote", "generate"}:
        unit = "class" if groups is None else "class x group cell"
        _warn(
            site,
            f"no {unit} is under-represented ({plan.rule}): oversample, smote, generate and linear-gaussian add no windows "
            "and score as none",
        )
    blocks = classifiers.blocks_for(config.classifier, config.use_eeg, config.use_target)
    if rois is None and windows.target_modality == "fmri" and "target" in blocks:
        rois = window_features.target_parcellation(windows.target_positions, config.n_rois, seed=0)
    features = window_features.compute_features(windows, blocks, rois)
    pool_units = None
    if pool is not None:
        pool_labels = task_labels(pool, config.target)
        pool_groups = None if groups is None else pool.group_of(config.sensitive_attribute).astype(str)
        pool_units = (
            pool_labels.astype(object)
            if pool_groups is None
            else np.array([f"{c}{CELL_SEP}{g}" for c, g in zip(pool_labels, pool_groups)], dtype=object)
        )
    return SiteSamples(
        windows, labels, classes, features, protocol.window_ids(windows), blocks, rois, plan, groups, pool, pool_units
    )


def _warn(site: str | Path, message: str) -> None:
    import warnings

    warnings.warn(f"{site}: {message}", DataWarning, stacklevel=3)


def _warn_about_groups(subjects: np.ndarray, groups: np.ndarray, column: str, folds: int, site: str | Path) -> None:
    """Say which windows the group metrics leave out (no value) and which groups are too small for the folds."""
    missing = groups == MISSING
    if missing.any():
        who = sorted(set(subjects[missing].tolist()))
        _warn(
            site,
            f"{int(missing.sum())} window(s) of {len(who)} subject(s) without a {column!r} value (n/a: "
            f"{', '.join(who)}) are left out of the group metrics and of class x group balancing",
        )
    for group in sorted(set(groups[~missing].tolist())):
        n = len(set(subjects[groups == group].tolist()))
        if n < folds:
            _warn(
                site,
                f"{column} = {group!r} has {n} subject(s), fewer than the {folds} folds: it is tested in at most "
                f"{n} fold(s) and its scores rest on {n} subject(s)"
                + ("; whenever it is tested, no training fold has it" if n == 1 else "")
                + f" (use --folds {max(2, n)} or a larger site)",
            )


# -- strategies -------------------------------------------------------------------------------


def oversample_strategy(s: SiteSamples) -> protocol.Strategy:
    """Random oversampling: top up each under-represented unit by redrawing its training windows.

    Parameters
    ----------
    s : SiteSamples
        The site's samples.

    Returns
    -------
    Strategy
        ``Fold -> TrainingSet``; units with no training window in the fold are noted as not
        topped up.
    """

    def strategy(fold: protocol.Fold) -> protocol.TrainingSet:
        base = protocol.real_training_set(s.features.values, s.labels, s.windows.subjects, s.ids, fold.train)
        rng = np.random.default_rng(fold.seed)
        picks, unfilled = [], []
        for unit, need in s.plan.fold_deficits(fold.train, len(s.labels)).items():
            candidates = fold.train[s.plan.units[fold.train] == unit]
            if len(candidates) == 0:  # the unit's subjects are all in this test fold
                unfilled.append(unit)
                continue
            picks.append(rng.choice(candidates, size=need, replace=True))
        rows = np.concatenate(picks) if picks else np.zeros(0, int)
        return protocol.stack(
            base,
            s.features.values[rows],
            s.labels[rows],
            "oversampled",
            s.windows.subjects[rows],
            s.ids[rows],
            unfilled=unfilled,
        )

    return strategy


def smote_strategy(s: SiteSamples) -> protocol.Strategy:
    """SMOTE: top up each under-represented unit with interpolated feature rows.

    Each added row lies between one of the unit's training windows and one of its ``k``
    nearest training neighbours (in feature space, imbalanced-learn's ``SMOTE``).

    Parameters
    ----------
    s : SiteSamples
        The site's samples.

    Returns
    -------
    Strategy
        ``Fold -> TrainingSet``; a unit with fewer than two training windows is not topped up.
    """
    from imblearn.over_sampling import SMOTE

    def strategy(fold: protocol.Fold) -> protocol.TrainingSet:
        base = protocol.real_training_set(s.features.values, s.labels, s.windows.subjects, s.ids, fold.train)
        units = s.plan.units[fold.train]
        rows, labels, unfilled = [], [], []
        for k, (unit, need) in enumerate(s.plan.fold_deficits(fold.train, len(s.labels)).items()):
            mine = units == unit
            if mine.sum() < 2:  # nothing to interpolate between
                unfilled.append(unit)
                continue
            # the unit against the rest of the fold, so only the unit is resampled
            y = np.where(mine, "unit", "other")
            sampler = SMOTE(
                sampling_strategy={"unit": int(mine.sum()) + need},
                k_neighbors=min(5, int(mine.sum()) - 1),
                random_state=fold.seed + k,
            )
            resampled, _ = sampler.fit_resample(base.features, y)
            rows.append(resampled[len(y) :])
            labels.append(np.full(need, unit_class(unit), dtype=object))
        if not rows:
            empty = np.zeros(0, object)
            return protocol.stack(
                base, np.zeros((0, base.features.shape[1])), empty, "interpolated", empty, empty, unfilled=unfilled
            )
        added = np.concatenate(rows)
        n = len(added)  # interpolated rows come from no single recording
        return protocol.stack(
            base,
            added,
            np.concatenate(labels),
            "interpolated",
            np.full(n, "n/a", dtype=object),
            np.full(n, "interpolated", dtype=object),
            unfilled=unfilled,
        )

    return strategy


def class_weight_strategy(s: SiteSamples) -> protocol.Strategy:
    """Class weights: the real training windows, with classes weighted inversely to their frequency.

    Parameters
    ----------
    s : SiteSamples
        The site's samples.

    Returns
    -------
    Strategy
        ``Fold -> TrainingSet`` with ``class_weight='balanced'``.
    """

    def strategy(fold: protocol.Fold) -> protocol.TrainingSet:
        base = protocol.real_training_set(s.features.values, s.labels, s.windows.subjects, s.ids, fold.train)
        base.class_weight = "balanced"
        return base

    return strategy


def none_strategy(s: SiteSamples) -> protocol.Strategy:
    """No augmentation: the fold's real training windows.

    Parameters
    ----------
    s : SiteSamples
        The site's samples.

    Returns
    -------
    Strategy
        ``Fold -> TrainingSet``.
    """
    return lambda fold: protocol.real_training_set(s.features.values, s.labels, s.windows.subjects, s.ids, fold.train)


def generate_strategy(
    s: SiteSamples,
    synthesize: Synthesizer,
    log: GenerationLog,
    make_estimator: Callable[[str | None], Any] | None = None,
    choices: Sequence[tuple[str, float]] = (),
) -> protocol.Strategy:
    """Top up each fold's under-represented units with generated windows.

    With several ``choices`` of generation settings (a ``ModelSynthesizer``'s estimate and
    guidance) and ``make_estimator``, each fold picks its setting on its own training subjects:
    they are split in two by subject, windows are generated for the first half's deficits, the
    classifier is fitted on it and scored (macro F1) on the second half; the best setting then
    generates for the whole training fold. Test subjects play no part in the choice.

    With ``make_estimator``, each fold also records the *label fidelity* of its generated
    windows (see the module docstring).

    Parameters
    ----------
    s : SiteSamples
        The site's samples.
    synthesize : Synthesizer
        Generates targets from EEG windows.
    log : GenerationLog
        Receives every generation call of the folds.
    make_estimator : callable | None
        ``make_estimator(class_weight)`` -> an unfitted classifier; None: no setting choice and
        no label fidelity.
    choices : sequence of (str, float)
        Generation settings ``(estimate, guidance)`` to choose from (needs a synthesizer with
        ``with_settings``).

    Returns
    -------
    Strategy
        ``Fold -> TrainingSet``.
    """
    pool_ids = None if s.pool is None else protocol.window_ids(s.pool)
    selectable = make_estimator is not None and len(choices) > 1 and hasattr(synthesize, "with_settings")

    def strategy(fold: protocol.Fold) -> protocol.TrainingSet:
        base = protocol.real_training_set(s.features.values, s.labels, s.windows.subjects, s.ids, fold.train)
        test_subjects = set(s.windows.subjects[fold.test].tolist())
        picked, picked_ids, labels, unfilled = _sources(
            s, pool_ids, log, fold.train, test_subjects, np.random.default_rng(fold.seed), fold.index
        )
        if picked is None:
            empty = np.zeros(0, object)
            return protocol.stack(
                base,
                np.zeros((0, base.features.shape[1])),
                empty,
                "generated",
                empty,
                empty,
                n_generated=0,
                unfilled=unfilled,
            )
        choice: dict[str, Any] = {}
        synth = synthesize
        if selectable:
            synth, choice = _choose_setting(s, pool_ids, log, synthesize, make_estimator, choices, fold, test_subjects)
        features = _generated_features(s, synth, picked, fold.seed)
        fidelity = {} if make_estimator is None else _label_fidelity(s, make_estimator, base, features, labels, fold)
        return protocol.stack(
            base,
            features,
            labels,
            "generated",
            picked.subjects,
            picked_ids,
            n_generated=len(labels),
            unfilled=unfilled,
            **fidelity,
            **choice,
        )

    return strategy


def _sources(
    s: SiteSamples,
    pool_ids: np.ndarray | None,
    log: GenerationLog,
    train: np.ndarray,
    excluded: set,
    rng: np.random.Generator,
    fold_index: int | None,
):
    """EEG windows to generate from for the deficits of the training rows ``train``:
    ``(windows, ids, labels, unfilled units)``, the first three None when nothing can be generated;
    logged in ``log`` under ``fold_index`` (None: not logged)."""
    picked, picked_ids, units, unfilled = [], [], [], []
    for unit, need in s.plan.fold_deficits(train, len(s.labels)).items():
        real = train[s.plan.units[train] == unit]
        candidates, ids = [s.windows.subset(real)], [s.ids[real]]
        if s.pool is not None:  # EEG-only windows of anyone but the excluded (test) subjects
            extra = np.flatnonzero((s.pool_units == unit) & ~np.isin(s.pool.subjects, list(excluded)))
            candidates.append(s.pool.subset(extra))
            ids.append(pool_ids[extra])
        candidates_w, candidate_ids = concat_windows(candidates), np.concatenate(ids)
        if len(candidate_ids) == 0:  # no usable EEG of this unit
            unfilled.append(unit)
            continue
        # each candidate in turn, cycled: several samples per window when there are few
        order = np.resize(rng.permutation(len(candidate_ids)), need)
        if fold_index is not None:
            log.add(fold_index, unit, candidates_w.subset(order), candidate_ids[order])
        picked.append(candidates_w.subset(order))
        picked_ids.append(candidate_ids[order])
        units.append(np.full(need, unit_class(unit), dtype=object))
    if not picked:
        return None, None, None, unfilled
    return concat_windows(picked), np.concatenate(picked_ids), np.concatenate(units), unfilled


def _generated_features(s: SiteSamples, synth: Synthesizer, windows: PairedWindows, seed: int) -> np.ndarray:
    """The classifier's features of ``windows`` with their targets generated by ``synth``."""
    return s.featurize(replace(windows, target=np.asarray(synth(windows, seed=seed), dtype=np.float32)))


def _choose_setting(
    s: SiteSamples,
    pool_ids: np.ndarray | None,
    log: GenerationLog,
    synthesize: Any,
    make_estimator: Callable[[str | None], Any],
    choices: Sequence[tuple[str, float]],
    fold: protocol.Fold,
    test_subjects: set,
) -> tuple[Synthesizer, dict]:
    """The setting whose generated windows help most on held-out training subjects."""
    subjects = np.array(sorted(set(s.windows.subjects[fold.train].tolist())))
    if len(subjects) < 2:
        return synthesize, {}
    held = set(np.random.default_rng(fold.seed).permutation(subjects)[: len(subjects) // 2].tolist())
    inner_val = fold.train[np.isin(s.windows.subjects[fold.train], list(held))]
    inner_train = fold.train[~np.isin(s.windows.subjects[fold.train], list(held))]
    windows, _, labels, _ = _sources(
        s, pool_ids, log, inner_train, test_subjects | held, np.random.default_rng(fold.seed + 1), None
    )
    if windows is None or len(set(s.labels[inner_train].tolist())) < 2:
        return synthesize, {}
    scores = {}
    for estimate, guidance in choices:
        candidate = synthesize.with_settings(estimate, guidance)
        x = np.concatenate([s.features.values[inner_train], _generated_features(s, candidate, windows, fold.seed)])
        y = np.concatenate([s.labels[inner_train], labels])
        predicted = make_estimator(None).fit(x, y).predict(s.features.values[inner_val])
        scores[f"{estimate}, guidance {guidance:g}"] = (
            metrics.score_fold(s.labels[inner_val], predicted, s.classes)[2],
            (estimate, guidance),
        )
    best = max(scores, key=lambda k: (np.nan_to_num(scores[k][0], nan=-1.0), -list(scores).index(k)))
    return synthesize.with_settings(*scores[best][1]), {
        "chosen_setting": best,
        "setting_scores": {k: v[0] for k, v in scores.items()},
    }


def _label_fidelity(
    s: SiteSamples,
    make_estimator: Callable[[str | None], Any],
    base: protocol.TrainingSet,
    features: np.ndarray,
    labels: np.ndarray,
    fold: protocol.Fold,
) -> dict[str, float | None]:
    """How often a classifier of the fold's real training windows gives the generated windows
    their label, beside how often it is right on the fold's held-out real windows of those classes."""
    # class-balanced, so minority labels are not rare in its answers
    judge = make_estimator("balanced").fit(base.features, base.labels)
    held_out = fold.test[np.isin(s.labels[fold.test], np.unique(labels))]  # real windows of the generated classes
    return {
        "label_fidelity": float(np.mean(judge.predict(features) == labels)),
        "label_fidelity_real": float(np.mean(judge.predict(s.features.values[held_out]) == s.labels[held_out]))
        if len(held_out)
        else None,
    }


def linear_gaussian_strategy(
    s: SiteSamples, make_estimator: Callable[[str | None], Any] | None = None, rank: int = 20
) -> protocol.Strategy:
    """Top up each fold's under-represented units with linear-Gaussian windows.

    As ``generate_strategy`` (same units, sizes and EEG sources, label fidelity), but the targets
    come from a ``LinearGaussianGenerator`` fitted on the fold's training windows only.

    Parameters
    ----------
    s : SiteSamples
        The site's samples.
    make_estimator : callable | None
        ``make_estimator(class_weight)`` -> an unfitted classifier (label fidelity); None: none.
    rank : int
        Rank of the generator's spatial covariance.

    Returns
    -------
    Strategy
        ``Fold -> TrainingSet``.
    """
    from fedneurogen.shared.workflows.baselines import LinearGaussianGenerator

    log = GenerationLog()  # its own: the ``generate`` strategy's log stays that model's

    def strategy(fold: protocol.Fold) -> protocol.TrainingSet:
        generator = LinearGaussianGenerator(rank=rank).fit(s.windows.subset(fold.train))
        return generate_strategy(s, LinearGaussianSynthesizer(generator), log, make_estimator)(fold)

    return strategy
