import numpy as np
import pytest

from fedneurogen.shared.metrics import (
    coarse_parcels,
    ensemble_crps,
    fc_similarity,
    interval_coverage,
    psd_distance,
    sample_metrics,
    tiled_series,
    two_sample_accuracy,
    fisher_mean,
    generation_metrics,
    pearson_rows,
    shuffled_baseline,
    spatial_pcc,
    ssim,
    stitch_windows,
    temporal_pcc,
    train_synthetic_test_real,
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


def _ar_windows(n_runs=4, n_points=30, n_times=160, n_frames=8, rho=0.9, mixing=None, seed=0):
    """AR(1) series with a shared spatial mixing, cut into windows with half overlap."""
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((n_points, 4)) if mixing is None else mixing
    out, runs, onsets = [], [], []
    for r in range(n_runs):
        e = rng.standard_normal((n_points, n_times))
        x = np.zeros_like(e)
        for t in range(1, n_times):
            x[:, t] = rho * x[:, t - 1] + e[:, t]
        x += mixing @ rng.standard_normal((4, n_times)) * 2
        windows, starts = _windows_from_series(x, n_frames, n_frames // 2)
        out.append(windows)
        runs += [f"sub-{r:02d}_run-1"] * len(starts)
        onsets.append(starts / 0.5)
    return np.concatenate(out), np.array(runs), np.concatenate(onsets), mixing


def test_coverage_and_crps_perfect_on_identical_and_chance_on_independent_noise():
    rng = np.random.default_rng(0)
    real = rng.standard_normal((200, 50))
    same = np.repeat(real[None], 4, axis=0)
    assert ensemble_crps(same, real) == 0.0
    calibrated = rng.standard_normal((64, 200, 50))  # the right distribution, independent of the values
    coverage = interval_coverage(calibrated, real)
    assert abs(coverage["coverage_50"] - 0.5) < 0.03 and abs(coverage["coverage_90"] - 0.9) < 0.03
    # a standard-normal ensemble on independent standard-normal values: CRPS = 1/sqrt(pi)
    assert abs(ensemble_crps(calibrated, real) - 1 / np.sqrt(np.pi)) < 0.02
    far = calibrated + 10
    assert interval_coverage(far, real)["coverage_90"] == 0.0 and ensemble_crps(far, real) > 9
    # by rank, unbiased at any K: 4 calibrated samples cover 90 % (their span holds a fifth 3/5 of
    # the time); identical samples tie with the value, which is then anywhere in its PIT: nominal
    few_truth = rng.standard_normal((20000, 5))
    coverage = interval_coverage(rng.standard_normal((4, 20000, 5)), few_truth)
    assert abs(coverage["coverage_50"] - 0.5) < 0.01 and abs(coverage["coverage_90"] - 0.9) < 0.01
    narrow = interval_coverage(0.5 * rng.standard_normal((4, 20000, 5)), few_truth)
    assert narrow["coverage_90"] < 0.86
    assert interval_coverage(same, real) == pytest.approx({"coverage_50": 0.5, "coverage_90": 0.9})
    # fair at any ensemble size: 4 samples score 1/sqrt(pi) too, and the right spread beats a narrower one
    few = rng.standard_normal((4, 2000, 50))
    assert abs(ensemble_crps(few, rng.standard_normal((2000, 50))) - 1 / np.sqrt(np.pi)) < 0.01
    truth = rng.standard_normal((2000, 50))
    assert ensemble_crps(few, truth) < ensemble_crps(0.7 * few, truth)


def test_psd_distance_zero_on_identical_small_on_the_same_process_large_on_another():
    real, runs, onsets, mixing = _ar_windows(n_runs=8)
    same_process, *_ = _ar_windows(n_runs=8, mixing=mixing, seed=1)
    white = np.random.default_rng(2).standard_normal(real.shape) * real.std()
    assert psd_distance(real, real, runs, onsets, 0.5) == 0.0
    near, far = psd_distance(same_process, real, runs, onsets, 0.5), psd_distance(white, real, runs, onsets, 0.5)
    assert near < 0.2 and far > 2 * near
    # non-overlapping windows only: each run's frames concatenated once
    tiled = tiled_series(real, runs, onsets, 0.5)
    assert tiled[runs[0]].shape == (30, 160)


def test_fc_similarity_one_on_identical_chance_on_independent_noise():
    real, runs, onsets, mixing = _ar_windows()
    parcels = coarse_parcels(np.random.default_rng(3).standard_normal((30, 3)), n_parcels=10)
    assert len(np.unique(parcels)) == 10
    assert fc_similarity(real, real, runs, onsets, 0.5, parcels) > 0.999
    noise = np.random.default_rng(4).standard_normal(real.shape)
    assert abs(fc_similarity(noise, real, runs, onsets, 0.5, parcels)) < 0.3
    same_process, *_ = _ar_windows(mixing=mixing, seed=5)
    assert fc_similarity(same_process, real, runs, onsets, 0.5, parcels) > 0.8


def test_two_sample_accuracy_half_when_indistinguishable_and_high_when_not():
    real, runs, onsets, mixing = _ar_windows(n_runs=6)
    subjects = np.array([r.split("_")[0] for r in runs])
    parcels = coarse_parcels(np.random.default_rng(3).standard_normal((30, 3)), n_parcels=10)
    assert two_sample_accuracy(real, real, subjects, parcels) == 0.5  # identical: nothing to tell apart
    same_process, *_ = _ar_windows(n_runs=6, mixing=mixing, seed=6)
    assert abs(two_sample_accuracy(same_process, real, subjects, parcels) - 0.5) < 0.1
    assert two_sample_accuracy(real + 1.0, real, subjects, parcels) > 0.9


def test_sample_metrics_report_every_metric_and_skip_coverage_with_one_sample():
    real, runs, onsets, _ = _ar_windows(n_runs=3)
    subjects = np.array([r.split("_")[0] for r in runs])
    parcels = coarse_parcels(np.random.default_rng(3).standard_normal((30, 3)), n_parcels=5)
    out = sample_metrics(np.stack([real, real]), real, runs, onsets, 0.5, subjects, parcels)
    assert out["coverage_50"] == pytest.approx(0.5) and out["crps"] == 0.0 and out["psd_distance"] == 0.0
    assert out["fc_similarity"] > 0.999 and out["two_sample_accuracy"] == 0.5 and out["samples"] == 2
    one = sample_metrics(real[None], real, runs, onsets, 0.5, subjects, parcels)
    assert one["coverage_50"] is None and one["coverage_error"] is None and one["crps"] == 0.0


def _labelled_features(n_subjects=8, per_subject=30, n_classes=3, seed=0):
    """Feature rows with a clear class signal (a shifted mean per class) and subject offsets."""
    rng = np.random.default_rng(seed)
    means = 1.5 * rng.standard_normal((n_classes, 10))
    labels = np.array([f"c{i}" for i in rng.integers(0, n_classes, n_subjects * per_subject)], dtype=object)
    subjects = np.repeat([f"s{i}" for i in range(n_subjects)], per_subject)
    offsets = 0.3 * rng.standard_normal((n_subjects, 10))
    rows = means[[int(c[1:]) for c in labels]] + np.repeat(offsets, per_subject, axis=0)
    return rows + rng.standard_normal(rows.shape), labels, subjects, means


def _logreg():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=0))


def test_tstr_equals_trtr_on_the_real_windows_and_is_chance_on_noise():
    real, labels, subjects, means = _labelled_features()
    trtr = train_synthetic_test_real(real, real, labels, subjects, _logreg)
    assert trtr["chance"] == 1 / 3 and trtr["balanced_accuracy"] > 0.8 and trtr["macro_f1"] > 0.8
    # generated windows identical to the real ones: the same training set, the same folds
    assert train_synthetic_test_real(real.copy(), real, labels, subjects, _logreg) == trtr
    # noise that ignores the class it was generated for teaches nothing: chance on average over
    # draws (one draw's classifier still maps each well-separated real class to some class, so a
    # single TSTR of noise can land well off chance)
    rng = np.random.default_rng(1)
    noise = [
        train_synthetic_test_real(rng.standard_normal(real.shape), real, labels, subjects, _logreg)["balanced_accuracy"]
        for _ in range(20)
    ]
    assert abs(np.mean(noise) - 1 / 3) < 0.15
    # fresh draws of the right class-conditional distribution do about as well as real data
    fresh = means[[int(c[1:]) for c in labels]] + rng.standard_normal(real.shape)
    good = train_synthetic_test_real(fresh, real, labels, subjects, _logreg)
    assert good["balanced_accuracy"] > trtr["balanced_accuracy"] - 0.1


def test_tstr_leaves_unlabelled_windows_out_and_needs_two_classes_and_two_subjects():
    real, labels, subjects, _ = _labelled_features(n_classes=2)
    none = {"balanced_accuracy": None, "macro_f1": None, "chance": None}
    one_class = np.where(labels == "c0", "n/a", labels)
    assert train_synthetic_test_real(real, real, one_class, subjects, _logreg) == none
    missing = np.where(labels == "c0", None, labels)  # None, empty, n/a: no class
    assert train_synthetic_test_real(real, real, missing, subjects, _logreg) == none
    one = subjects == "s0"
    assert train_synthetic_test_real(real[one], real[one], labels[one], subjects[one], _logreg) == none
    # a few unlabelled windows are dropped, not counted as a class
    some = labels.copy()
    some[:5] = ""
    out = train_synthetic_test_real(real, real, some, subjects, _logreg)
    assert out["chance"] == 0.5 and out["balanced_accuracy"] > 0.8
