"""Equations (1)-(3) against small hand-computed cases."""

import math

import numpy as np
import torch

from fedneurogen.shared.integration import SpatialIntegration, TemporalAlignment, inverse_square_weights


def test_inverse_square_weights_match_hand_computation():
    # one target point at the origin, electrodes at 10 mm and 20 mm (0.01 m, 0.02 m)
    target = torch.tensor([[0.0, 0.0, 0.0]])
    electrodes = torch.tensor([[10.0, 0.0, 0.0], [0.0, 20.0, 0.0]])
    w = inverse_square_weights(target, electrodes, eps=1e-6)
    raw = np.array([1 / (0.01**2 + 1e-6), 1 / (0.02**2 + 1e-6)])
    expected = raw / raw.sum()
    np.testing.assert_allclose(w.numpy()[0], expected, rtol=1e-6)
    # the nearer electrode dominates roughly 4:1 (inverse square)
    assert 3.9 < w[0, 0] / w[0, 1] < 4.1


def test_spatial_integration_is_a_weighted_average():
    targets = torch.tensor([[0.0, 0.0, 0.0], [30.0, 0.0, 0.0]])
    electrodes = torch.tensor([[1.0, 0.0, 0.0], [29.0, 0.0, 0.0], [15.0, 15.0, 0.0]])
    layer = SpatialIntegration(targets)
    eeg = torch.tensor([[[1.0, 2.0], [5.0, 6.0], [3.0, 3.0]]])  # [B=1, C=3, T=2]
    out = layer(eeg, electrodes)
    assert out.shape == (1, 2, 2)
    w = inverse_square_weights(targets, electrodes)
    torch.testing.assert_close(out[0], w @ eeg[0])
    # each target is pulled towards its nearest electrode's signal
    assert abs(out[0, 0, 0].item() - 1.0) < 0.1
    assert abs(out[0, 1, 0].item() - 5.0) < 0.1
    # a constant signal stays constant (weights sum to one)
    const = layer(torch.full((1, 3, 4), 7.0), electrodes)
    torch.testing.assert_close(const, torch.full((1, 2, 4), 7.0))


def test_spatial_integration_target_on_an_electrode_copies_it():
    electrodes = torch.tensor([[0.0, 0.0, 0.0], [50.0, 0.0, 0.0]])
    layer = SpatialIntegration(electrodes.clone())
    eeg = torch.randn(2, 2, 5, generator=torch.Generator().manual_seed(0))
    out = layer(eeg, electrodes)
    # eps = 1 mm^2 against (50 mm)^2: the coincident electrode has weight 2500/2501
    torch.testing.assert_close(out, eeg, atol=2e-3 * eeg.abs().max().item(), rtol=0)


def test_temporal_alignment_matrix_matches_equation_3():
    layer = TemporalAlignment(tau=6.0, sigma=2.0)
    source = torch.tensor([0.0, 2.0, 4.0])
    target = torch.tensor([6.0, 10.0])
    a = layer.matrix(source, target)
    raw = np.exp(-((target.numpy()[:, None] - source.numpy()[None, :] - 6.0) ** 2) / (2 * 2.0**2))
    expected = raw / raw.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(a.numpy(), expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(a.sum(dim=1), torch.ones(2))
    # target time 6 s looks 6 s back: the EEG sample at 0 s gets the largest weight
    assert a[0].argmax().item() == 0


def test_temporal_alignment_delays_an_impulse_by_tau():
    layer = TemporalAlignment(tau=6.0, sigma=1.0)
    source = torch.arange(0, 30, 0.5)
    target = torch.arange(0, 30, 1.0)
    impulse = torch.zeros(1, len(source))
    impulse[0, (source == 10.0).nonzero()[0, 0]] = 1.0
    out = layer(impulse, source, target)
    assert target[out[0].argmax()].item() == 16.0


def test_learnable_alignment_has_gradients_and_positive_sigma():
    layer = TemporalAlignment(tau=6.0, sigma=2.0, learnable=True)
    assert math.isclose(layer.sigma.item(), 2.0, rel_tol=1e-5)
    names = {n for n, _ in layer.named_parameters()}
    assert names == {"tau", "raw_sigma"}
    x = torch.randn(3, 20)
    out = layer(x, torch.arange(20.0), torch.arange(0.0, 20.0, 2.0))
    out.pow(2).sum().backward()
    assert layer.tau.grad is not None and layer.raw_sigma.grad is not None
    with torch.no_grad():
        layer.raw_sigma.fill_(-20.0)
    assert layer.sigma.item() > 0


def test_fixed_alignment_has_no_parameters():
    assert list(TemporalAlignment(learnable=False).parameters()) == []
