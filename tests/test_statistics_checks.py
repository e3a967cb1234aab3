"""The server reads a site's ridge statistics as a hostile site could send them
(``server/statistics.py``): what honest sites send passes, what would capture or poison the sum
is refused with a reason, and nothing else ever raises."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedneurogen.server.statistics import (
    MAX_ROW_MEAN_SQUARE,
    SiteStatistics,
    StatisticsRefused,
    cap_shares,
    read_reply,
)
from fedneurogen.shared.ridge import RidgeStatistics, sum_statistics

D, N = 6, 5


def honest(rows: int = 40, seed: int = 0, shift: float = 0.0) -> RidgeStatistics:
    """Statistics of z-scored rows with a linear relation, as a site's design and BOLD give."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, D))
    y = x @ rng.standard_normal((D, N)) * 0.3 + rng.standard_normal((rows, N)) + shift
    y = (y - y.mean(0)) / y.std(0)
    return RidgeStatistics.from_rows(x, y)


def reply(train: RidgeStatistics, val: RidgeStatistics | None = None) -> dict[str, np.ndarray]:
    arrays = {f"train.{k}": np.atleast_1d(v) for k, v in train.as_arrays().items()}
    if val is not None:
        arrays |= {f"val.{k}": np.atleast_1d(v) for k, v in val.as_arrays().items()}
    return arrays


def read(arrays, private=False, site=None) -> SiteStatistics:
    return read_reply(arrays, site or {"modality": "fmri"}, private, width=D, n_fmri_points=N)


def test_honest_statistics_pass_unchanged():
    train, val = honest(seed=1), honest(rows=12, seed=2)
    got = read(reply(train, val))
    assert got.modality == "fmri" and not got.private
    np.testing.assert_array_equal(got.train.sxy, train.sxy)
    assert got.val is not None and got.val.n == 12


@pytest.mark.parametrize(
    "attack, reason",
    [
        ("scaled", "Cauchy-Schwarz|mean square"),  # M·A, M·B with M = 1e12: the capture attack
        ("rows-scaled", "mean square"),  # every row times 1e6: consistent, too large
        ("crafted", "Cauchy-Schwarz"),  # sxy chosen freely (A⁻¹B of the attacker's choosing)
        ("nan", "NaN"),
        ("asymmetric", "not symmetric"),
        ("indefinite", "positive semi-definite"),
        ("fractional-n", "not a count"),
        ("float64-huge", "mean square"),  # 1e301: finite in float64, inf once summed or cast to float32
    ],
)
def test_capturing_or_poisoning_statistics_are_refused(attack, reason):
    s = honest()
    arrays = s.as_arrays()
    if attack == "scaled":
        arrays = {k: v * 1e12 if k != "n" else v for k, v in arrays.items()}
    elif attack == "rows-scaled":
        arrays = scale_rows(s, 1e6).as_arrays()
    elif attack == "crafted":
        arrays["sxy"] = np.full((D, N), 1e3)
    elif attack == "nan":
        arrays["sxy"] = arrays["sxy"].copy()
        arrays["sxy"][0, 0] = np.nan
    elif attack == "asymmetric":
        arrays["sxx"] = arrays["sxx"] + np.triu(np.ones((D, D)), 1)
    elif attack == "indefinite":
        arrays["sxx"] = arrays["sxx"] - 2 * np.trace(arrays["sxx"]) * np.eye(D)
    elif attack == "fractional-n":
        arrays["n"] = np.asarray(40.5)
    elif attack == "float64-huge":
        arrays["sxx"] = np.full((D, D), 1e300) * 10
    with pytest.raises(StatisticsRefused, match=reason):
        read(reply(RidgeStatistics.from_arrays(arrays)) if attack != "float64-huge" else _raw(arrays))


def scale_rows(s: RidgeStatistics, factor: float) -> RidgeStatistics:
    """The statistics of the same rows, every value times ``factor``: consistent, larger."""
    return RidgeStatistics(s.n, s.sx * factor, s.sy * factor, s.sxx * factor**2, s.sxy * factor**2, s.syy * factor**2)


def _raw(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {f"train.{k}": np.atleast_1d(v) for k, v in arrays.items()}


def test_a_dp_release_skips_consistency_but_not_a_scaled_capture():
    noisy = honest()
    noisy.sxy = noisy.sxy + np.random.default_rng(3).standard_normal(noisy.sxy.shape) * 50  # breaks Cauchy-Schwarz
    assert read(reply(noisy), private=True).private
    scaled = RidgeStatistics(**{k: v * 1e12 if k != "n" else v for k, v in noisy.as_arrays().items()})
    with pytest.raises(StatisticsRefused, match="mean square"):
        read(reply(scaled), private=True)


def test_fnirs_targets_keep_their_units_and_name_their_channels():
    s = honest()
    micro = RidgeStatistics(s.n, s.sx, s.sy * 1e3, s.sxx, s.sxy * 1e3, s.syy * 1e6)  # e.g. nM instead of z-scores
    site = {"modality": "fnirs", "points": [f"S{i}_D{i} hbo" for i in range(N)]}
    assert read(reply(micro), site=site).points == site["points"]
    with pytest.raises(StatisticsRefused, match="mean square"):
        read(reply(micro))  # as fMRI: z-scored targets that are not
    with pytest.raises(StatisticsRefused, match="points"):
        read(reply(s), site={"modality": "fnirs", "points": "S1_D1"})
    with pytest.raises(StatisticsRefused, match="modality"):
        read(reply(s), site={"modality": "eeg"})


def test_one_site_claiming_many_more_rows_is_weighed_down():
    sites = [honest(seed=i) for i in range(3)]
    many = RidgeStatistics(**{k: v * 1000 for k, v in honest(seed=9, shift=0.5).as_arrays().items()})  # 1000x rows
    capped, which = cap_shares([*sites, many])
    assert which == [3] and capped[3].n == pytest.approx(4 * 40)
    # its own solution (ratios of its sums) is unchanged; only its weight in the sum is bounded
    np.testing.assert_allclose(capped[3].sxy / capped[3].n, many.sxy / many.n)
    assert sum_statistics(capped).n == pytest.approx(3 * 40 + 160)
    assert cap_shares(sites)[1] == []


_names = st.sampled_from(["n", "sx", "sy", "sxx", "sxy", "syy", "bogus", "n.n"])
_prefixes = st.sampled_from(["train.", "val.", "", "other."])
_arrays = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float64, np.int64, np.bool_, np.complex64]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=7),
    elements=None,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    arrays=st.dictionaries(st.builds(lambda p, n: p + n, _prefixes, _names), _arrays, max_size=14),
    site=st.fixed_dictionaries(
        {"modality": st.sampled_from(["fmri", "fnirs", "eeg", None, 3])},
        optional={"points": st.one_of(st.lists(st.text(max_size=8), max_size=6), st.integers(), st.text())},
    ),
    private=st.booleans(),
)
def test_any_reply_is_read_or_refused_with_a_reason(arrays, site, private):
    try:
        got = read(arrays, private=private, site=site)
    except StatisticsRefused as err:
        assert str(err)
        return
    for part in (got.train, got.val):  # what passes is usable: finite, of the model's shapes
        if part is not None:
            assert part.sxx.shape == (D, D) and part.n >= 1
            assert all(np.isfinite(np.asarray(v)).all() for v in part.as_arrays().values())


@settings(max_examples=200, deadline=None)
@given(factor=st.floats(min_value=1.0, max_value=1e8), seed=st.integers(0, 2**16))
def test_rows_scaled_beyond_the_limit_are_refused(factor, seed):
    s = honest(seed=seed)
    scaled = scale_rows(s, factor)
    per_column = float(np.trace(scaled.sxx)) / (scaled.n * D)
    if per_column <= MAX_ROW_MEAN_SQUARE and scaled.syy.sum() / (scaled.n * N) <= MAX_ROW_MEAN_SQUARE:
        assert read(reply(scaled)).train.n == s.n
    else:
        with pytest.raises(StatisticsRefused):
            read(reply(scaled))


def test_a_site_that_alone_moves_the_pooled_solution_is_named():
    """Four honest sites share one linear map; a fifth sends rows of the same size and shape made
    with another map (every check on its own passes): leave-one-site-out names it, and only it."""
    from fedneurogen.server.statistics import leave_one_out_outliers

    rng = np.random.default_rng(5)
    truth, other = rng.standard_normal((D, N)), rng.standard_normal((D, N))

    def site(mapping, seed):
        r = np.random.default_rng(seed)
        x = r.standard_normal((80, D))
        y = x @ mapping * 0.3 + r.standard_normal((80, N)) * 0.5
        return RidgeStatistics.from_rows(x, y)

    honest_sites = [site(truth, i) for i in range(4)]
    forged = site(-3 * other, 99)
    assert read(reply(forged)).train.n == 80  # passes the per-site checks
    assert leave_one_out_outliers([*honest_sites, forged]) == [4]
    assert leave_one_out_outliers(honest_sites) == []
    assert leave_one_out_outliers(honest_sites[:2]) == []  # two sites: nothing to compare
