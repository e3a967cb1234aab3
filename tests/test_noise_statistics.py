"""The residual's noise model in a federation: the sites' covariance sketches.

Issue-level guarantees: the sketches of honest sites combine into the covariance a pooled fit
gives; a reply scaled or made up to bend the noise model is refused by name, and a site claiming
many more frames is weighed down; whatever arrives in a reply is either refused with a reason or
obeys what real sketches obey (Hypothesis); a site below its subject floor releases nothing.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedneurogen.server.noise_statistics import cap_frames, check_sketch
from fedneurogen.server.statistics import StatisticsRefused
from fedneurogen.shared.model.noise import SKETCH_ARRAYS, combine_sketches, fit_covariance, sketch_residual

N, F, RANK = 10, 4, 3


def residual(seed: int, windows: int = 60) -> np.ndarray:
    """Residual windows ``[W, N, F]``: three shared spatial patterns plus a little noise."""
    rng = np.random.default_rng(seed)
    patterns = np.random.default_rng(99).standard_normal((N, 3))
    return np.einsum("nk,wkf->wnf", patterns, rng.standard_normal((windows, 3, F))) + 0.05 * rng.standard_normal(
        (windows, N, F)
    )


def dense(fitted: dict) -> np.ndarray:
    s, g = fitted["scale"], fitted["basis"]
    return np.kron(np.diag(s) @ (np.eye(len(s)) + g @ g.T) @ np.diag(s), fitted["temporal"])


def test_honest_sketches_combine_into_the_pooled_fit():
    parts = [residual(seed, windows) for seed, windows in ((0, 40), (1, 60), (2, 80))]
    sketches = [check_sketch(sketch_residual(r, RANK).to_arrays(), N, F, RANK, 1.0) for r in parts]
    combined = combine_sketches(sketches, RANK)
    pooled = fit_covariance(np.concatenate(parts), RANK)
    spatial = lambda f: np.diag(f["scale"]) @ (np.eye(N) + f["basis"] @ f["basis"].T) @ np.diag(f["scale"])  # noqa: E731
    np.testing.assert_allclose(spatial(combined), spatial(pooled), atol=1e-5 * np.abs(spatial(pooled)).max())
    # the frames' correlation is in each site's own units of its points: close, not equal
    np.testing.assert_allclose(combined["temporal"], pooled["temporal"], atol=0.02)
    assert check_sketch({}, N, F, RANK, 1.0) is None  # a site that released nothing


def _arrays(seed: int = 0) -> dict[str, np.ndarray]:
    return sketch_residual(residual(seed), RANK).to_arrays()


def test_scaled_or_impossible_sketches_are_refused_by_name():
    arrays = _arrays()
    huge = {**arrays, "squares": arrays["squares"] * 1e6, "components": arrays["components"] * 1e3}
    with pytest.raises(StatisticsRefused, match="mean square"):
        check_sketch(huge, N, F, RANK, 1.0)
    bent = {**arrays, "components": arrays["components"] * 10}  # a direction its squares do not carry
    with pytest.raises(StatisticsRefused, match="components larger"):
        check_sketch(bent, N, F, RANK, 1.0)
    skewed = {**arrays, "temporal": arrays["temporal"] + np.triu(np.ones((F, F)), 1) * arrays["temporal"][0, 0]}
    with pytest.raises(StatisticsRefused, match="Cauchy-Schwarz"):
        check_sketch(skewed, N, F, RANK, 1.0)
    more = {**arrays, "components": np.zeros((N, 2 * RANK + 1))}
    with pytest.raises(StatisticsRefused, match="at most"):
        check_sketch(more, N, F, RANK, 1.0)
    other_windows = {**arrays, "temporal_count": arrays["temporal_count"] + 1}
    with pytest.raises(StatisticsRefused, match="other windows"):
        check_sketch(other_windows, N, F, RANK, 1.0)
    missing = {k: v for k, v in arrays.items() if k != "temporal"}
    with pytest.raises(StatisticsRefused, match="exactly"):
        check_sketch(missing, N, F, RANK, 1.0)


def test_a_site_claiming_many_more_frames_is_weighed_down():
    sketches = [check_sketch(_arrays(seed), N, F, RANK, 1.0) for seed in range(3)]
    many = sketches[0].scaled(1000.0)
    capped = cap_frames([*sketches, many])
    assert capped[3].rows == pytest.approx(4 * sketches[1].rows)
    # its own covariance is unchanged by the weight, only its share
    np.testing.assert_allclose(
        dense(combine_sketches([capped[3]], RANK)), dense(combine_sketches([many], RANK)), rtol=1e-9
    )


def test_a_site_below_its_subject_floor_releases_nothing(small_fmri_sites):
    from fedneurogen.client.site import load, noise_statistics
    from fedneurogen.shared.model import NeuroGenModel

    site = load(small_fmri_sites[0], seed=0)
    model = NeuroGenModel("tiny", device="cpu")
    subjects = len(set(site.train.subjects.tolist()))
    assert noise_statistics(site, model, ["rest"], min_subjects=subjects + 1) == {}
    released = noise_statistics(site, model, ["rest"], min_subjects=subjects)
    assert set(released) == set(SKETCH_ARRAYS)
    assert check_sketch(
        released, released["squares"].shape[0], model.config.fmri.n_frames, model.config.noise_rank, 1e6
    )


_SPECIAL = [np.nan, np.inf, -1.0, 0.5, 1e300, 0.0]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    keys=st.lists(st.sampled_from([*SKETCH_ARRAYS, "bogus"]), min_size=0, max_size=6),
    shapes=st.lists(st.sampled_from([(N,), (1,), (N, 2), (F, F), (N, 2 * RANK + 2), (F,)]), min_size=6, max_size=6),
    dtype=st.sampled_from([np.float64, np.float32, np.int64, np.bool_]),
    scale=st.sampled_from([1e-3, 1.0, 1e6]),
    special=st.one_of(st.none(), st.sampled_from(_SPECIAL)),
    seed=st.integers(0, 2**16),
)
def test_whatever_a_site_sends_is_refused_or_obeys_what_real_sketches_obey(keys, shapes, dtype, scale, special, seed):
    rng = np.random.default_rng(seed)
    arrays = {key: (rng.standard_normal(shape) * scale).astype(dtype) for key, shape in zip(keys, shapes)}
    if seed % 3 == 0:  # an honest reply, sometimes tampered with
        arrays = _arrays(seed)
        if special is not None:
            key = ("rows", "squares", "components", "temporal", "temporal_count")[seed % 5]
            arrays[key] = arrays[key].copy()
            arrays[key].flat[0] *= special
    for key, a in arrays.items():
        if special is not None and seed % 3 and a.size and a.dtype.kind == "f":
            a.flat[0] = special
    try:
        got = check_sketch(arrays, N, F, RANK, 1.0)
    except StatisticsRefused:
        return
    if got is None:
        assert not arrays
        return
    assert got.rows > 0 and np.isfinite(got.squares).all() and (got.squares >= 0).all()
    assert ((got.components**2).sum(axis=1) <= got.squares * (1 + 1e-6) + 1e-9).all()
    fitted = combine_sketches([got], RANK)
    assert np.isfinite(fitted["scale"]).all() and (fitted["scale"] > 0).all() and np.isfinite(fitted["basis"]).all()


def test_the_server_takes_the_departure_share_of_the_least_crps_the_sites_averaged():
    from flwr.app import ArrayRecord

    from fedneurogen.server.checkpointing import model_parameters
    from fedneurogen.server.closed_form import choose_departure
    from fedneurogen.shared.model import NeuroGenModel
    from fedneurogen.shared.workflows.departure import crps_key

    model = NeuroGenModel("tiny", device="cpu")
    arrays = ArrayRecord(model_parameters(model))
    scores = {crps_key(1.0): 0.70, crps_key(0.5): 0.65, crps_key(0.0): 0.66}
    unchanged, chosen = choose_departure(model, arrays, scores)
    assert chosen == {} and unchanged is arrays  # no fitted noise model (a DP run): the DiT as trained
    fmri = model.modality_heads["fmri"].noise
    fitted = fit_covariance(np.random.default_rng(0).standard_normal((30, 5124, 8)).astype(np.float32), 20)
    fmri.set_covariance(fitted["scale"], fitted["basis"], fitted["temporal"])
    out, chosen = choose_departure(model, ArrayRecord(model_parameters(model)), scores)
    assert chosen["fmri"]["chosen"] == 0.5 and "fnirs" not in chosen
    assert float(out["modality_heads.fmri.noise.departure"].numpy()[0]) == 0.5
    assert choose_departure(model, out, {crps_key(1.0): 0.7})[1] == {}  # a share's score missing: nothing set
    # the spread: the root of the sites' averaged whitened mean square, within its range, or left alone
    from fedneurogen.shared.workflows.departure import SPREAD_KEY, SPREAD_RANGE

    out, chosen = choose_departure(model, out, {**scores, SPREAD_KEY: 2.25})
    assert chosen["fmri"]["spread"] == 1.5 and float(out["modality_heads.fmri.noise.spread"].numpy()[0]) == 1.5
    out, chosen = choose_departure(model, out, {**scores, SPREAD_KEY: 1e30})
    assert chosen["fmri"]["spread"] == pytest.approx(SPREAD_RANGE[1] ** 0.5)
    for bad in (float("nan"), -4.0):
        kept, chosen = choose_departure(model, out, {**scores, SPREAD_KEY: bad})
        assert "spread" not in chosen["fmri"]
        assert float(kept["modality_heads.fmri.noise.spread"].numpy()[0]) == pytest.approx(SPREAD_RANGE[1] ** 0.5)
