"""EEG-only runs of a site: the source pool for generating its missing fMRI/fNIRS.

EEG is cheap and portable; the expensive modality is what an under-represented group lacks. A
BIDS run with EEG and no fMRI/fNIRS to pair with is not used for training, but ``augment
--eeg-only`` turns it into generated targets. ``load_eeg_only`` cuts such runs into windows laid
out exactly like the site's paired windows (the same EEG channels in the same order, the same
target points and frame rate, the same hemodynamic design), with an all-zero target: there is
none, and nothing may read it.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from fedneurogen.shared.config import PreprocessConfig
from fedneurogen.shared.data.bids import find_runs, read_participants
from fedneurogen.shared.data.eeg import read_eeg
from fedneurogen.shared.data.pairing import check_history, combine_runs, cut_windows
from fedneurogen.shared.errors import DataError
from fedneurogen.shared.recording import PairedWindows, Recording, WindowView


def eeg_only_runs(site_dir: str | Path) -> list:
    """The site's runs that have EEG and no target (``RunFiles``)."""
    return [run for run in find_runs(site_dir) if run.target_modality is None]


def load_eeg_only(site_dir: str | Path, like: PairedWindows, config: PreprocessConfig | None = None) -> PairedWindows:
    """Windows of every EEG-only run of ``site_dir``, laid out like the paired windows ``like``
    (targets all zero). A run that cannot be read, or lacks one of ``like``'s EEG channels, is a
    ``DataError`` naming its file; a site without EEG-only runs is one naming the site."""
    site_dir, config = Path(site_dir), config or PreprocessConfig()
    runs = eeg_only_runs(site_dir)
    if not runs:
        raise DataError(site_dir, "has no EEG-only runs (EEG recordings without fMRI/fNIRS) to generate targets from")
    parts = []
    for run in runs:
        eeg, events = read_eeg(run.eeg, config, files=run)
        missing = [name for name in like.eeg_channel_names if name not in eeg.names]
        if missing:
            raise DataError(
                run.eeg,
                f"lacks EEG channel(s) {', '.join(missing[:5])} of the site's paired runs; the model reads the site's montage",
            )
        # the target's frame grid over the EEG's length, as a paired run would have it
        frames = int(math.floor(eeg.duration * like.target_sfreq + 1e-9))
        grid = Recording(
            np.zeros((len(like.target_names), frames), np.float32), like.target_sfreq, like.target_positions, list(like.target_names),
            like.target_modality, like.target_point_types,
        )  # fmt: skip
        check_history(grid, run.eeg, run.key, config)
        parts.append(cut_windows(eeg, grid, events, config, run=run.key, subject=run.subject))
    parts = [p for p in parts if len(p.labels)]
    if not parts:
        raise DataError(
            site_dir,
            f"its {len(runs)} EEG-only run(s) give no windows (each must hold the hemodynamic history plus one window)",
        )
    windows, _ = combine_runs(parts, read_participants(site_dir), config, site_dir)
    order = [windows.eeg_channel_names.index(name) for name in like.eeg_channel_names]
    eeg = WindowView(
        windows.eeg.data[order], windows.eeg.starts, windows.eeg.length, time_axis=1
    )  # the runs' channels in ``like``'s order
    return replace(windows, eeg=eeg, eeg_channel_names=list(like.eeg_channel_names), eeg_positions=like.eeg_positions)
