"""Site-side fairness augmentation (ARCHITECTURE 6): ``fedneurogen augment``.

A site finds the classes (and, with a sensitive attribute, the class x group cells) that are
under-represented in its paired data, synthesizes the expensive modality for them from their
EEG with the global model, and compares its downstream classifier trained on the real windows
("none") against random oversampling, class weights and generative augmentation, with
stratified, subject-grouped cross-validation. Everything stays on the site: it reads the site's
data and the model file and writes a report.

Rules (stated in every report):

- Balancing units are classes, or (class, group) cells with a sensitive attribute. The target
  size of a class is ``target_per_class`` (default: the largest class's window count); a cell's
  is that divided by the number of groups. A unit is under-represented when it has fewer than
  ``minority_ratio`` (default 0.8) x its target size windows.
- In each fold, an under-represented unit is topped up to its target size scaled by the fold's
  training share (``target x n_train / n``), so "30 + 120(Gen)" on the whole site means about
  24 + 96 in a 5-fold training set. Only training folds are topped up; test folds hold real
  windows only.
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
- ``oversample`` tops up the same units to the same sizes by drawing training windows with
  replacement; ``smote`` by SMOTE interpolation (imbalanced-learn) between a unit's training
  windows in feature space; ``class-weight`` weights classes inversely to their frequency.
- Label fidelity of the generated windows: a *class-balanced* classifier fitted on the fold's
  real training windows labels them; its accuracy on them is reported next to its accuracy on
  the fold's held-out real windows of the same units (the same classifier, so the two compare).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fedneurogen.shared import fairness as fm
from fedneurogen.shared.errors import ConfigError, DataError
from fedneurogen.shared.recording import PairedWindows

STRATEGIES = ("none", "oversample", "class-weight", "smote", "generate")
REST = "rest"
CELL_SEP = " | "


@dataclass(frozen=True)
class AugmentConfig:
    """What ``run_augmentation`` does; the CLI options map onto it one to one."""

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
    steps: int | None = None  # DDIM steps; None = the checkpoint's default
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
        if self.classifier not in fm.CLASSIFIERS:
            raise ConfigError(f"unknown classifier {self.classifier!r}; choose one of {list(fm.CLASSIFIERS)}")
        if not 0 < self.minority_ratio <= 1:
            raise ConfigError(f"minority_ratio must be in (0, 1], got {self.minority_ratio}")
        if self.folds < 2:
            raise ConfigError(f"need at least 2 folds, got {self.folds}")


class Synthesizer(Protocol):
    """Generates the target of each window from its EEG (never reads ``windows.target``)."""

    def __call__(self, windows: PairedWindows, seed: int) -> np.ndarray: ...


# -- what to balance --------------------------------------------------------------------------


def task_labels(windows: PairedWindows, target: str) -> np.ndarray:
    """The label to predict per window: ``trial_type`` or a participant attribute."""
    if target == "trial_type":
        return np.asarray(windows.labels).astype(str)
    return windows.group_of(target).astype(str)


def _no_attribute(site: str | Path, column: str, option: str) -> DataError:
    """Why a participant attribute has no values: the file is missing, or the column is."""
    table = Path(site) / "participants.tsv"
    if not table.is_file():
        return DataError(table, f"participants.tsv is missing; {option} {column!r} reads the column {column!r} from it")
    return DataError(table, f"has no column {column!r} for {option} (or no subject has a value)")


def select_windows(windows: PairedWindows, config: AugmentConfig, site: str | Path) -> tuple[PairedWindows, list[str]]:
    """The windows of the task's classes and the sorted class list; a requested class with no
    window is a ``DataError`` naming the site and the class."""
    labels = task_labels(windows, config.target)
    present = sorted(set(labels.tolist()))
    if config.target != "trial_type" and present == ["n/a"]:
        raise _no_attribute(site, config.target, "--target")
    if config.classes:
        classes = sorted(config.classes)
        for c in classes:
            if c not in present:
                raise DataError(site, f"no EEG windows of class {c!r} (classes present: {', '.join(present) or 'none'})")
    else:
        drop = {REST} if config.target == "trial_type" else {"n/a"}
        classes = [c for c in present if c not in drop]
    if len(classes) < 2:
        raise DataError(site, f"need at least two classes to classify, found {classes} (labels present: {present})")
    keep = np.isin(labels, classes)
    return windows.subset(np.flatnonzero(keep)), classes


@dataclass
class BalancePlan:
    """Balancing units per window and their target sizes (whole-site counts)."""

    units: np.ndarray  # unit of each window: class, or "class | group"
    targets: dict[str, float]  # unit -> target size on the whole site
    counts: dict[str, int]
    minority: list[str]  # under-represented units
    rule: str

    def fold_deficits(self, train: np.ndarray, n_total: int) -> dict[str, int]:
        """Windows to add per under-represented unit in a training fold."""
        share = len(train) / n_total
        train_units = self.units[train]
        out = {}
        for unit in self.minority:
            need = int(round(self.targets[unit] * share)) - int(np.sum(train_units == unit))
            if need > 0:
                out[unit] = need
        return out


def plan_balance(labels: np.ndarray, classes: Sequence[str], groups: np.ndarray | None, target_per_class: int | None, ratio: float) -> BalancePlan:
    class_counts = {c: int(np.sum(labels == c)) for c in classes}
    per_class = float(target_per_class or max(class_counts.values()))
    if groups is None:
        units = labels.astype(object)
        names = list(classes)
        targets = {c: per_class for c in names}
        rule = f"class with fewer than {ratio:g} x {per_class:g} windows (target per class {per_class:g})"
    else:
        group_names = sorted(set(groups.tolist()))
        units = np.array([f"{c}{CELL_SEP}{g}" for c, g in zip(labels, groups)], dtype=object)
        names = [f"{c}{CELL_SEP}{g}" for c in classes for g in group_names]
        per_cell = per_class / len(group_names)
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
    return unit.split(CELL_SEP)[0]


# -- generation -------------------------------------------------------------------------------


class ModelSynthesizer:
    """Targets from EEG with a NeuroGen model, in batches, conditioned on the window's trial type
    where the checkpoint knows it (classifier-free guidance ``guidance_scale``)."""

    def __init__(
        self, model: Any, class_names: Sequence[str] | None, *, steps: int | None = None, guidance_scale: float = 2.0, batch_size: int = 32,
        estimate: str = "sample",
    ):
        self.model = model
        self.class_names = list(class_names or [])
        self.class_to_index = {str(c): i for i, c in enumerate(self.class_names)}
        self.steps = steps
        self.guidance_scale = guidance_scale
        self.batch_size = batch_size
        self.estimate = estimate  # "sample": point prediction + sampled residual; "mean": point prediction

    @property
    def settings(self) -> tuple[str, float]:
        return self.estimate, self.guidance_scale

    def with_settings(self, estimate: str, guidance_scale: float) -> "ModelSynthesizer":
        return ModelSynthesizer(self.model, self.class_names, steps=self.steps, guidance_scale=guidance_scale, batch_size=self.batch_size, estimate=estimate)

    def label_index(self, label: str) -> int | None:
        return self.class_to_index.get(str(label))

    def __call__(self, windows: PairedWindows, seed: int) -> np.ndarray:
        import torch

        from fedneurogen.shared.model import Batch

        self.model.eval()
        if self.estimate == "mean":  # deterministic: the conditional mean given the EEG and the label
            from fedneurogen.shared.synthesis import point_predictions

            index = np.array([self.class_to_index.get(str(c), -1) for c in windows.labels]) if self.class_to_index else None
            return point_predictions(self.model, replace(windows, target=np.zeros_like(windows.target)), index, batch_size=self.batch_size)
        generator = torch.Generator(device=self.model.device).manual_seed(int(seed))
        labels = self.class_to_index or None
        out = []
        for start in range(0, len(windows), self.batch_size):
            index = np.arange(start, min(start + self.batch_size, len(windows)))
            batch = Batch.from_windows(windows, index, labels, self.model.device)
            batch = replace(batch, target=None)  # sampling must not see the real targets
            sample = self.model.sample(batch, steps=self.steps, guidance_scale=self.guidance_scale, generator=generator)
            out.append(sample.float().cpu().numpy())
        generated = np.concatenate(out) if out else np.zeros((0, *windows.target.shape[1:]), np.float32)
        if generated.shape[1:] != windows.target.shape[1:]:
            raise ConfigError(f"the model generates targets of shape {list(generated.shape[1:])} but the site's windows are {list(windows.target.shape[1:])}")
        return generated


def concat_windows(parts: Sequence[PairedWindows]) -> PairedWindows:
    """Windows of one site (one montage, one target layout) stacked."""
    first = parts[0]
    if len(parts) == 1:
        return first
    names = ("eeg", "target", "labels", "subjects", "runs", "onsets") + (("design",) if first.design is not None else ())
    stacked = {name: np.concatenate([getattr(p, name) for p in parts]) for name in names}
    return replace(first, **stacked)


@dataclass
class SiteSamples:
    """The real windows of the task and everything computed from them once."""

    windows: PairedWindows
    labels: np.ndarray
    classes: list[str]
    features: fm.Features
    ids: np.ndarray
    blocks: tuple[str, ...]
    rois: np.ndarray | None
    plan: BalancePlan
    groups: np.ndarray | None
    pool: PairedWindows | None = None  # EEG-only candidates for generation (no real target used)
    pool_units: np.ndarray | None = None

    def featurize(self, windows: PairedWindows) -> np.ndarray:
        return fm.compute_features(windows, self.blocks, self.rois).values


@dataclass
class GenerationLog:
    """Every synthesizer call: fold, unit, and the subject / window id of each EEG source."""

    calls: list[dict[str, Any]] = field(default_factory=list)

    def add(self, fold: int, unit: str, windows: PairedWindows, ids: np.ndarray) -> None:
        self.calls.append({"fold": fold, "unit": unit, "subjects": windows.subjects.tolist(), "ids": list(ids)})


def oversample_strategy(s: SiteSamples) -> fm.Strategy:
    def strategy(fold: fm.Fold) -> fm.TrainingSet:
        base = fm.real_training_set(s.features.values, s.labels, s.windows.subjects, s.ids, fold.train)
        rng = np.random.default_rng(fold.seed)
        picks, unfilled = [], []
        for unit, need in s.plan.fold_deficits(fold.train, len(s.labels)).items():
            candidates = fold.train[s.plan.units[fold.train] == unit]
            if len(candidates) == 0:  # the unit's subjects are all in this test fold
                unfilled.append(unit)
                continue
            picks.append(rng.choice(candidates, size=need, replace=True))
        rows = np.concatenate(picks) if picks else np.zeros(0, int)
        return fm.stack(base, s.features.values[rows], s.labels[rows], "oversampled", s.windows.subjects[rows], s.ids[rows], unfilled=unfilled)

    return strategy


def smote_strategy(s: SiteSamples) -> fm.Strategy:
    """SMOTE: each under-represented unit is topped up with points interpolated between one of
    its training windows and one of its ``k`` nearest training neighbours (in feature space)."""
    from imblearn.over_sampling import SMOTE

    def strategy(fold: fm.Fold) -> fm.TrainingSet:
        base = fm.real_training_set(s.features.values, s.labels, s.windows.subjects, s.ids, fold.train)
        units = s.plan.units[fold.train]
        rows, labels, unfilled = [], [], []
        for k, (unit, need) in enumerate(s.plan.fold_deficits(fold.train, len(s.labels)).items()):
            mine = units == unit
            if mine.sum() < 2:  # nothing to interpolate between
                unfilled.append(unit)
                continue
            # the unit against the rest of the fold, so only the unit is resampled
            y = np.where(mine, "unit", "other")
            sampler = SMOTE(sampling_strategy={"unit": int(mine.sum()) + need}, k_neighbors=min(5, int(mine.sum()) - 1), random_state=fold.seed + k)
            resampled, _ = sampler.fit_resample(base.features, y)
            rows.append(resampled[len(y):])
            labels.append(np.full(need, unit_class(unit), dtype=object))
        if not rows:
            empty = np.zeros(0, object)
            return fm.stack(base, np.zeros((0, base.features.shape[1])), empty, "interpolated", empty, empty, unfilled=unfilled)
        added = np.concatenate(rows)
        n = len(added)  # interpolated rows come from no single recording
        return fm.stack(base, added, np.concatenate(labels), "interpolated", np.full(n, "n/a", dtype=object), np.full(n, "interpolated", dtype=object), unfilled=unfilled)

    return strategy


def class_weight_strategy(s: SiteSamples) -> fm.Strategy:
    def strategy(fold: fm.Fold) -> fm.TrainingSet:
        base = fm.real_training_set(s.features.values, s.labels, s.windows.subjects, s.ids, fold.train)
        base.class_weight = "balanced"
        return base

    return strategy


def none_strategy(s: SiteSamples) -> fm.Strategy:
    return lambda fold: fm.real_training_set(s.features.values, s.labels, s.windows.subjects, s.ids, fold.train)


def generate_strategy(
    s: SiteSamples, synthesize: Synthesizer, log: GenerationLog, make_estimator: Callable[[str | None], Any] | None = None,
    choices: Sequence[tuple[str, float]] = (),
) -> fm.Strategy:
    """Top up each fold's under-represented units with generated windows.

    With several ``choices`` of generation settings (a ``ModelSynthesizer``'s estimate and
    guidance) and ``make_estimator``, each fold picks its setting on its own training subjects:
    they are split in two by subject, windows are generated for the first half's deficits, the
    classifier is fitted on it and scored (macro F1) on the second half; the best setting then
    generates for the whole training fold. Test subjects play no part in the choice.

    With ``make_estimator``, each fold also records the *label fidelity* of its generated
    windows (see the module docstring)."""
    pool_ids = None if s.pool is None else fm.window_ids(s.pool)
    selectable = make_estimator is not None and len(choices) > 1 and hasattr(synthesize, "with_settings")

    def sources(train: np.ndarray, excluded: set, rng: np.random.Generator, fold_index: int | None):
        """EEG windows to generate from for the deficits of the training rows ``train``."""
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

    def generated_features(synth: Synthesizer, windows: PairedWindows, seed: int) -> np.ndarray:
        return s.featurize(replace(windows, target=np.asarray(synth(windows, seed=seed), dtype=np.float32)))

    def choose(fold: fm.Fold, test_subjects: set) -> tuple[Synthesizer, dict]:
        """The setting whose generated windows help most on held-out training subjects."""
        subjects = np.array(sorted(set(s.windows.subjects[fold.train].tolist())))
        if not selectable or len(subjects) < 2:
            return synthesize, {}
        held = set(np.random.default_rng(fold.seed).permutation(subjects)[: len(subjects) // 2].tolist())
        inner_val = fold.train[np.isin(s.windows.subjects[fold.train], list(held))]
        inner_train = fold.train[~np.isin(s.windows.subjects[fold.train], list(held))]
        windows, _, labels, _ = sources(inner_train, test_subjects | held, np.random.default_rng(fold.seed + 1), None)
        if windows is None or len(set(s.labels[inner_train].tolist())) < 2:
            return synthesize, {}
        scores = {}
        for estimate, guidance in choices:
            candidate = synthesize.with_settings(estimate, guidance)
            x = np.concatenate([s.features.values[inner_train], generated_features(candidate, windows, fold.seed)])
            y = np.concatenate([s.labels[inner_train], labels])
            predicted = make_estimator(None).fit(x, y).predict(s.features.values[inner_val])
            scores[f"{estimate}, guidance {guidance:g}"] = (fm.score_fold(s.labels[inner_val], predicted, s.classes)[2], (estimate, guidance))
        best = max(scores, key=lambda k: (np.nan_to_num(scores[k][0], nan=-1.0), -list(scores).index(k)))
        return synthesize.with_settings(*scores[best][1]), {"chosen_setting": best, "setting_scores": {k: v[0] for k, v in scores.items()}}

    def strategy(fold: fm.Fold) -> fm.TrainingSet:
        base = fm.real_training_set(s.features.values, s.labels, s.windows.subjects, s.ids, fold.train)
        test_subjects = set(s.windows.subjects[fold.test].tolist())
        picked, picked_ids, labels, unfilled = sources(fold.train, test_subjects, np.random.default_rng(fold.seed), fold.index)
        if picked is None:
            empty = np.zeros(0, object)
            return fm.stack(base, np.zeros((0, base.features.shape[1])), empty, "generated", empty, empty, n_generated=0, unfilled=unfilled)
        synth, choice = choose(fold, test_subjects)
        features = generated_features(synth, picked, fold.seed)
        fidelity = {}
        if make_estimator is not None:  # class-balanced, so minority labels are not rare in its answers
            judge = make_estimator("balanced").fit(base.features, base.labels)
            held_out = fold.test[np.isin(s.labels[fold.test], np.unique(labels))]  # real windows of the generated classes
            fidelity = {
                "label_fidelity": float(np.mean(judge.predict(features) == labels)),
                "label_fidelity_real": float(np.mean(judge.predict(s.features.values[held_out]) == s.labels[held_out])) if len(held_out) else None,
            }
        return fm.stack(base, features, labels, "generated", picked.subjects, picked_ids, n_generated=len(labels), unfilled=unfilled, **fidelity, **choice)

    return strategy


# -- the whole report -------------------------------------------------------------------------


def prepare_samples(
    windows: PairedWindows,
    config: AugmentConfig,
    site: str | Path,
    *,
    pool: PairedWindows | None = None,
    rois: np.ndarray | None = None,
) -> SiteSamples:
    windows, classes = select_windows(windows, config, site)
    labels = task_labels(windows, config.target)
    groups = None
    if config.sensitive_attribute:
        groups = windows.group_of(config.sensitive_attribute).astype(str)
        if set(groups.tolist()) == {"n/a"}:
            raise _no_attribute(site, config.sensitive_attribute, "--sensitive-attribute")
    plan = plan_balance(labels, classes, groups, config.target_per_class, config.minority_ratio)
    blocks = fm.blocks_for(config.classifier, config.use_eeg, config.use_target)
    if rois is None and windows.target_modality == "fmri" and "target" in blocks:
        rois = fm.target_parcellation(windows.target_positions, config.n_rois, seed=0)
    features = fm.compute_features(windows, blocks, rois)
    pool_units = None
    if pool is not None:
        pool_labels = task_labels(pool, config.target)
        pool_groups = None if groups is None else pool.group_of(config.sensitive_attribute).astype(str)
        pool_units = pool_labels.astype(object) if pool_groups is None else np.array([f"{c}{CELL_SEP}{g}" for c, g in zip(pool_labels, pool_groups)], dtype=object)
    return SiteSamples(windows, labels, classes, features, fm.window_ids(windows), blocks, rois, plan, groups, pool, pool_units)


def run_augmentation(
    windows: PairedWindows,
    config: AugmentConfig,
    site: str | Path,
    *,
    synthesizer: Synthesizer | None = None,
    pool: PairedWindows | None = None,
    rois: np.ndarray | None = None,
    generation_info: dict[str, Any] | None = None,
    samples: SiteSamples | None = None,
) -> tuple[dict[str, Any], GenerationLog]:
    """Cross-validate every strategy on the site's windows; returns the report and the log of
    every generation call (fold, unit, source subjects and window ids)."""
    s = samples or prepare_samples(windows, config, site, pool=pool, rois=rois)
    if "generate" in config.strategies and synthesizer is None:
        raise ConfigError("strategy 'generate' needs a model (--checkpoint)")
    folds = fm.subject_folds(s.labels, s.windows.subjects, s.classes, config.folds, config.seed, site)
    log = GenerationLog()
    builders: dict[str, Callable[[], fm.Strategy]] = {
        "none": lambda: none_strategy(s),
        "oversample": lambda: oversample_strategy(s),
        "class-weight": lambda: class_weight_strategy(s),
        "smote": lambda: smote_strategy(s),
        "generate": lambda: generate_strategy(s, synthesizer, log, make_estimator, config.generation_choices),
    }

    def make_estimator(class_weight: str | None):
        return fm.make_classifier(config.classifier, s.features, s.classes, class_weight=class_weight, C=config.C, seed=config.seed)

    strategies: dict[str, Any] = {}
    minority_classes = sorted({unit_class(u) for u in s.plan.minority})
    for name in [n for n in STRATEGIES if n in config.strategies]:
        result = fm.cross_validate(name, builders[name](), s.features.values, s.labels, s.windows.subjects, s.ids, folds, make_estimator, s.classes, config.seed)
        entry = fm.summarize(result, s.classes)
        entry["n_synthetic"] = int(sum(f.n_added.get("generated", 0) for f in result.folds))
        entry["n_oversampled"] = int(sum(f.n_added.get("oversampled", 0) for f in result.folds))
        entry["n_interpolated"] = int(sum(f.n_added.get("interpolated", 0) for f in result.folds))
        entry["folds"] = [_fold_record(f) for f in result.folds]
        if name == "generate":
            for key, name_out in (("label_fidelity", "generated_label_fidelity"), ("label_fidelity_real", "real_label_fidelity")):
                values = [f.log[key] for f in result.folds if f.log.get(key) is not None]
                entry[name_out] = float(np.mean(values)) if values else None
        entry["per_group"] = {}
        if s.groups is not None:
            positive = minority_classes[0] if len(s.classes) == 2 and minority_classes else None
            entry["per_group"] = fm.group_metrics(result.y_true, result.y_pred, s.groups, s.classes, positive)
            entry["per_group"]["by_group_folds"] = fm.group_fold_scores(result, s.groups, folds, s.classes)
        strategies[name] = entry

    report = {
        "site": str(site),
        "target": config.target,
        "classes": s.classes,
        "class_counts": {c: int(np.sum(s.labels == c)) for c in s.classes},
        "sensitive_attribute": config.sensitive_attribute,
        "group_counts": None if s.groups is None else {g: int(np.sum(s.groups == g)) for g in sorted(set(s.groups.tolist()))},
        "minority_rule": s.plan.rule,
        "minority_classes": minority_classes,
        "minority_units": s.plan.minority,
        "unit_counts": s.plan.counts,
        "target_per_class": max(s.plan.targets.values()) * (1 if s.groups is None else len(set(s.groups.tolist()))),
        "folds": config.folds,
        "fold_test_subjects": [sorted(set(s.windows.subjects[test].tolist())) for _, test in folds],
        "subjects": len(set(s.windows.subjects.tolist())),
        "windows": len(s.labels),
        "classifier": config.classifier,
        "features": {"blocks": list(s.blocks), "target_rois": None if s.rois is None else int(s.rois.max()) + 1},
        "seed": config.seed,
        "generation": {
            "steps": config.steps,
            "guidance_scale": config.guidance_scale,
            "choices": [list(c) for c in config.generation_choices] if synthesizer is not None and hasattr(synthesizer, "with_settings") else None,
            "source": "EEG windows of the under-represented unit from the fold's training subjects"
            + (" (paired windows and EEG-only pool)" if s.pool is not None else " (paired windows, several noise draws each when few)"),
            **(generation_info or {}),
        },
        "strategies": strategies,
        "summary": minority_summary(strategies, s.classes, minority_classes),
    }
    return _finite(report), log


def _fold_record(f: fm.FoldResult) -> dict[str, Any]:
    return {
        "fold": f.index,
        "test_subjects": f.test_subjects,
        "n_train_real": f.n_train_real,
        "n_added": f.n_added,
        "added_source_subjects": f.added_source_subjects,
        "test_windows_used_as_sources": f.test_windows_used_as_sources,
        "units_not_topped_up": f.log.get("unfilled", []),
        "per_class_f1": f.per_class_f1,
        "per_class_recall": f.per_class_recall,
        "accuracy": f.accuracy,
        "macro_f1": f.macro_f1,
        **({"generation_setting": f.log["chosen_setting"], "setting_scores": f.log["setting_scores"]} if "chosen_setting" in f.log else {}),
    }


def minority_summary(strategies: dict[str, Any], classes: list[str], minority: list[str]) -> dict[str, Any]:
    """Minority F1, mean majority F1 and its change against 'none', per strategy."""
    majority = [c for c in classes if c not in minority]
    out = {}
    base = strategies.get("none")
    for name, entry in strategies.items():
        f1 = entry["per_class_f1_mean"]
        row = {
            "minority_f1": _nanmean([f1[c] for c in minority]) if minority else None,
            "minority_recall": _nanmean([entry["per_class_recall_mean"][c] for c in minority]) if minority else None,
            "majority_f1": _nanmean([f1[c] for c in majority]) if majority else None,
        }
        if base is not None and majority:
            row["majority_f1_drop"] = _nanmean([base["per_class_f1_mean"][c] for c in majority]) - row["majority_f1"]
        out[name] = row
    return out


def _nanmean(values: Sequence[float]) -> float:
    v = np.asarray(values, dtype=float)
    return float(np.nanmean(v)) if np.any(np.isfinite(v)) else float("nan")


def _finite(obj: Any) -> Any:
    """NaN/inf -> None, so that report.json is strict JSON."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


# -- output -----------------------------------------------------------------------------------


def _pm(mean: float | None, std: float | None) -> str:
    return "n/a" if mean is None else f"{mean:.3f} ± {std or 0:.3f}"


def render_markdown(report: dict[str, Any]) -> str:
    classes, minority = report["classes"], set(report["minority_classes"])
    lines = [
        f"# Fairness augmentation report: {report['site']}",
        "",
        f"Task: `{report['target']}` ({len(classes)} classes, {report['windows']} windows, {report['subjects']} subjects); "
        f"classifier `{report['classifier']}` on {', '.join(report['features']['blocks'])} features; "
        f"{report['folds']}-fold cross-validation grouped by subject, stratified by class; seed {report['seed']}.",
        "",
        f"Under-represented: {', '.join(report['minority_units']) or 'none'} (rule: {report['minority_rule']}).",
        "Generated samples are used for training only; each comes from the EEG of a training-fold subject.",
        "",
        "## Per-class F1 (mean ± std over folds)",
        "",
        "| strategy | " + " | ".join(f"{c}{' (minority)' if c in minority else ''} [n={report['class_counts'][c]}]" for c in classes) + " | accuracy | macro F1 | added (all folds) |",
        "|---" * (len(classes) + 4) + "|",
    ]
    for name, e in report["strategies"].items():
        counts = {"generated": e["n_synthetic"], "oversampled": e["n_oversampled"], "interpolated": e.get("n_interpolated", 0)}
        added = sum(counts.values())
        kind = next((k for k, n in counts.items() if n), "")
        lines.append(
            f"| {name} | "
            + " | ".join(_pm(e["per_class_f1_mean"][c], e["per_class_f1_std"][c]) for c in classes)
            + f" | {_pm(e['accuracy_mean'], e['accuracy_std'])} | {_pm(e['macro_f1_mean'], e['macro_f1_std'])} | {added} {kind} |"
        )
    if report["sensitive_attribute"]:
        groups = sorted(report["group_counts"])
        lines += [
            "",
            f"## Per group: `{report['sensitive_attribute']}` (pooled out-of-fold predictions, fairlearn MetricFrame)",
            "",
            "| strategy | " + " | ".join(f"macro F1 {g} [n={report['group_counts'][g]}]" for g in groups) + " | worst group | difference | ratio | equalized-odds diff. |",
            "|---" * (len(groups) + 5) + "|",
        ]
        for name, e in report["strategies"].items():
            pg = e["per_group"]
            eod = pg.get("equalized_odds_difference")
            worst = pg["worst_group"]
            lines.append(
                f"| {name} | "
                + " | ".join(_fmt(pg["by_group"].get(g, {}).get("macro_f1")) for g in groups)
                + f" | {worst['group']} ({_fmt(worst['macro_f1'])}) | {_fmt(pg['difference']['macro_f1'])} | {_fmt(pg['ratio']['macro_f1'])} | "
                + (f"{_fmt(eod['value'])} (+ = {eod['positive_class']})" if eod else "n/a (not binary)")
                + " |"
            )
    summary = report.get("summary", {})
    if summary:
        lines += ["", "## Minority vs majority", "", "| strategy | minority F1 | minority recall | mean majority F1 | majority F1 drop vs none |", "|---|---|---|---|---|"]
        for name, row in summary.items():
            lines.append(f"| {name} | {_fmt(row['minority_f1'])} | {_fmt(row['minority_recall'])} | {_fmt(row['majority_f1'])} | {_fmt(row.get('majority_f1_drop'))} |")
    gen = report["generation"]
    lines += ["", f"Generation: {gen['source']}; guidance scale {gen['guidance_scale']}, DDIM steps {gen['steps'] or 'checkpoint default'}."]
    generate = report["strategies"].get("generate", {})
    fidelity, real = generate.get("generated_label_fidelity"), generate.get("real_label_fidelity")
    if fidelity is not None:
        lines.append(
            f"Label fidelity of the generated samples: {fidelity:.3f}, against {_fmt(real)} on held-out real windows of the same "
            f"units (accuracy of a class-balanced classifier fitted on the fold's real training windows; chance {1 / len(classes):.2f})."
        )
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def write_report(report: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """``report.json``, ``report.md``, ``per_class_f1.png`` and (with groups) ``per_group.png``,
    each written atomically."""
    from fedneurogen.shared.io import write_json_atomic, write_text_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": write_json_atomic(out / "report.json", report), "markdown": write_text_atomic(out / "report.md", render_markdown(report))}
    classes = report["classes"]
    series = {
        name: ([_nan(e["per_class_f1_mean"][c]) for c in classes], [_nan(e["per_class_f1_std"][c]) for c in classes])
        for name, e in report["strategies"].items()
    }
    paths["per_class_plot"] = fm.bar_plot(
        out / "per_class_f1.png", series, classes, title="Per-class F1 before (none) and after augmentation (* = minority)", ylabel="F1 (mean ± std over folds)", highlight=report["minority_classes"]
    )
    if report["sensitive_attribute"]:
        groups = sorted(report["group_counts"])
        series = {
            name: (
                [_nan(e["per_group"]["by_group_folds"].get(g, {}).get("macro_f1_fold_mean")) for g in groups],
                [_nan(e["per_group"]["by_group_folds"].get(g, {}).get("macro_f1_fold_std")) for g in groups],
            )
            for name, e in report["strategies"].items()
        }
        paths["per_group_plot"] = fm.bar_plot(
            out / "per_group.png", series, groups, title=f"Macro F1 per {report['sensitive_attribute']} group", ylabel="macro F1 (mean ± std over folds)"
        )
    return paths


def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def augment_site(
    checkpoint: str | Path | None,
    data: str | Path,
    out_dir: str | Path,
    config: AugmentConfig,
    *,
    device: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """``fedneurogen augment``: load the site with the checkpoint's preprocessing, run every
    strategy, write the report. Nothing leaves the site."""
    from fedneurogen.shared.config import PreprocessConfig
    from fedneurogen.shared.data import load_site

    synthesizer, info, preprocess = None, {}, PreprocessConfig()
    if checkpoint is not None:
        from fedneurogen.shared.model import load_checkpoint

        model, meta = load_checkpoint(checkpoint, device=device, use_ema=True)
        if meta.get("preprocess"):
            # the site must be windowed exactly as the model was trained
            try:
                preprocess = PreprocessConfig(**meta["preprocess"])
            except ValueError as err:  # pydantic's ValidationError is a ValueError
                raise ConfigError(f"checkpoint {checkpoint}: its preprocessing settings do not fit this version: {err}") from err
        class_names = meta.get("class_names") or []
        synthesizer = ModelSynthesizer(model, class_names, steps=config.steps, guidance_scale=config.guidance_scale)
        info = {"checkpoint": str(checkpoint), "content_hash": meta.get("content_hash"), "model_class_names": class_names}
    elif "generate" in config.strategies:
        raise ConfigError("strategy 'generate' needs --checkpoint (the global model)")
    windows = load_site(data, preprocess, progress=progress)
    pool = None
    if config.eeg_only:  # the site's EEG-only runs join the generation sources (their targets are generated)
        from fedneurogen.shared.data.eeg_only import load_eeg_only

        pool = load_eeg_only(data, windows, preprocess)
        info["eeg_only_windows"] = len(pool)
    report, _ = run_augmentation(windows, config, data, synthesizer=synthesizer, pool=pool, generation_info=info)
    if synthesizer is not None:
        # label index per trial type (None: generated unconditionally, the model has no such label)
        report["generation"]["label_index"] = {c: synthesizer.label_index(c) for c in windows.classes}
    write_report(report, out_dir)
    return report
