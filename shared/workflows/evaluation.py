"""Evaluating a checkpoint on a site's held-out subjects (docs/architecture.md §7): ``evaluate``.

``evaluate`` generates the target for the test subjects' windows and scores it against the real
recording (``evaluation_scores``): temporal PCC (per point over each stitched run, Fisher-z
averaged), spatial PCC and SSIM (per frame), next to
- the noise baseline: real windows shuffled between windows (``metrics.shuffled_baseline``);
- the noise ceiling, where the site has ground truth, and on simulated sites the EEG-informed
  ceilings (``evaluation_baselines``);
- two baselines fitted on the training subjects: EEG band power through the canonical HRF with
  ridge regression (``RidgeHRFBaseline``) and a deterministic regression transformer
  (``RegressorBaseline``);
- the honest generative baseline, linear-Gaussian (``LinearGaussianGenerator``: ridge mean +
  Gaussian residual with the cross-fitted training residuals' covariance), fitted like the others.

Samples are scored as data too (``evaluation_scores.samples_as_data``), the model's and
linear-Gaussian's, with a figure of spectra and FC (``samples.png``). Only subjects the checkpoint
never trained or validated on are scored (``evaluation_subjects``); the report, its tables,
figures and the pooling of several sites' reports are in ``evaluation_report``.

The evaluation is cut in those modules; the names they define stay importable from here (the
command line imports ``REPORT_FILE``, ``evaluate`` and ``report_table`` from this module).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from fedneurogen.shared.config import PreprocessConfig
from fedneurogen.shared.data import load_site
from fedneurogen.shared.io import write_json_atomic
from fedneurogen.shared.metrics import shuffled_baseline, temporal_pcc
from fedneurogen.shared.model import NeuroGenModel, count_parameters, load_checkpoint
from fedneurogen.shared.model.mean import RIDGE_RANKS
from fedneurogen.shared.recording import PairedWindows
from fedneurogen.shared.splits import SeenSubjects, subject_keys

# by module, not by name: tests replace ``synthesis.generate`` to see which windows are generated for
from fedneurogen.shared.workflows import synthesis
from fedneurogen.shared.workflows.baselines import LabelOnlyBaseline, RegressorBaseline, RidgeHRFBaseline
from fedneurogen.shared.workflows.evaluation_baselines import (
    GROUND_TRUTH_DIR,
    eeg_informed_design,
    fit_predict,
    fit_sample,
    ground_truth_path,
    ground_truth_windows,
    on_virtual_montage,
    pool_windows,
    read_ground_truth,
    reliable_points,
    source_ceiling,
    source_informed_design,
)
from fedneurogen.shared.workflows.evaluation_report import (
    ROWS,
    SAMPLE_COLUMNS,
    SCORES,
    pool_reports,
    relative_scores,
    render_report,
    report_row,
    report_table,
    write_plots,
    write_samples_figure,
)
from fedneurogen.shared.workflows.evaluation_scores import (
    calibration,
    conditioned_classes,
    samples_as_data,
    scores,
    tstr_scores,
)
from fedneurogen.shared.workflows.evaluation_subjects import (
    STATUS_TEXT,
    EvaluationSplit,
    evaluation_split,
    limit_windows,
    read_seen,
    read_site_record,
    seen_by_checkpoint,
    subject_status,
)

__all__ = [
    "GROUND_TRUTH_DIR", "REPORT_FILE", "ROWS", "SAMPLE_COLUMNS", "SCORES", "STATUS_TEXT", "EvaluationSplit",
    "calibration", "conditioned_classes", "eeg_informed_design", "evaluate", "evaluation_split", "fit_predict",
    "fit_sample", "ground_truth_path", "ground_truth_windows", "limit_windows", "on_virtual_montage", "pool_reports",
    "pool_windows", "read_ground_truth", "read_seen", "read_site_record", "reliable_points", "render_report",
    "report_row", "report_table", "samples_as_data", "scores", "seen_by_checkpoint", "source_ceiling",
    "source_informed_design", "subject_status", "tstr_scores", "write_plots",
]  # fmt: skip

log = logging.getLogger(__name__)

REPORT_FILE = "report.json"


def evaluate(
    checkpoint: str | Path,
    site_dir: str | Path,
    out_dir: str | Path,
    *,
    steps: int | None = None,
    max_windows: int | None = None,
    seed: int = 0,
    guidance_scale: float = 1.0,
    n_samples: int = 1,
    baseline_epochs: int = 5,
    batch_size: int = 16,
    device: str | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    pooled_sites: tuple[str | Path, ...] = (),
    allow_seen: bool = False,
    site_records: tuple[str | Path, ...] = (),
) -> dict[str, Any]:
    """Score a checkpoint on a site's held-out subjects; write ``report.json`` and figures.

    The headline is the label-free point prediction (the model's conditional mean, no
    sampling) against the continuous ridge-HRF baseline, over all target points and the top
    10 % most reliable (chosen on the training subjects), next to what is achievable: the noise
    ceiling and, on simulated data, the EEG-informed ceiling. Samples are scored separately.

    Parameters
    ----------
    checkpoint : path-like
        Checkpoint directory (EMA weights are used; its ``preprocess``, ``class_names`` and
        ``provenance`` decide the windows, the labels and which subjects it saw).
    site_dir : path-like
        A BIDS site.
    out_dir : path-like
        Receives ``report.json`` and the PNG figures.
    steps : int, optional
        Sampling steps (default: the model's ``sampling_steps``).
    guidance_scale : float
        Classifier-free guidance scale; each window's samples are conditioned on its own class
        (the null label for classes the model lacks).
    seed : int
        Seed of the sampling noise, the noise baseline and the regressor.
    batch_size : int
        Windows per batch (sampling and regressor training).
    device : str, optional
        ``cpu`` or ``cuda`` (default: CUDA when available).
    cache_dir : path-like, optional
        Cache of preprocessed windows (see ``load_site``).
    progress : bool
        Show progress bars and status spinners on stderr.
    n_samples : int
        Samples drawn per window (0: none). One sample is scored on its own, the mean of all
        of them too, and their spread around the point prediction gives the calibration.
    max_windows : int, optional
        Score at most this many test windows (each subject's first ones).
    baseline_epochs : int
        Training epochs of the regression-transformer baseline (0: not trained).
    pooled_sites : paths
        Other sites the checkpoint was trained on: the ridge-HRF and label-only baselines, the
        EEG-informed ceiling and the top-10 % choice learn from their subjects the checkpoint
        trained (and validated) on too, found by content, so the model and the baselines see the
        same subjects. (The regression transformer reads raw EEG, whose channels differ between
        sites: this site only.)
    allow_seen : bool
        Score subjects the checkpoint trained or validated on too (and accept a checkpoint that
        records none), each labelled in the report; the headline says so.
    site_records : tuple of path-like
        Sites' own records of their split in the run (``split-<run>.json`` beside a DP
        site's ledger): they complete a checkpoint whose DP sites withheld theirs.

    Returns
    -------
    dict
        The report (also in ``out_dir/report.json``): ``point_prediction`` (label-free; the
        headline), ``point_prediction_labels``, ``linear_path`` (the model's linear paths alone:
        what its learned residual adds to), ``sample``, ``samples_mean``, ``calibration``,
        ``baselines`` (``ridge_hrf``, ``label_only``, ``regressor``, ``linear_gaussian_sample``: one
        linear-Gaussian sample), ``sample_metrics`` (``model`` and ``linear_gaussian``: coverage,
        CRPS, spectrum distance, FC similarity, two-sample accuracy of K samples, and
        train-on-synthetic-test-on-real ``tstr_balanced_accuracy`` and ``tstr_macro_f1``;
        ``real_reference``: the same classifier trained on real windows, ``trtr_balanced_accuracy``,
        ``trtr_macro_f1``, and chance, ``tstr_chance``; ``point_prediction_labels``: TSTR of the
        labelled point prediction, the class without sampling), ``noise_baseline``,
        ``ceilings`` (``noise``, ``eeg_informed``), ``relative`` (the model over the baseline
        and over its own linear paths, and as a share of the EEG-informed ceiling), ``held_out`` (``EvaluationSplit.held_out``: each
        subject's status, the excluded ones and why, the seen ones scored), and the split and
        settings. Each score holds ``pcc_temporal``, ``pcc_temporal_top10``, ``pcc_spatial`` and
        ``ssim``.

    Raises
    ------
    ConfigError
        When the checkpoint cannot be used.
    DataError
        When a site has no usable run, no subject left to score (every one seen by the
        checkpoint), the checkpoint records no subjects (without ``allow_seen``), or pooled sites
        have other target points.
    """
    checkpoint, site_dir, out_dir = Path(checkpoint), Path(site_dir), Path(out_dir)
    model, meta = load_checkpoint(checkpoint, device=device, use_ema=True)
    preprocess = PreprocessConfig.from_stored(meta.get("preprocess"))
    seen = read_seen(meta, checkpoint, allow_seen, [read_site_record(Path(p)) for p in site_records])
    windows = load_site(site_dir, preprocess, cache_dir=cache_dir, progress=progress)
    keys = subject_keys(site_dir, windows.runs, windows.subjects, cache_dir)
    split = evaluation_split(windows, seen, keys, site_dir, allow_seen=allow_seen)
    test = limit_windows(split.test, max_windows)
    steps = steps or model.config.sampling_steps
    labels = synthesis.label_indices(test, meta.get("class_names"))

    # The baselines and the ceiling learn from the training (and validation) subjects the model
    # learnt from: this site's, and those of ``pooled_sites`` when the model was trained on them.
    sites = [(site_dir, split)] + [
        (Path(other), _split_of(other, preprocess, seen, cache_dir, progress)) for other in pooled_sites
    ]
    sites = [(path, sp) for path, sp in sites if sp.train is not None]
    with _status(progress, "point prediction and baselines"):
        compared = _compare(model, test, labels, sites, site_dir, preprocess, batch_size)
    regressor_parameters = None
    if baseline_epochs > 0:
        with _status(progress, f"fitting the regression-transformer baseline ({baseline_epochs} epochs)"):
            compared.predictions["regressor"], regressor_parameters = _regressor_baseline(
                model, split, test, baseline_epochs, batch_size, seed
            )

    samples = None
    if n_samples > 0:
        samples = synthesis.generate(
            model, test, labels, n_samples=n_samples, steps=steps, guidance_scale=guidance_scale, seed=seed, batch_size=batch_size,
            progress=progress,
        )  # fmt: skip
    with _status(progress, "fitting the linear-Gaussian generator"):  # the same K as the model (one without samples)
        linear_gaussian = fit_sample(compared.train, test, compared.val, max(n_samples, 1), seed)
    # TSTR: each window's samples (the model's and linear-Gaussian's) are labelled with the class
    # the model conditioned them on; windows it sampled with the null label are left out
    conditioned = conditioned_classes(labels, meta.get("class_names"))
    # and where the class lives: the labelled point prediction alone (no sampling noise), by TSTR
    sample_scores, sample_figure = samples_as_data(
        {"model": samples, "linear_gaussian": linear_gaussian}, test, seed, conditioned,
        tstr_only={"point_prediction_labels": compared.mean_labelled[None]},
    )  # fmt: skip

    settings = {
        "steps": steps, "guidance_scale": guidance_scale, "samples_drawn": n_samples, "seed": seed,
        "parameters": {"model": count_parameters(model), "regressor": regressor_parameters}, "baseline_epochs": baseline_epochs,
    }  # fmt: skip
    report: dict[str, Any] = {
        **_scored(compared, test, samples, linear_gaussian, sample_scores, seed),
        **_provenance(checkpoint, meta, site_dir, split, test, [path for path, _ in sites], compared, settings),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    shown = samples[0] if samples is not None else compared.mean
    ridge = compared.predictions.get("ridge_hrf")
    report["plots"] = [p.name for p in write_plots(out_dir, test, compared.mean, shown, ridge, report)]
    report["plots"].append(write_samples_figure(out_dir, sample_figure, report).name)
    write_json_atomic(out_dir / REPORT_FILE, report)
    log.debug("wrote %s and %d figure(s)", out_dir / REPORT_FILE, len(report["plots"]))
    return report


@dataclass
class Compared:
    """What the model's held-out score is compared with, on the test windows.

    Attributes
    ----------
    mean, mean_labelled, linear_path : numpy.ndarray
        The model's label-free and labelled point predictions, and its linear paths alone.
    predictions : dict of str to numpy.ndarray or None
        The baselines' predictions by report name (``ridge_hrf``, ``label_only``, ``regressor``).
    top : numpy.ndarray or None
        The top-10 % points, chosen on the training subjects (None without any).
    truth, informed, informed_source : numpy.ndarray or None
        The noise-free signal and the EEG-informed ceilings' predictions (None where the sites
        lack what they need).
    train, val : PairedWindows or None
        The pooled training and validation windows the baselines learnt from.
    """

    mean: np.ndarray
    mean_labelled: np.ndarray
    linear_path: np.ndarray
    predictions: dict[str, np.ndarray | None]
    top: np.ndarray | None
    truth: np.ndarray | None
    informed: np.ndarray | None
    informed_source: np.ndarray | None
    train: PairedWindows | None
    val: PairedWindows | None


def _compare(
    model: NeuroGenModel, test: PairedWindows, labels: np.ndarray, sites: list[tuple[Path, EvaluationSplit]],
    site_dir: Path, preprocess: PreprocessConfig, batch_size: int,
) -> Compared:  # fmt: skip
    """The model's point predictions, the baselines and the ceilings (all but the regressor)."""
    mean = synthesis.point_predictions(model, test, batch_size=batch_size)
    mean_labelled = synthesis.point_predictions(model, test, labels, batch_size=batch_size)
    linear_path = synthesis.point_predictions(
        model, test, batch_size=batch_size, residual=False
    )  # the closed-form paths (with the alpha-gated block): what the residual adds to
    train, val = _pooled(sites, "train"), _pooled(sites, "val")
    top = None
    if train is not None:  # one ridge-HRF fit gives the baseline and the top-10 % choice
        ridge = RidgeHRFBaseline().fit(train, val)
        top = reliable_points(train, ridge.predict(train))
        predictions = {"ridge_hrf": ridge.predict(test)}
        # the model's ridge path refitted on the linear design alone: what its nonlinear parts add to
        own = RidgeHRFBaseline(ranks=RIDGE_RANKS, banded=True).fit(train, val)
        predictions["own_linear_path"] = own.predict(test)
    else:
        predictions = {"ridge_hrf": fit_predict(RidgeHRFBaseline, None, test)}
    predictions["label_only"] = fit_predict(LabelOnlyBaseline, train, test, val)
    truth, informed, informed_source = _ceilings(sites, site_dir, test, preprocess)
    return Compared(mean, mean_labelled, linear_path, predictions, top, truth, informed, informed_source, train, val)


def _ceilings(
    sites: list[tuple[Path, EvaluationSplit]], site_dir: Path, test: PairedWindows, preprocess: PreprocessConfig
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """The noise-free signal, and the EEG-informed ceilings' predictions (scalp, source space)."""
    truth = ground_truth_windows(site_dir, test, preprocess)
    informed = None
    ceiling_design = lambda path, w: eeg_informed_design(path, w, preprocess)  # noqa: E731
    ceiling_train, ceiling_test = _pooled(sites, "train", ceiling_design), ceiling_design(site_dir, test)
    if ceiling_train is not None and ceiling_test is not None:
        ceiling_val = _pooled(sites, "val", ceiling_design)
        informed = RidgeHRFBaseline().fit(ceiling_train, ceiling_val).predict(replace(test, design=ceiling_test))
    informed_source = None  # the same, from the rhythms at the cortex: what a perfect inverse would give
    source_design = lambda path, w: source_informed_design(path, w, preprocess)  # noqa: E731
    source_train, source_test = _pooled(sites, "train", source_design), source_design(site_dir, test)
    if source_train is not None and source_test is not None:
        informed_source = source_ceiling(
            source_train, _pooled(sites, "val", source_design), replace(test, design=source_test)
        )
    return truth, informed, informed_source


def _pooled(sites: list[tuple[Path, EvaluationSplit]], which: str, design_of=None) -> PairedWindows | None:
    """The sites' ``which`` (``train`` or ``val``) windows in one set, with ``design_of(path,
    windows)`` as their design when given (None when any site has none)."""
    parts = []
    for path, sp in sites:
        windows_part = getattr(sp, which)
        if windows_part is None:
            continue
        if design_of is not None:
            design = design_of(path, windows_part)
            if design is None:
                return None
            windows_part = replace(windows_part, design=design)
        parts.append((path.name, windows_part))
    if not parts:
        return None
    return parts[0][1] if len(parts) == 1 else pool_windows(parts)


def _regressor_baseline(
    model: NeuroGenModel, split: EvaluationSplit, test: PairedWindows, epochs: int, batch_size: int, seed: int
) -> tuple[np.ndarray | None, int | None]:
    """The regression-transformer baseline's predictions of ``test`` (raw EEG: this site's
    subjects only) and its number of parameters (None when none was fitted)."""
    made: list[RegressorBaseline] = []

    def regressor() -> RegressorBaseline:  # same size as the generator (its ModelConfig)
        made.append(
            RegressorBaseline(model.config, epochs=epochs, batch_size=batch_size, seed=seed, device=model.device)
        )
        return made[-1]

    prediction = fit_predict(regressor, split.train, test, split.val)
    return prediction, count_parameters(made[0].model) if made else None


def _scored(
    compared: Compared, test: PairedWindows, samples: np.ndarray | None, linear_gaussian: np.ndarray | None,
    sample_scores: dict[str, Any], seed: int,
) -> dict[str, Any]:  # fmt: skip
    """The report's scores: the model's rows, the baselines, the ceilings and the ratios."""
    top, real = compared.top, test.target
    headline, linear_scores = scores(compared.mean, test, top), scores(compared.linear_path, test, top)
    ridge = scores(compared.predictions["ridge_hrf"], test, top)
    informed, source = scores(compared.informed, test, top), scores(compared.informed_source, test, top)
    return {
        "point_prediction": headline,
        "point_prediction_labels": scores(compared.mean_labelled, test, top),
        "linear_path": linear_scores,
        "sample": scores(samples[0], test, top) if samples is not None else None,
        "samples_mean": scores(samples.mean(axis=0), test, top) if samples is not None and len(samples) > 1 else None,
        "calibration": calibration(samples, compared.mean_labelled, real) if samples is not None else None,
        "baselines": {
            **{name: scores(pred, test, top) for name, pred in compared.predictions.items()},
            "linear_gaussian_sample": scores(linear_gaussian[0], test, top) if linear_gaussian is not None else None,
        },
        "sample_metrics": sample_scores,
        "noise_baseline": float(shuffled_baseline(real, test.runs, test.onsets, test.target_sfreq, seed=seed)),
        "ceilings": {"noise": _noise_ceiling(compared.truth, test, top), "eeg_informed": informed, "eeg_informed_source": source},
        "relative": relative_scores(
            headline, ridge, informed, source, scores(compared.predictions.get("own_linear_path"), test, top) or linear_scores
        ),
        "top_points": None if top is None else {"count": int(len(top)), "chosen_on": "training subjects (in-sample ridge-HRF PCC)"},
    }  # fmt: skip


def _noise_ceiling(
    truth: np.ndarray | None, test: PairedWindows, top: np.ndarray | None
) -> dict[str, float | None] | None:
    """Temporal PCC of the noise-free signal with the real one (all points, top-10 %)."""
    if truth is None:
        return None
    args = (test.runs, test.onsets, test.target_sfreq)
    return {
        "pcc_temporal": float(temporal_pcc(truth, test.target, *args)),
        "pcc_temporal_top10": None if top is None else float(temporal_pcc(truth, test.target, *args, points=top)),
    }


def _provenance(
    checkpoint: Path, meta: dict[str, Any], site_dir: Path, split: EvaluationSplit, test: PairedWindows,
    baseline_sites: Iterable[Path], compared: Compared, settings: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """The report's account of what was scored, with which settings, and where the ceilings come from."""
    subjects = sorted(set(test.subjects.tolist()))
    return {
        "baseline_training_sites": [path.name for path in baseline_sites],
        "n_test_windows": len(test),
        "test_subjects": subjects,
        "test_subjects_count": len(subjects),
        **{key: settings[key] for key in ("steps", "guidance_scale", "samples_drawn", "seed")},
        "modality": test.target_modality,
        "site": str(site_dir),
        "site_in_training": split.site_in_training,
        "held_out": split.held_out(),
        "split": {**split.split.to_dict(), "note": split.note},
        "checkpoint": str(checkpoint),
        "checkpoint_hash": meta.get("content_hash"),
        "parameters": settings["parameters"],
        "baseline_epochs": settings["baseline_epochs"],
        "noise_ceiling_source": "derivatives/ground_truth (noise-free signal)" if compared.truth is not None else "no ground truth in the site",
        "eeg_informed_ceiling_source": (
            "ridge on the simulator's expected scalp band power (derivatives/ground_truth/.../eeg), same HRF basis and subjects"
            if compared.informed is not None else "no expected band power in the site (only simulated sites have it)"
        ),
        "eeg_informed_source_ceiling_source": (
            "local ridge (each point from the parcels beneath it) on the simulator's expected rhythm power at the "
            "cortical parcels: what a perfect inverse would give" if compared.informed_source is not None
            else "no expected source power in the site (only simulated sites with linear coupling have it)"
        ),
    }  # fmt: skip


def _split_of(
    site: str | Path, preprocess: PreprocessConfig, seen: SeenSubjects | None, cache_dir, progress: bool
) -> EvaluationSplit:
    """A pooled site's subjects the checkpoint trained and validated on (none when it records none)."""
    windows = load_site(site, preprocess, cache_dir=cache_dir, progress=progress)
    keys = subject_keys(site, windows.runs, windows.subjects, cache_dir)
    return evaluation_split(windows, seen, keys, Path(site), scoring=False)


def _status(enabled: bool, message: str):
    """A status spinner on stderr while a step runs (nothing when not ``enabled``)."""
    return Console(stderr=True).status(message) if enabled else contextlib.nullcontext()
