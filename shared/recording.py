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

    ``data`` is converted to float32 and ``positions`` to float64 on construction.

    Attributes
    ----------
    data : np.ndarray
        float32 ``[n_points, n_times]``.
    sfreq : float
        Samples per second (1/TR for fMRI).
    positions : np.ndarray
        ``[n_points, 3]`` in mm (electrodes, surface vertices, channel midpoints).
    names : list of str
        One name per point (EEG channel name, ``L123`` vertex, ``S1_D1 hbo`` channel).
    modality : {"eeg", "fmri", "fnirs"}
        The modality of the signal.
    point_types : list of str | None
        Per-point type where a modality has several (fNIRS ``hbo``/``hbr``), else None.

    Raises
    ------
    ValueError
        ``data`` is not 2-D, or ``positions``, ``names`` or ``point_types`` do not match its
        point count.
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
        """Number of points (channels, vertices)."""
        return self.data.shape[0]

    @property
    def n_times(self) -> int:
        """Number of samples."""
        return self.data.shape[1]

    @property
    def duration(self) -> float:
        """Length of the recording in seconds (``n_times / sfreq``)."""
        return self.n_times / self.sfreq

    @property
    def times(self) -> np.ndarray:
        """Sample times ``[n_times]`` in seconds from the first sample."""
        return np.arange(self.n_times) / self.sfreq


class WindowView:
    """Fixed-length windows cut on demand from continuous data.

    Overlapping windows of a long recording cost the recording once (and nothing in RAM when
    ``data`` is memory-mapped). Window ``i`` is ``data[:, starts[i] : starts[i] + length]``
    (``time_axis=1``, e.g. EEG ``[channels, times]``) or ``data[starts[i] : starts[i] + length]``
    (``time_axis=0``, e.g. a design ``[times, features]``). Indexing by window returns a float32
    array (a copy); ``select`` returns another view; ``np.asarray(view)`` materialises every window.

    Parameters
    ----------
    data : np.ndarray
        The continuous 2-D data (an array or a ``np.memmap``).
    starts : np.ndarray
        Start sample of each window along the time axis, ``[n_windows]``.
    length : int
        Samples per window.
    time_axis : {0, 1}
        The time axis of ``data``.

    Raises
    ------
    ValueError
        ``data`` is not 2-D, ``time_axis`` is not 0 or 1, or a window reaches outside ``data``.
    """

    def __init__(self, data: np.ndarray, starts: np.ndarray, length: int, time_axis: int):
        if time_axis not in (0, 1) or data.ndim != 2:
            raise ValueError(f"WindowView needs 2-D data and time_axis 0 or 1, got {data.ndim}-D and {time_axis}")
        self.data = data
        self.starts = np.asarray(starts, dtype=np.int64)
        self.length = int(length)
        self.time_axis = time_axis
        if len(self.starts) and (self.starts.min() < 0 or self.starts.max() + self.length > data.shape[time_axis]):
            raise ValueError("a window reaches outside the continuous data")

    @property
    def shape(self) -> tuple[int, ...]:
        """``(n_windows, other, length)`` (``time_axis=1``) or ``(n_windows, length, other)``."""
        other = self.data.shape[1 - self.time_axis]
        window = (other, self.length) if self.time_axis == 1 else (self.length, other)
        return (len(self.starts), *window)

    @property
    def ndim(self) -> int:
        """Always 3: windows x two data axes."""
        return 3

    @property
    def dtype(self) -> np.dtype:
        """float32, the type of every cut window."""
        return np.dtype(np.float32)

    @property
    def nbytes(self) -> int:
        """Bytes the windows would take if materialised."""
        return int(np.prod(self.shape)) * 4

    def __len__(self) -> int:
        return len(self.starts)

    def select(self, index) -> "WindowView":
        """The windows ``index`` as a view: nothing is copied.

        Parameters
        ----------
        index : np.ndarray | slice
            A boolean mask, integer indices or a slice over the windows.

        Returns
        -------
        WindowView
            A view of the same data.
        """
        return WindowView(self.data, self.starts[index], self.length, self.time_axis)

    def _cut(self, starts: np.ndarray) -> np.ndarray:
        out = np.empty((len(starts), *self.shape[1:]), dtype=np.float32)
        for k, s in enumerate(starts):
            out[k] = self.data[:, s : s + self.length] if self.time_axis == 1 else self.data[s : s + self.length]
        return out

    def __getitem__(self, key):
        first, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        if isinstance(first, (int, np.integer)):
            return self._cut(self.starts[[first]])[0][rest]
        if isinstance(first, slice) or np.asarray(first).dtype == bool:
            block = self._cut(self.starts[first])
            return block[(slice(None), *rest)] if rest else block
        # integer windows, maybe repeated and paired with integer indices on later axes
        # (``design[w, f]``): cut each distinct window once
        unique, inverse = np.unique(np.asarray(first, dtype=np.int64), return_inverse=True)
        return self._cut(self.starts[unique])[(inverse, *rest)]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self._cut(self.starts)
        return out if dtype is None else out.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"WindowView({len(self)} windows of shape {list(self.shape[1:])}, {type(self.data).__name__} data)"


def take_windows(array, index):
    """``array[index]`` along the window axis, keeping a ``WindowView`` a view.

    Parameters
    ----------
    array : np.ndarray | WindowView
        Windows along the first axis.
    index : np.ndarray | slice
        A boolean mask, integer indices or a slice over the windows.

    Returns
    -------
    np.ndarray | WindowView
        The selected windows (a ``WindowView`` for a ``WindowView``).
    """
    return array.select(index) if isinstance(array, WindowView) else array[index]


@dataclass
class PairedWindows:
    """EEG windows paired with the target windows they cause (target lags EEG by ``lag`` s).

    Window ``i`` holds EEG over ``[onset_i - lag, onset_i - lag + duration]`` and the target over
    ``[onset_i, onset_i + duration]`` of the same run.

    ``eeg``, ``target`` and ``design`` are arrays or ``WindowView`` objects (windows cut on demand
    from the continuous runs, as ``load_site`` returns them): index them by window, never assume
    more.

    Attributes
    ----------
    eeg : np.ndarray | WindowView
        float32 ``[n_windows, n_eeg_channels, n_eeg_times]`` at ``eeg_sfreq`` (200 Hz, scaled to
        units of 100 uV as LaBraM expects).
    eeg_sfreq : float
        EEG sampling rate, Hz.
    eeg_channel_names : list of str
        One name per EEG channel.
    eeg_positions : np.ndarray
        ``[n_eeg_channels, 3]`` electrode positions, mm.
    target : np.ndarray | WindowView
        float32 ``[n_windows, n_target_points, n_target_times]`` at ``target_sfreq``.
    target_sfreq : float
        Target frame rate, Hz.
    target_modality : {"fmri", "fnirs"}
        The target modality.
    target_names : list of str
        One name per target point (``L123`` vertex, ``S1_D1 hbo`` channel).
    target_positions : np.ndarray
        ``[n_target_points, 3]`` target point positions, mm.
    labels : np.ndarray
        Class of each window (``trial_type``), ``"rest"`` outside any event.
    subjects : np.ndarray
        Participant id of each window (``sub-01``).
    runs : np.ndarray
        Run key of each window (``sub-01_task-visual_run-1``).
    onsets : np.ndarray
        Target onset of each window in seconds from the start of its run.
    lag : float
        Seconds the target window lags its EEG window.
    participants : dict of str to dict
        Participant attributes by id (``sex``, ``age``, ``group``, ...).
    target_point_types : list of str | None
        fNIRS: ``hbo``/``hbr`` per target point; None for fMRI.
    design : np.ndarray | WindowView | None
        float32 ``[n_windows, n_target_times, n_features]``: the hemodynamic design at each target
        frame (``fedneurogen.shared.design``), computed on the continuous run over ``history`` s
        before the frame; None when not computed.
    history : float
        Seconds of EEG before each target frame that ``design`` summarises.

    Raises
    ------
    ValueError
        The per-window arrays, the channel or point names, or ``design`` disagree in size.
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
            raise ValueError(
                f"PairedWindows.design must be [{n}, {self.target.shape[-1]}, features], got {list(self.design.shape)}"
            )
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
        """The sorted distinct labels."""
        return sorted(set(self.labels.tolist()))

    def group_of(self, attribute: str) -> np.ndarray:
        """Per-window value of a participant attribute.

        Parameters
        ----------
        attribute : str
            A ``participants.tsv`` column (e.g. ``group``, ``sex``).

        Returns
        -------
        np.ndarray
            ``[n_windows]`` strings; ``"n/a"`` where the subject has no value.
        """
        return np.array([self.participants.get(s, {}).get(attribute, "n/a") for s in self.subjects])

    def subset(self, index: np.ndarray) -> "PairedWindows":
        """The windows selected by ``index``, sharing everything else.

        Parameters
        ----------
        index : np.ndarray
            A boolean mask or integer indices over the windows.

        Returns
        -------
        PairedWindows
            The selected windows (``WindowView`` arrays stay views).
        """
        index = np.asarray(index)
        return PairedWindows(
            eeg=take_windows(self.eeg, index),
            eeg_sfreq=self.eeg_sfreq,
            eeg_channel_names=list(self.eeg_channel_names),
            eeg_positions=self.eeg_positions,
            target=take_windows(self.target, index),
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
            design=None if self.design is None else take_windows(self.design, index),
            history=self.history,
        )
