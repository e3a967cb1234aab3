"""Fairness augmentation (docs/architecture.md §6): everything but the CLI command lives here.

- ``window_features``: the downstream classifiers' features, one row per window in named blocks;
- ``classifiers``: the downstream classifiers (``make_classifier``, ``blocks_for``);
- ``protocol``: the subject-grouped cross-validation protocol (``Fold`` -> ``TrainingSet``
  strategies, ``cross_validate``);
- ``metrics``: per-fold scores, their summaries and the fairness (per-group) metrics;
- ``plan``: what to balance (``AugmentConfig``, task labels, ``select_windows``,
  ``plan_balance`` -> ``BalancePlan``);
- ``strategies``: what each strategy adds to a training fold (``prepare_samples`` ->
  ``SiteSamples``, ``none`` / ``oversample`` / ``class-weight`` / ``smote`` / ``generate`` /
  ``linear-gaussian``);
- ``synthesizers``: what generates the targets of ``generate`` and ``linear-gaussian``
  (``ModelSynthesizer``, ``LinearGaussianSynthesizer``, ``GenerationLog``);
- ``report``: per-fold records, the minority summary, ``report.md`` and ``write_report`` (its bar
  plots are drawn by ``fedneurogen.shared.workflows.plots.grouped_bars``);
- ``augment``: the workflow, ``run_augmentation`` (one site's windows -> report) and
  ``augment_site`` (``fedneurogen augment``: load, run, write).

Used by ``fedneurogen augment`` on a site and by ``fedneurogen.simulations.fairness_table``.
"""

from .augment import augment_site, run_augmentation
from .plan import (
    CELL_SEP,
    REST,
    STRATEGIES,
    AugmentConfig,
    BalancePlan,
    plan_balance,
    select_windows,
    task_labels,
    unit_class,
)
from .classifiers import (
    CLASSIFIERS,
    blocks_for,
    make_classifier,
)
from .metrics import (
    FoldResult,
    StrategyResult,
    class_recall,
    group_fold_scores,
    group_metrics,
    score_fold,
    summarize,
)
from .protocol import (
    ORIGINS,
    Fold,
    Strategy,
    TrainingSet,
    check_class_sizes,
    cross_validate,
    real_training_set,
    stack,
    subject_folds,
    window_ids,
)
from .window_features import (
    Features,
    compute_features,
    eeg_band_power,
    eeg_covariances,
    target_features,
    target_parcellation,
)
from .report import minority_summary, render_markdown, write_report
from .strategies import (
    GenerationLog,
    LinearGaussianSynthesizer,
    ModelSynthesizer,
    SiteSamples,
    Synthesizer,
    class_weight_strategy,
    concat_windows,
    generate_strategy,
    linear_gaussian_strategy,
    none_strategy,
    oversample_strategy,
    prepare_samples,
    smote_strategy,
)

__all__ = [
    # window_features, classifiers, protocol, metrics
    "CLASSIFIERS",
    "ORIGINS",
    "Features",
    "Fold",
    "FoldResult",
    "Strategy",
    "StrategyResult",
    "TrainingSet",
    "blocks_for",
    "check_class_sizes",
    "class_recall",
    "compute_features",
    "cross_validate",
    "eeg_band_power",
    "eeg_covariances",
    "group_fold_scores",
    "group_metrics",
    "make_classifier",
    "real_training_set",
    "score_fold",
    "stack",
    "subject_folds",
    "summarize",
    "target_features",
    "target_parcellation",
    "window_ids",
    # plan
    "CELL_SEP",
    "REST",
    "STRATEGIES",
    "AugmentConfig",
    "BalancePlan",
    "plan_balance",
    "select_windows",
    "task_labels",
    "unit_class",
    # strategies
    "GenerationLog",
    "LinearGaussianSynthesizer",
    "ModelSynthesizer",
    "SiteSamples",
    "Synthesizer",
    "class_weight_strategy",
    "concat_windows",
    "generate_strategy",
    "linear_gaussian_strategy",
    "none_strategy",
    "oversample_strategy",
    "prepare_samples",
    "smote_strategy",
    # report
    "minority_summary",
    "render_markdown",
    "write_report",
    # augment
    "augment_site",
    "run_augmentation",
]
