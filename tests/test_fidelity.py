"""The point prediction: full hemodynamic history, the closed-form ridge path, the residual.

Issue-level guarantees: every frame's design summarises at least ``history_seconds`` of EEG
inside the run; the ridge path is scikit-learn's Ridge on the same features; the mean starts as
the ridge path; the label-free mean ignores labels; a run shorter than the history is refused
with both lengths named; sites with different montages share one feature space and train
together.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge

from fedneurogen.shared.config import PreprocessConfig
from fedneurogen.shared.design import (
    hemodynamic_convolution,
    n_design_features,
    run_design,
    subject_statistics,
    to_virtual_montage,
    virtual_positions,
)
from fedneurogen.shared.model import Batch, NeuroGenModel
from fedneurogen.shared.model.mean import fit_ridge_paths
from fedneurogen.shared.recording import Recording
from fedneurogen.shared.ridge import RidgeStatistics, fit_ridge, sum_statistics


def test_windows_start_after_the_full_history_and_carry_its_design(small_fmri_windows):
    config = PreprocessConfig()
    for windows in small_fmri_windows:
        assert windows.history == config.history_seconds >= 24.0
        assert windows.onsets.min() >= config.history_seconds  # the first frame has H s of EEG before it
        assert windows.design.shape == (len(windows), windows.target.shape[-1], n_design_features(config))
        assert np.isfinite(windows.design).all()


def test_design_depends_on_the_history_only_back_to_history_seconds():
    rng = np.random.default_rng(0)
    config = PreprocessConfig()
    centres = np.arange(0.0, 100.0, 1.0)
    frames = np.array([60.0])
    series = rng.standard_normal((3, len(centres)))
    base = hemodynamic_convolution(series, centres, frames, config)
    changed = series.copy()
    changed[:, centres < 60.0 - config.history_seconds - 0.5] += 5.0  # older than the history
    assert np.allclose(hemodynamic_convolution(changed, centres, frames, config), base)
    changed = series.copy()
    changed[:, (centres > 40.0) & (centres < 50.0)] += 5.0  # 10-20 s before the frame: inside
    assert not np.allclose(hemodynamic_convolution(changed, centres, frames, config), base)
    changed = series.copy()
    changed[:, centres > 60.5] += 5.0  # after the frame: the design is causal
    assert np.allclose(hemodynamic_convolution(changed, centres, frames, config), base)


def test_ridge_from_statistics_equals_scikit_learn_and_statistics_add_up():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 12)) * rng.uniform(0.5, 3, 12) + rng.standard_normal(12)
    y = x @ rng.standard_normal((12, 5)) + rng.standard_normal((300, 5)) + 2.0
    parts = [RidgeStatistics.from_rows(x[i : i + 100], y[i : i + 100]) for i in (0, 100, 200)]
    pooled = sum_statistics(parts)
    whole = RidgeStatistics.from_rows(x, y)
    for name, value in pooled.as_arrays().items():
        assert np.allclose(value, whole.as_arrays()[name])
    lam = 0.7
    ours = fit_ridge(pooled, None, penalties=(lam,))
    z_mean, z_std = x.mean(0), x.std(0)
    reference = Ridge(alpha=lam * len(x)).fit((x - z_mean) / z_std, y)  # our penalty is per row, on standardised x
    expected = reference.predict((x - z_mean) / z_std)
    assert np.max(np.abs(ours.predict(x) - expected)) <= 1e-5


def test_reduced_rank_and_penalty_are_chosen_on_validation_statistics():
    rng = np.random.default_rng(2)
    latent = rng.standard_normal((600, 2))
    x = latent @ rng.standard_normal((2, 20)) + 0.5 * rng.standard_normal((600, 20))
    y = latent @ rng.standard_normal((2, 40)) + 1.5 * rng.standard_normal((600, 40))  # rank-2 signal
    train, val = RidgeStatistics.from_rows(x[:400], y[:400]), RidgeStatistics.from_rows(x[400:], y[400:])
    solution = fit_ridge(train, val, ranks=(1, 2, 8, None))
    assert solution.rank == 2
    errors = {}
    for rank in (1, 2, 8, None):
        pred = fit_ridge(train, None, penalties=(solution.lam,), ranks=(rank,)).predict(x[400:])
        errors[rank] = float(np.mean((pred - y[400:]) ** 2))
    assert min(errors, key=errors.get) == 2
    assert solution.validation_mse == pytest.approx(errors[2], rel=1e-6)  # computed from statistics alone


def _site_batch(windows, n: int = 6) -> Batch:
    return Batch.from_windows(windows, np.arange(n), {c: i for i, c in enumerate(windows.classes)}, device="cpu")


def test_mean_starts_as_the_ridge_path_and_the_label_free_mean_ignores_labels(small_fmri_windows):
    site = small_fmri_windows[0]
    torch.manual_seed(0)
    model = NeuroGenModel("tiny", device="cpu")
    fit_ridge_paths(model, [site])
    model.eval()  # no dropout: the point prediction is deterministic
    batch = _site_batch(site)
    ridge = model.modality_heads["fmri"].mean.ridge
    expected = (batch.design @ ridge.coef + ridge.intercept).transpose(1, 2)
    with torch.no_grad():
        assert torch.allclose(model.point_prediction(batch), expected, atol=1e-5)
        # train the residual and the label embedding a little, then labels matter only with labels
        for p in model.modality_heads["fmri"].mean.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
        other = batch.labels.roll(1)
        free = model.point_prediction(batch, use_labels=False)
        assert torch.equal(free, model.point_prediction(batch, use_labels=False, labels=other))
        assert not torch.allclose(model.point_prediction(batch), model.point_prediction(batch, labels=other))


def test_a_run_shorter_than_the_history_is_refused_with_both_lengths(tmp_path):
    from fedneurogen.shared.data import load_site_data
    from fedneurogen.shared.errors import DataError
    from fedneurogen.simulations.simulator import simulate_dataset

    (site,) = simulate_dataset(
        tmp_path / "short", n_sites=1, subjects_per_site=1, seed=2, run_seconds=60.0, progress=False
    )
    config = PreprocessConfig(history_seconds=100.0)  # within the settings' bounds, longer than the run
    with pytest.raises(DataError) as err:
        load_site_data(site, config, cache_dir=tmp_path / "cache", progress=False)
    message = str(err.value)
    assert "60" in message and "100" in message and "sub-01" in message


def test_sites_with_different_montages_share_the_design_and_train_together(small_fmri_windows):
    sixty_four, thirty_two = small_fmri_windows
    assert len(sixty_four.eeg_channel_names) != len(thirty_two.eeg_channel_names)
    assert sixty_four.design.shape[-1] == thirty_two.design.shape[-1]
    torch.manual_seed(0)
    model = NeuroGenModel("tiny", device="cpu")
    chosen = fit_ridge_paths(model, [sixty_four, thirty_two])
    assert chosen["fmri"]["frames"] == sum(s.n for site in (sixty_four, thirty_two) for s in subject_statistics(site))
    for site in (sixty_four, thirty_two):
        loss, parts = model.loss(_site_batch(site))
        loss.backward()
        assert np.isfinite(parts["mean"]) and np.isfinite(parts["diffusion"])


def test_virtual_montage_keeps_a_channel_at_its_own_position():
    positions = virtual_positions()[[0, 30, 63]]
    values = np.eye(3)
    mapped = to_virtual_montage(values, positions)  # [64, 3]
    for column, row in enumerate((0, 30, 63)):
        assert mapped[row].argmax() == column and mapped[row, column] > 0.5


def test_design_of_a_run_follows_alpha_power_through_the_hrf():
    """A run whose occipital alpha drops in blocks: the alpha design at O1 anticorrelates with
    the blocks convolved with the HRF (what BOLD in visual cortex does)."""
    rng = np.random.default_rng(3)
    sfreq, seconds = 200.0, 240
    t = np.arange(int(sfreq * seconds)) / sfreq
    blocks = ((t // 20) % 2 == 1).astype(float)
    alpha = (1.0 - 0.7 * blocks) * np.sin(2 * np.pi * 10 * t)
    names = ["O1", "O2", "Cz"]
    positions = virtual_positions()[[26, 63, 47]]
    data = np.stack([alpha, alpha, np.zeros_like(t)]) + 0.05 * rng.standard_normal((3, len(t)))
    eeg = Recording(data=data, sfreq=sfreq, positions=positions, names=names, modality="eeg")
    config = PreprocessConfig(hrf_basis="canonical")
    frames = np.arange(40, seconds, 2.0)
    design = run_design(eeg, frames, config)
    o1_alpha = 26 * 5 + 2  # (virtual electrode O1, band alpha, canonical basis)
    box = hemodynamic_convolution(
        (((np.arange(seconds) + 1.0) // 20) % 2 == 1).astype(float)[None], np.arange(seconds) + 1.0, frames, config
    )[:, 0]
    assert np.corrcoef(design[:, o1_alpha], box)[0, 1] < -0.8


def test_the_alpha_gated_block_multiplies_band_power_before_the_hrf():
    """The block after the 640 linear columns is the HRF of (band x the electrode's alpha gate,
    max(0, -alpha)), multiplied at each segment and averaged over each scalp region's
    electrodes, not the product of convolved columns; the linear columns are the design without
    the block; the ``product`` gate is band x alpha."""
    from fedneurogen.shared.design import (
        N_GATED,
        N_REGIONS,
        gated_power,
        linear_part,
        run_band_power,
        scalp_regions,
    )

    rng = np.random.default_rng(4)
    sfreq, seconds = 200.0, 120
    data = rng.standard_normal((3, int(sfreq * seconds)))
    positions = virtual_positions()[[26, 63, 47]]
    eeg = Recording(data=data, sfreq=sfreq, positions=positions, names=["O1", "O2", "Cz"], modality="eeg")
    frames = np.arange(40, seconds, 2.0)
    config = PreprocessConfig()
    design = run_design(eeg, frames, config)
    plain = run_design(eeg, frames, PreprocessConfig(alpha_gating=False))
    assert design.shape == (len(frames), 640 + N_GATED) == (len(frames), n_design_features(config))
    np.testing.assert_array_equal(linear_part(design), plain)
    power, centres = run_band_power(eeg, config)
    virtual = to_virtual_montage(power, eeg.positions)  # [64, 5, L]
    products = gated_power(virtual).reshape(N_REGIONS, 5, -1)
    o1 = scalp_regions() == scalp_regions()[26]
    gate = np.maximum(0.0, -virtual[o1, 2])  # alpha below its run mean
    np.testing.assert_allclose(products[scalp_regions()[26], 1], (virtual[o1, 1] * gate).mean(axis=0))
    assert (gate == 0).mean() > 0.3 and (gate > 0).mean() > 0.3  # one-sided: closed about half the time
    symmetric = gated_power(virtual, "product").reshape(N_REGIONS, 5, -1)
    np.testing.assert_allclose(symmetric[scalp_regions()[26], 1], (virtual[o1, 1] * virtual[o1, 2]).mean(axis=0))
    product_design = run_design(eeg, frames, PreprocessConfig(alpha_gate="product"))
    np.testing.assert_array_equal(linear_part(product_design), plain)
    assert not np.allclose(product_design[:, 640:], design[:, 640:])
    canonical = PreprocessConfig(hrf_basis="canonical")
    expected = hemodynamic_convolution(products.reshape(N_GATED, -1), centres, frames, canonical)
    np.testing.assert_allclose(design[:, 640:], expected, rtol=1e-4, atol=1e-5)
    column = 640 + scalp_regions()[26] * 5 + 1  # O1's region, theta x alpha
    convolved_then_multiplied = plain[:, 26 * 10 + 2] * plain[:, 26 * 10 + 4]  # O1 theta x O1 alpha, canonical
    assert abs(np.corrcoef(design[:, column], convolved_then_multiplied)[0, 1]) < 0.9


def test_the_ridge_path_weighs_the_gated_block_and_the_baseline_never_reads_it(small_fmri_windows):
    """Targets driven by a gated column: the banded ridge path gives the block a weight and
    beats its linear fit on held-out rows; ridge-HRF's predictions ignore the block."""
    from fedneurogen.shared.design import DESIGN_GROUPS, N_GATED, feature_bands
    from fedneurogen.shared.ridge import fit_ridge_selected
    from fedneurogen.shared.workflows.baselines import RidgeHRFBaseline

    rng = np.random.default_rng(5)
    width = 640 + N_GATED
    x = rng.standard_normal((3, 400, width))
    y = 0.8 * x[..., 640 + 7 : 640 + 8] - 0.5 * x[..., 3:4] + 0.3 * rng.standard_normal((3, 400, 2))
    train, val = [RidgeStatistics.from_rows(x[i], y[i]) for i in (0, 1)], RidgeStatistics.from_rows(x[2], y[2])
    groups = feature_bands(width)
    assert DESIGN_GROUPS[groups[-1]] == "alpha-gated" and (groups == len(DESIGN_GROUPS) - 1).sum() == N_GATED
    gated = fit_ridge_selected(train, val, groups=groups)
    linear = fit_ridge_selected(
        [RidgeStatistics.from_rows(x[i, :, :640], y[i]) for i in (0, 1)],
        RidgeStatistics.from_rows(x[2, :, :640], y[2]),
        groups=groups[:640],
    )
    assert gated.weights[-1] > 0 and gated.validation_mse < 0.7 * linear.validation_mse
    windows = small_fmri_windows[0]
    baseline = RidgeHRFBaseline().fit(windows)
    moved = np.array(windows.design)
    moved[..., 640:] = rng.standard_normal(moved[..., 640:].shape)
    np.testing.assert_array_equal(baseline.predict(windows), baseline.predict(replace(windows, design=moved)))
    assert baseline.solution.coef.shape[0] == 640


def test_banded_ridge_drops_a_group_that_carries_only_noise():
    from fedneurogen.shared.ridge import fit_banded_ridge

    rng = np.random.default_rng(4)
    n, informative, noise = 500, 6, 30
    x = rng.standard_normal((n, informative + noise))
    y = x[:, :informative] @ rng.standard_normal((informative, 10)) + 2.0 * rng.standard_normal((n, 10))
    groups = np.array([0] * informative + [1] * noise)
    train, val = RidgeStatistics.from_rows(x[:300], y[:300]), RidgeStatistics.from_rows(x[300:], y[300:])
    solution, weights = fit_banded_ridge(train, val, groups)
    assert weights[groups == 1].max() == 0.0 and weights[groups == 0].min() > 0
    assert np.all(solution.coef[groups == 1] == 0)  # the dropped group has no coefficients
    plain = fit_ridge(train, val)
    assert solution.validation_mse < plain.validation_mse


def test_the_banded_search_scores_each_weighting_as_a_full_fit_would():
    """The banded search's trials (``[D, D]`` terms reweighted) give the validation error of the
    full fit with those weights, switched-off groups and a constant feature included."""
    from fedneurogen.shared.ridge import DEFAULT_PENALTIES, _WeightedValidation

    rng = np.random.default_rng(5)
    x = rng.standard_normal((400, 24)) * rng.uniform(0.3, 3.0, 24)
    x[:, 3] = 2.0  # does not vary: off in every fit
    y = x[:, :5] @ rng.standard_normal((5, 60)) + rng.standard_normal((400, 60))
    train, val = RidgeStatistics.from_rows(x[:300], y[:300]), RidgeStatistics.from_rows(x[300:], y[300:])
    search = _WeightedValidation(train, val, DEFAULT_PENALTIES)
    for _ in range(6):
        weights = rng.choice([0.0, 0.5, 1.0, 2.0], 24)
        full = fit_ridge(train, val, DEFAULT_PENALTIES, (None,), weights).validation_mse
        assert search.mse(weights) == pytest.approx(full, rel=1e-10)


def test_ridge_path_from_summed_site_statistics_equals_the_pooled_fit(small_fmri_windows):
    """What a federation does (each site sends sums, the server solves) gives the ridge path
    fitted centrally on the pooled windows."""
    from fedneurogen.client.site import SiteSplit, ridge_statistics
    from fedneurogen.shared.model.mean import solve_ridge_path

    sites = []
    for windows in small_fmri_windows:  # 3 subjects each: two train, one held out
        subjects = sorted(set(windows.subjects.tolist()))
        held = windows.subjects == subjects[-1]
        sites.append(SiteSplit(train=windows.subset(~held), val=windows.subset(held)))
    torch.manual_seed(0)
    central = NeuroGenModel("tiny", device="cpu")
    fit_ridge_paths(central, [s.train for s in sites], [s.val for s in sites])

    federated = NeuroGenModel("tiny", device="cpu")
    sent = [ridge_statistics(s) for s in sites]
    assert all(a.ndim >= 1 for message in sent for a in message.values())
    parts = [RidgeStatistics.from_arrays({k[6:]: v for k, v in m.items() if k.startswith("train.")}) for m in sent]
    val = sum_statistics(
        [RidgeStatistics.from_arrays({k[4:]: v for k, v in m.items() if k.startswith("val.")}) for m in sent]
    )
    solve_ridge_path(federated, "fmri", parts, val)
    a, b = central.modality_heads["fmri"].mean.ridge, federated.modality_heads["fmri"].mean.ridge
    assert torch.allclose(a.coef, b.coef, atol=1e-5) and torch.allclose(a.intercept, b.intercept, atol=1e-5)
    assert a.fitted and b.fitted


def test_cross_fitting_never_lets_a_subject_into_its_own_ridge_prediction(small_fmri_windows):
    """The residual's training targets: a subject's shift comes from ridges fitted without its
    fold, so changing its own targets leaves its shift unchanged (and moves the others')."""
    from dataclasses import replace

    from fedneurogen.shared.design import feature_bands, global_part, subject_statistics
    from fedneurogen.shared.model.crossfit import cross_fitted_sites
    from fedneurogen.shared.splits import subject_folds

    sites = list(small_fmri_windows)
    torch.manual_seed(0)
    model = NeuroGenModel("tiny", device="cpu")
    choice = fit_ridge_paths(model, sites)["fmri"]
    moved, summary = cross_fitted_sites(model, "fmri", sites, choice, n_folds=2)
    assert summary["folds"] == 2 and summary["optimism_share_of_variance"] > 0
    shifts = [np.asarray(m.target) - np.asarray(s.target) for m, s in zip(moved, sites)]
    assert all(np.abs(shift).max() > 0 for shift in shifts)  # the in-sample optimism is removed

    # the out-of-fold prediction is the ridge fitted on the other fold's subjects alone
    first = sites[0]
    (fold, _) = subject_folds(np.array([f"{i}/{s}" for i, w in enumerate(sites) for s in sorted(set(w.subjects))]), 2)
    held = np.isin([f"0/{s}" for s in first.subjects], fold)
    others = [
        st for i, w in enumerate(sites) for s, st in zip(sorted(set(w.subjects)), subject_statistics(w)) if f"{i}/{s}" not in set(fold)
    ]  # fmt: skip
    bands = np.asarray(list(choice["band_weights"]))[feature_bands(first.design.shape[-1])]
    weights = np.array([choice["band_weights"][b] for b in bands])
    alone = fit_ridge(sum_statistics(others), None, (choice["penalty"],), (choice["rank"],), weights)
    ridge = model.modality_heads["fmri"].mean.ridge
    in_sample = global_part(first.design[held]) @ ridge.coef.numpy() + ridge.intercept.numpy()
    expected = (in_sample - alone.predict(global_part(first.design[held]))).transpose(0, 2, 1)
    assert np.allclose(shifts[0][held], expected, atol=1e-3)

    # a subject's own targets never enter its shift
    subject = first.subjects[held][0]
    own = first.subjects == subject
    changed_target = np.array(first.target)
    changed_target[own] += np.random.default_rng(0).standard_normal(changed_target[own].shape).astype(np.float32)
    changed = [replace(first, target=changed_target)] + sites[1:]
    again, _ = cross_fitted_sites(model, "fmri", changed, choice, n_folds=2)
    again_shift = np.asarray(again[0].target) - changed_target  # an array target: the per-window path
    assert np.allclose(again_shift[own], shifts[0][own], atol=1e-4)
    assert not np.allclose(again_shift[~held], shifts[0][~held], atol=1e-4)


def test_class_offsets_are_each_class_mean_residual_and_leave_the_label_free_mean_alone(small_fmri_windows):
    from fedneurogen.shared.model.crossfit import fit_class_offsets

    sites = list(small_fmri_windows)
    torch.manual_seed(0)
    model = NeuroGenModel("tiny", device="cpu")
    model.eval()
    fit_ridge_paths(model, sites)
    classes = {c: i for i, c in enumerate(sorted({str(c) for w in sites for c in w.labels}))}
    batch = Batch.from_windows(sites[0], np.arange(6), classes, device="cpu")
    with torch.no_grad():
        before = model.point_prediction(batch, use_labels=False)
    report = fit_class_offsets(model, "fmri", sites, [], classes, min_subjects=2)
    ridge = model.modality_heads["fmri"].mean.ridge
    with torch.no_grad():
        assert torch.equal(model.point_prediction(batch, use_labels=False), before)  # label-free: untouched
        labelled = model.point_prediction(batch)
        whole = model.point_prediction(batch, whole_class_offset=True)
    expected = before + ridge.class_intercept[batch.labels].transpose(1, 2)
    assert torch.allclose(whole, expected, atol=1e-5)  # a sample's mean: the offsets whole
    assert float(ridge.class_shrinkage) == 1.0  # no validation windows: nothing to shrink on
    assert torch.allclose(labelled, expected, atol=1e-5)
    # each class with >= 2 training subjects: the mean residual of its windows, frame by frame
    name = report["classes_with_offset"][0]
    index = classes[name]
    residuals = []
    for w in sites:
        mine = np.asarray([str(c) == name for c in w.labels])
        design = torch.as_tensor(np.asarray(w.design[np.flatnonzero(mine)]), dtype=torch.float32)
        linear = (design @ ridge.coef + ridge.intercept).numpy()  # [w, F, N]
        residuals.append(np.asarray(w.target[np.flatnonzero(mine)]).transpose(0, 2, 1) - linear)
    assert np.allclose(ridge.class_intercept[index].numpy(), np.concatenate(residuals).mean(axis=0), atol=1e-4)
    assert not ridge.class_intercept[-1].any()  # the no-label row
    # a class of too few training subjects gets none
    report = fit_class_offsets(model, "fmri", sites[:1], [], classes, min_subjects=99)
    assert report["classes_with_offset"] == [] and not report["kept"] and not ridge.class_intercept.any()
    assert float(ridge.class_shrinkage) == 0.0
