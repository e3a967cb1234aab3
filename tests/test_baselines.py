"""The ridge + HRF baseline recovers a target that truly is HRF-convolved EEG band power."""

import numpy as np

from fedneurogen.shared.baselines import RidgeHRFBaseline, hrf_features
from fedneurogen.shared.features import band_power, band_power_timecourse
from fedneurogen.shared.recording import PairedWindows


def _windows(n_windows: int, seed: int) -> PairedWindows:
    rng = np.random.default_rng(seed)
    sfreq, seconds, n_ch = 200.0, 16, 4
    t = np.arange(int(sfreq * seconds)) / sfreq
    # alpha oscillations whose amplitude wanders slowly, independently per channel
    envelope = np.exp(0.8 * np.cumsum(rng.standard_normal((n_windows, n_ch, seconds)), axis=-1) / 3)
    envelope = np.repeat(envelope, int(sfreq), axis=-1)
    eeg = envelope * np.sin(2 * np.pi * 10 * t) + 0.05 * rng.standard_normal((n_windows, n_ch, len(t)))
    names = ["C3", "C4", "O1", "O2"]
    proto = PairedWindows(
        eeg=eeg.astype(np.float32), eeg_sfreq=sfreq, eeg_channel_names=names, eeg_positions=np.zeros((n_ch, 3)),
        target=np.zeros((n_windows, 3, 8), np.float32), target_sfreq=0.5, target_modality="fmri",
        target_names=["a", "b", "c"], target_positions=np.zeros((3, 3)),
        labels=np.array(["rest"] * n_windows), subjects=np.array([f"sub-{i % 6:02d}" for i in range(n_windows)]),
        runs=np.array([f"run{i}" for i in range(n_windows)]), onsets=np.zeros(n_windows), lag=6.0,
    )
    feats = hrf_features(proto, names)  # [W, F, C*B]
    alpha_index = 2  # delta, theta, alpha, ...
    target = np.stack([-feats[..., 0 * 5 + alpha_index], feats[..., 3 * 5 + alpha_index], rng.standard_normal(feats.shape[:2])], axis=1)
    proto.target = (target + 0.1 * rng.standard_normal(target.shape)).astype(np.float32)
    return proto


def test_band_power_finds_the_alpha_band():
    sfreq = 200.0
    t = np.arange(2000) / sfreq
    x = np.sin(2 * np.pi * 10 * t)[None]
    bp = band_power(x, sfreq)
    assert bp.shape == (1, 5)
    assert bp[0].argmax() == 2
    tc = band_power_timecourse(x, sfreq, bin_seconds=1.0)
    assert tc.shape == (1, 5, 10)


def test_ridge_hrf_recovers_hrf_convolved_band_power():
    train, test = _windows(120, 0), _windows(40, 1)
    model = RidgeHRFBaseline().fit(train)
    pred = model.predict(test)
    assert pred.shape == test.target.shape

    def corr(i):
        return np.corrcoef(pred[:, i].ravel(), test.target[:, i].ravel())[0, 1]

    assert corr(0) > 0.8 and corr(1) > 0.8
    assert abs(corr(2)) < 0.2  # the pure-noise point is not predictable
