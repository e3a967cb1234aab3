"""The two in-memory data types every part of the program agrees on.

``Recording``: one continuous signal of one modality, ``data[n_points, n_times]``.
``PairedWindows``: fixed-length EEG windows paired with target (fMRI/fNIRS) windows, the unit
that training, evaluation and augmentation consume.

Positions are in millimetres in fsaverage surface-RAS / MNI space, the frame of MNE's standard
montages and of nilearn's fsaverage5 meshes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Modality = Literal["eeg", "fmri", "fnirs"]
TargetModality = Literal["fmri", "fnirs"]


@dataclass
class Recording:
    """A continuous multi-point signal.

    data:       float32 ``[n_points, n_times]``
    sfreq:      samples per second (1/TR for fMRI)
    positions:  float ``[n_points, 3]`` in mm (electrodes, surface vertices, channel midpoints)
    names:      one name per point (EEG channel name, ``L123`` vertex, ``S1_D1 hbo`` channel)
    modality:   ``eeg``, ``fmri`` or ``fnirs``
    point_types: per-point type where a modality has several (fNIRS ``hbo``/``hbr``), else None
    """

    data: np.ndarray
    sfreq: float
    positions: np.ndarray
    names: list[str]
    modality: Modality
    point_types: list[str] | None = None

    def __post_init__(self) -> None:
        self.data = np.asarray(self.data, dtype=np.float32)
        self.positions = np.asarray(self.positions, dtype=np.float64)
        if self.data.ndim != 2:
            raise ValueError(f"Recording data must be 2-D [n_points, n_times], got shape {self.data.shape}")
        n_points = self.data.shape[0]
        if self.positions.shape != (n_points, 3):
            raise ValueError(f"positions must be [{n_points}, 3], got {self.positions.shape}")
        if len(self.names) != n_points:
            raise ValueError(f"{len(self.names)} names for {n_points} points")
        if self.point_types is not None and len(self.point_types) != n_points:
            raise ValueError(f"{len(self.point_types)} point types for {n_points} points")

    @property
    def n_points(self) -> int:
        return self.data.shape[0]

    @property
    def n_times(self) -> int:
        return self.data.shape[1]

    @property
    def duration(self) -> float:
        return self.n_times / self.sfreq

    @property
    def times(self) -> np.ndarray:
        return np.arange(self.n_times) / self.sfreq


@dataclass
class PairedWindows:
    """EEG windows paired with the target windows they cause (target lags EEG by ``lag`` s).

    Window ``i`` holds EEG over ``[onset_i - lag, onset_i - lag + duration]`` and the target over
    ``[onset_i, onset_i + duration]`` of the same run.

    eeg:              float32 ``[n_windows, n_eeg_channels, n_eeg_times]`` at ``eeg_sfreq``
                      (200 Hz, scaled to units of 100 uV as LaBraM expects)
    target:           float32 ``[n_windows, n_target_points, n_target_times]`` at ``target_sfreq``
    labels:           class of each window (``trial_type``), ``"rest"`` outside any event
    subjects:         participant id of each window (``sub-01``)
    runs:             run key of each window (``sub-01_task-visual_run-1``)
    onsets:           target onset of each window in seconds from the start of its run
    participants:     participant attributes by id (``sex``, ``age``, ``group``, ...)
    design:           float32 ``[n_windows, n_target_times, n_features]``: the hemodynamic design
                      at each target frame (``fedneurogen.shared.design``), computed on the
                      continuous run over ``history`` s before the frame; None when not computed
    history:          seconds of EEG before each target frame that ``design`` summarises
    """

    eeg: np.ndarray
    eeg_sfreq: float
    eeg_channel_names: list[str]
    eeg_positions: np.ndarray
    target: np.ndarray
    target_sfreq: float
    target_modality: TargetModality
    target_names: list[str]
    target_positions: np.ndarray
    labels: np.ndarray
    subjects: np.ndarray
    runs: np.ndarray
    onsets: np.ndarray
    lag: float
    participants: dict[str, dict[str, str]] = field(default_factory=dict)
    target_point_types: list[str] | None = None
    design: np.ndarray | None = None
    history: float = 0.0

    def __post_init__(self) -> None:
        n = self.eeg.shape[0]
        if self.design is not None and (self.design.ndim != 3 or self.design.shape[:2] != (n, self.target.shape[-1])):
            raise ValueError(f"PairedWindows.design must be [{n}, {self.target.shape[-1]}, features], got {list(self.design.shape)}")
        for name in ("target", "labels", "subjects", "runs", "onsets"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"PairedWindows.{name} has {len(getattr(self, name))} entries for {n} windows")
        if self.eeg.shape[1] != len(self.eeg_channel_names):
            raise ValueError("eeg channel axis does not match eeg_channel_names")
        if self.target.shape[1] != len(self.target_names):
            raise ValueError("target point axis does not match target_names")

    def __len__(self) -> int:
        return int(self.eeg.shape[0])

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.labels.tolist()))

    def group_of(self, attribute: str) -> np.ndarray:
        """Per-window value of a participant attribute (e.g. ``group``, ``sex``)."""
        return np.array([self.participants.get(s, {}).get(attribute, "n/a") for s in self.subjects])

    def subset(self, index: np.ndarray) -> "PairedWindows":
        """Windows selected by a boolean mask or integer index, sharing everything else."""
        index = np.asarray(index)
        return PairedWindows(
            eeg=self.eeg[index],
            eeg_sfreq=self.eeg_sfreq,
            eeg_channel_names=list(self.eeg_channel_names),
            eeg_positions=self.eeg_positions,
            target=self.target[index],
            target_sfreq=self.target_sfreq,
            target_modality=self.target_modality,
            target_names=list(self.target_names),
            target_positions=self.target_positions,
            labels=self.labels[index],
            subjects=self.subjects[index],
            runs=self.runs[index],
            onsets=self.onsets[index],
            lag=self.lag,
            participants=self.participants,
            target_point_types=self.target_point_types,
            design=None if self.design is None else self.design[index],
            history=self.history,
        )
