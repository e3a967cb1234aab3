"""Non-generative baselines for EEG -> target prediction (ARCHITECTURE section 8).

``RidgeHRFBaseline``: EEG band power per channel, convolved with the canonical (Glover) HRF,
sampled at the target frames, then one ridge regression per target point. This is the classic
EEG-informed fMRI model, and what the generator must beat.
"""

from __future__ import annotations

import numpy as np
from nilearn.glm.first_level import glover_hrf

from fedneurogen.shared.features import band_power_timecourse
from fedneurogen.shared.recording import PairedWindows


def hrf_features(windows: PairedWindows, channels: list[str], bin_seconds: float = 1.0) -> np.ndarray:
    """``[n_windows, n_target_times, n_channels * n_bands]`` HRF-convolved log band power.

    EEG bin l covers ``[l, l+1)`` s from the EEG window start, which is ``lag`` s before the
    target window; target frame k sits at ``k / target_sfreq`` s from the target start.
    """
    index = [windows.eeg_channel_names.index(c) for c in channels]
    power = band_power_timecourse(windows.eeg[:, index], windows.eeg_sfreq, bin_seconds)  # [W, C, B, L]
    n_win, n_ch, n_bands, n_bins = power.shape
    power = power - power.mean(axis=-1, keepdims=True)  # only changes within the window carry signal
    hrf = glover_hrf(t_r=bin_seconds, oversampling=1, time_length=32.0)
    # causal convolution along the bin axis
    conv = np.zeros_like(power)
    for lag_bins, h in enumerate(hrf[:n_bins]):
        conv[..., lag_bins:] += h * power[..., : n_bins - lag_bins]
    n_frames = windows.target.shape[-1]
    frame_times = windows.lag + np.arange(n_frames) / windows.target_sfreq  # seconds from EEG start
    bin_times = (np.arange(n_bins) + 1.0) * bin_seconds  # a bin's power is known at its end
    # linear interpolation is linear in the data: one [n_bins, n_frames] matrix does it all
    interp = np.stack([np.interp(frame_times, bin_times, np.eye(n_bins)[l]) for l in range(n_bins)])
    sampled = (conv @ interp).reshape(n_win, n_ch * n_bands, n_frames)
    return np.transpose(sampled, (0, 2, 1)).astype(np.float32)


class RidgeHRFBaseline:
    """Per-point ridge regression on HRF-convolved EEG band power; alpha chosen by subject CV."""

    def __init__(self, alphas: tuple[float, ...] = (1.0, 10.0, 100.0, 1000.0, 10000.0)):
        self.alphas = alphas

    def fit(self, windows: PairedWindows, channels: list[str] | None = None) -> "RidgeHRFBaseline":
        self.channels = list(channels or windows.eeg_channel_names)
        x = hrf_features(windows, self.channels)  # [W, F, D]
        y = np.transpose(windows.target, (0, 2, 1))  # [W, F, N]
        self.mean_x = x.reshape(-1, x.shape[-1]).mean(0)
        self.std_x = x.reshape(-1, x.shape[-1]).std(0) + 1e-6
        self.mean_y = y.reshape(-1, y.shape[-1]).mean(0)
        self.alpha = self._choose_alpha(x, y, windows.subjects)
        self.coef = self._solve(x, y, self.alpha)
        return self

    def predict(self, windows: PairedWindows) -> np.ndarray:
        x = (hrf_features(windows, self.channels) - self.mean_x) / self.std_x
        y = x @ self.coef + self.mean_y  # [W, F, N]
        return np.transpose(y, (0, 2, 1)).astype(np.float32)

    def _solve(self, x: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
        xs = ((x - self.mean_x) / self.std_x).reshape(-1, x.shape[-1]).astype(np.float64)
        ys = (y - self.mean_y).reshape(-1, y.shape[-1]).astype(np.float64)
        gram = xs.T @ xs + alpha * np.eye(xs.shape[1])
        return np.linalg.solve(gram, xs.T @ ys).astype(np.float32)

    def _choose_alpha(self, x: np.ndarray, y: np.ndarray, subjects: np.ndarray) -> float:
        unique = np.unique(subjects)
        if len(unique) < 2:
            return float(np.median(self.alphas))
        # two folds by subject: fit on half the subjects, score correlation on the rest
        held = np.isin(subjects, unique[::2])
        scores = []
        for alpha in self.alphas:
            coef = self._solve(x[~held], y[~held], alpha)
            pred = ((x[held] - self.mean_x) / self.std_x) @ coef + self.mean_y
            scores.append(_mean_corr(pred.reshape(-1, y.shape[-1]), y[held].reshape(-1, y.shape[-1])))
        return float(self.alphas[int(np.argmax(scores))])


def _mean_corr(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean(0)
    b = b - b.mean(0)
    denom = np.sqrt((a * a).sum(0) * (b * b).sum(0)) + 1e-12
    return float(np.mean((a * b).sum(0) / denom))
