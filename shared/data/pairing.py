"""Cutting paired EEG/target windows (docs/architecture.md §3: the target lags EEG by ``lag``).

Window ``k`` of a run takes the target over ``[t_k, t_k + W]``, the raw EEG over
``[t_k - lag, t_k - lag + W]`` (for the EEG encoder) and the hemodynamic design of its frames
(``fedneurogen.shared.design``: band power over the full history ``[t - H, t]`` before each
frame ``t``, computed on the continuous run), with ``t_k = max(lag, H) + k * hop`` snapped up to
the target's sample grid, for every ``k`` where both spans fit inside the run. So the EEG a
window depends on spans ``[t_k - H, t_k + W]`` and always lies inside the run.

Labels: each window's class is the ``trial_type`` that covers most of its *EEG* span (the
activity that caused the target), time outside every event counting as ``rest``. A window is
kept only when that majority class covers at least ``config.label_min_fraction`` (default 0.5)
of the span; windows straddling classes more evenly are dropped as ambiguous. Where events
overlap, the later-starting one wins.

All windows of a site share one EEG channel set and one target point set: where runs differ,
the intersection is used and a warning names what was dropped.

Windows are not copied out of the runs: a site's runs are joined end to end into one continuous
array per signal and each window is a ``WindowView`` into it (cut when indexed), so windows that
overlap cost their samples once, and a cached site is memory-mapped rather than read into RAM.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import PreprocessConfig
from ..errors import ConfigError, DataError
from ..recording import PairedWindows, Recording, WindowView
from .problems import Problem

REST = "rest"
_LABEL_STEP = 0.1  # s; resolution at which event coverage of a window is measured


@dataclass
class RunWindows:
    """One run, preprocessed and continuous, with where its windows start.

    The windows are not cut here: ``combine_runs`` joins the runs of a site and returns
    ``WindowView``s over them, so overlapping windows share their samples."""

    run: str
    subject: str
    eeg: np.ndarray  # [channels, eeg times], continuous
    eeg_sfreq: float
    eeg_names: list[str]
    eeg_positions: np.ndarray
    target: np.ndarray  # [points, target times], continuous
    target_sfreq: float
    target_modality: str
    target_names: list[str]
    target_positions: np.ndarray
    target_point_types: list[str] | None
    design: np.ndarray  # [target times, features]: the design at every target frame
    eeg_starts: np.ndarray  # sample index of each window's EEG start
    target_starts: np.ndarray  # sample index of each window's target (and design) start
    eeg_length: int  # samples per EEG window
    target_length: int  # samples per target window
    labels: np.ndarray
    onsets: np.ndarray

    @property
    def eeg_windows(self) -> WindowView:
        return WindowView(self.eeg, self.eeg_starts, self.eeg_length, time_axis=1)

    @property
    def target_windows(self) -> WindowView:
        return WindowView(self.target, self.target_starts, self.target_length, time_axis=1)

    def spill(self, folder: Path, number: int) -> None:
        """Move the continuous arrays to ``.npy`` files in ``folder`` (``<number>-eeg.npy``, ...)
        and memory-map them, so a site's runs need not fit in RAM together."""
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name in ("eeg", "target", "design"):
            path = folder / f"{number}-{name}.npy"
            np.save(path, np.asarray(getattr(self, name), dtype=np.float32))
            setattr(self, name, np.load(path, mmap_mode="r"))


def window_starts(
    n_eeg: int, eeg_sfreq: float, n_target: int, target_sfreq: float, config: PreprocessConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Sample indices where each window starts: ``(target_starts, eeg_starts)``."""
    if not config.hop_seconds > 0:  # PreprocessConfig refuses it; model_copy(update=...) does not validate
        raise ConfigError(f"preprocessing: hop_seconds = {config.hop_seconds!r} must be > 0 (windows would never end)")
    n_t = int(round(config.window_seconds * target_sfreq))
    n_e = int(round(config.window_seconds * eeg_sfreq))
    lag = config.lag_seconds
    target_starts, eeg_starts = [], []
    t = max(lag, config.history_seconds)  # every frame has its full hemodynamic history
    while True:
        i0 = int(math.ceil(t * target_sfreq - 1e-6))  # snap up onto the target grid
        j0 = int(round((i0 / target_sfreq - lag) * eeg_sfreq))
        if i0 + n_t > n_target or j0 + n_e > n_eeg:
            break
        if j0 >= 0:
            target_starts.append(i0)
            eeg_starts.append(j0)
        t += config.hop_seconds
    return np.array(target_starts, dtype=int), np.array(eeg_starts, dtype=int)


def label_windows(
    starts: np.ndarray, length: float, events: pd.DataFrame, min_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Majority class of each span ``[start, start + length]`` and whether it passes ``min_fraction``."""
    onset = events["onset"].to_numpy(float)
    offset = onset + events["duration"].to_numpy(float)
    kinds = events["trial_type"].to_numpy(str)
    order = np.argsort(onset, kind="stable")  # later-starting events override earlier ones
    onset, offset, kinds = onset[order], offset[order], kinds[order]
    n_steps = max(1, int(round(length / _LABEL_STEP)))
    rel = (np.arange(n_steps) + 0.5) * (length / n_steps)
    labels, keep = [], []
    for start in np.asarray(starts, dtype=float):
        t = start + rel
        if len(kinds):
            covering = (t[:, None] >= onset[None, :]) & (t[:, None] < offset[None, :])
            last = covering.shape[1] - 1 - np.argmax(covering[:, ::-1], axis=1)
            point_labels = np.where(covering.any(axis=1), kinds[last], REST)
        else:
            point_labels = np.full(len(t), REST)
        counts = Counter(point_labels.tolist())
        # Ties go to a task class rather than rest, then alphabetically: deterministic.
        label, n = min(counts.items(), key=lambda kv: (-kv[1], kv[0] == REST, kv[0]))
        labels.append(label)
        keep.append(n / n_steps >= min_fraction - 1e-9)
    return np.array(labels, dtype=str), np.array(keep, dtype=bool)


def count_windows(
    eeg_duration: float, target_duration: float, target_sfreq: float, events: pd.DataFrame, config: PreprocessConfig
) -> Counter:
    """Windows per class a run will give, from durations alone (used by ``validate_dataset``)."""
    n_eeg = int(math.floor(eeg_duration * config.eeg_sfreq + 1e-6))
    n_target = int(math.floor(target_duration * target_sfreq + 1e-6))
    _, eeg_starts = window_starts(n_eeg, config.eeg_sfreq, n_target, target_sfreq, config)
    starts = eeg_starts / config.eeg_sfreq
    labels, keep = label_windows(starts, config.window_seconds, events, config.label_min_fraction)
    return Counter(labels[keep].tolist())


def check_durations(
    eeg_duration: float, eeg_path: Path, target_duration: float, target_path: Path, target_period: float,
    config: PreprocessConfig,
) -> None:  # fmt: skip
    """EEG and target of a run are recorded together: their lengths must agree.

    Tolerance: one target sample (a TR, at least 1 s) plus the hemodynamic lag, the most that
    acquisition start/stop differences explain.
    """
    tolerance = config.lag_seconds + max(target_period, 1.0)
    if abs(eeg_duration - target_duration) > tolerance:
        raise DataError(
            target_path,
            f"duration {target_duration:.1f} s does not match the EEG run {eeg_path.name} ({eeg_duration:.1f} s); "
            f"they differ by {abs(eeg_duration - target_duration):.1f} s, more than the {tolerance:.1f} s tolerance",
        )


def check_history(target: Recording, target_path: Path, run: str, config: PreprocessConfig) -> None:
    """A run must hold the hemodynamic history plus one window."""
    needed = max(config.lag_seconds, config.history_seconds) + config.window_seconds
    if target.duration < needed:
        raise DataError(
            target_path,
            f"run {run} is {target.duration:.1f} s long, shorter than the {config.history_seconds:.0f} s hemodynamic "
            f"history plus one {config.window_seconds:.0f} s window ({needed:.0f} s); lower history_seconds or drop the run",
        )


def cut_windows(
    eeg: Recording, target: Recording, events: pd.DataFrame, config: PreprocessConfig, run: str, subject: str
) -> RunWindows:
    """Where the paired windows of one run start, with the run kept continuous (see the module
    docstring for the rules)."""
    # Imported here, not at the top: the design brings torch (about 1.5 s more, measured on a
    # 2-core CPU), which reading and validating a site's files (`fedneurogen validate`,
    # `fedneurogen cache`) never needs. It is no loop: the design imports nothing of `data`.
    from fedneurogen.shared.design import run_design

    target_starts, eeg_starts = window_starts(eeg.n_times, eeg.sfreq, target.n_times, target.sfreq, config)
    labels, keep = label_windows(eeg_starts / eeg.sfreq, config.window_seconds, events, config.label_min_fraction)
    return RunWindows(
        run=run,
        subject=subject,
        eeg=eeg.data,
        eeg_sfreq=eeg.sfreq,
        eeg_names=list(eeg.names),
        eeg_positions=eeg.positions,
        target=target.data,
        target_sfreq=target.sfreq,
        target_modality=target.modality,
        target_names=list(target.names),
        target_positions=target.positions,
        target_point_types=target.point_types,
        design=run_design(eeg, target.times, config),
        eeg_starts=eeg_starts[keep],
        target_starts=target_starts[keep],
        eeg_length=int(round(config.window_seconds * eeg.sfreq)),
        target_length=int(round(config.window_seconds * target.sfreq)),
        labels=labels[keep],
        onsets=target_starts[keep] / target.sfreq,
    )


def _common(names_per_run: list[list[str]]) -> list[str]:
    """Names present in every run, in the order of the first run."""
    shared = set(names_per_run[0]).intersection(*map(set, names_per_run[1:]))
    return [n for n in names_per_run[0] if n in shared]


def combine_runs(
    runs: list[RunWindows],
    participants: dict[str, dict[str, str]],
    config: PreprocessConfig,
    site_dir: Path,
    allocate: Callable[[str, tuple[int, int]], np.ndarray] | None = None,
) -> tuple[PairedWindows, list[Problem]]:
    """Join a site's runs into one ``PairedWindows`` (+ warnings raised).

    ``allocate(name, shape)`` makes each site-wide continuous float32 array (``eeg``, ``target``,
    ``design``); by default in RAM, the cache passes memory-mapped files."""
    if not runs:
        raise DataError(site_dir, "no runs to combine")
    problems: list[Problem] = []
    modalities = {r.target_modality for r in runs}
    if len(modalities) > 1:
        raise DataError(site_dir, f"runs have different target modalities {sorted(modalities)}; a site has one")

    eeg_names = _common([r.eeg_names for r in runs])
    target_names = _common([r.target_names for r in runs])
    for r in runs:
        dropped = [n for n in r.eeg_names if n not in eeg_names]
        if dropped:
            message = f"EEG channels not in every run, dropped site-wide: {', '.join(dropped)}"
            problems.append(Problem(site_dir / r.run, message, "warning"))
        dropped_t = [n for n in r.target_names if n not in target_names]
        if dropped_t:
            message = f"target points not in every run, dropped: {', '.join(dropped_t[:10])}"
            problems.append(Problem(site_dir / r.run, message, "warning"))
    if not eeg_names:
        raise DataError(site_dir, "the EEG runs share no channel; cannot build one site montage")
    if not target_names:
        raise DataError(site_dir, "the target runs share no channel/vertex")

    # One continuous array per signal for the whole site (in RAM, or files from ``allocate``),
    # each run copied in at its offset; the windows are views into it.
    allocate = allocate or (lambda name, shape: np.empty(shape, np.float32))
    eeg_all = allocate("eeg", (len(eeg_names), sum(r.eeg.shape[1] for r in runs)))
    target_all = allocate("target", (len(target_names), sum(r.target.shape[1] for r in runs)))
    design_all = allocate("design", (target_all.shape[1], runs[0].design.shape[1]))
    eeg_starts, target_starts, eeg_pos, tgt_pos = [], [], [], []
    e_at = t_at = 0
    for r in runs:
        e_idx = [r.eeg_names.index(n) for n in eeg_names]
        t_idx = [r.target_names.index(n) for n in target_names]
        n_e, n_t = r.eeg.shape[1], r.target.shape[1]
        eeg_all[:, e_at : e_at + n_e] = np.asarray(r.eeg)[e_idx]
        target_all[:, t_at : t_at + n_t] = np.asarray(r.target)[t_idx]
        design_all[t_at : t_at + n_t] = r.design
        eeg_starts.append(r.eeg_starts + e_at)
        target_starts.append(r.target_starts + t_at)
        eeg_pos.append(r.eeg_positions[e_idx])
        tgt_pos.append(r.target_positions[t_idx])
        e_at, t_at = e_at + n_e, t_at + n_t
    eeg_starts, target_starts = np.concatenate(eeg_starts), np.concatenate(target_starts)
    point_types = None
    if runs[0].target_point_types is not None:
        point_types = [runs[0].target_point_types[runs[0].target_names.index(n)] for n in target_names]
    n_per_run = [len(r.labels) for r in runs]
    windows = PairedWindows(
        eeg=WindowView(eeg_all, eeg_starts, runs[0].eeg_length, time_axis=1),
        eeg_sfreq=runs[0].eeg_sfreq,
        eeg_channel_names=eeg_names,
        # Per-subject digitised positions differ slightly; the site montage is their mean.
        eeg_positions=np.mean(eeg_pos, axis=0),
        target=WindowView(target_all, target_starts, runs[0].target_length, time_axis=1),
        target_sfreq=runs[0].target_sfreq,
        target_modality=runs[0].target_modality,  # type: ignore[arg-type]
        target_names=target_names,
        target_positions=np.mean(tgt_pos, axis=0),
        labels=np.concatenate([r.labels for r in runs]).astype(str),
        subjects=np.repeat([r.subject for r in runs], n_per_run).astype(str),
        runs=np.repeat([r.run for r in runs], n_per_run).astype(str),
        onsets=np.concatenate([r.onsets for r in runs]).astype(float),
        lag=config.lag_seconds,
        participants={s: dict(participants.get(s, {})) for s in sorted({r.subject for r in runs}) if s in participants},
        target_point_types=point_types,
        design=WindowView(design_all, target_starts, runs[0].target_length, time_axis=0),
        history=config.history_seconds,
    )
    return windows, problems
