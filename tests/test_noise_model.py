"""The residual's noise model: the linear-Gaussian generator's covariance, in whose whitened
coordinates the diffusion works, so that an untrained DiT already samples linear-Gaussian noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedneurogen.shared.model.diffusion import GaussianDiffusion
from fedneurogen.shared.model.noise import ResidualNoise, fit_covariance
from fedneurogen.shared.workflows.baselines import LinearGaussianGenerator
from fedneurogen.shared.workflows.baselines.linear_gaussian import cross_fitted_predictions

from test_linear_gaussian import _windows


def _fitted(residual: np.ndarray, rank: int) -> ResidualNoise:
    fitted = fit_covariance(residual, rank)
    noise = ResidualNoise(residual.shape[1], rank, residual.shape[2])
    noise.set_covariance(fitted["scale"], fitted["basis"], fitted["temporal"])
    return noise


def _dense(noise: ResidualNoise, n_points: int, n_frames: int, slots=None) -> np.ndarray:
    """``Σ`` over (point, frame), point-major, from colouring every unit vector."""
    unit = torch.eye(n_points * n_frames).reshape(-1, n_points, n_frames)
    root = noise.colour(unit, slots).reshape(n_points * n_frames, -1).double().numpy()  # row j: Σ^{1/2} e_j
    return root.T @ root


def test_the_noise_model_is_the_linear_gaussian_covariance():
    windows, _, _ = _windows()
    residual = windows.target - windows.target.mean(axis=0)
    generator = LinearGaussianGenerator(rank=3)
    generator._fit_covariance(residual)
    spatial, temporal = generator.covariance()
    noise = _fitted(residual, rank=3)
    n_points, n_frames = residual.shape[1:]
    implied = _dense(noise, n_points, n_frames)
    np.testing.assert_allclose(implied, np.kron(spatial, temporal), atol=1e-4 * np.abs(spatial).max())


def test_whiten_and_colour_invert_each_other_on_any_subset_of_points():
    windows, _, _ = _windows(n_points=12)
    residual = windows.target - windows.target.mean(axis=0)
    noise = _fitted(residual, rank=3)
    x = torch.as_tensor(residual[:20])
    torch.testing.assert_close(noise.colour(noise.whiten(x)), x, atol=1e-4, rtol=1e-4)
    slots = torch.tensor([7, 2, 9, 4])  # a site holding a few of the points, in its own order
    part = x[:, slots]
    torch.testing.assert_close(noise.colour(noise.whiten(part, slots), slots), part, atol=1e-4, rtol=1e-4)
    # the subset's covariance is the full covariance's block
    full = _dense(noise, 12, residual.shape[2]).reshape(12, residual.shape[2], 12, residual.shape[2])
    block = full[np.ix_(slots.numpy(), range(residual.shape[2]), slots.numpy(), range(residual.shape[2]))]
    np.testing.assert_allclose(
        _dense(noise, 4, residual.shape[2], slots), block.reshape(4 * residual.shape[2], -1), atol=1e-4
    )


def test_an_unfitted_noise_model_leaves_the_residual_as_it_is():
    noise = ResidualNoise(12, 3, 4)
    assert not noise.fitted
    x = torch.randn(5, 12, 4)
    assert noise.whiten(x) is x and noise.colour(x) is x


def test_whitened_training_residuals_are_white():
    windows, _, _ = _windows(n_subjects=8, per_subject=60)
    residual = windows.target - cross_fitted_predictions(windows)  # the noise the windows were made with
    noise = _fitted(residual, rank=2)
    z = noise.whiten(torch.as_tensor(residual)).double().numpy()
    n_points, n_frames = z.shape[1:]
    spatial = np.einsum("wnf,wmf->nm", z, z) / (len(z) * n_frames)
    temporal = np.einsum("wnf,wng->fg", z, z) / (len(z) * n_points)
    # white up to the estimator's own bias (principal components, then the diagonal left over,
    # understate the variance off their span: the linear-Gaussian generator's estimate, kept as it is)
    assert np.abs(np.diag(spatial) - 1).max() < 0.5 and np.abs(spatial - np.diag(np.diag(spatial))).max() < 0.35
    assert np.abs(temporal / np.diag(temporal).mean() - np.eye(n_frames)).max() < 0.1
    # the raw residual is far from it: its frames are correlated and its points too
    raw = residual.astype(np.float64)
    raw_temporal = np.einsum("wnf,wng->fg", raw, raw) / np.einsum("wnf,wnf->", raw, raw) * n_frames
    raw_spatial = np.corrcoef(raw.transpose(0, 2, 1).reshape(-1, n_points).T)
    assert raw_temporal[0, 1] > 0.4 and np.abs(raw_spatial - np.eye(n_points)).max() > 0.6


def test_a_zero_velocity_network_samples_white_noise_so_an_untrained_dit_gives_linear_gaussian_samples():
    # v-prediction: the exact denoiser of N(0, I) predicts v = 0, and the DiT's final layer starts at zero
    diffusion = GaussianDiffusion(num_steps=1000, prediction="v")
    zero = lambda x_t, t: torch.zeros_like(x_t)  # noqa: E731
    z = diffusion.flow_sample(zero, (4000, 6, 3), steps=20, generator=torch.Generator().manual_seed(0))
    start = torch.randn((4000, 6, 3), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(z, start)  # the flow ODE of N(0, I) moves nothing: the samples are the white noise
    # DDIM rotates each step and shrinks white noise (the reason the flow solver is the default)
    shrunk = diffusion.ddim_sample(zero, (4000, 6, 3), steps=20, generator=torch.Generator().manual_seed(0))
    assert 0.85 < float(shrunk.var()) < 0.92
    # coloured, they have the noise model's (the linear-Gaussian) covariance
    windows, _, _ = _windows(n_points=6, n_frames=3)
    noise = _fitted(windows.target - windows.target.mean(axis=0), rank=2)
    x = noise.colour(z).double().reshape(len(z), -1)
    implied = torch.as_tensor(_dense(noise, 6, 3))
    assert float((x.T @ x / len(x) - implied).abs().max()) < 0.12 * float(implied.abs().max())


def test_the_linear_gaussian_whitened_mean_square_is_the_dense_quadratic_form_and_sets_its_spread():
    from fedneurogen.shared.workflows.departure import SPREAD_RANGE

    windows, _, _ = _windows()
    train, val = windows.subset(windows.subjects != "sub-01"), windows.subset(windows.subjects == "sub-01")
    generator = LinearGaussianGenerator(rank=2).fit(train, val)
    spatial, temporal = generator.covariance()
    residual = np.asarray(val.target, np.float64) - generator.predict(val)
    flat = residual.transpose(0, 2, 1).reshape(len(residual), -1)  # frame-major, as kron(C, S)
    dense = np.einsum("wi,ij,wj->", flat, np.linalg.inv(np.kron(temporal, spatial)), flat) / residual.size
    assert generator.whitened_mean_square(residual) == pytest.approx(dense, rel=1e-6)
    assert generator.spread == pytest.approx(np.sqrt(np.clip(dense, *SPREAD_RANGE)), rel=1e-6)
    # the samples' residuals scale with the spread; without validation windows it is 1
    unit = LinearGaussianGenerator(rank=2).fit(train)
    assert unit.spread == 1.0
    few = val.subset(np.arange(3))
    drawn = generator.sample(few, k=2, seed=3) - generator.predict(few)
    generator.spread = 1.0
    np.testing.assert_allclose(
        drawn, dense**0.5 * (generator.sample(few, k=2, seed=3) - generator.predict(few)), rtol=1e-4, atol=1e-5
    )


def test_the_models_spread_scales_only_the_sampled_noise_and_is_the_validation_whitened_scale(small_fmri_windows):
    from fedneurogen.shared.model import NeuroGenModel
    from fedneurogen.shared.workflows.departure import SPREAD_KEY, SPREAD_RANGE, set_spread, site_scores
    from fedneurogen.shared.workflows.synthesis import generate

    torch.manual_seed(0)
    model = NeuroGenModel("tiny", device="cpu")
    noise = model.modality_heads["fmri"].noise
    fitted = fit_covariance(np.random.default_rng(0).standard_normal((30, 5124, 8)).astype(np.float32), 20)
    noise.set_covariance(fitted["scale"], fitted["basis"], fitted["temporal"])
    noise.departure.data.fill_(0.0)  # the noise model's Gaussian: samples are mean + spread * Σ^{1/2} z
    windows = small_fmri_windows[0].subset(np.arange(len(small_fmri_windows[0])) < 4)
    labels = np.zeros(len(windows), dtype=int)

    def drawn(mean_square: float) -> np.ndarray:
        assert set_spread(model, "fmri", mean_square) == {
            "spread": mean_square**0.5,
            "whitened_mean_square": mean_square,
        }
        return generate(model, windows, labels, n_samples=1, seed=2)

    one, two, three = drawn(1.0), drawn(4.0), drawn(9.0)
    assert np.abs(two - one).max() > 0.1  # the spread moves the samples ...
    np.testing.assert_allclose(three - one, 2 * (two - one), rtol=1e-3, atol=1e-3)  # ... linearly: only the noise
    # out of range: clipped; not finite or not positive: nothing set
    assert set_spread(model, "fmri", 1e6)["spread"] == pytest.approx(np.sqrt(SPREAD_RANGE[1]))
    for bad in (float("nan"), float("inf"), -1.0, 0.0):
        assert set_spread(model, "fmri", bad) is None
    assert float(noise.spread) == pytest.approx(np.sqrt(SPREAD_RANGE[1]))
    assert set_spread(model, "fnirs", 4.0) is None  # no fitted noise model there
    # a site's scores: the whitened mean square of its windows, the model's spread left as it was
    scores = site_scores(model, windows, {}, seed=0, batch_size=4)
    assert float(noise.spread) == pytest.approx(np.sqrt(SPREAD_RANGE[1])) and scores[SPREAD_KEY] > 0
    # a class's samples are drawn about the mean with its offset whole, not the point prediction's shrunk one
    from fedneurogen.shared.model import Batch

    ridge = model.modality_heads["fmri"].mean.ridge
    c, f, n = ridge.class_intercept.shape
    ridge.set_class_offsets(np.random.default_rng(1).standard_normal((c - 1, f, n)).astype(np.float32), shrinkage=0.25)
    one, two = drawn(1.0), drawn(4.0)
    centre = (2 * one - two).reshape(len(windows), n, f)  # sample = centre + spread * noise
    batch = Batch.from_windows(windows, np.arange(len(windows)), device="cpu")
    batch.labels = torch.as_tensor(labels)
    with torch.no_grad():
        whole = model.point_prediction(batch, whole_class_offset=True).numpy()
        shrunk = model.point_prediction(batch).numpy()
    np.testing.assert_allclose(centre, whole, rtol=1e-3, atol=2e-3)
    assert np.abs(centre - shrunk).max() > 0.5
