"""EEG features shared by the regression baseline and the downstream classifiers."""

from __future__ import annotations

import numpy as np

# Canonical EEG bands (Hz); gamma stops below the 100 Hz Nyquist of the 200 Hz model rate.
EEG_BANDS: dict[str, tuple[float, float]] = {
    "delta": (1.0, 4.0),
    "theta": (4.0, 8.0),
    "alpha": (8.0, 13.0),
    "beta": (13.0, 30.0),
    "gamma": (30.0, 80.0),
}


def band_power_timecourse(
    eeg: np.ndarray, sfreq: float, bin_seconds: float = 1.0, bands: dict[str, tuple[float, float]] = EEG_BANDS
) -> np.ndarray:
    """Log band power in consecutive bins: ``eeg [..., C, T]`` -> ``[..., C, n_bands, n_bins]``."""
    from scipy.signal import (
        butter,
        sosfiltfilt,
    )  # imported here: scipy.signal is ~1 s of every Flower process's start-up

    eeg = np.asarray(eeg, dtype=np.float64)
    samples_per_bin = int(round(bin_seconds * sfreq))
    n_bins = eeg.shape[-1] // samples_per_bin
    out = []
    for low, high in bands.values():
        high = min(high, 0.45 * sfreq)
        sos = butter(4, [low, high], btype="bandpass", fs=sfreq, output="sos")
        filtered = sosfiltfilt(sos, eeg, axis=-1)[..., : n_bins * samples_per_bin]
        power = (filtered**2).reshape(*filtered.shape[:-1], n_bins, samples_per_bin).mean(-1)
        out.append(np.log(power + 1e-12))
    return np.stack(out, axis=-2).astype(np.float32)


def band_power(eeg: np.ndarray, sfreq: float, bands: dict[str, tuple[float, float]] = EEG_BANDS) -> np.ndarray:
    """Log band power over the whole window: ``[..., C, T]`` -> ``[..., C, n_bands]``."""
    return band_power_timecourse(eeg, sfreq, bin_seconds=eeg.shape[-1] / sfreq, bands=bands)[..., 0]
