"""The fairness-augmentation report (docs/architecture.md §6): what ``run_augmentation``
returns and ``write_report`` writes.

- per fold: ``_fold_record`` (sizes, provenance of the added rows, scores, generation setting);
- per strategy: ``minority_summary`` (minority F1 and recall, majority F1 and its drop against
  ``none``);
- output: ``render_markdown`` (``report.md``) and ``write_report`` (``report.json``,
  ``report.md`` and the per-class / per-group plots); ``_finite`` keeps the JSON strict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedneurogen.shared.data.bids import MISSING
from fedneurogen.shared.io import write_json_atomic, write_text_atomic
from fedneurogen.shared.workflows import plots

from . import metrics


def _fold_record(f: metrics.FoldResult) -> dict[str, Any]:
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
        **(
            {"generation_setting": f.log["chosen_setting"], "setting_scores": f.log["setting_scores"]}
            if "chosen_setting" in f.log
            else {}
        ),
    }


def minority_summary(strategies: dict[str, Any], classes: list[str], minority: list[str]) -> dict[str, Any]:
    """Minority F1 and recall, mean majority F1 and its drop against 'none', per strategy.

    Parameters
    ----------
    strategies : dict of str to Any
        Strategy -> its report entry (``protocol.summarize`` fields).
    classes : list of str
        The classes.
    minority : list of str
        The under-represented classes.

    Returns
    -------
    dict of str to dict
        Strategy -> ``minority_f1``, ``minority_recall``, ``majority_f1`` (None when there is no
        such class) and, with a ``none`` entry, ``majority_f1_drop``.
    """
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


#: Strategies that add training rows (the others reweight or add nothing).
ADDING = ("oversample", "smote", "generate")


def nothing_added_reason(report: dict[str, Any]) -> str | None:
    """Why no strategy added a window, when none did (their scores then equal ``none``'s).

    Parameters
    ----------
    report : dict of str to Any
        The report of ``run_augmentation``.

    Returns
    -------
    str | None
        One sentence; None when a strategy added windows or none of ``oversample``, ``smote``,
        ``generate`` ran.
    """
    ran = {n: e for n, e in report["strategies"].items() if n in ADDING}
    if not ran:
        return None
    added = sum(e["n_synthetic"] + e["n_oversampled"] + e.get("n_interpolated", 0) for e in ran.values())
    if added:
        return None
    names = ", ".join(ran)
    if not report["minority_units"]:
        unit = "class x group cell" if report["sensitive_attribute"] else "class"
        return (
            f"No strategy added windows: no {unit} is under-represented (rule: {report['minority_rule']}), so "
            f"{names} trained on the same windows as none and score the same."
        )
    unfilled = sorted({u for e in ran.values() for f in e["folds"] for u in f.get("units_not_topped_up", [])})
    if unfilled:
        return (
            f"No strategy added windows: the under-represented unit(s) {', '.join(unfilled)} had no training windows "
            f"in the folds that lacked them (their subjects were all in the test fold), so {names} score as none."
        )
    return (
        f"No strategy added windows: every training fold already held the under-represented units' share of their "
        f"target size, so {names} score as none."
    )


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
    """The report as Markdown (``report.md``).

    Task and rule, per-class F1 per strategy, per-group metrics (with a sensitive attribute),
    minority vs majority, and the generation settings and label fidelity.

    Parameters
    ----------
    report : dict of str to Any
        The report of ``run_augmentation``.

    Returns
    -------
    str
        The Markdown text.
    """
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
        *([reason] if (reason := nothing_added_reason(report)) else []),
        "",
        "## Per-class F1 (mean ± std over folds)",
        "",
        "| strategy | "
        + " | ".join(f"{c}{' (minority)' if c in minority else ''} [n={report['class_counts'][c]}]" for c in classes)
        + " | accuracy | macro F1 | added (all folds) |",
        "|---" * (len(classes) + 4) + "|",
    ]
    for name, e in report["strategies"].items():
        counts = {
            "generated": e["n_synthetic"],
            "oversampled": e["n_oversampled"],
            "interpolated": e.get("n_interpolated", 0),
        }
        added = sum(counts.values())
        kind = next((k for k, n in counts.items() if n), "")
        lines.append(
            f"| {name} | "
            + " | ".join(_pm(e["per_class_f1_mean"][c], e["per_class_f1_std"][c]) for c in classes)
            + f" | {_pm(e['accuracy_mean'], e['accuracy_std'])} | {_pm(e['macro_f1_mean'], e['macro_f1_std'])} | {added} {kind} |"
        )
    if report["sensitive_attribute"]:
        groups = _groups(report)
        lines += [
            "",
            f"## Per group: `{report['sensitive_attribute']}` (pooled out-of-fold predictions, fairlearn MetricFrame)",
            "",
            *(
                [f"{n} window(s) of subjects without a value (n/a) are left out of the group metrics.", ""]
                if (n := report["group_counts"].get(MISSING))
                else []
            ),
            "| strategy | "
            + " | ".join(f"macro F1 {g} [n={report['group_counts'][g]}]" for g in groups)
            + " | worst group | difference | ratio | equalized-odds diff. |",
            "|---" * (len(groups) + 5) + "|",
        ]
        for name, e in report["strategies"].items():
            pg = e["per_group"]
            eod = pg.get("equalized_odds_difference")
            worst = pg["worst_group"] or {"group": "n/a", "macro_f1": None}
            lines.append(
                f"| {name} | "
                + " | ".join(_fmt(pg["by_group"].get(g, {}).get("macro_f1")) for g in groups)
                + f" | {worst['group']} ({_fmt(worst['macro_f1'])}) | {_fmt(pg['difference']['macro_f1'])} | {_fmt(pg['ratio']['macro_f1'])} | "
                + (f"{_fmt(eod['value'])} (+ = {eod['positive_class']})" if eod else "n/a (not binary)")
                + " |"
            )
    summary = report.get("summary", {})
    if summary:
        lines += [
            "",
            "## Minority vs majority",
            "",
            "| strategy | minority F1 | minority recall | mean majority F1 | majority F1 drop vs none |",
            "|---|---|---|---|---|",
        ]
        for name, row in summary.items():
            lines.append(
                f"| {name} | {_fmt(row['minority_f1'])} | {_fmt(row['minority_recall'])} | {_fmt(row['majority_f1'])} | {_fmt(row.get('majority_f1_drop'))} |"
            )
    gen = report["generation"]
    lines += [
        "",
        f"Generation: {gen['source']}; guidance scale {gen['guidance_scale']}, sampling steps {gen['steps'] or 'checkpoint default'}.",
    ]
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
    """Write the report's files, each atomically.

    ``report.json``, ``report.md``, ``per_class_f1.png`` and (with groups) ``per_group.png``.

    Parameters
    ----------
    report : dict of str to Any
        The report of ``run_augmentation``.
    out_dir : str | Path
        The folder (created).

    Returns
    -------
    dict of str to Path
        ``json``, ``markdown``, ``per_class_plot`` and (with groups) ``per_group_plot``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": write_json_atomic(out / "report.json", report),
        "markdown": write_text_atomic(out / "report.md", render_markdown(report)),
    }
    classes = report["classes"]
    series = {
        name: ([_nan(e["per_class_f1_mean"][c]) for c in classes], [_nan(e["per_class_f1_std"][c]) for c in classes])
        for name, e in report["strategies"].items()
    }
    paths["per_class_plot"] = plots.grouped_bars(
        out / "per_class_f1.png",
        series,
        classes,
        title="Per-class F1 before (none) and after augmentation (* = minority)",
        ylabel="F1 (mean ± std over folds)",
        highlight=report["minority_classes"],
    )
    if report["sensitive_attribute"]:
        groups = _groups(report)
        series = {
            name: (
                [_nan(e["per_group"]["by_group_folds"].get(g, {}).get("macro_f1_fold_mean")) for g in groups],
                [_nan(e["per_group"]["by_group_folds"].get(g, {}).get("macro_f1_fold_std")) for g in groups],
            )
            for name, e in report["strategies"].items()
        }
        paths["per_group_plot"] = plots.grouped_bars(
            out / "per_group.png",
            series,
            groups,
            title=f"Macro F1 per {report['sensitive_attribute']} group",
            ylabel="macro F1 (mean ± std over folds)",
        )
    return paths


def _groups(report: dict[str, Any]) -> list[str]:
    """The groups of the sensitive attribute (``n/a``, no value, is none)."""
    return sorted(g for g in report["group_counts"] if g != MISSING)


def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)
