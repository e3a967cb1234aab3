"""The linear-Gaussian generator: its samples have the estimated covariance, its residuals are
cross-fitted (a subject's own targets never enter its ridge prediction), its means are class-conditional."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from fedneurogen.shared.recording import PairedWindows
from fedneurogen.shared.workflows.baselines import LinearGaussianGenerator
from fedneurogen.shared.workflows.baselines.linear_gaussian import cross_fitted_predictions


def _windows(n_subjects: int = 6, per_subject: int = 40, n_points: int = 12, n_frames: int = 4, seed: int = 0):
    """Windows whose target is a linear map of the design plus separable low-rank + diagonal noise."""
    rng = np.random.default_rng(seed)
    n = n_subjects * per_subject
    design = rng.standard_normal((n, n_frames, 3)).astype(np.float32)
    weights = rng.standard_normal((3, n_points))
    loadings = rng.standard_normal((n_points, 2))  # spatial: rank 2 + diagonal
    spatial = loadings @ loadings.T + np.diag(rng.uniform(0.2, 0.6, n_points))
    lags = np.arange(n_frames)
    temporal = 0.6 ** np.abs(lags[:, None] - lags[None, :])  # AR(1)-like frame correlation
    noise = rng.multivariate_normal(np.zeros(n_points * n_frames), np.kron(temporal, spatial), size=n)
    noise = noise.reshape(n, n_frames, n_points).transpose(0, 2, 1)  # frame-major -> [W, N, F]
    target = np.einsum("wfd,dn->wnf", design, weights) + noise
    subjects = np.repeat([f"sub-{i:02d}" for i in range(n_subjects)], per_subject)
    windows = PairedWindows(
        eeg=np.zeros((n, 1, 4), np.float32), eeg_sfreq=100.0, eeg_channel_names=["Cz"], eeg_positions=np.zeros((1, 3)),
        target=target.astype(np.float32), target_sfreq=0.5, target_modality="fmri",
        target_names=[f"v{i}" for i in range(n_points)], target_positions=rng.standard_normal((n_points, 3)),
        labels=np.array(["rest"] * n), subjects=subjects, runs=np.char.add(subjects, "_run-1"),
        onsets=np.tile(8.0 * np.arange(per_subject), n_subjects), lag=6.0, design=design,
    )  # fmt: skip
    return windows, spatial, temporal


def test_samples_have_the_estimated_covariance_and_it_is_close_to_the_true_one():
    windows, spatial, temporal = _windows()
    generator = LinearGaussianGenerator(rank=2).fit(windows)
    assert generator.cross_fitted
    est_spatial, est_temporal = generator.covariance()
    # the estimate recovers the simulated covariance (low rank + diagonal, AR frames)
    assert np.abs(est_spatial - spatial).max() < 0.35 * np.abs(spatial).max()
    assert np.abs(est_temporal - temporal).max() < 0.1

    samples = generator.sample(windows.subset(np.arange(50)), k=400, seed=1)
    assert samples.shape == (400, 50, 12, 4) and samples.dtype == np.float32
    residual = samples - generator.predict(windows.subset(np.arange(50)))[None]
    flat = residual.transpose(0, 1, 3, 2).reshape(-1, 12 * 4).astype(np.float64)  # frame-major
    empirical = flat.T @ flat / len(flat)
    implied = np.kron(est_temporal, est_spatial)
    assert np.abs(empirical - implied).max() < 0.06 * np.abs(implied).max()
    # seeded
    np.testing.assert_array_equal(
        generator.sample(windows.subset(np.arange(3)), k=2, seed=5),
        generator.sample(windows.subset(np.arange(3)), k=2, seed=5),
    )


def test_cross_fitting_never_uses_a_subjects_own_targets():
    windows, _, _ = _windows(n_subjects=4, per_subject=20)
    before = cross_fitted_predictions(windows, n_folds=4)
    changed = np.array(windows.target, copy=True)
    own = windows.subjects == "sub-02"
    changed[own] += 100.0  # only sub-02's targets move
    after = cross_fitted_predictions(replace(windows, target=changed), n_folds=4)
    np.testing.assert_allclose(after[own], before[own], atol=1e-4)  # its prediction does not see them
    assert np.abs(after[~own] - before[~own]).max() > 1.0  # the others' predictions do


def test_class_offsets_need_two_subjects_and_shift_the_mean():
    windows, _, _ = _windows(n_subjects=4, per_subject=20)
    labels = np.where(np.arange(len(windows)) % 2 == 0, "task", "rest").astype(object)
    labels[windows.subjects == "sub-00"] = np.where(
        np.arange(20) % 3 == 0, "lonely", labels[windows.subjects == "sub-00"]
    )
    target = np.array(windows.target, copy=True)
    target[labels == "task"] += 2.0
    shifted = replace(windows, target=target, labels=labels.astype(str))
    generator = LinearGaussianGenerator(rank=2).fit(shifted)
    assert set(generator.offsets) == {"task", "rest"}  # "lonely" has one subject only
    gap = generator.offsets["task"].mean() - generator.offsets["rest"].mean()
    assert 1.5 < gap < 2.5
