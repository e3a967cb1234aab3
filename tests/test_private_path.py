"""The private ridge path (shared/private_path.py): a public reduction, a public prior, the
Gaussian mechanism's release and the adaptively regularised solve."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedneurogen.client import privacy
from fedneurogen.shared.design import VIRTUAL_MONTAGE, feature_bands
from fedneurogen.shared.errors import ConfigError
from fedneurogen.shared.private_path import (
    BLOCK_WEIGHTS,
    N_REGIONS,
    PRIVATE_CLIP,
    fit_private,
    load_prior,
    penalty_floor,
    pooling_matrix,
    private_reduction,
    release_noise_std,
    scalp_regions,
)
from fedneurogen.shared.ridge import RidgeStatistics, fit_ridge, sum_statistics
from fedneurogen.shared.surface import ICO4_PER_HEMI, ICO4_POINTS, cortical_eigenmodes

WIDTH = len(VIRTUAL_MONTAGE) * 5 * 2  # 64 electrodes x 5 bands x (canonical + derivative)


def _subjects(rng: np.random.Generator, n_subjects: int, reduction, frames: int = 40) -> list[RidgeStatistics]:
    """Subjects whose BOLD follows a fixed linear map of their design, in the reduction's rows."""
    truth = rng.normal(size=(WIDTH, 12)) @ rng.normal(size=(12, ICO4_POINTS)) * 0.01
    out = []
    for _ in range(n_subjects):
        design = rng.normal(size=(frames, WIDTH))
        target = design @ truth + rng.normal(size=(frames, ICO4_POINTS))
        out.append(RidgeStatistics.from_rows(*reduction.rows(design, target)))
    return out


def test_the_reduction_is_the_same_for_any_data_and_covers_every_electrode():
    pooling = pooling_matrix(WIDTH)
    assert pooling.shape == (N_REGIONS * 10, WIDTH)
    np.testing.assert_allclose(pooling.sum(axis=1), 1.0)  # a region's mean, per band and basis
    assert (pooling > 0).sum(axis=0).min() == 1  # every design column in exactly one region
    # a region averages one band and basis function: the bands of its columns agree
    bands = feature_bands(WIDTH)
    for row in pooling:
        assert len(set(bands[row > 0].tolist())) == 1
    assert set(scalp_regions().tolist()) == set(range(N_REGIONS))
    first = private_reduction("fmri", WIDTH, ICO4_POINTS, prior=True)
    again = private_reduction("fmri", WIDTH, ICO4_POINTS, prior=True)
    for name in ("pooling", "modes", "prior", "groups"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))


def test_cortical_eigenmodes_are_orthonormal_smooth_and_split_by_hemisphere():
    modes = cortical_eigenmodes(8)
    assert modes.shape == (ICO4_POINTS, 16)
    np.testing.assert_allclose(modes.T @ modes, np.eye(16), atol=1e-10)
    assert np.ptp(modes[:ICO4_PER_HEMI, 0]) < 1e-8  # the first mode is constant over its hemisphere
    assert np.abs(modes[ICO4_PER_HEMI:, :8]).max() == 0 and np.abs(modes[:ICO4_PER_HEMI, 8:]).max() == 0
    with pytest.raises(ValueError, match="per_hemisphere"):
        cortical_eigenmodes(0)


def test_the_prior_is_shipped_public_and_fits_the_reduction():
    prior = load_prior()
    reduction = private_reduction("fmri", WIDTH, ICO4_POINTS, prior=True)
    assert prior["coef"].shape == (N_REGIONS * 10, 16) and np.isfinite(prior["coef"]).all()
    assert int(prior["seed"]) > 0 and int(prior["subjects"]) > 0  # how it was made is recorded
    assert reduction.n_inputs == 10 and reduction.n_outputs(ICO4_POINTS) == 1
    plain = private_reduction("fmri", WIDTH, ICO4_POINTS, prior=False)
    assert plain.prior is None and plain.n_inputs == N_REGIONS * 10 and plain.n_outputs(ICO4_POINTS) == 16
    fnirs = private_reduction(
        "fnirs", WIDTH, 40, prior=True
    )  # the prior is fMRI's: fNIRS releases the pooled regression
    assert fnirs.prior is None and fnirs.modes is None and fnirs.n_outputs(40) == 40
    with pytest.raises(ConfigError, match="scalp design"):
        private_reduction("fmri", 324 * 5 * 2, ICO4_POINTS, prior=False)


@pytest.mark.parametrize("prior", [True, False])
def test_the_private_solve_is_the_exact_one_as_epsilon_grows(prior):
    """Without noise the solve is exactly ``fit_ridge``'s; with the noise of a huge epsilon it is
    as good as exact, and the model's full coefficients reproduce the reduced prediction."""
    rng = np.random.default_rng(0)
    reduction = private_reduction("fmri", WIDTH, ICO4_POINTS, prior=prior)
    train, val = _subjects(rng, 8, reduction), _subjects(rng, 3, reduction)
    exact = fit_ridge(sum_statistics(train), sum_statistics(val))
    solved = fit_private(sum_statistics(train), sum_statistics(val), noise_std=0.0)
    np.testing.assert_array_equal(solved.coef, exact.coef)
    ledger = privacy.PrivacyLedger()
    settings = privacy.DPSettings(
        target_epsilon=1e7,
        delta=1e-5,
        max_grad_norm=1.0,
        planned_rounds=1,
        statistics_share=1.0,
        statistics_clip=PRIVATE_CLIP,
    )
    released = privacy.release_statistics(ledger, settings, train, val, BLOCK_WEIGHTS)
    noisy = RidgeStatistics.from_arrays({k[6:]: v for k, v in released.items() if k.startswith("train.")})
    sigma = ledger.statistics["noise_multiplier"]
    assert sigma < 1e-3
    # what the release keeps: every subject weighs the same (statistics per row, clipped)
    clipped = sum_statistics([privacy.clip_subject(s, PRIVATE_CLIP, BLOCK_WEIGHTS) for s in train])
    assert noisy.sxy == pytest.approx(clipped.sxy, abs=1e-2)
    # as the noise vanishes, the private solve (floor and all) becomes the exact solve of what was released
    clipped_val = sum_statistics([privacy.clip_subject(s, PRIVATE_CLIP, BLOCK_WEIGHTS) for s in val])
    reference = fit_ridge(clipped, clipped_val)
    for tiny in (1e-7, 1e-9):
        noise = np.random.default_rng(3)
        private = fit_private(
            privacy.add_gaussian_noise(clipped, tiny, PRIVATE_CLIP, noise, BLOCK_WEIGHTS),
            privacy.add_gaussian_noise(clipped_val, tiny, PRIVATE_CLIP, noise, BLOCK_WEIGHTS),
            release_noise_std(tiny * PRIVATE_CLIP, 1.0, "sxx"),
        )
        assert private.lam == reference.lam
        np.testing.assert_allclose(private.coef, reference.coef, rtol=1e-3, atol=1e-6)
    # the installed full-resolution coefficients predict what the reduced solution predicts
    design = rng.normal(size=(5, WIDTH))
    coef, intercept = reduction.to_full(private, ICO4_POINTS)
    x, _ = reduction.rows(design, np.zeros((5, ICO4_POINTS)))
    reduced = x @ private.coef + private.intercept
    if prior:  # the prior's modes, each group scaled by its gain
        modes = (reduced.reshape(5, 16, 1)[..., 0] + x.reshape(5, 16, 10).sum(-1)) @ reduction.modes.T
    else:
        modes = reduced @ reduction.modes.T
    np.testing.assert_allclose(design @ coef + intercept, modes, rtol=1e-6, atol=1e-8)


def test_one_subject_moves_the_weighted_release_by_at_most_sqrt2_clip():
    """The sensitivity the noise is calibrated to: adding or removing any one subject (however
    large its data) changes the weighted, clipped sum by at most sqrt(2) x clip in L2."""
    rng = np.random.default_rng(1)
    reduction = private_reduction("fmri", WIDTH, ICO4_POINTS, prior=True)
    subjects = _subjects(rng, 5, reduction)
    huge = RidgeStatistics(**{k: v * 1e6 for k, v in subjects[0].as_arrays().items()} | {"n": subjects[0].n})

    def vector(parts):
        total = sum_statistics([privacy.clip_subject(s, PRIVATE_CLIP, BLOCK_WEIGHTS) for s in parts])
        return np.concatenate(
            [
                np.atleast_1d(v).ravel() * (PRIVATE_CLIP if k == "n" else BLOCK_WEIGHTS[k])
                for k, v in total.as_arrays().items()
            ]
        )

    for extra in (subjects[1], huge):
        change = np.linalg.norm(vector(subjects[2:] + [extra]) - vector(subjects[2:]))
        assert change <= math.sqrt(2) * PRIVATE_CLIP * (1 + 1e-9)


def test_the_penalty_never_falls_below_the_noise():
    rng = np.random.default_rng(2)
    reduction = private_reduction("fmri", WIDTH, ICO4_POINTS, prior=False)
    train = sum_statistics(_subjects(rng, 6, reduction))
    assert penalty_floor(train, 0.0) == 0.0
    floor = penalty_floor(train, 50.0)
    assert floor > penalty_floor(train, 5.0) > 0
    assert fit_private(train, None, 50.0).lam >= floor


def _query(node: dict, run_config: dict):
    """A site's answer to the server's ridge-statistics request (the real ClientApp handler)."""
    from flwr.app import ConfigRecord, Context, Message, RecordDict
    from flwr.common import MessageType

    from fedneurogen.client import app as client_app

    request = Message(
        RecordDict({"request": ConfigRecord({"kind": "ridge-statistics"})}),
        dst_node_id=5,
        message_type=MessageType.QUERY,
    )
    context = Context(run_id=1, node_id=5, node_config=node, state=RecordDict(), run_config=run_config)
    return client_app.query(request, context)


def test_the_prior_is_used_only_where_the_run_and_the_site_allow_it(
    small_fmri_sites, tmp_path, monkeypatch, task_identity
):
    """``dp-prior`` (run config) asks for the public prior; a site whose policy says
    ``dp-allow-prior=false`` refuses such a run, and with ``dp-prior=none`` sends the pooled
    regression instead. The reply says how loud its noise was, never the window count."""
    from fedneurogen.client import site
    from fedneurogen.shared.run_config import RunConfig

    monkeypatch.setattr(site, "_SITES", {})
    base = RunConfig().model_dump(by_alias=True) | {"dp-enabled": True}
    node = {"data-path": str(small_fmri_sites[0]), "state-dir": str(tmp_path / "state")}
    adapted = _query(node, base | {"run-dir": "runs/prior"})
    assert not adapted.has_error(), adapted.error.reason
    assert adapted.content["statistics"]["train.sxy"].numpy().shape == (10, 1)  # the prior's 10 gains
    assert adapted.content["metrics"]["private"] == 1 and adapted.content["metrics"]["noise-scale"] > 0
    refusing = {**node, "state-dir": str(tmp_path / "state-2"), "dp-allow-prior": "false"}
    refused = _query(refusing, base | {"run-dir": "runs/prior-2"})
    assert refused.has_error() and "dp-allow-prior = false" in refused.error.reason
    plain = _query(refusing, base | {"run-dir": "runs/plain", "dp-prior": "none"})
    assert not plain.has_error(), plain.error.reason
    assert plain.content["statistics"]["train.sxy"].numpy().shape == (N_REGIONS * 10, 16)  # pooled regions -> modes
