"""Evaluating a checkpoint on a site's held-out subjects (ARCHITECTURE section 8).

``evaluate`` generates the target for the test subjects' windows and scores it against the real
recording: temporal PCC (per point over each stitched run, Fisher-z averaged), spatial PCC and
SSIM (per frame) from ``fedneurogen.shared.metrics``, next to
- the noise baseline: real windows shuffled between windows (``shuffled_baseline``);
- the noise ceiling, where the site has ground truth (the simulator's
  ``derivatives/ground_truth``): the same temporal PCC between the real and the noise-free
  signal, read with the same readers and preprocessing (``ground_truth_windows``);
- two baselines fitted on the training subjects: EEG band power through the canonical HRF with
  ridge regression (``RidgeHRFBaseline``) and a deterministic regression transformer
  (``RegressorBaseline``).

Subjects: the checkpoint's own subject split (its ``provenance``: ``split_seed``,
``val_fraction``, ``test_fraction``) is applied to a site it was trained on, so only subjects it
never saw are scored. A site it was not trained on is all test; the baselines then need training
subjects of their own and are fitted on one half of the subjects to predict the other (2 folds).
The report says which case applied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedneurogen.shared.config import PreprocessConfig
from fedneurogen.shared.errors import DataError
from fedneurogen.shared.io import write_json_atomic
from fedneurogen.shared.metrics import generation_metrics, shuffled_baseline, stitch_windows, temporal_pcc
from fedneurogen.shared.recording import PairedWindows, Recording
from fedneurogen.shared.splits import SubjectSplit, split_subjects

REPORT_FILE = "report.json"
GROUND_TRUTH_DIR = ("derivatives", "ground_truth")
METRICS = ("pcc_temporal", "pcc_spatial", "ssim")


# ----------------------------------------------------------------------------------------------
# Which subjects are scored


@dataclass
class EvaluationSplit:
    """The windows scored, the windows the baselines learn from, and why."""

    test: PairedWindows
    train: PairedWindows | None  # None: the site was not in training (baselines cross-fit)
    split: SubjectSplit
    site_in_training: bool
    note: str


def evaluation_split(windows: PairedWindows, meta: dict[str, Any], site_dir: Path) -> EvaluationSplit:
    """The checkpoint's subject split of this site, or all subjects as test when the checkpoint's
    provenance lists its training sites (by folder name) and this one is not among them."""
    provenance = meta.get("provenance") or {}
    trained_on = provenance.get("sites")
    in_training = trained_on is None or Path(site_dir).name in trained_on
    subjects = sorted(set(windows.subjects.tolist()))
    if in_training:
        split = split_subjects(
            windows.subjects,
            seed=int(provenance.get("split_seed", provenance.get("seed", 0))),
            val_fraction=float(provenance.get("val_fraction", 0.15)),
            test_fraction=float(provenance.get("test_fraction", 0.2)),
        )
        if not split.test:
            raise DataError(site_dir, f"the training split of its {len(subjects)} subject(s) leaves no test subject")
        train_mask, _, test_mask = split.masks(windows.subjects)
        known = "" if trained_on is not None else " (the checkpoint does not list its sites: assumed in training)"
        note = f"site in training{known}: scored on the {len(split.test)} test subject(s) of the training split"
        return EvaluationSplit(windows.subset(test_mask), windows.subset(train_mask), split, True, note)
    split = SubjectSplit(train=(), val=(), test=tuple(subjects))
    note = (
        f"site not in training (checkpoint sites: {', '.join(trained_on)}): all {len(subjects)} subjects are test; "
        "baselines fitted on half of the subjects, predicting the other half (2 folds by subject)"
    )
    return EvaluationSplit(windows, None, split, False, note)


def limit_windows(windows: PairedWindows, max_windows: int | None) -> PairedWindows:
    """At most ``max_windows`` windows, spread over the subjects: each subject's first windows
    (consecutive in time, so runs still stitch into continuous series)."""
    if max_windows is None or len(windows) <= max_windows:
        return windows
    subjects = sorted(set(windows.subjects.tolist()))
    per_subject = max(1, max_windows // len(subjects))
    keep = np.concatenate([np.flatnonzero(windows.subjects == s)[:per_subject] for s in subjects])
    return windows.subset(np.sort(keep)[:max_windows])


# ----------------------------------------------------------------------------------------------
# Noise ceiling from ground truth


def ground_truth_path(target: Path, site_dir: Path) -> Path:
    """Where the simulator keeps the noise-free twin of a target file: the same relative path
    under ``derivatives/ground_truth`` (fMRIPrep outputs without their ``derivatives/fmriprep``)."""
    parts = Path(target).relative_to(site_dir).parts
    if parts[:2] == ("derivatives", "fmriprep"):
        parts = parts[2:]
    return site_dir.joinpath(*GROUND_TRUTH_DIR, *parts)


def read_ground_truth(run, config: PreprocessConfig) -> Recording | None:
    """A run's noise-free target, preprocessed like the real one; None where the site has none."""
    from fedneurogen.shared.data import read_fmri, read_fnirs
    from fedneurogen.shared.data.fmri import repetition_time

    try:
        paths = [ground_truth_path(p, run.site_dir) for p in run.target]
    except ValueError:  # a target outside the site folder has no twin
        return None
    if not paths or not all(p.is_file() for p in paths):
        return None
    if run.target_modality == "fmri":
        # the TR is the real run's: the twin was acquired on the same grid
        return read_fmri(paths, config, tr=repetition_time(run.target[0], run.target_sidecars))
    return read_fnirs(paths[0], config)


def ground_truth_windows(site_dir: str | Path, windows: PairedWindows, config: PreprocessConfig) -> np.ndarray | None:
    """The noise-free target of every window (same runs, onsets and points), or None when any
    window has no ground truth."""
    from fedneurogen.shared.data import find_runs

    runs = {run.key: run for run in find_runs(site_dir)}
    n_frames = windows.target.shape[-1]
    out = np.zeros_like(windows.target)
    for key in np.unique(windows.runs):
        truth = read_ground_truth(runs[key], config) if key in runs else None
        if truth is None or not set(windows.target_names) <= set(truth.names):
            return None
        rows = [truth.names.index(name) for name in windows.target_names]
        for i in np.flatnonzero(windows.runs == key):
            start = int(round(windows.onsets[i] * windows.target_sfreq))
            if start + n_frames > truth.n_times:
                return None
            out[i] = truth.data[rows, start : start + n_frames]
    return out


# ----------------------------------------------------------------------------------------------
# Baselines


def fit_predict(make, train: PairedWindows | None, test: PairedWindows) -> np.ndarray | None:
    """Predictions of the baseline ``make()`` for ``test``: fitted on ``train``, or without
    training windows, cross-fitted over two halves of the test subjects (None with one subject)."""
    if train is not None:
        return make().fit(train).predict(test)
    subjects = sorted(set(test.subjects.tolist()))
    if len(subjects) < 2:
        return None
    out = np.zeros_like(test.target)
    for fold in (subjects[::2], subjects[1::2]):
        held = np.isin(test.subjects, fold)
        out[held] = make().fit(test.subset(~held)).predict(test.subset(held))
    return out


def scores(pred: np.ndarray | None, real: PairedWindows) -> dict[str, float] | None:
    if pred is None:
        return None
    return {k: float(v) for k, v in generation_metrics(pred, real.target, real.runs, real.onsets, real.target_sfreq).items()}


# ----------------------------------------------------------------------------------------------
# The evaluation


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
) -> dict[str, Any]:
    """Score a checkpoint on a site's test subjects; write ``report.json`` and figures.

    Parameters
    ----------
    checkpoint : path-like
        Checkpoint directory (EMA weights are used; its ``preprocess``, ``class_names`` and
        ``provenance`` decide the windows, the labels and the subject split).
    site_dir : path-like
        A BIDS site.
    out_dir : path-like
        Receives ``report.json`` and the PNG figures.
    steps, guidance_scale, seed, batch_size : sampling settings; each window is conditioned on
        its own class (null label for classes the model lacks).
    n_samples : int
        Samples drawn per window; their mean is scored. One sample carries the variability the
        EEG does not determine, so its PCC with the real signal is about the square of the
        conditional mean's; averaging samples estimates that mean (what a regressor predicts).
    max_windows : int, optional
        Score at most this many test windows (each subject's first ones).
    baseline_epochs : int
        Training epochs of the regression-transformer baseline.

    Returns
    -------
    dict
        The report (also in ``out_dir/report.json``): ``pcc_temporal``, ``pcc_spatial``,
        ``ssim``, ``noise_baseline``, ``noise_ceiling`` (None without ground truth),
        ``baselines`` (``ridge_hrf``, ``regressor``: each ``pcc_temporal``, ``pcc_spatial``,
        ``ssim``), ``n_test_windows``, ``test_subjects``, ``test_subjects_count``, ``steps``,
        the split and the settings used.
    """
    from fedneurogen.shared.baselines import RidgeHRFBaseline
    from fedneurogen.shared.data import load_site
    from fedneurogen.shared.model import count_parameters, load_checkpoint
    from fedneurogen.shared.regressor import RegressorBaseline
    from fedneurogen.shared.synthesis import generate, label_indices

    checkpoint, site_dir, out_dir = Path(checkpoint), Path(site_dir), Path(out_dir)
    model, meta = load_checkpoint(checkpoint, device=device, use_ema=True)
    preprocess = PreprocessConfig(**(meta.get("preprocess") or {}))
    windows = load_site(site_dir, preprocess, cache_dir=cache_dir, progress=progress)
    split = evaluation_split(windows, meta, site_dir)
    test = limit_windows(split.test, max_windows)
    steps = steps or model.config.sampling_steps

    labels = label_indices(test, meta.get("class_names"))
    generated = generate(
        model, test, labels, n_samples=n_samples, steps=steps, guidance_scale=guidance_scale, seed=seed, batch_size=batch_size,
        progress=progress,
    ).mean(axis=0)  # fmt: skip
    real = test.target
    truth = ground_truth_windows(site_dir, test, preprocess)

    regressors: list[RegressorBaseline] = []

    def regressor() -> RegressorBaseline:  # same size as the generator (its ModelConfig)
        regressors.append(RegressorBaseline(model.config, epochs=baseline_epochs, batch_size=batch_size, seed=seed, device=model.device))
        return regressors[-1]

    with _status(progress, f"fitting the baselines (regressor: {baseline_epochs} epochs)"):
        predictions = {"ridge_hrf": fit_predict(RidgeHRFBaseline, split.train, test), "regressor": fit_predict(regressor, split.train, test)}

    report: dict[str, Any] = {
        **scores(generated, test),
        "noise_baseline": float(shuffled_baseline(real, test.runs, test.onsets, test.target_sfreq, seed=seed)),
        "noise_ceiling": None if truth is None else float(temporal_pcc(truth, real, test.runs, test.onsets, test.target_sfreq)),
        "baselines": {name: scores(pred, test) for name, pred in predictions.items()},
        "n_test_windows": len(test),
        "test_subjects": sorted(set(test.subjects.tolist())),
        "test_subjects_count": len(set(test.subjects.tolist())),
        "steps": steps,
        "guidance_scale": guidance_scale,
        "samples_averaged": n_samples,
        "seed": seed,
        "modality": test.target_modality,
        "site": str(site_dir),
        "site_in_training": split.site_in_training,
        "split": {**split.split.to_dict(), "note": split.note},
        "checkpoint": str(checkpoint),
        "checkpoint_hash": meta.get("content_hash"),
        "parameters": {"model": count_parameters(model), "regressor": count_parameters(regressors[0].model) if regressors else None},
        "baseline_epochs": baseline_epochs,
        "noise_ceiling_source": "derivatives/ground_truth (noise-free signal)" if truth is not None else "no ground truth in the site",
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    report["plots"] = [p.name for p in write_plots(out_dir, test, generated, predictions.get("ridge_hrf"), report)]
    write_json_atomic(out_dir / REPORT_FILE, report)
    return report


def _status(enabled: bool, message: str):
    import contextlib

    from rich.console import Console

    return Console(stderr=True).status(message) if enabled else contextlib.nullcontext()


def pool_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Several sites' reports as one: correlations Fisher-z averaged and SSIM averaged, each
    weighted by the site's test windows; counts summed. A value missing at any site is None."""
    weights = np.array([r["n_test_windows"] for r in reports], dtype=float)

    def pooled(values: list[float | None], correlation: bool) -> float | None:
        if any(v is None or not math.isfinite(v) for v in values):
            return None
        v = np.asarray(values, dtype=float)
        if correlation:
            return float(np.tanh(np.average(np.arctanh(np.clip(v, -0.999999, 0.999999)), weights=weights)))
        return float(np.average(v, weights=weights))

    def metrics_of(get) -> dict[str, float | None]:
        return {m: pooled([get(r).get(m) if get(r) else None for r in reports], m != "ssim") for m in METRICS}

    names = sorted({name for r in reports for name in r["baselines"]})
    return {
        **metrics_of(lambda r: r),
        "noise_baseline": pooled([r["noise_baseline"] for r in reports], True),
        "noise_ceiling": pooled([r["noise_ceiling"] for r in reports], True),
        "baselines": {name: metrics_of(lambda r, name=name: r["baselines"].get(name)) for name in names},
        "n_test_windows": int(weights.sum()),
        "test_subjects_count": sum(r["test_subjects_count"] for r in reports),
        "steps": reports[0]["steps"],
    }


# ----------------------------------------------------------------------------------------------
# Figures and the console table


def write_plots(out_dir: Path, test: PairedWindows, generated: np.ndarray, ridge: np.ndarray | None, report: dict[str, Any]) -> list[Path]:
    """Maps of the mean activation of the test windows' most common task class (real vs
    generated), time courses at its most active points, and the metric bars."""
    from fedneurogen.shared import plots

    tasks = [label for label in test.labels if label != "rest"]
    shown = max(set(tasks), key=tasks.count) if tasks else None
    chosen = test.labels == shown if shown is not None else np.ones(len(test), bool)
    what = f"class '{shown}'" if shown is not None else "all windows"
    maps = {"real": test.target[chosen].mean(axis=(0, 2)), "generated": generated[chosen].mean(axis=(0, 2))}
    title = f"mean activation, {what} ({int(chosen.sum())} test windows)"
    if test.target_modality == "fmri":
        written = [plots.surface_maps(maps, out_dir / "maps.png", title)]
    else:
        written = [plots.channel_maps(maps, test.target_positions, test.target_point_types, out_dir / "maps.png", title)]

    run = test.runs[np.flatnonzero(chosen)[0]]
    in_run = test.runs == run
    series = {"real": test.target, "generated": generated, **({"ridge": ridge} if ridge is not None else {})}
    top = np.argsort(-np.abs(maps["real"]))[:3]
    stitched = {}
    for key, values in series.items():
        (stitched[key],) = stitch_windows(values[in_run][:, top], test.runs[in_run], test.onsets[in_run], test.target_sfreq).values()
    times = _covered_times(test.onsets[in_run], test.target_sfreq, test.target.shape[-1])
    names = [test.target_names[i] for i in top]
    written.append(plots.time_courses(times, stitched, names, out_dir / "timecourses.png", f"{run}: most active points of {what}"))
    counts = f"{report['n_test_windows']} test windows, {report['test_subjects_count']} subject(s)"
    written.append(plots.metric_bars(report, out_dir / "metrics.png", f"{report['modality']}: {counts}"))
    return written


def _covered_times(onsets: np.ndarray, sfreq: float, n_frames: int) -> np.ndarray:
    """Times (s) of the frames ``stitch_windows`` keeps for one run, in order."""
    starts = np.round(onsets * sfreq).astype(int)
    covered = np.zeros(starts.max() + n_frames, dtype=bool)
    for s in starts:
        covered[s : s + n_frames] = True
    return np.flatnonzero(covered) / sfreq


def render_report(report: dict[str, Any], console) -> None:
    """The report as a rich table: rows model / baselines / noise baseline / ceiling."""
    from rich.table import Table

    def cell(value: float | None) -> str:
        return "-" if value is None or not math.isfinite(value) else f"{value:.3f}"

    counts = f"{report['n_test_windows']} test windows, {report['test_subjects_count']} subject(s), {report['steps']} steps"
    table = Table(title=f"{report['modality']} evaluation: {counts}", title_justify="left")
    for column in ("", "temporal PCC", "spatial PCC", "SSIM"):
        table.add_column(column, justify="right" if column else "left")
    table.add_row("[bold]generator[/]", *(f"[bold]{cell(report[m])}[/]" for m in METRICS))
    for name, values in report["baselines"].items():
        table.add_row(name, *(cell(values.get(m) if values else None) for m in METRICS))
    table.add_row("noise baseline", cell(report["noise_baseline"]), "-", "-")
    table.add_row("noise ceiling", cell(report["noise_ceiling"]), "-", "-")
    console.print(table)
    console.print(f"[dim]{report['split']['note']}; noise ceiling: {report['noise_ceiling_source']}[/]")
