"""Site-side fairness augmentation (docs/architecture.md §6): ``fedneurogen augment``.

A site finds the classes (and, with a sensitive attribute, the class x group cells) that are
under-represented in its paired data, synthesizes the expensive modality for them from their
EEG with the global model, and compares its downstream classifier trained on the real windows
("none") against random oversampling, class weights and generative augmentation, with
stratified, subject-grouped cross-validation. Everything stays on the site: it reads the site's
data and the model file and writes a report.

The rules (stated in every report) are in the docstrings of ``plan`` (what to balance, how far)
and ``strategies`` (what each strategy adds to a training fold); ``report`` renders the result.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedneurogen.shared.config import PreprocessConfig
from fedneurogen.shared.data import load_site
from fedneurogen.shared.errors import ConfigError
from fedneurogen.shared.recording import PairedWindows
from fedneurogen.shared.workflows.evaluation_subjects import seen_by_checkpoint

from . import classifiers, metrics, protocol
from .plan import STRATEGIES, AugmentConfig, unit_class
from .report import _finite, _fold_record, minority_summary, write_report
from .strategies import (
    GenerationLog,
    ModelSynthesizer,
    SiteSamples,
    Synthesizer,
    class_weight_strategy,
    generate_strategy,
    linear_gaussian_strategy,
    none_strategy,
    oversample_strategy,
    prepare_samples,
    smote_strategy,
)
from fedneurogen.shared.data.eeg_only import load_eeg_only


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
    """Cross-validate every strategy on the site's windows.

    Parameters
    ----------
    windows : PairedWindows
        The site's windows.
    config : AugmentConfig
        What to do.
    site : str | Path
        The site (for the report and messages).
    synthesizer : Synthesizer | None
        Generates targets from EEG; needed by the ``generate`` strategy.
    pool : PairedWindows | None
        EEG-only windows that may be generation sources.
    rois : np.ndarray | None
        fMRI ROI of each vertex; None: computed (``prepare_samples``).
    generation_info : dict of str to Any | None
        Added to the report's ``generation`` entry (checkpoint, hash, ...).
    samples : SiteSamples | None
        Precomputed samples (then ``windows``, ``pool`` and ``rois`` are not read).

    Returns
    -------
    report : dict of str to Any
        The JSON-ready report (NaN and inf as None).
    log : GenerationLog
        Every generation call (fold, unit, source subjects and window ids).

    Raises
    ------
    ConfigError
        ``generate`` without a synthesizer.
    DataError
        The site's data cannot support the task (``select_windows``, ``subject_folds``).
    """
    s = samples or prepare_samples(windows, config, site, pool=pool, rois=rois)
    if "generate" in config.strategies and synthesizer is None:
        raise ConfigError("strategy 'generate' needs a model (--checkpoint)")
    folds = protocol.subject_folds(s.labels, s.windows.subjects, s.classes, config.folds, config.seed, site)
    log = GenerationLog()
    builders: dict[str, Callable[[], protocol.Strategy]] = {
        "none": lambda: none_strategy(s),
        "oversample": lambda: oversample_strategy(s),
        "class-weight": lambda: class_weight_strategy(s),
        "smote": lambda: smote_strategy(s),
        "generate": lambda: generate_strategy(s, synthesizer, log, make_estimator, config.generation_choices),
        "linear-gaussian": lambda: linear_gaussian_strategy(s, make_estimator),
    }

    def make_estimator(class_weight: str | None):
        return classifiers.make_classifier(
            config.classifier, s.features, s.classes, class_weight=class_weight, C=config.C, seed=config.seed
        )

    strategies: dict[str, Any] = {}
    minority_classes = sorted({unit_class(u) for u in s.plan.minority})
    for name in [n for n in STRATEGIES if n in config.strategies]:
        result = protocol.cross_validate(
            name, builders[name](), s.features.values, s.labels, s.windows.subjects, s.ids, folds, make_estimator,
            s.classes, config.seed,
        )  # fmt: skip
        strategies[name] = _strategy_entry(name, result, s, folds, minority_classes)
    report = {
        **_site_record(s, config, site, folds, minority_classes),
        "generation": _generation_record(s, config, synthesizer, generation_info),
        "strategies": strategies,
        "summary": minority_summary(strategies, s.classes, minority_classes),
    }
    return _finite(report), log


def augment_site(
    checkpoint: str | Path | None,
    data: str | Path,
    out_dir: str | Path,
    config: AugmentConfig,
    *,
    device: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """``fedneurogen augment``: load the site, run every strategy, write the report.

    The site is loaded with the checkpoint's preprocessing (the default without a checkpoint),
    the model's EMA weights generate. Nothing leaves the site.

    Parameters
    ----------
    checkpoint : str | Path | None
        The global model's checkpoint; None: no ``generate`` strategy.
    data : str | Path
        The site's BIDS root.
    out_dir : str | Path
        Where the report goes (``write_report``).
    config : AugmentConfig
        What to do.
    device : str | None
        Where the model runs; None: CUDA when available.
    progress : bool
        Show loading progress.

    Returns
    -------
    dict of str to Any
        The report, with the model's label index per trial type and the site's subjects the
        model trained or validated on (``subjects_seen_by_generator``, by content) under
        ``generation``.

    Raises
    ------
    ConfigError
        ``generate`` without a checkpoint, or a checkpoint whose preprocessing settings this
        version cannot read.
    DataError
        The site cannot be loaded or cannot support the task.
    """
    synthesizer, info, preprocess = None, {}, PreprocessConfig()
    if checkpoint is not None:
        from fedneurogen.shared.model import load_checkpoint

        model, meta = load_checkpoint(checkpoint, device=device, use_ema=True)
        if meta.get("preprocess"):
            # the site must be windowed exactly as the model was trained
            try:
                preprocess = PreprocessConfig.from_stored(meta["preprocess"])
            except ValueError as err:  # pydantic's ValidationError is a ValueError
                raise ConfigError(
                    f"checkpoint {checkpoint}: its preprocessing settings do not fit this version: {err}"
                ) from err
        class_names = meta.get("class_names") or []
        synthesizer = ModelSynthesizer(model, class_names, steps=config.steps, guidance_scale=config.guidance_scale)
        info = {
            "checkpoint": str(checkpoint),
            "content_hash": meta.get("content_hash"),
            "model_class_names": class_names,
        }
    elif "generate" in config.strategies:
        raise ConfigError("strategy 'generate' needs --checkpoint (the global model)")
    windows = load_site(data, preprocess, progress=progress)
    pool = None
    if config.eeg_only:  # the site's EEG-only runs join the generation sources (their targets are generated)
        pool = load_eeg_only(data, windows, preprocess)
        info["eeg_only_windows"] = len(pool)
    if checkpoint is not None:
        # The folds hold subjects out of the downstream classifier, not out of the generator:
        # the report says which of them the generator trained or validated on.
        info["subjects_seen_by_generator"] = seen_by_checkpoint(meta, Path(data), windows)
    report, _ = run_augmentation(windows, config, data, synthesizer=synthesizer, pool=pool, generation_info=info)
    if synthesizer is not None:
        # label index per trial type (None: generated unconditionally, the model has no such label)
        report["generation"]["label_index"] = {c: synthesizer.label_index(c) for c in windows.classes}
    write_report(report, out_dir)
    return report


def _strategy_entry(
    name: str,
    result: metrics.StrategyResult,
    s: SiteSamples,
    folds: list[tuple[np.ndarray, np.ndarray]],
    minority_classes: list[str],
) -> dict[str, Any]:
    """One strategy's report entry: its summary over folds, what it added, its fold records, the
    label fidelity of what it generated, and its per-group metrics."""
    entry = metrics.summarize(result, s.classes)
    for origin in ("generated", "oversampled", "interpolated"):
        key = "n_synthetic" if origin == "generated" else f"n_{origin}"
        entry[key] = int(sum(f.n_added.get(origin, 0) for f in result.folds))
    entry["folds"] = [_fold_record(f) for f in result.folds]
    if name in ("generate", "linear-gaussian"):
        for key, name_out in (
            ("label_fidelity", "generated_label_fidelity"),
            ("label_fidelity_real", "real_label_fidelity"),
        ):
            values = [f.log[key] for f in result.folds if f.log.get(key) is not None]
            entry[name_out] = float(np.mean(values)) if values else None
    entry["per_group"] = {}
    if s.groups is not None:
        positive = minority_classes[0] if len(s.classes) == 2 and minority_classes else None
        entry["per_group"] = metrics.group_metrics(result.y_true, result.y_pred, s.groups, s.classes, positive)
        entry["per_group"]["by_group_folds"] = metrics.group_fold_scores(result, s.groups, folds, s.classes)
    return entry


def _site_record(
    s: SiteSamples,
    config: AugmentConfig,
    site: str | Path,
    folds: list[tuple[np.ndarray, np.ndarray]],
    minority_classes: list[str],
) -> dict[str, Any]:
    """What the report says of the site and the task: classes, groups, the balance plan, the
    folds and the classifier."""
    n_groups = 1 if s.groups is None else len(set(s.groups.tolist()))
    return {
        "site": str(site),
        "target": config.target,
        "classes": s.classes,
        "class_counts": {c: int(np.sum(s.labels == c)) for c in s.classes},
        "sensitive_attribute": config.sensitive_attribute,
        "group_counts": None
        if s.groups is None
        else {g: int(np.sum(s.groups == g)) for g in sorted(set(s.groups.tolist()))},
        "minority_rule": s.plan.rule,
        "minority_classes": minority_classes,
        "minority_units": s.plan.minority,
        "unit_counts": s.plan.counts,
        "target_per_class": max(s.plan.targets.values()) * n_groups,
        "folds": config.folds,
        "fold_test_subjects": [sorted(set(s.windows.subjects[test].tolist())) for _, test in folds],
        "subjects": len(set(s.windows.subjects.tolist())),
        "windows": len(s.labels),
        "classifier": config.classifier,
        "features": {"blocks": list(s.blocks), "target_rois": None if s.rois is None else int(s.rois.max()) + 1},
        "seed": config.seed,
    }


def _generation_record(
    s: SiteSamples, config: AugmentConfig, synthesizer: Synthesizer | None, generation_info: dict[str, Any] | None
) -> dict[str, Any]:
    """How the ``generate`` strategy generated: sampling settings, the choices it picked from,
    where its EEG sources come from, and what the caller adds (checkpoint, hash)."""
    choices = synthesizer is not None and hasattr(synthesizer, "with_settings")
    pool = (
        " (paired windows and EEG-only pool)"
        if s.pool is not None
        else " (paired windows, several noise draws each when few)"
    )
    return {
        "steps": config.steps,
        "guidance_scale": config.guidance_scale,
        "choices": [list(c) for c in config.generation_choices] if choices else None,
        "source": "EEG windows of the under-represented unit from the fold's training subjects" + pool,
        **(generation_info or {}),
    }
