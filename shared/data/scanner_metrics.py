"""How much of an EEG run is MR artefact: narrow spectral lines and pulse-locked power.

``line_power`` tells raw in-scanner EEG (the gradient artefact's comb of lines at the slice and
volume frequencies and their harmonics) from clean EEG; ``pulse_locked_power`` measures the share
of the power locked to the heartbeat (the BCG). ``validate`` reports both per run, before and
after cleaning; ``read_eeg`` refuses a run without volume triggers whose line power is above
``RAW_LINE_FRACTION``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import mne
import numpy as np

#: A run without triggers with more of its EEG power than this in narrow spectral lines is raw.
RAW_LINE_FRACTION = 0.5


class LinePower(NamedTuple):
    """Power of a run's narrow spectral lines (``line_power``).

    Attributes
    ----------
    fraction : float
        Line power / total power (0.5 Hz to 0.95 Nyquist).
    strongest_hz : float or None
        Frequency of the strongest line, None without lines.
    power : float
        Line power, V^2 (channel average): what cleaning lowers.
    """

    fraction: float
    strongest_hz: float | None
    power: float


class PulsePower(NamedTuple):
    """Heartbeat-locked power of a run (``pulse_locked_power``).

    Attributes
    ----------
    fraction : float
        Locked power / total power; about ``1 / n_beats`` where nothing is locked.
    power : float
        Locked power, V^2 (channel average).
    n_beats : int
        Beats averaged.
    """

    fraction: float
    power: float
    n_beats: int


def line_power(data: np.ndarray, sfreq: float, mains: Sequence[float | None] = (50.0, 60.0)) -> LinePower:
    """Share of the power in narrow spectral lines, as the gradient artefact's comb puts it there.

    The channel-averaged Welch spectrum (0.1 Hz bins, 0.5 Hz up to 0.95 Nyquist) is compared with
    its running median over 3 Hz; the power above 5x that median, mains harmonics (+-1 Hz) left
    out, is the line power. The mains are 50 and 60 Hz, as much in a lab's sidecar as in its wiring.

    Parameters
    ----------
    data : numpy.ndarray
        ``[n_channels, n_times]``.
    sfreq : float
        Sampling rate, Hz.
    mains : sequence of float
        Mains frequencies whose harmonics are not counted (None entries are skipped).

    Returns
    -------
    LinePower
    """
    from scipy import signal  # imported here: scipy.signal slows every process's start-up

    data = np.atleast_2d(data)
    nper = int(min(data.shape[-1], round(10.0 * sfreq)))
    freqs, psd = signal.welch(data[:: max(1, len(data) // 16)], sfreq, nperseg=nper, axis=-1)
    psd = psd.mean(axis=0)
    keep = (freqs >= 0.5) & (freqs <= 0.475 * sfreq)
    freqs, psd = freqs[keep], psd[keep]
    if psd.size < 5 or not np.any(psd > 0):
        return LinePower(0.0, None, 0.0)
    width = max(3, int(round(3.0 / (freqs[1] - freqs[0]))) | 1)
    baseline = np.asarray(signal.medfilt(psd, width))
    excess = np.where(psd > 5.0 * baseline, psd - baseline, 0.0)
    for line in filter(None, mains):
        excess[np.abs(freqs - line * np.round(freqs / line)) <= 1.0] = 0.0
    if not np.any(excess > 0):
        return LinePower(0.0, None, 0.0)
    df = freqs[1] - freqs[0]
    return LinePower(float(excess.sum() / psd.sum()), float(freqs[np.argmax(excess)]), float(excess.sum() * df))


def pulse_locked_power(data: np.ndarray, sfreq: float, r_peaks: np.ndarray) -> PulsePower | None:
    """Share of the EEG power locked to the heartbeat.

    The EEG (1-15 Hz) is cut into epochs from each R-peak, one median RR interval long; the
    power of their average (channel average), and its share of the power of the epochs (noise
    alone leaves ``1 / n_beats``).

    Parameters
    ----------
    data : numpy.ndarray
        ``[n_channels, n_times]`` EEG.
    sfreq : float
        Sampling rate, Hz.
    r_peaks : numpy.ndarray
        R-peak times, s.

    Returns
    -------
    PulsePower or None
        None with fewer than 10 beats.
    """
    peaks = np.round(np.asarray(r_peaks) * sfreq).astype(np.int64)
    if len(peaks) < 10:
        return None
    length = int(np.median(np.diff(peaks)))
    peaks = peaks[(peaks >= 0) & (peaks + length <= data.shape[-1])]
    band = mne.filter.filter_data(np.atleast_2d(data).astype(np.float64), sfreq, 1.0, 15.0, verbose="error")
    epochs = band[:, peaks[:, None] + np.arange(length)[None, :]]  # [n_ch, n_beats, length]
    epochs -= epochs.mean(axis=-1, keepdims=True)
    locked = float((epochs.mean(axis=1) ** 2).mean())
    total = float((epochs**2).mean())
    return PulsePower(locked / max(total, 1e-30), locked, len(peaks))
