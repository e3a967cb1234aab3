"""Class offsets of the point prediction in a federation: the sites' per-class residual sums.

Issue-level guarantees: the server sums the honest sites' sums into exactly the pooled class
means and names (and leaves out) a site whose sums are scaled to capture them; whatever arrives
in a reply is either refused with a reason or obeys what real sums obey (Hypothesis); a site
releases no class of fewer subjects than its policy allows.
"""

from __future__ import annotations

import numpy as np
import torch
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedneurogen.server.class_offsets import PART_ARRAYS, cap_windows, check_part
from fedneurogen.server.statistics import StatisticsRefused
from fedneurogen.shared.model.crossfit import ClassResiduals

C, F, N = 3, 4, 5


def honest(seed: int, windows=(6, 4, 0), subjects=(3, 2, 0)) -> ClassResiduals:
    """Per-class sums of real residual windows (class c's centred on c)."""
    rng = np.random.default_rng(seed)
    sums, squares = np.zeros((C, F, N)), np.zeros((C, F, N))
    for c, n in enumerate(windows):
        r = c + rng.standard_normal((n, F, N))
        sums[c], squares[c] = r.sum(axis=0), (r**2).sum(axis=0)
    return ClassResiduals(sums, squares, np.array(windows, float), np.array(subjects, float))


def test_honest_sums_pass_and_give_the_pooled_class_means():
    parts = [check_part(honest(s).to_arrays("train"), "train", (C, F, N), 1.0) for s in range(3)]
    total = parts[0] + parts[1] + parts[2]
    offsets = total.offsets(min_subjects=2)
    np.testing.assert_allclose(offsets[0], sum(honest(s).sums[0] for s in range(3)) / 18)
    assert not offsets[2].any()  # no windows, no offset
    assert check_part({}, "val", (C, F, N), 1.0) is None  # a site without held-out subjects sends none


def test_scaled_or_impossible_sums_are_refused_by_name():
    good = honest(0)
    scaled = ClassResiduals(good.sums * 1e3, good.squares * 1e6, good.windows, good.subjects)  # consistent, huge
    with pytest.raises(StatisticsRefused, match="mean square"):
        check_part(scaled.to_arrays("train"), "train", (C, F, N), 1.0)
    unsquared = ClassResiduals(good.sums * 1e3, good.squares, good.windows, good.subjects)
    with pytest.raises(StatisticsRefused, match="Cauchy-Schwarz"):
        check_part(unsquared.to_arrays("train"), "train", (C, F, N), 1.0)
    ghost = ClassResiduals(good.sums + 1, good.squares + 1, good.windows, good.subjects)  # sums for an empty class
    with pytest.raises(StatisticsRefused, match="without windows"):
        check_part(ghost.to_arrays("train"), "train", (C, F, N), 1.0)
    arrays = good.to_arrays("train")
    del arrays["train.squares"]
    with pytest.raises(StatisticsRefused, match="exactly"):
        check_part(arrays, "train", (C, F, N), 1.0)


def test_a_site_claiming_many_more_windows_is_weighed_down():
    sites = [honest(s) for s in range(3)]
    many = ClassResiduals(*(a * 1000 for a in honest(9).as_tuple()[:3]), honest(9).subjects)
    capped = cap_windows([*sites, many])
    assert capped[3].windows.sum() == pytest.approx(4 * 10)
    np.testing.assert_allclose(capped[3].offsets(1), many.offsets(1))  # its own means unchanged


def test_a_site_releases_no_class_below_its_floor():
    released = honest(0).released(3)
    assert released.windows.tolist() == [6, 0, 0] and not released.sums[1].any() and not released.squares[1].any()


_SPECIAL = [np.nan, np.inf, -1.0, 0.5, 1e300, 0.0]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    keys=st.lists(st.sampled_from([*PART_ARRAYS, "bogus"]), min_size=0, max_size=6),
    shapes=st.lists(st.sampled_from([(C, F, N), (C,), (C, F), (N, F, C), (1,)]), min_size=6, max_size=6),
    dtype=st.sampled_from([np.float64, np.float32, np.int64, np.bool_]),
    scale=st.sampled_from([1e-3, 1.0, 1e6]),
    special=st.one_of(st.none(), st.sampled_from(_SPECIAL)),
    seed=st.integers(0, 2**16),
)
def test_whatever_a_site_sends_is_refused_or_obeys_what_real_sums_obey(keys, shapes, dtype, scale, special, seed):
    rng = np.random.default_rng(seed)
    arrays = {}
    for key, shape in zip(keys, shapes):
        a = (rng.standard_normal(shape) * scale).astype(dtype)
        if special is not None and a.size and a.dtype.kind == "f":
            a.flat[0] = special
        arrays[f"train.{key}"] = a
    if seed % 3 == 0:  # an honest reply, sometimes tampered with
        arrays = honest(seed).to_arrays("train")
        if special is not None:
            arrays["train.windows"] = arrays["train.windows"] * special
    try:
        got = check_part(arrays, "train", (C, F, N), 1.0)
    except StatisticsRefused:
        return
    if got is None:
        assert not arrays
        return
    assert (got.windows >= 0).all() and (got.subjects <= got.windows).all()
    assert np.isfinite(got.sums).all() and (got.squares >= 0).all()
    assert (got.sums**2 <= got.windows[:, None, None] * got.squares * (1 + 1e-6) + 1e-9).all()
    assert np.isfinite(got.offsets(1)).all()


def test_the_server_installs_the_pooled_means_whole_and_the_point_prediction_shrinks_them_on_held_out_windows():
    from fedneurogen.server.class_offsets import solve_class_offsets
    from fedneurogen.shared.model.mean import MeanHead

    head = MeanHead(4, N, hidden=4, rank=2, num_classes=C, dropout=0.0, n_frames=F)
    replies = [(honest(s), honest(10 + s)) for s in range(3)]
    report = solve_class_offsets(head, replies, min_subjects=2)
    pooled = sum((t for t, _ in replies[1:]), replies[0][0]).offsets(2)
    val = sum((v for _, v in replies[1:]), replies[0][1])
    assert report["sites"] == 3 and report["kept"] and 0 < report["shrinkage"] <= 1
    assert report["shrinkage"] == pytest.approx(val.best_shrinkage(pooled))
    installed = head.ridge.class_intercept.detach().numpy()
    np.testing.assert_allclose(installed[:C], pooled, rtol=1e-5, atol=1e-6)  # whole: a sample's mean
    assert float(head.ridge.class_shrinkage) == pytest.approx(report["shrinkage"])  # the point prediction's
    assert not installed[C].any()  # the no-label row
    labels = torch.arange(C)
    np.testing.assert_allclose(
        head.ridge.offset(labels, None).numpy(), report["shrinkage"] * pooled, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(head.ridge.offset(labels, None, whole=True).numpy(), pooled, rtol=1e-5, atol=1e-6)
    # held-out windows of a class that the training mean does not fit: switched off
    contrary = [(t, ClassResiduals(-v.sums, v.squares, v.windows, v.subjects)) for t, v in replies]
    report = solve_class_offsets(head, contrary, min_subjects=2)
    assert report["shrinkage"] == 0.0 and not report["kept"] and float(head.ridge.class_shrinkage) == 0.0
    assert not head.ridge.offset(labels, None).any()  # the point prediction: switched off
    np.testing.assert_allclose(head.ridge.offset(labels, None, whole=True).numpy(), pooled, rtol=1e-5, atol=1e-6)
