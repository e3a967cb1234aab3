"""``validate_dataset``: check a BIDS site against the data contract without preprocessing it.

Every file is read with the same readers ``load_site`` uses (so the same problems are found),
but nothing is filtered, ICA-cleaned or projected (except in-scanner runs, whose gradient artefact
and BCG are removed as a load would, to measure them: ``summary["scanner"]``); window counts per class come from durations
and events with the same windowing rules as ``pairing``.

Two answers, as the other commands see the site: *usable* (``ValidationReport.usable``: at least
one run loads and nothing site-wide is broken; the commands go on without the broken runs, which
are listed) or *unusable* (every command would refuse it). ``ok`` is stricter: no error at all.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..config import PreprocessConfig
from ..errors import DataError
from ..surface import ICO4_POINTS
from .bids import (
    AttributeKind,
    RunFiles,
    attribute_kind,
    find_runs,
    orphan_targets,
    participants_sidecar,
    read_events,
    read_participants,
    target_search_text,
)
from .eeg import line_frequency, load_raw_eeg, prepare_channels
from .fmri import check_repetition_time, load_surface_bold, load_volume, repetition_time_and_source
from .fnirs import load_raw_snirf, short_channel_mask, to_haemoglobin
from .pairing import check_durations, count_windows
from .problems import Problem
from .scanner import ScannerCleaning, clean_scanner_artifacts, events_from_first_volume
from .scanner_metrics import RAW_LINE_FRACTION

log = logging.getLogger(__name__)


@dataclass
class ValidationReport:
    """Summary of a site and every problem found (``ok`` when there is no error).

    Parameters
    ----------
    site_dir : Path
        The site checked.
    summary : dict
        Subjects, runs, modalities, windows per class, groups, durations, channels, rates
        (see ``validate_dataset``).
    problems : list of Problem
        Every problem found, errors and warnings, each naming its file.
    """

    site_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        """The problems of severity ``error``."""
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        """The problems of severity ``warning``."""
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        """Whether the site is clean: no problem is an error."""
        return not self.errors

    @property
    def usable(self) -> bool:
        """Whether the commands can use the site: some run loads and nothing site-wide is broken
        (the runs with errors are skipped, ``summary["skipped_runs"]``)."""
        return bool(self.summary.get("usable"))

    @property
    def status(self) -> str:
        """``OK``, ``USABLE`` (with the number of runs that will be skipped) or ``UNUSABLE``."""
        if self.ok:
            return "OK"
        if self.usable:
            skipped = len(self.summary.get("skipped_runs", []))
            return f"USABLE: {skipped} of {self.summary.get('runs', 0)} run(s) will be skipped" if skipped else "USABLE"
        return "UNUSABLE"

    def to_dict(self) -> dict[str, Any]:
        """Return the report as JSON-ready values (``fedneurogen validate --json``).

        Returns
        -------
        dict
            ``site_dir``, ``ok``, ``usable``, ``status``, ``summary``, ``errors`` and ``warnings``
            (each problem as a dict with ``path``, ``message``, ``severity``).
        """
        return {
            "site_dir": str(self.site_dir), "ok": self.ok, "usable": self.usable, "status": self.status,
            "summary": self.summary,
            "errors": [p.to_dict() for p in self.errors], "warnings": [p.to_dict() for p in self.warnings],
        }  # fmt: skip

    def __str__(self) -> str:
        lines = [f"{self.site_dir}: {self.status}"]
        lines += [f"  {k}: {v}" for k, v in _summary_rows(self.summary)]
        lines += [f"  {p.severity}: {p}" for p in self.problems]
        return "\n".join(lines)

    def to_rich(self):
        """Build the report as a rich renderable, for the caller to print.

        Returns
        -------
        rich.console.Group
            The summary table, then one line per problem (a ``rich.text.Text`` each; print
            them with ``soft_wrap=True`` to keep long paths whole, as ``render_report`` does).
        """
        from rich.console import Group
        from rich.table import Table

        s = self.summary
        head = Table(title=f"{self.site_dir}", show_header=False, title_justify="left")
        head.add_column(style="bold")
        head.add_column()
        if self.ok:
            status = "[green]OK[/green]"
        elif self.usable:
            status = f"[yellow]{self.status}[/yellow] ({len(self.errors)} error(s) below; the other runs are used)"
        else:
            status = f"[red]UNUSABLE[/red] ({len(self.errors)} error(s) below)"
        head.add_row("status", status)
        for name, text in _summary_rows(s):
            head.add_row(name, text)
        parts: list[Any] = [head]
        if self.problems:
            # one line per problem, not a table: paths must stay whole so they can be copied
            from rich.text import Text

            parts.append(Text("Problems", style="bold"))
            for p in self.problems:
                line = Text(f"  {p.severity:<7} ", style="red" if p.severity == "error" else "yellow")
                line.append(f"{_rel(p.path, self.site_dir)}: ", style="bold")
                line.append(p.message)
                line.no_wrap = False
                parts.append(line)
        return Group(*parts)


def _rel(path: Path, root: Path) -> str:
    """``path`` relative to the dataset, or as given when it is the dataset itself (so that a
    problem with the folder names the folder, not ".")."""
    try:
        relative = str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)
    return relative if relative not in ("", ".") else str(path)


def _summary_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    """The summary as short human-readable lines."""
    if "durations" not in s:  # the folder could not be read
        return []
    d, c = s["durations"], s["channels"]
    attributes = s.get("attributes", {})

    def missing(col: str) -> str:
        n = attributes.get(col, {}).get("missing", 0)
        return f" [{n} n/a, left out of group metrics]" if n else ""

    groups = "; ".join(
        f"{col}: " + ", ".join(f"{k} ({n})" for k, n in v.items()) + missing(col) for col, v in s["groups"].items()
    )
    not_groups = "; ".join(f"{col}: {a['reason']}" for col, a in attributes.items() if a["kind"] != "group")
    eeg_counts = ", ".join(f"{n} ch ({runs} run{'s' if runs > 1 else ''})" for n, runs in c["eeg_counts"].items())
    return [
        ("subjects", f"{len(s['subjects'])}: {', '.join(s['subjects'])}"),
        ("runs", f"{s['runs']} ({s['usable_runs']} usable)"),
        ("modalities", ", ".join(s["modalities"]) or "-"),
        ("windows", f"{s['windows']}: " + (", ".join(f"{k} {n}" for k, n in s["classes"].items()) or "-")),
        ("groups", groups or "-"),
        *([("not groups", not_groups)] if not_groups else []),
        ("durations", f"{d['total_s']:g} s in all, {d['min_s']:g}-{d['max_s']:g} s per run" if d["runs"] else "-"),
        ("EEG channels", f"{eeg_counts or '-'}; {c['eeg_common']} in every run"),
        ("EEG rates", ", ".join(f"{f:g} Hz" for f in s["sfreqs"]) or "-"),
        ("TR", ", ".join(f"{t:g} s" for t in s["tr"]) or "-"),
        ("target points", ", ".join(map(str, c["target_points"])) or "-"),
        *_scanner_rows(s.get("scanner", {})),
    ]


def render_report(report: ValidationReport, console=None) -> None:
    """Print ``report.to_rich()``, problem lines soft-wrapped so that paths stay whole.

    A presentation helper for command-line callers: library code never calls it.

    Parameters
    ----------
    report : ValidationReport
        The report.
    console : rich.console.Console, optional
        Where to print; default a new console on stdout.
    """
    from rich.console import Console

    from rich.text import Text

    console = console or Console()
    for part in report.to_rich().renderables:
        # problem lines soft-wrap so a long path is never broken by an inserted newline
        console.print(part, soft_wrap=isinstance(part, Text))


@dataclass
class _RunInfo:
    eeg_channels: list[str] | None = None
    eeg_sfreq: float | None = None
    eeg_duration: float | None = None
    target_duration: float | None = None
    target_period: float | None = None
    tr: float | None = None
    target_points: int | None = None
    events: pd.DataFrame | None = None
    scanner: dict[str, Any] | None = None


def _inspect_run(run: RunFiles, config: PreprocessConfig, problems: list[Problem]) -> _RunInfo:
    info = _RunInfo()

    def attempt(fn):
        try:
            return fn()
        except DataError as err:
            problems.append(Problem(err.path, err.problem, "error"))
            return None

    if run.channels is None:
        expected = run.eeg.with_name(run.eeg.name.rsplit("_eeg.", 1)[0] + "_channels.tsv")
        problems.append(
            Problem(expected, "missing (required by BIDS): channel types are guessed from the channel names", "warning")
        )
    cleaning = None
    raw = attempt(lambda: load_raw_eeg(run.eeg))
    if raw is not None:
        info.eeg_duration = raw.n_times / raw.info["sfreq"]
        info.eeg_sfreq = float(raw.info["sfreq"])
        prepared = attempt(lambda: prepare_channels(raw, run))
        if prepared is not None:
            info.eeg_channels = [n for n, t in zip(prepared[0].ch_names, prepared[0].get_channel_types()) if t == "eeg"]
            # raw or clean: cleans the run here (in place: nothing else reads this copy) and measures both
            cleaning = attempt(lambda: clean_scanner_artifacts(prepared[0], config, run, measure=True))
            info.scanner = _scanner_report(cleaning) if cleaning is not None else None
            if cleaning is not None and cleaning.span is not None:  # cropped to the volumes: the run's length
                info.eeg_duration = prepared[0].n_times / prepared[0].info["sfreq"]
            if info.scanner and info.scanner["already_removed"] and info.scanner["line_power"] > RAW_LINE_FRACTION:
                message = (
                    f"_eeg.json says {', '.join(info.scanner['already_removed'])} artefact(s) removed, but "
                    f"{100 * info.scanner['line_power']:.0f}% of the EEG power is in narrow spectral lines, as in raw in-scanner EEG"
                )
                problems.append(Problem(run.eeg_sidecar or run.eeg, message, "warning"))
        attempt(lambda: line_frequency(run, config))  # parses the _eeg.json sidecar
    info.events = attempt(lambda: read_events(run.events, run.task, info.eeg_duration))
    if info.events is not None and cleaning is not None:
        info.events = events_from_first_volume(info.events, cleaning, run.events, run.eeg)

    if run.target_modality is None:
        problems.append(
            Problem(
                run.eeg,
                f"EEG only, no fMRI or fNIRS recording to pair with ({target_search_text(run.site_dir, run)}): "
                "not trained on; `augment --eeg-only` can use it",
                "warning",
            )
        )
    elif run.target_modality == "fmri":
        found = attempt(lambda: repetition_time_and_source(run.target[0], run.target_sidecars))
        info.tr = found[0] if found is not None else None
        if run.target[0].name.endswith((".nii", ".nii.gz")):
            img = attempt(lambda: load_volume(run.target[0]))
            n_vols = img.shape[3] if img is not None else None
            info.target_points = ICO4_POINTS
        else:
            data = attempt(lambda: load_surface_bold(run.target))
            n_vols = data.shape[1] if data is not None else None
            info.target_points = data.shape[0] if data is not None else None
        if n_vols is not None and info.tr is not None:
            info.target_duration = n_vols * info.tr
            info.target_period = info.tr
            attempt(lambda: check_repetition_time(info.tr, found[1], run.target[0], n_vols))  # as read_fmri does
    else:
        raw_nirs = attempt(lambda: load_raw_snirf(run.target[0]))
        if raw_nirs is not None:
            sfreq = float(raw_nirs.info["sfreq"])
            info.target_duration = raw_nirs.n_times / sfreq
            info.target_period = 1.0 / sfreq
            hb = attempt(lambda: to_haemoglobin(raw_nirs, config.fnirs_ppf, run.target[0]))
            info.target_points = int(np.sum(~short_channel_mask(hb))) if hb is not None else None  # as read_fnirs keeps

    if info.eeg_duration is not None and info.target_duration is not None:
        attempt(
            lambda: check_durations(
                info.eeg_duration, run.eeg, info.target_duration, run.target[0], info.target_period, config
            )
        )
    return info


def _db(before: float, after: float) -> float:
    return round(float(10 * np.log10(max(before, 1e-30) / max(after, 1e-30))), 1)


def _scanner_report(result: ScannerCleaning) -> dict[str, Any]:
    """The per-run scanner summary: triggers, what was (or had been) removed, artefact power."""
    m = result.measures
    lines, lines_after = m["line_before"], m.get("line_after")
    pulse, pulse_after = m.get("pulse_before"), m.get("pulse_after")
    return {
        "volume_triggers": len(result.triggers),
        "tr_samples": result.period,
        "already_removed": result.already_removed,
        "gradient_removed": result.gradient,
        "bcg_removed": result.bcg,
        "r_peaks_from": result.r_peak_source,
        "line_power": round(lines.fraction, 4),
        "strongest_line_hz": lines.strongest_hz,
        "line_power_after": round(lines_after.fraction, 4) if lines_after else None,
        "gradient_removed_db": _db(lines.power, lines_after.power) if lines_after else None,
        "pulse_locked": round(pulse.fraction, 4) if pulse else None,
        "pulse_locked_after": round(pulse_after.fraction, 4) if pulse_after else None,
        "bcg_removed_db": _db(pulse.power, pulse_after.power) if pulse and pulse_after else None,
        "seconds": round(result.seconds, 2),
    }


def _scanner_rows(per_run: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """One line per run where any run is in-scanner EEG (triggers, or said cleaned); one line otherwise."""
    if not per_run:
        return []
    if not any(r["volume_triggers"] or r["already_removed"] for r in per_run.values()):
        worst = max(r["line_power"] for r in per_run.values())
        return [("scanner", f"no volume triggers; clean EEG (at most {100 * worst:.1f}% of the power in narrow lines)")]
    rows = []
    for key, r in per_run.items():
        lines = f"{100 * r['line_power']:.1f}% of the power in narrow lines"
        if r["strongest_line_hz"]:
            lines += f" (strongest {r['strongest_line_hz']:g} Hz)"
        if r["gradient_removed"]:
            text = f"raw in-scanner, {r['volume_triggers']} volume triggers: {lines}, gradient artefact removed "
            text += f"({r['gradient_removed_db']:g} dB of line power removed, {100 * r['line_power_after']:.1f}% of the power left in lines)"
        else:
            text = f"{r['volume_triggers']} volume triggers, {lines}"
        if r["bcg_removed"]:
            text += (
                f"; BCG removed (R-peaks from {r['r_peaks_from']}): pulse-locked power {100 * r['pulse_locked']:.1f}%"
            )
            text += f" -> {100 * r['pulse_locked_after']:.1f}% ({r['bcg_removed_db']:g} dB)"
        if r["already_removed"]:
            text += f"; _eeg.json: {' and '.join(r['already_removed'])} already removed (not cleaned again)"
        rows.append((f"scanner {key}", text))
    return rows


def _attributes(
    participants: dict[str, dict[str, str]], subjects: list[str], sidecar: dict[str, Any]
) -> list[AttributeKind]:
    """Each participant column: groups, numeric or free text (``attribute_kind``), judged on every row
    of ``participants.tsv`` (what a column is does not depend on which subjects have data), with
    the levels and missing values of the site's subjects."""
    columns = sorted({c for attrs in participants.values() for c in attrs})
    out = []
    for column in columns:
        everyone = attribute_kind(column, [attrs.get(column, "n/a") for attrs in participants.values()], sidecar)
        here = attribute_kind(column, [participants[s].get(column, "n/a") for s in subjects if s in participants])
        out.append(replace(here, kind=everyone.kind, reason=everyone.reason))
    return out


def validate_dataset(site_dir: str | Path, config: PreprocessConfig | None = None) -> ValidationReport:
    """Check a site against the data contract and summarise it.

    Parameters
    ----------
    site_dir : path-like
        The site's BIDS folder.
    config : PreprocessConfig, optional
        Windowing parameters used to count windows per class.

    Returns
    -------
    ValidationReport
        ``summary``: subjects, runs, modalities, classes (windows per class), groups (from
        ``participants.tsv``), durations, channels, sfreqs, tr, scanner (per run: volume
        triggers, MR artefact power before and after cleaning, ``shared.data.scanner``). ``problems``: every problem
        found, each naming its file; ``ok`` is False when any is an error.
    """
    site_dir = Path(site_dir)
    config = config or PreprocessConfig()
    report = ValidationReport(site_dir=site_dir)
    problems = report.problems
    try:
        runs = find_runs(site_dir)
    except DataError as err:
        problems.append(Problem(err.path, err.problem))
        report.summary = {"usable": False}
        return report
    fatal = False  # something site-wide that every command refuses
    log.debug("%s: %d EEG run(s) found", site_dir, len(runs))
    if not (site_dir / "dataset_description.json").is_file():
        problems.append(Problem(site_dir / "dataset_description.json", "missing (required by BIDS)", "warning"))
    if not runs:
        expected = "sub-*/[ses-*/]eeg/sub-*_task-*_eeg.<edf|bdf|vhdr|set|fif>"
        problems.append(Problem(site_dir, f"empty dataset: no EEG runs found (expected {expected})"))
        fatal = True
    subjects = sorted({r.subject for r in runs})
    participants, sidecar = _check_participants(site_dir, subjects, problems)
    tally = _inspect_runs(runs, config, problems)
    modalities = sorted({r.target_modality for r in runs if r.target_modality})
    fatal = _check_site_wide(site_dir, runs, modalities, tally, problems) or fatal
    attributes = _attributes(participants, subjects, sidecar)
    report.summary = _site_summary(runs, subjects, modalities, tally, attributes, fatal)
    # Keep numpy scalars out of the summary so it is JSON-serialisable as is.
    report.summary = _plain(report.summary)
    log.debug("%s: %d error(s), %d warning(s)", site_dir, len(report.errors), len(report.warnings))
    return report


def _check_participants(
    site_dir: Path, subjects: list[str], problems: list[Problem]
) -> tuple[dict[str, dict[str, str]], dict[str, Any]]:
    """Read ``participants.tsv`` and its sidecar, noting what is missing or broken; return both (empty if unread)."""
    participants: dict[str, dict[str, str]] = {}
    participants_path = site_dir / "participants.tsv"
    if not participants_path.is_file():
        problems.append(Problem(participants_path, "missing: no group attributes for fairness reports", "warning"))
    else:
        try:
            participants = read_participants(site_dir)
        except DataError as err:
            problems.append(Problem(err.path, err.problem))
    sidecar: dict[str, Any] = {}
    try:
        sidecar = participants_sidecar(site_dir)
    except DataError as err:
        problems.append(Problem(err.path, f"{err.problem}; its Levels and Units are not used", "warning"))
    if participants_path.is_file() and participants:
        for subject in subjects:
            if subject not in participants:
                message = f"subject {subject} is missing (it has data in the dataset)"
                problems.append(Problem(participants_path, message))
    return participants, sidecar


@dataclass
class _RunTally:
    """What ``_inspect_runs`` gathered over a site's runs."""

    classes: Counter = field(default_factory=Counter)
    durations: dict[str, float] = field(default_factory=dict)
    channel_sets: dict[str, list[str]] = field(default_factory=dict)
    sfreqs: set[float] = field(default_factory=set)
    trs: set[float] = field(default_factory=set)
    target_points: set[int] = field(default_factory=set)
    usable: int = 0
    skipped_runs: list[str] = field(default_factory=list)
    class_subjects: dict[str, set[str]] = field(default_factory=dict)
    scanner: dict[str, dict[str, Any]] = field(default_factory=dict)


def _inspect_runs(runs: list[RunFiles], config: PreprocessConfig, problems: list[Problem]) -> _RunTally:
    """Inspect every run (``_inspect_run``) and tally durations, channels, rates and windows per class."""
    tally = _RunTally()
    for run in runs:
        n_before = len([p for p in problems if p.severity == "error"])
        info = _inspect_run(run, config, problems)
        broken = len([p for p in problems if p.severity == "error"]) > n_before
        if broken:
            tally.skipped_runs.append(run.key)
        run_ok = not broken and run.target_modality is not None
        if info.eeg_duration is not None:
            tally.durations[run.key] = round(info.eeg_duration, 3)
        if info.eeg_channels is not None:
            tally.channel_sets[run.key] = info.eeg_channels
        if info.eeg_sfreq is not None:
            tally.sfreqs.add(info.eeg_sfreq)
        if info.scanner is not None:
            tally.scanner[run.key] = info.scanner
        if info.tr is not None:
            tally.trs.add(info.tr)
        if info.target_points is not None:
            tally.target_points.add(info.target_points)
        if run_ok and info.events is not None and info.eeg_duration and info.target_duration:
            tally.usable += 1
            counts = count_windows(
                info.eeg_duration, info.target_duration, config.target_sfreq(run.target_modality), info.events, config
            )
            tally.classes.update(counts)
            for name, n in counts.items():
                if n:
                    tally.class_subjects.setdefault(name, set()).add(run.subject)
            if not counts:
                problems.append(Problem(run.eeg, "gives no windows (shorter than lag + window length?)", "warning"))
    return tally


def _check_site_wide(
    site_dir: Path, runs: list[RunFiles], modalities: list[str], tally: _RunTally, problems: list[Problem]
) -> bool:
    """Note the problems across runs (modalities, one-subject classes, channels, orphans); True if one is fatal."""
    fatal = False
    if len(modalities) > 1:
        problems.append(Problem(site_dir, f"runs have different target modalities {modalities}; a site has one"))
        fatal = True
    if len({s for owners in tally.class_subjects.values() for s in owners}) > 1:
        for name, owners in sorted(tally.class_subjects.items()):
            if len(owners) == 1:
                message = (
                    f"class {name!r} has windows from one subject only ({next(iter(owners))}): subject-grouped "
                    "evaluation and cross-validation cannot both train and test on it"
                )
                problems.append(Problem(site_dir, message, "warning"))
    if tally.channel_sets:
        common = set.intersection(*map(set, tally.channel_sets.values()))
        for key, names in tally.channel_sets.items():
            extra = [n for n in names if n not in common]
            if extra:
                eeg_path = next(r.eeg for r in runs if r.key == key)
                message = f"EEG channels not in every run (dropped site-wide when loading): {', '.join(extra)}"
                problems.append(Problem(eeg_path, message, "warning"))
    for orphan in orphan_targets(site_dir, runs):
        problems.append(Problem(orphan, "no EEG run with the same sub/ses/task/run: cannot be paired", "warning"))
    if runs and not tally.usable:
        problems.append(Problem(site_dir, "no usable run: every command would refuse this dataset"))
        fatal = True
    return fatal


def _site_summary(
    runs: list[RunFiles],
    subjects: list[str],
    modalities: list[str],
    tally: _RunTally,
    attributes: list[AttributeKind],
    fatal: bool,
) -> dict[str, Any]:
    """The ``summary`` of a ``ValidationReport`` (before ``_plain``)."""
    classes, durations, channel_sets = tally.classes, tally.durations, tally.channel_sets
    counts = Counter(len(v) for v in channel_sets.values())
    return {
        "subjects": subjects,
        "runs": len(runs),
        "usable_runs": tally.usable,
        "usable": bool(tally.usable) and not fatal,
        "skipped_runs": tally.skipped_runs,
        "modalities": (["eeg"] if runs else []) + modalities,
        "classes": dict(sorted(classes.items())),
        "windows": int(sum(classes.values())),
        "groups": {a.column: a.levels for a in attributes if a.is_group},
        "attributes": {a.column: {"kind": a.kind, "missing": a.missing, "reason": a.reason} for a in attributes},
        "durations": {
            "runs": len(durations),
            "total_s": round(float(sum(durations.values())), 1),
            "min_s": round(float(min(durations.values())), 1) if durations else None,
            "max_s": round(float(max(durations.values())), 1) if durations else None,
            "per_run_s": durations,
        },
        "channels": {
            "eeg_counts": {int(k): int(v) for k, v in sorted(counts.items())},
            "eeg_common": len(set.intersection(*map(set, channel_sets.values()))) if channel_sets else 0,
            "target_points": sorted(tally.target_points),
        },
        "sfreqs": sorted(tally.sfreqs),
        "tr": sorted(tally.trs),
        "scanner": tally.scanner,
    }


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
