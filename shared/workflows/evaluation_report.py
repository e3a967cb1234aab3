"""An evaluation's report: its rows, pooling several sites' reports, its console tables and figures.

A report (``evaluation.evaluate``) holds one row of scores per prediction, baseline and ceiling
(``ROWS``: label and path into the report; ``report_row`` reads one). ``pool_reports`` pools the
reports of several sites (correlations Fisher-z averaged, weighted by test windows);
``report_table`` renders one as rich tables (the scores, then the samples as data), and
``write_plots`` / ``write_samples_figure`` prepare what its figures show and draw them with
``plots``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Group
from rich.table import Table

from fedneurogen.shared.metrics import stitch_windows
from fedneurogen.shared.recording import PairedWindows
from fedneurogen.shared.workflows import plots

#: The rows of a report, in the order tables and plots show them: (label, path into the report).
ROWS = (
    ("model: point prediction (label-free)", ("point_prediction",)),
    ("model: point prediction (labels)", ("point_prediction_labels",)),
    ("model: its closed-form paths alone", ("linear_path",)),
    ("model's ridge path, linear design only (refitted)", ("baselines", "own_linear_path")),
    ("model: one sample", ("sample",)),
    ("model: mean of samples", ("samples_mean",)),
    ("linear-Gaussian: one sample", ("baselines", "linear_gaussian_sample")),
    ("ridge-HRF (continuous)", ("baselines", "ridge_hrf")),
    ("label only", ("baselines", "label_only")),
    ("regression transformer", ("baselines", "regressor")),
    ("EEG-informed ceiling", ("ceilings", "eeg_informed")),
    ("EEG-informed ceiling (source space)", ("ceilings", "eeg_informed_source")),
    ("noise ceiling", ("ceilings", "noise")),
)
SCORES = ("pcc_temporal", "pcc_temporal_top10", "pcc_spatial", "ssim")


def report_row(report: dict[str, Any], path: tuple[str, ...]) -> dict[str, float | None] | None:
    """Look up one row of a report.

    Parameters
    ----------
    report : dict
        An ``evaluate`` (or ``pool_reports``) report.
    path : tuple of str
        Keys into the report, as in ``ROWS``.

    Returns
    -------
    dict or None
        The row's scores; None where any key is missing.
    """
    value: Any = report
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _ratio(a: dict | None, b: dict | None, key: str) -> float | None:
    """``a[key] / b[key]``; None when either is missing or the reference is 0."""
    if not a or not b or a.get(key) is None or not b.get(key):
        return None
    return float(a[key] / b[key])


def _pooled_sample_metrics(reports: list[dict[str, Any]], weights: np.ndarray) -> dict[str, Any]:
    """Each generator's sample metrics averaged over the sites, weighted by their test windows
    (a metric missing at a site is averaged over the others; None where no site has it)."""
    out: dict[str, Any] = {}
    names = {name for r in reports for name, v in (r.get("sample_metrics") or {}).items() if isinstance(v, dict)}
    for name in sorted(names):
        entries = [((r.get("sample_metrics") or {}).get(name) or {}, w) for r, w in zip(reports, weights)]
        keys = {k for e, _ in entries for k, v in e.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        pooled = {}
        for key in sorted(keys):
            pairs = [(e[key], w) for e, w in entries if isinstance(e.get(key), (int, float)) and math.isfinite(e[key])]
            pooled[key] = float(np.average([v for v, _ in pairs], weights=[w for _, w in pairs])) if pairs else None
        out[name] = pooled
    return out


def relative_scores(
    model: dict | None,
    ridge: dict | None,
    informed: dict | None,
    source: dict | None = None,
    linear: dict | None = None,
) -> dict[str, float | None]:
    """The headline as a multiple of the ridge baseline and of the model's own linear path (its
    ridge path refitted on the linear design, without the alpha-gated block), and
    as a share of the EEG-informed ceilings (scalp, and source space).

    Parameters
    ----------
    model : dict or None
        The headline's scores (the label-free point prediction).
    ridge, informed, source, linear : dict or None
        The scores of the ridge-HRF baseline, the EEG-informed ceiling, the source-space ceiling
        and the model's own linear path.

    Returns
    -------
    dict of str to float or None
        Ratios of ``pcc_temporal`` (and ``pcc_temporal_top10``); None where either is missing
        or the reference is 0.
    """
    return {
        "over_own_linear_path": _ratio(model, linear, "pcc_temporal"),
        "over_ridge_hrf": _ratio(model, ridge, "pcc_temporal"),
        "over_ridge_hrf_top10": _ratio(model, ridge, "pcc_temporal_top10"),
        "share_of_eeg_informed_ceiling": _ratio(model, informed, "pcc_temporal"),
        "share_of_eeg_informed_ceiling_top10": _ratio(model, informed, "pcc_temporal_top10"),
        "share_of_source_ceiling": _ratio(model, source, "pcc_temporal"),
    }


def pool_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Pool several sites' reports into one.

    Parameters
    ----------
    reports : list of dict
        ``evaluate`` reports.

    Returns
    -------
    dict
        The rows of ``ROWS`` (correlations Fisher-z averaged and SSIM averaged, each weighted by
        the site's test windows; a value missing at any site is None), ``relative``,
        ``noise_baseline``, ``calibration``, summed counts, ``steps`` and ``modality``.
    """
    weights = np.array([r["n_test_windows"] for r in reports], dtype=float)

    def pooled(values: list[float | None], correlation: bool) -> float | None:
        if any(v is None or not math.isfinite(v) for v in values):
            return None
        v = np.asarray(values, dtype=float)
        if correlation:
            return float(np.tanh(np.average(np.arctanh(np.clip(v, -0.999999, 0.999999)), weights=weights)))
        return float(np.average(v, weights=weights))

    pooled_report: dict[str, Any] = {}
    for _, path in ROWS:
        rows = [report_row(r, path) for r in reports]
        if all(row is None for row in rows):
            continue
        metrics = {m: pooled([row.get(m) if row else None for row in rows], m != "ssim") for m in SCORES}
        target = pooled_report
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = metrics
    headline, ridge, informed, source, linear = (
        report_row(pooled_report, p)
        for p in (
            ("point_prediction",), ("baselines", "ridge_hrf"), ("ceilings", "eeg_informed"),
            ("ceilings", "eeg_informed_source"), ("baselines", "own_linear_path"),
        )
    )  # fmt: skip
    linear = linear or report_row(pooled_report, ("linear_path",))
    return {
        **pooled_report,
        "relative": relative_scores(headline, ridge, informed, source, linear),
        "sample_metrics": _pooled_sample_metrics(reports, weights),
        "noise_baseline": pooled([r["noise_baseline"] for r in reports], True),
        "calibration": pooled([r.get("calibration") for r in reports], False),
        "n_test_windows": int(weights.sum()),
        "test_subjects_count": sum(r["test_subjects_count"] for r in reports),
        "steps": reports[0]["steps"],
        "modality": "+".join(sorted({r["modality"] for r in reports})),
    }


# ----------------------------------------------------------------------------------------------
# Figures and the console table


def write_plots(
    out_dir: Path, test: PairedWindows, mean: np.ndarray, sample: np.ndarray, ridge: np.ndarray | None, report: dict[str, Any]
) -> list[Path]:  # fmt: skip
    """Write the evaluation figures.

    Parameters
    ----------
    out_dir : Path
        Receives the PNG files.
    test : PairedWindows
        The test windows.
    mean : numpy.ndarray
        The point prediction of every test window.
    sample : numpy.ndarray
        One sample (or the point prediction) of every test window.
    ridge : numpy.ndarray or None
        The ridge-HRF baseline's predictions.
    report : dict
        The report (the metric bars and counts).

    Returns
    -------
    list of Path
        ``maps.png`` (mean activation of the test windows' most common task class: real,
        point prediction, one sample), ``timecourses.png`` (its most active points) and
        ``metrics.png`` (the metric bars).
    """
    tasks = [label for label in test.labels if label != "rest"]
    shown = max(set(tasks), key=tasks.count) if tasks else None
    chosen = test.labels == shown if shown is not None else np.ones(len(test), bool)
    what = f"class '{shown}'" if shown is not None else "all windows"
    # "prediction" = the point prediction (a short name: it titles each map)
    maps = {
        name: values[chosen].mean(axis=(0, 2))
        for name, values in (("real", test.target), ("prediction", mean), ("sample", sample))
    }
    title = f"mean activation, {what} ({int(chosen.sum())} test windows)"
    if test.target_modality == "fmri":
        written = [plots.surface_maps(maps, out_dir / "maps.png", title)]
    else:
        written = [
            plots.channel_maps(maps, test.target_positions, test.target_point_types, out_dir / "maps.png", title)
        ]

    run = test.runs[np.flatnonzero(chosen)[0]]
    in_run = test.runs == run
    series = {
        "real": test.target,
        "point prediction": mean,
        **({"ridge-HRF": ridge} if ridge is not None else {}),
        "sample": sample,
    }
    top = np.argsort(-np.abs(maps["real"]))[:3]
    stitched = {}
    for key, values in series.items():
        (stitched[key],) = stitch_windows(
            values[in_run][:, top], test.runs[in_run], test.onsets[in_run], test.target_sfreq
        ).values()
    times = _covered_times(test.onsets[in_run], test.target_sfreq, test.target.shape[-1])
    names = [test.target_names[i] for i in top]
    written.append(
        plots.time_courses(times, stitched, names, out_dir / "timecourses.png", f"{run}: most active points of {what}")
    )
    counts = f"{report['n_test_windows']} test windows, {report['test_subjects_count']} subject(s)"
    rows = {label.replace("model: ", ""): report_row(report, path) for label, path in ROWS}
    written.append(plots.metric_bars(rows, out_dir / "metrics.png", f"{report['modality']}: {counts}"))
    return written


def write_samples_figure(out_dir: Path, figure: dict[str, Any], report: dict[str, Any]) -> Path:
    """Write ``samples.png``: real vs generated spectra and coarse FC, side by side.

    Parameters
    ----------
    out_dir : Path
        Receives the PNG file.
    figure : dict
        ``samples_as_data``'s figure data (``freqs``, ``spectra``, ``fcs``).
    report : dict
        The report (counts and modality in the title).

    Returns
    -------
    Path
        The written figure.
    """
    names = {"linear_gaussian": "linear-Gaussian"}
    rename = lambda d: {names.get(k, k): v for k, v in d.items()}  # noqa: E731
    counts = f"{report['n_test_windows']} held-out windows, {report['test_subjects_count']} subject(s), first sample"
    return plots.spectra_and_connectivity(
        figure["freqs"], rename(figure["spectra"]), rename(figure["fcs"]), out_dir / "samples.png",
        f"{report['modality']} samples as data: {counts}",
    )  # fmt: skip


#: The sample-metric columns of the report's second table: (header, key).
SAMPLE_COLUMNS = (
    ("K", "samples"),
    ("cover 50 %", "coverage_50"),
    ("cover 90 %", "coverage_90"),
    ("CRPS", "crps"),
    ("PSD dist", "psd_distance"),
    ("FC sim", "fc_similarity"),
    ("2-sample acc", "two_sample_accuracy"),
    ("TSTR bal acc", "tstr_balanced_accuracy"),
)


def _covered_times(onsets: np.ndarray, sfreq: float, n_frames: int) -> np.ndarray:
    """Times (s) of the frames ``stitch_windows`` keeps for one run, in order."""
    starts = np.round(onsets * sfreq).astype(int)
    covered = np.zeros(starts.max() + n_frames, dtype=bool)
    for s in starts:
        covered[s : s + n_frames] = True
    return np.flatnonzero(covered) / sfreq


def report_table(report: dict[str, Any]):
    """Build the report as a rich renderable, for the caller to print.

    Parameters
    ----------
    report : dict
        An ``evaluate`` (or ``pool_reports``) report.

    Returns
    -------
    rich.console.Group
        A table of the model's point prediction and samples, the baselines and the ceilings,
        then a line with the headline's ratios and, when the report has a split, its note.
    """

    def cell(value: float | None) -> str:
        return "-" if value is None or not math.isfinite(value) else f"{value:.3f}"

    counts = f"{report['n_test_windows']} test windows, {report['test_subjects_count']} subject(s)"
    held_out = report.get("held_out") or {}
    seen = held_out.get("scored_seen") or []
    what = (
        f"[bold red]subjects incl. {len(seen)} the model saw or may have seen (--allow-seen: not held-out)[/]"
        if seen
        else "held-out subjects"
    )
    table = Table(
        title=f"{report['modality']} evaluation on {what}: {counts}",
        title_justify="left",
        caption="SSIM: the global form, over each frame's whole map (not a sliding-window SSIM)",
        caption_justify="left",
    )
    for column in ("", "temporal PCC", "top-10 % PCC", "spatial PCC", "SSIM"):
        table.add_column(column, justify="right" if column else "left")
    for label, path in ROWS:
        row = report_row(report, path)
        if row is None:
            continue
        values = [cell(row.get(m)) for m in SCORES]
        table.add_row(
            *(f"[bold]{v}[/]" for v in (label, *values)) if path == ("point_prediction",) else (label, *values)
        )
    table.add_row("noise baseline (shuffled)", cell(report.get("noise_baseline")), "-", "-", "-")
    rel = report.get("relative") or {}
    parts: list[Any] = [
        table,
        f"point prediction / ridge-HRF: {cell(rel.get('over_ridge_hrf'))} (top-10 %: {cell(rel.get('over_ridge_hrf_top10'))}); "
        f"share of the EEG-informed ceiling: {cell(rel.get('share_of_eeg_informed_ceiling'))}; "
        f"sample calibration: {cell(report.get('calibration'))}",
    ]
    samples_table = _sample_table(report.get("sample_metrics") or {}, cell)
    if samples_table is not None:
        parts.append(samples_table)
    if "split" in report:
        parts.append(f"[dim]{report['split']['note']}[/]")
    if seen:
        parts.append("seen subjects scored: " + ", ".join(f"{e['subject']} ({e['status']})" for e in seen))
    return Group(*parts)


def _sample_table(metrics: dict[str, Any], cell):
    """The samples-as-data table (None when no generator's samples were scored)."""
    rows = [
        (label, metrics.get(key)) for label, key in (("model samples", "model"), ("linear-Gaussian", "linear_gaussian"))
    ]
    rows = [(label, row) for label, row in rows if row]
    if not rows:
        return None
    reference = metrics.get("real_reference") or {}
    table = Table(
        title="samples as data (held-out subjects)",
        title_justify="left",
        caption="coverage: ideal = nominal; CRPS, PSD dist: lower is better; FC sim: 1 is best; "
        "2-sample acc: 0.5 = indistinguishable; TSTR bal acc: a classifier of the classes trained on "
        f"the first sample, tested on real windows (chance {cell(reference.get('tstr_chance'))}; "
        "trained on real: the last row)",
        caption_justify="left",
    )
    for header, _ in (("", None), *SAMPLE_COLUMNS):
        table.add_column(header, justify="right" if header else "left")
    for label, row in rows:
        table.add_row(label, str(row.get("samples")), *(cell(row.get(key)) for _, key in SAMPLE_COLUMNS[1:]))
    blanks = ["-"] * (len(SAMPLE_COLUMNS) - 1)
    labelled_mean = metrics.get("point_prediction_labels") or {}
    if labelled_mean.get("tstr_balanced_accuracy") is not None:  # the class carried by the mean alone
        table.add_row("point prediction (labels)", *blanks, cell(labelled_mean["tstr_balanced_accuracy"]))
    if reference:  # the train-on-real reference, in the TSTR column
        table.add_row("real (TRTR)", *blanks, cell(reference.get("trtr_balanced_accuracy")))
    return table


def render_report(report: dict[str, Any], console) -> None:
    """Print ``report_table(report)`` on ``console``.

    Parameters
    ----------
    report : dict
        An ``evaluate`` (or ``pool_reports``) report.
    console : rich.console.Console
        The caller's console; nothing is printed elsewhere.
    """
    console.print(report_table(report))
