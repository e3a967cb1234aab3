import numpy as np

from fedneurogen.shared.metrics import (
    fisher_mean,
    generation_metrics,
    pearson_rows,
    shuffled_baseline,
    spatial_pcc,
    ssim,
    stitch_windows,
    temporal_pcc,
)


def _windows_from_series(series, n_frames, hop):
    starts = np.arange(0, series.shape[1] - n_frames + 1, hop)
    windows = np.stack([series[:, s : s + n_frames] for s in starts])
    return windows, starts


def test_stitch_windows_recovers_the_series():
    rng = np.random.default_rng(0)
    series = rng.standard_normal((5, 40))
    windows, starts = _windows_from_series(series, 8, 4)
    runs = np.array(["r1"] * len(starts))
    stitched = stitch_windows(windows, runs, starts / 0.5, 0.5)["r1"]
    np.testing.assert_allclose(stitched, series[:, : stitched.shape[1]])
    assert stitched.shape[1] == starts[-1] + 8


def test_pcc_of_signal_with_itself_is_one_and_with_noise_near_zero():
    rng = np.random.default_rng(1)
    series = rng.standard_normal((20, 200))
    windows, starts = _windows_from_series(series, 8, 4)
    runs = np.array(["r"] * len(starts))
    onsets = starts / 0.5
    assert temporal_pcc(windows, windows, runs, onsets, 0.5) > 0.999
    noise = rng.standard_normal(windows.shape)
    assert abs(temporal_pcc(noise, windows, runs, onsets, 0.5)) < 0.1
    assert abs(shuffled_baseline(windows, runs, onsets, 0.5)) < 0.1


def test_pcc_falls_with_added_noise():
    rng = np.random.default_rng(2)
    real = rng.standard_normal((30, 50, 8))
    runs = np.array([f"r{i}" for i in range(30)])
    onsets = np.zeros(30)
    low = generation_metrics(real + 0.3 * rng.standard_normal(real.shape), real, runs, onsets, 0.5)
    high = generation_metrics(real + 2.0 * rng.standard_normal(real.shape), real, runs, onsets, 0.5)
    for key in ("pcc_temporal", "pcc_spatial", "ssim"):
        assert low[key] > high[key] + 0.2, key


def test_spatial_pcc_and_ssim_of_identical_maps():
    rng = np.random.default_rng(3)
    real = rng.standard_normal((4, 100, 3))
    assert spatial_pcc(real, real) > 0.999
    assert abs(ssim(real, real) - 1.0) < 1e-9
    centred = real - real.mean(axis=1, keepdims=True)
    assert ssim(-centred, centred) < -0.9


def test_fisher_mean_and_pearson_rows():
    assert abs(fisher_mean(np.array([0.5, 0.5])) - 0.5) < 1e-12
    # Fisher averaging pulls towards the larger magnitude
    assert fisher_mean(np.array([0.9, 0.1])) > 0.5
    r = pearson_rows(np.array([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]]), np.array([[2.0, 4.0, 6.5], [1.0, 2.0, 3.0]]))
    assert r[0] > 0.99 and np.isnan(r[1])
