"""In-scanner EEG: the gradient artefact, the ballistocardiogram (BCG) and an ECG channel.

``simulate --scanner-artifacts`` adds them to the clean simulated EEG (``eeg.simulate_eeg``), as
an MR-compatible amplifier records them during EPI (Allen et al. 2000; Niazy et al. 2005):

- **gradient artefact**: every volume (``TR``) acquires ``n_slices`` slices in a slice window of
  ``TR - gap``; each slice switches the three gradient axes, whose ramps induce derivative-shaped
  pulses (a Gaussian derivative, as wide as the amplifier's anti-alias filter allows) in the lead
  loops. A channel sees its own mix of the three axes (it depends on where its lead runs), with a
  peak of hundreds to thousands of uV. The spectrum is the comb of the slice frequency and of the
  volume frequency. Each volume starts with a small timing jitter (a scanner and an EEG clock that
  are synchronised, to about 10 us) and a small amplitude change (0.1 %).
- **volume triggers**: one marker per volume at its (rounded) start sample, named ``R128`` as
  BrainVision Recorder writes the scanner's TTL pulse (``Response/R128`` once read by MNE; an EDF
  annotation ``R128``).
- **heartbeats**: RR intervals around the subject's rate with beat-to-beat variability (AR(1));
  an ECG channel with P-QRS-T waves (and its own share of the gradient artefact); a BCG per beat
  ~200 ms after the R-peak: three damped oscillations mixed per channel (a channel-dependent
  shape, tens to a couple of hundred uV), with a beat-to-beat amplitude, shape and latency change.

Every random draw comes from the generator the simulator passes, a stream of its own, so the
clean EEG and every other file are the same as without artefacts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Marker name of a volume trigger (BrainVision ``Response`` 128).
TRIGGER_NAME = "R128"
N_SLICES = 30
SLICE_GAP_S = 0.1  # quiet time at the end of each TR (slices are acquired in TR - gap)
JITTER_S = 10e-6  # timing jitter of a volume's start (clocks synchronised, as with a SyncBox)
AMPLITUDE_JITTER = 0.001
RAMPS_PER_SLICE = 8  # gradient ramps per slice and axis
BCG_LAG_S = 0.2  # R-peak -> BCG onset
BCG_SCALE_V = 40e-6  # BCG size at the midline (x3 over the temporal leads)
BCG_LATENCY_JITTER_S = 0.005  # beat-to-beat changes of the BCG: latency (s), shape and amplitude (relative)
BCG_SHAPE_JITTER = 0.1
BCG_AMPLITUDE_JITTER = 0.1


@dataclass(frozen=True)
class ScannerArtifacts:
    """The artefacts of one run and their ground truth.

    Attributes
    ----------
    gradient : numpy.ndarray
        ``[n_channels, n_times]`` gradient artefact (V) of the EEG channels.
    bcg : numpy.ndarray
        ``[n_channels, n_times]`` ballistocardiogram (V).
    ecg : numpy.ndarray
        ``[n_times]`` ECG channel (V), its gradient artefact included.
    volume_onsets : numpy.ndarray
        Volume start times (s), jitter included; the triggers are at their rounded samples.
    r_peaks : numpy.ndarray
        True R-peak times (s).
    n_slices : int
        Slices per volume.
    """

    gradient: np.ndarray
    bcg: np.ndarray
    ecg: np.ndarray
    volume_onsets: np.ndarray
    r_peaks: np.ndarray
    n_slices: int

    def raw(self, clean: np.ndarray) -> np.ndarray:
        """The EEG as the amplifier records it: ``clean`` plus both artefacts (V, float64).

        Parameters
        ----------
        clean : numpy.ndarray
            ``[n_channels, n_times]`` clean EEG (V).

        Returns
        -------
        numpy.ndarray
        """
        return clean.astype(np.float64) + self.gradient + self.bcg

    def trigger_onsets(self, sfreq: float) -> np.ndarray:
        """Volume-trigger times (s) on the sample grid, as the amplifier marks them.

        Parameters
        ----------
        sfreq : float
            Sampling rate, Hz.

        Returns
        -------
        numpy.ndarray
        """
        return np.round(self.volume_onsets * sfreq) / sfreq


def _pulses(times: np.ndarray, signs: np.ndarray, sfreq: float, n_times: int, width: float) -> np.ndarray:
    """Sum of Gaussian-derivative pulses (peak 1) at ``times`` with ``signs``, on the sample grid."""
    out = np.zeros(n_times)
    half = int(np.ceil(5 * width * sfreq)) + 1
    offsets = np.arange(-half, half + 1)
    centre = np.round(times * sfreq).astype(np.int64)
    idx = centre[:, None] + offsets[None, :]  # [n_pulses, window]
    tau = idx / sfreq - times[:, None]
    shape = -(tau / width) * np.exp(0.5 - 0.5 * (tau / width) ** 2)  # derivative of a Gaussian, peak 1
    ok = (idx >= 0) & (idx < n_times)
    np.add.at(out, idx[ok], (signs[:, None] * shape)[ok])
    return out


def gradient_axes(
    rng: np.random.Generator, volume_onsets: np.ndarray, tr: float, sfreq: float, n_times: int, n_slices: int
) -> np.ndarray:
    """The induced waveform of each gradient axis, ``[3, n_times]`` (peak ~1).

    Parameters
    ----------
    rng : numpy.random.Generator
        Draws the ramp pattern of a slice and each volume's amplitude change.
    volume_onsets : numpy.ndarray
        Start time of each volume (s).
    tr : float
        Repetition time (s).
    sfreq : float
        Sampling rate (Hz).
    n_times : int
        Samples of the run.
    n_slices : int
        Slices per volume.

    Returns
    -------
    numpy.ndarray
    """
    slice_s = (tr - SLICE_GAP_S) / n_slices
    width = max(0.4e-3, 3.0 / (np.pi * sfreq))  # the amplifier's anti-alias filter: ~-40 dB at Nyquist
    axes = np.zeros((3, n_times))
    for axis in range(3):
        ramps = np.sort(rng.uniform(0.02, 0.95, RAMPS_PER_SLICE)) * slice_s  # the same in every slice
        signs = np.where(np.arange(RAMPS_PER_SLICE) % 2 == 0, 1.0, -1.0) * rng.uniform(0.5, 1.0, RAMPS_PER_SLICE)
        in_volume = (np.arange(n_slices)[:, None] * slice_s + ramps[None, :]).ravel()
        gain = 1.0 + AMPLITUDE_JITTER * rng.standard_normal(len(volume_onsets))
        times = (volume_onsets[:, None] + in_volume[None, :]).ravel()
        amplitude = np.repeat(gain, in_volume.size) * np.tile(signs, n_slices * len(gain))
        axes[axis] = _pulses(times, amplitude, sfreq, n_times, width)
    return axes


def heartbeats(rng: np.random.Generator, duration: float) -> np.ndarray:
    """R-peak times (s) over ``duration``: 55-80 bpm with AR(1) beat-to-beat variability.

    Parameters
    ----------
    rng : numpy.random.Generator
        Draws the rate and the RR intervals.
    duration : float
        Length of the run (s).

    Returns
    -------
    numpy.ndarray
    """
    mean_rr = 60.0 / rng.uniform(55.0, 80.0)
    n = int(duration / (0.5 * mean_rr)) + 2
    dev = np.zeros(n)
    noise = rng.normal(0.0, 0.03, n)
    for i in range(1, n):
        dev[i] = 0.7 * dev[i - 1] + noise[i]
    rr = np.clip(mean_rr * (1.0 + dev), 0.45, 1.6)
    beats = rng.uniform(0.1, 0.6) + np.cumsum(rr)
    return beats[beats < duration - 0.05]


def _ecg(beats: np.ndarray, sfreq: float, n_times: int) -> np.ndarray:
    """P-QRS-T waves (V) at the R-peaks."""
    t = np.arange(n_times) / sfreq
    ecg = np.zeros(n_times)
    # (delay from the R-peak s, width s, amplitude V) of the P, Q, R, S and T waves
    waves = ((-0.16, 0.025, 0.15e-3), (-0.025, 0.008, -0.1e-3), (0.0, 0.010, 1.0e-3), (0.03, 0.010, -0.25e-3),
             (0.25, 0.045, 0.3e-3))  # fmt: skip
    for beat in beats:
        lo, hi = np.searchsorted(t, [beat - 0.3, beat + 0.5])
        tau = t[lo:hi] - beat
        for shift, width, amp in waves:
            ecg[lo:hi] += amp * np.exp(-0.5 * ((tau - shift) / width) ** 2)
    return ecg


def _bcg(
    rng: np.random.Generator, beats: np.ndarray, positions_mm: np.ndarray, sfreq: float, n_times: int
) -> np.ndarray:
    """Pulse-locked BCG (V): three damped oscillations, mixed per channel and varied per beat."""
    n_ch = len(positions_mm)
    lateral = np.abs(positions_mm[:, 0]) / max(np.abs(positions_mm[:, 0]).max(), 1e-9)
    scale = BCG_SCALE_V * (1.0 + 2.0 * lateral) * rng.uniform(0.7, 1.3, n_ch)  # larger over the temporal leads
    mixing = rng.normal(0.0, 1.0, (n_ch, 3)) * scale[:, None] / np.sqrt(3)
    tau = np.arange(int(0.6 * sfreq)) / sfreq
    basis = np.stack([np.sin(2 * np.pi * f * tau + ph) * np.exp(-tau / d) * (1 - np.exp(-tau / 0.02))
                      for f, ph, d in ((4.0, 0.0, 0.15), (6.5, 1.0, 0.10), (9.0, 2.0, 0.07))])  # fmt: skip
    out = np.zeros((n_ch, n_times))
    for beat in beats:
        start = int(round((beat + BCG_LAG_S + rng.normal(0.0, BCG_LATENCY_JITTER_S)) * sfreq))
        coef = mixing * (1.0 + BCG_SHAPE_JITTER * rng.standard_normal((1, 3))) * rng.normal(1.0, BCG_AMPLITUDE_JITTER)
        stop = min(start + basis.shape[1], n_times)
        if start < stop:
            out[:, start:stop] += (coef @ basis)[:, : stop - start]
    return out


def simulate_scanner_artifacts(
    rng: np.random.Generator, positions_mm: np.ndarray, sfreq: float, n_times: int, tr: float, n_volumes: int
) -> ScannerArtifacts:
    """Draw the gradient artefact, heartbeats, BCG and ECG of one in-scanner run.

    Parameters
    ----------
    rng : numpy.random.Generator
        The run's artefact stream (nothing else draws from it).
    positions_mm : numpy.ndarray
        ``[n_channels, 3]`` electrode positions (mm): set each lead's gradient mix and BCG size.
    sfreq : float
        EEG sampling rate (Hz).
    n_times : int
        Samples of the run.
    tr : float
        Repetition time (s): one volume trigger per TR from t = 0.
    n_volumes : int
        Volumes acquired (the fMRI run's length).

    Returns
    -------
    ScannerArtifacts
    """
    onsets = np.arange(n_volumes) * tr + rng.normal(0.0, JITTER_S, n_volumes)
    onsets = np.clip(onsets, 0.0, None)
    axes = gradient_axes(rng, onsets, tr, sfreq, n_times, N_SLICES)
    n_ch = len(positions_mm)
    direction = positions_mm / np.maximum(np.linalg.norm(positions_mm, axis=1, keepdims=True), 1e-9)
    peak = rng.uniform(0.3e-3, 3.0e-3, n_ch)  # volts: hundreds to thousands of uV
    mix = (direction + rng.normal(0.0, 0.3, (n_ch, 3))) * peak[:, None]
    beats = heartbeats(rng, n_times / sfreq)
    ecg_mix = rng.normal(0.0, 1.0, 3) * 1.5e-3
    return ScannerArtifacts(
        gradient=mix @ axes,
        bcg=_bcg(rng, beats, positions_mm, sfreq, n_times),
        ecg=_ecg(beats, sfreq, n_times) + ecg_mix @ axes,
        volume_onsets=onsets,
        r_peaks=beats,
        n_slices=N_SLICES,
    )
