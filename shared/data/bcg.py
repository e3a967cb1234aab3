"""The ballistocardiogram (BCG) of in-scanner EEG: R-peaks, then PCA-OBS.

- R-peaks from the ECG channel (``mne.preprocessing.find_ecg_events``, each moved to the largest
  deflection within 50 ms), or, with no ECG channel, from the EEG itself: of the first principal
  components of the 2-15 Hz EEG, the one most periodic at a heart rate, its beats aligned on
  their mean waveform (the BCG's own peaks, a steady delay after the R-peaks).
- PCA-OBS (Niazy et al. 2005): ``pca_obs``, the algorithm of ``mne.preprocessing.apply_pca_obs``
  vectorised over beats, with a window that holds the BCG (MNE's loops over beats and channels,
  ~20x slower on a 64-channel run, and centres its windows on the R-peak, cutting the BCG that
  lags it: ``tests/test_scanner_artifacts.py`` compares the two).

``scanner.clean_scanner_artifacts`` runs both after the gradient artefact is gone.
"""

from __future__ import annotations

import warnings

import mne
import numpy as np

#: PCA-OBS window around each R-peak, in median RR intervals: from 0.3 before to 0.8 after, so
#: that it holds the BCG (200-700 ms after the R-peak) and its edges fall where the BCG is small.
OBS_WINDOW = (0.3, 0.8)


def _refine(trace: np.ndarray, peaks: np.ndarray, half: int) -> np.ndarray:
    """Move each peak to the largest absolute value within ``half`` samples."""
    out = []
    for p in peaks:
        lo, hi = max(0, p - half), min(len(trace), p + half + 1)
        out.append(lo + int(np.argmax(np.abs(trace[lo:hi]))))
    return np.unique(np.asarray(out, dtype=np.int64))


def _align(trace: np.ndarray, peaks: np.ndarray, sfreq: float) -> np.ndarray:
    """Move each peak by the lag (within 120 ms) that best matches the mean waveform around the
    peaks, on a copy at ~250 Hz (so the cost does not grow with the sampling rate)."""
    step = max(1, int(sfreq // 250))
    x, at = trace[::step], np.round(np.asarray(peaks) / step).astype(np.int64)
    half, reach = int(0.25 * sfreq / step), int(0.12 * sfreq / step)
    at = at[(at - half - reach >= 0) & (at + half + reach < len(x))]
    if len(at) < 3:
        return np.asarray(peaks, dtype=np.int64)
    window = np.arange(-half, half + 1)
    template = x[at[:, None] + window].mean(axis=0)
    lags = np.arange(-reach, reach + 1)
    segments = x[at[:, None, None] + lags[None, :, None] + window[None, None, :]]  # [beat, lag, window]
    best = lags[np.argmax(segments @ template, axis=1)]
    return np.unique((at + best) * step)


def _pulse_component(eeg: np.ndarray, sfreq: float, n_candidates: int = 6) -> np.ndarray:
    """The 2-15 Hz EEG component most periodic at a heart rate (40-130 bpm): among the first
    principal components, the one whose autocorrelation peaks highest at a lag of 0.46-1.5 s."""
    from scipy import signal  # imported here: scipy.signal slows every process's start-up

    band = mne.filter.filter_data(eeg, sfreq, 2.0, 15.0, verbose="error")
    u, _, _ = np.linalg.svd(band[:, :: max(1, int(sfreq // 100))], full_matrices=False)
    best, score = band[0], -np.inf
    step = max(1, int(sfreq // 50))  # the envelope at ~50 Hz is enough to see the beat
    lags = np.arange(int(0.46 * sfreq) // step, int(1.5 * sfreq) // step + 1)
    for vector in u[:, :n_candidates].T:
        component = vector @ band
        envelope = np.abs(signal.hilbert(component))[::step]
        envelope = envelope - envelope.mean()
        auto = np.correlate(envelope, envelope, "full")[len(envelope) - 1 :]
        peak = auto[lags].max() / max(auto[0], 1e-30)
        if peak > score:
            best, score = component, peak
    return best


def find_r_peaks(raw: mne.io.BaseRaw) -> tuple[np.ndarray, str]:
    """R-peak times of a recording: from its ECG channel, else from the EEG's pulse artefact.

    Parameters
    ----------
    raw : mne.io.BaseRaw
        Preloaded, with the gradient artefact already removed (it swamps the ECG too).

    Returns
    -------
    times : numpy.ndarray
        R-peak times in s from the first sample (BCG peaks when found from the EEG).
    source : str
        The ECG channel's name, or ``"EEG"`` (then the peaks of the EEG component most periodic at
        a heart rate: they lag the R-peaks by the BCG's delay, the same for every beat).
    """
    sfreq = raw.info["sfreq"]
    ecg = mne.pick_types(raw.info, ecg=True, eeg=False, exclude="bads")
    if len(ecg):
        name = raw.ch_names[ecg[0]]
        source, probe, band = name, raw, (5.0, 35.0)
    else:
        component = _pulse_component(raw.get_data(picks="eeg"), sfreq)
        info = mne.create_info(["BCG"], sfreq, "ecg")
        probe, name, source, band = mne.io.RawArray(component[None], info, verbose="error"), "BCG", "EEG", (2.0, 15.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        events, _, _ = mne.preprocessing.find_ecg_events(
            probe, ch_name=name, l_freq=band[0], h_freq=band[1], reject_by_annotation=False, verbose="error"
        )
    trace = mne.filter.filter_data(probe.get_data(picks=[name])[0], sfreq, band[0], band[1], verbose="error")
    peaks = events[:, 0] - probe.first_samp
    # an R wave is its largest deflection; a BCG has several alike, so its beats are aligned on their mean
    peaks = _refine(trace, peaks, int(0.05 * sfreq)) if source != "EEG" else _align(trace, peaks, sfreq)
    keep = np.concatenate([[True], np.diff(peaks) > 0.3 * sfreq])  # one peak per beat
    return peaks[keep] / sfreq, source


def pca_obs(data: np.ndarray, r_peaks: np.ndarray, sfreq: float, n_components: int = 1) -> np.ndarray:
    """Remove the pulse artefact by optimal basis sets (PCA-OBS, Niazy et al. 2005).

    The algorithm of ``mne.preprocessing.apply_pca_obs``, vectorised over the beats (MNE fits
    beat by beat, with a spline per gap: ~0.4 s per channel and recording minute here, 20 times
    the rest of a load). Per channel: epochs around each R-peak (``OBS_WINDOW``: from 0.3 median
    RR intervals before it to 0.8 after, where MNE takes +-0.5 and so cuts the BCG, which lags the
    R-peak), less their means; the basis is their mean and the first ``n_components`` principal
    components of their deviations from it; each epoch's least-squares fit (with a constant,
    fitted but not subtracted) is the artefact of that beat. Overlapping fits are blended with
    tapered (Tukey) weights, so no step is left where one beat's window meets the next.

    Parameters
    ----------
    data : numpy.ndarray
        ``[n_channels, n_times]`` or ``[n_times]``.
    r_peaks : numpy.ndarray
        R-peak times, s from the first sample.
    sfreq : float
        Sampling rate, Hz.
    n_components : int
        Principal components besides the mean (0: the mean artefact, scaled per beat).

    Returns
    -------
    numpy.ndarray
        A cleaned copy (float64), the shape of ``data``.
    """
    from scipy import signal  # imported here: scipy.signal slows every process's start-up

    out = np.array(data, dtype=np.float64, copy=True)
    rows = out.reshape(-1, out.shape[-1])
    n_times = rows.shape[1]
    peaks = np.round(np.asarray(r_peaks, dtype=float) * sfreq).astype(np.int64)
    if len(peaks) < 3:
        raise ValueError(f"PCA-OBS needs at least 3 R-peaks, got {len(peaks)}")
    rr = float(np.median(np.diff(peaks)))
    pre, post = int(round(OBS_WINDOW[0] * rr)), int(round(OBS_WINDOW[1] * rr))
    peaks = peaks[(peaks - pre >= 0) & (peaks + post < n_times)]
    index = peaks[:, None] + np.arange(-pre, post + 1)[None, :]  # [n_beats, window]
    taper = signal.windows.tukey(pre + post + 1, alpha=0.2)
    flat = index.ravel()
    norm = np.maximum(np.bincount(flat, np.broadcast_to(taper, index.shape).ravel(), minlength=n_times), 1.0)
    for row in rows:
        epochs = row[index]
        epochs = epochs - epochs.mean(axis=1, keepdims=True)
        mean = epochs.mean(axis=0)
        columns = [np.ones_like(mean), mean]
        if n_components:
            columns += list(_principal_directions(epochs - mean, n_components))
        basis = np.stack(columns, axis=1)  # [window, 1 + 1 + n_components]
        coef = np.linalg.pinv(basis) @ epochs.T  # least squares, every beat at once
        artefact = (basis[:, 1:] @ coef[1:]).T * taper  # the constant is fitted, never subtracted
        row -= np.bincount(flat, artefact.ravel(), minlength=n_times) / norm
    return out


def _principal_directions(dev: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` principal directions (rows, ``[k, n_columns]``) of ``dev`` by a seeded
    randomised subspace iteration: a few products instead of a full SVD per channel."""
    rng = np.random.default_rng(0)
    q = dev.T @ rng.standard_normal((dev.shape[0], k + 8))
    for _ in range(3):
        q = dev.T @ (dev @ np.linalg.qr(q)[0])
    q = np.linalg.qr(q)[0]
    _, _, vt = np.linalg.svd(dev @ q, full_matrices=False)
    return vt[:k] @ q.T


def remove_bcg(raw: mne.io.BaseRaw, r_peaks: np.ndarray, n_components: int = 1) -> None:
    """Remove the BCG from the EEG channels with PCA-OBS (``pca_obs``), in place.

    Parameters
    ----------
    raw : mne.io.BaseRaw
        Preloaded; modified in place.
    r_peaks : numpy.ndarray
        R-peak times (s from the first sample).
    n_components : int
        Principal components of the optimal basis set, besides the mean.
    """
    picks = mne.pick_types(raw.info, eeg=True, exclude=[])
    sfreq = raw.info["sfreq"]
    raw.apply_function(
        pca_obs,
        picks=picks,
        channel_wise=False,
        verbose="error",
        r_peaks=r_peaks,
        sfreq=sfreq,
        n_components=n_components,
    )
