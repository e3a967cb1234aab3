"""Diffusion process: cosine schedule, parameterisations, DDIM sampling of a known Gaussian."""

from __future__ import annotations

import math

import pytest
import torch

from fedneurogen.shared.model.diffusion import GaussianDiffusion, cosine_betas, ddim_timesteps


def test_cosine_schedule():
    betas = cosine_betas(1000)
    abar = torch.cumprod(1 - torch.from_numpy(betas), dim=0)
    assert betas.shape == (1000,) and (betas > 0).all() and (betas <= 0.999).all()
    assert (abar[1:] < abar[:-1]).all()
    assert abar[0] > 0.9999 and abar[-1] < 1e-4
    # the cosine curve itself, away from the clipped end
    s = 0.008
    expected = math.cos((500 / 1000 + s) / (1 + s) * math.pi / 2) ** 2 / math.cos(s / (1 + s) * math.pi / 2) ** 2
    assert float(abar[499]) == pytest.approx(expected, rel=1e-6)


def test_ddim_timesteps_are_respaced_from_the_noisiest_step_to_zero():
    steps = ddim_timesteps(1000, 50)
    assert len(steps) == 50 and steps[0] == 999 and steps[-1] == 0
    assert all(a > b for a, b in zip(steps, steps[1:]))
    assert ddim_timesteps(1000, 1) == [999]


@pytest.mark.parametrize("prediction", ["v", "eps"])
def test_training_target_inverts_to_the_clean_signal_and_the_noise(prediction):
    diffusion = GaussianDiffusion(1000, prediction)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(6, 5, 3, generator=g), torch.randn(6, 5, 3, generator=g)
    t = torch.tensor([0, 10, 250, 500, 900, 998])
    x_t = diffusion.q_sample(x0, t, noise)
    x0_hat, eps_hat = diffusion.predict_x0_and_eps(x_t, t, diffusion.training_target(x0, t, noise))
    torch.testing.assert_close(eps_hat, noise, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(x0_hat[:5], x0[:5], rtol=1e-4, atol=1e-4)  # eps at t=998 divides by ~0
    # q_sample keeps unit variance for unit-variance data (variance preserving)
    big = diffusion.q_sample(
        torch.randn(20000, generator=g), torch.full((20000,), 400), torch.randn(20000, generator=g)
    )
    assert big.var().item() == pytest.approx(1.0, abs=0.05)


def gaussian_denoiser(diffusion: GaussianDiffusion, mean: torch.Tensor, std: torch.Tensor):
    """The exact network output for data ~ N(mean, diag std^2): E[x0 | x_t] in closed form."""

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s = diffusion._coefficients(t, x_t)
        var = std**2
        x0 = mean + a * var * (x_t - a * mean) / (a**2 * var + s**2)
        eps = (x_t - a * x0) / s
        return eps if diffusion.prediction == "eps" else a * eps - s * x0

    return model_fn


MEAN, STD = torch.tensor([2.0, -1.0, 0.0]), torch.tensor([0.5, 1.5, 1.0])


def draw_gaussian(prediction: str, steps: int, eta: float = 0.0) -> torch.Tensor:
    diffusion = GaussianDiffusion(1000, prediction)
    fn = gaussian_denoiser(diffusion, MEAN, STD)
    return diffusion.ddim_sample(fn, (20000, 3), steps=steps, eta=eta, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "prediction, steps, eta, std_tolerance",
    [("v", 50, 0.0, 0.05), ("eps", 50, 0.0, 0.05), ("v", 200, 0.0, 0.02), ("v", 200, 1.0, 0.03)],
)
def test_ddim_recovers_a_gaussian_distribution(prediction, steps, eta, std_tolerance):
    samples = draw_gaussian(prediction, steps, eta)
    torch.testing.assert_close(samples.mean(0), MEAN, rtol=0, atol=0.05)
    torch.testing.assert_close(samples.std(0), STD, rtol=std_tolerance, atol=0)


def test_ddim_error_shrinks_with_more_steps():
    """DDIM is first order: with few steps it under-disperses (a known property even with the
    exact denoiser); the error must fall as the steps grow."""
    errors = [(draw_gaussian("v", steps).std(0) / STD - 1).abs().max().item() for steps in (10, 50, 200)]
    assert errors[0] > errors[1] > errors[2]


def test_ddim_with_eta_zero_is_deterministic_given_the_generator():
    diffusion = GaussianDiffusion(1000, "v")
    fn = gaussian_denoiser(diffusion, torch.tensor([1.0]), torch.tensor([0.3]))
    draw = lambda seed: diffusion.ddim_sample(fn, (64, 1), steps=8, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    assert torch.equal(draw(1), draw(1))
    assert not torch.equal(draw(1), draw(2))


def test_unknown_prediction_is_rejected():
    with pytest.raises(ValueError, match="prediction"):
        GaussianDiffusion(1000, "x0")


@pytest.mark.parametrize("prediction", ["v", "eps"])
def test_the_flow_solver_recovers_a_gaussian_with_fewer_steps_than_ddim(prediction):
    diffusion = GaussianDiffusion(1000, prediction)
    fn = gaussian_denoiser(diffusion, MEAN, STD)
    flow = diffusion.flow_sample(fn, (20000, 3), steps=20, generator=torch.Generator().manual_seed(0))
    # first order in the mean (DDIM is exact for a point mass), exact for white noise: data far
    # from zero mean, as here (mean 2), is what the point prediction leaves the diffusion without
    torch.testing.assert_close(flow.mean(0), MEAN, rtol=0, atol=0.08)
    flow_error = (flow.std(0) / STD - 1).abs().max().item()
    ddim_error = (draw_gaussian(prediction, 20).std(0) / STD - 1).abs().max().item()
    assert flow_error < 0.03 and flow_error < ddim_error
    # deterministic given the generator
    again = diffusion.flow_sample(fn, (20000, 3), steps=20, generator=torch.Generator().manual_seed(0))
    assert torch.equal(flow, again)
