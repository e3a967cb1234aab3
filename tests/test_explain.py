"""Explanations of the point prediction: completeness, a zero residual, the command's outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fedneurogen.cli import app
from fedneurogen.shared.workflows import explain_attribution as attribution
from fedneurogen.shared.workflows import explain_regions as regions
from fedneurogen.shared.config import PreprocessConfig
from fedneurogen.shared.errors import ConfigError
from fedneurogen.shared.features import EEG_BANDS
from fedneurogen.shared.outputs import OUTPUT_MARKER


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One simulated EEG-fMRI site (2 subjects, 80 s runs) and a tiny model whose ridge path is
    fitted on it and whose residual readout is random (so the residual is not zero)."""
    from fedneurogen.shared.data import load_site
    from fedneurogen.shared.model import EMA, NeuroGenModel, save_checkpoint
    from fedneurogen.shared.model.mean import fit_ridge_paths
    from fedneurogen.shared.workflows.training import class_index
    from fedneurogen.simulations.simulator import simulate_dataset

    root = tmp_path_factory.mktemp("explain")
    (site,) = simulate_dataset(
        root / "data", n_sites=1, subjects_per_site=2, modality="fmri", seed=21, run_seconds=80.0, progress=False
    )
    windows = load_site(site, progress=False)
    torch.manual_seed(0)
    model = NeuroGenModel("tiny", device="cpu")
    subjects = sorted(set(windows.subjects.tolist()))
    fit_ridge_paths(
        model, [windows.subset(windows.subjects != subjects[-1])], [windows.subset(windows.subjects == subjects[-1])]
    )
    with torch.no_grad():
        torch.nn.init.normal_(model.modality_heads["fmri"].mean.readout.weight, std=0.05)
    classes = class_index([windows])
    extra = {
        "preprocess": PreprocessConfig().model_dump(),
        "class_names": list(classes),
        "provenance": {"sites": [site.name]},
    }
    checkpoint = save_checkpoint(root / "checkpoint", model, EMA(model), extra=extra)
    return model, windows, site, checkpoint, list(classes)


def test_ridge_attributions_sum_to_the_prediction():
    rng = np.random.default_rng(0)
    design, coef, intercept, baseline = (
        rng.normal(size=(6, 20)),
        rng.normal(size=(20, 4)),
        rng.normal(size=4),
        rng.normal(size=20),
    )
    attributions = attribution.ridge_attributions(design, coef, baseline)
    assert attributions.shape == (6, 20, 4)
    np.testing.assert_allclose(
        attributions.sum(axis=1) + baseline @ coef + intercept, design @ coef + intercept, atol=1e-10
    )


def test_integrated_gradients_are_complete_for_a_small_network():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.GELU(), torch.nn.Linear(5, 3), torch.nn.GELU()).double()
    x, x0 = torch.randn(9, 7, dtype=torch.float64), torch.zeros(7, dtype=torch.float64)
    ig, delta = attribution.integrated_gradients(net, x, x0, steps=64, chunk=2)  # chunk: Captum's internal batches
    assert ig.shape == (9, 3, 7) and delta.shape == (9, 3)
    with torch.no_grad():
        change = net(x) - net(x0[None])
    torch.testing.assert_close(ig.sum(dim=2), change, atol=2e-4, rtol=1e-3)
    # Captum's convergence delta is the completeness gap itself, and small
    torch.testing.assert_close(delta, ig.sum(dim=2) - change, atol=1e-12, rtol=0)
    assert delta.abs().max() < 2e-5  # 4e-6 at 64 steps; 7e-5 at 16
    # the midpoint rule, as written out: (x - x0) times the mean gradient at the 64 midpoints
    jacobian = torch.func.vmap(torch.func.jacrev(net))
    midpoints = sum(jacobian(x0 + (k + 0.5) / 64 * (x - x0)) for k in range(64)) / 64
    torch.testing.assert_close(ig, midpoints * (x - x0)[:, None, :], atol=1e-12, rtol=1e-9)
    with pytest.raises(ConfigError, match="at least 2 steps"):
        attribution.integrated_gradients(net, x, x0, steps=1)


def test_model_decomposition_is_complete_and_matches_the_point_prediction(tiny):
    from fedneurogen.shared.design import unique_frames
    from fedneurogen.shared.workflows.synthesis import point_predictions

    model, windows, _, _, _ = tiny
    dec = attribution.decompose(model, windows, steps=16)
    rows_w, rows_f = unique_frames(windows)
    expected = point_predictions(model, windows)[rows_w, :, rows_f]
    np.testing.assert_allclose(dec.prediction, expected, atol=1e-4)
    # the ridge path: exact completeness; band shares of its variance sum to 1
    assert attribution.ridge_completeness(dec) < 1e-3
    _, band, _ = attribution.feature_groups(dec.design.shape[1], 64)
    contrib = attribution.contributions(dec, band, len(EEG_BANDS))
    points = np.argsort(-contrib.variance["ridge_path"])[:50]
    assert contrib.share("ridge_path", points).sum() == pytest.approx(1.0, abs=1e-6)
    # the residual: integrated gradients close to complete, and per band they add up to the whole
    gap = attribution.ig_completeness(dec)
    assert gap < 0.05
    # Captum's convergence delta, through the readout, is that gap (float32 rounding aside)
    change = np.abs(dec.residual - dec.residual_at_baseline).sum()
    assert dec.ig_delta.shape == dec.ig.shape[:2]
    assert np.abs(dec.ig_delta @ dec.readout.T).sum() / change == pytest.approx(gap, rel=0.05, abs=1e-6)
    grouped = dec.residual_attributions(band, len(EEG_BANDS))
    np.testing.assert_allclose(grouped.sum(axis=1), dec.ig.sum(axis=2) @ dec.readout.T, atol=1e-8)


def test_a_zero_residual_gets_zero_attributions(tiny):
    import copy

    model, windows, _, _, _ = tiny
    zero = copy.deepcopy(model)
    zero.modality_heads["fmri"].mean.reset_residual()
    dec = attribution.decompose(zero, windows.subset(np.arange(6)), steps=4)
    _, band, _ = attribution.feature_groups(dec.design.shape[1], 64)
    assert not np.any(dec.residual)
    assert not np.any(dec.residual_attributions(band, len(EEG_BANDS)))
    contrib = attribution.contributions(dec, band, len(EEG_BANDS))
    assert not np.any(contrib.covariance["residual"]) and not np.any(contrib.share("residual", np.arange(10)))
    assert attribution.ig_completeness(dec) is None
    assert not np.any(dec.ig_delta @ dec.readout.T)  # the latent moves; the zero readout hides it


def test_effective_hrf_peaks_where_the_basis_weights_put_it():
    config = PreprocessConfig()
    canonical = np.zeros((64 * 5 * 2, 3))
    canonical[0::2] = 1.0  # the canonical function alone: Glover's peak (~5 s)
    assert attribution.effective_hrf(canonical, 64, config)["peak_s"] == pytest.approx(5.05, abs=0.1)
    later = canonical.copy()
    later[1::2] = -0.5  # minus the derivative: a later peak
    assert attribution.effective_hrf(-later, 64, config)["peak_s"] == pytest.approx(6.0, abs=0.1)


def test_regions_follow_the_coordinates():
    positions = np.array([[-20, -95, 0], [40, -20, 60], [-50, -20, -15], [30, 40, 30], [-30, -60, 50]])
    assert regions.coarse_regions(positions) == [
        "left occipital",
        "right central",
        "left temporal",
        "right frontal",
        "left parietal",
    ]
    assert regions.coarse_regions(positions[:1], ["R12"]) == ["right occipital"]


def test_explain_command_writes_readable_json_and_pngs(tiny, tmp_path):
    _, _, site, checkpoint, classes = tiny
    out = tmp_path / "explain"
    label = next(c for c in classes if c != "rest")
    args = ["explain", "--checkpoint", str(checkpoint), "--data", str(site), "--out", str(out), "--steps", "16"]
    result = CliRunner().invoke(app, [*args, "--label", label, "--points", "occipital"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "explain.json").read_text())
    assert report["label"] == label and report["points"]["rule"] == "points of region 'occipital'"
    assert set(report["band_shares"]) == {"ridge_path", "residual", "prediction"}
    assert sum(report["band_shares"]["ridge_path"].values()) == pytest.approx(1.0, abs=1e-6)
    assert "integrated gradients" in report["methods"]["residual"] and "exact" in report["methods"]["ridge_path"]
    assert "Captum" in report["methods"]["residual"]
    assert 0 <= report["completeness"]["residual_ig_max_abs_convergence_delta"] < 1e-2
    assert len(report["electrodes"]["ranking"]) == 64 and "atlas" in report["regions"]["source"]
    assert all(0 <= r["effective_hrf"]["peak_s"] <= 30 for r in report["regions"]["by_region"].values())
    assert len(report["per_point"]["dominant_band"]) == 5124
    for name in report["plots"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    written = sorted(p.name for p in out.iterdir() if p.name != OUTPUT_MARKER)  # the marker: see shared/outputs.py
    assert written == sorted(["explain.json", *report["plots"]])  # no temporary files

    bad = CliRunner().invoke(app, [*args, "--points", "cerebellum"])
    assert bad.exit_code == 2 and "--points" in bad.output
