"""The local ridge path (fedneurogen.shared.local_path): layouts, additive statistics, the fit, stacking."""

from __future__ import annotations

import numpy as np

from fedneurogen.shared.local_path import (
    MAX_CHANNEL_PATCHES,
    LocalStatistics,
    choose_mixing,
    fit_local_path,
    fit_local_path_selected,
    fmri_layout,
    fnirs_layout,
    mixing_errors,
    mixing_statistics,
)
from fedneurogen.shared.ridge import RidgeStatistics, fit_ridge, sum_statistics
from fedneurogen.shared.sources import N_PATCHES, channel_neighbourhoods, local_columns, source_space
from fedneurogen.simulations.geometry import motor_probe


def test_fmri_vertex_prediction_moves_only_with_its_own_columns():
    space = source_space()
    n_per_patch, vertex = 10, 1234
    layout = fmri_layout(n_per_patch)
    assert layout.n_groups == N_PATCHES and layout.n_points == space.n_sources
    g = space.patch[vertex]
    assert vertex in layout.points[g] and np.array_equal(layout.columns[g], local_columns(g, n_per_patch))
    assert sorted(np.concatenate([p[p >= 0] for p in layout.points]).tolist()) == list(range(space.n_sources))
    rng = np.random.default_rng(0)
    cols = layout.columns[g]
    x = rng.normal(size=(300, N_PATCHES * n_per_patch))
    y = rng.normal(size=(300, space.n_sources))
    y[:, vertex] += x[:, cols[:3]] @ np.array([1.0, 0.5, -1.0])
    solution = fit_local_path(LocalStatistics.from_rows(x, y, layout), None, layout, (1.0,))
    moved = x.copy()
    other = np.setdiff1d(np.arange(x.shape[1]), cols)
    moved[:, other] += rng.normal(size=(300, len(other)))
    before, after = solution.predict(x), solution.predict(moved)
    np.testing.assert_allclose(after[:, vertex], before[:, vertex], rtol=1e-5, atol=1e-5)
    assert not np.allclose(after[:, 4000], before[:, 4000])  # a vertex elsewhere sees those columns
    assert np.corrcoef(before[:, vertex], y[:, vertex])[0, 1] > 0.7


def test_fnirs_points_take_the_patches_beneath_their_channel():
    positions = np.repeat(motor_probe().midpoints, 2, axis=0)  # HbO and HbR share a midpoint
    n_per_patch = 4
    layout = fnirs_layout(positions, n_per_patch)
    groups, neighbourhoods = channel_neighbourhoods(positions)
    assert layout.n_groups == len(positions) and layout.points[:, 0].tolist() == list(range(len(positions)))
    for point, cols in enumerate(layout.columns):
        used = cols[cols >= 0] // n_per_patch
        assert used[::n_per_patch].tolist() == neighbourhoods[groups[point]][:MAX_CHANNEL_PATCHES].tolist()
    assert np.array_equal(layout.columns[0::2], layout.columns[1::2])
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, N_PATCHES * n_per_patch))
    cols = layout.columns[0][layout.columns[0] >= 0]
    y = x[:, cols[:4]].sum(1, keepdims=True) + rng.normal(size=(300, len(positions)))
    solution = fit_local_path(LocalStatistics.from_rows(x, y, layout), None, layout, (1.0,))
    moved = x.copy()
    moved[:, np.setdiff1d(np.arange(x.shape[1]), cols)] += rng.normal(size=(300, x.shape[1] - len(cols)))
    np.testing.assert_allclose(solution.predict(moved)[:, :2], solution.predict(x)[:, :2], rtol=1e-5, atol=1e-5)
    assert np.corrcoef(solution.predict(x)[:, 0], y[:, 0])[0, 1] > 0.5


def test_summed_statistics_give_the_pooled_fit():
    """Per-subject statistics summed equal the pooled rows' (and the sub-blocks of the full
    source design's statistics); each group's fit is the ridge of its own columns alone."""
    rng = np.random.default_rng(1)
    n_per_patch = 2
    positions = np.repeat(motor_probe().midpoints[:6], 2, axis=0)
    layout = fnirs_layout(positions, n_per_patch)
    subjects = []
    for _ in range(4):
        x = rng.normal(size=(120, N_PATCHES * n_per_patch))
        y = 0.3 * x[:, layout.columns[:, 0]] + rng.normal(size=(120, len(positions)))
        subjects.append((x, y))
    parts = [LocalStatistics.from_rows(x, y, layout) for x, y in subjects]
    px, py = np.concatenate([x for x, _ in subjects]), np.concatenate([y for _, y in subjects])
    pooled_stats = LocalStatistics.from_rows(px, py, layout)
    from_full = LocalStatistics.from_ridge(RidgeStatistics.from_rows(px, py), layout)
    for name in ("sxx", "sxy", "sx", "syy"):
        np.testing.assert_allclose(getattr(sum_statistics(parts), name), getattr(pooled_stats, name), atol=1e-8)
        np.testing.assert_allclose(getattr(from_full, name), getattr(pooled_stats, name), atol=1e-8)
    val = LocalStatistics.from_rows(rng.normal(size=(80, px.shape[1])), rng.normal(size=(80, len(positions))), layout)
    summed = fit_local_path_selected(parts, val, layout)
    pooled = fit_local_path(pooled_stats, val, layout)
    assert np.array_equal(summed.penalties, pooled.penalties)
    np.testing.assert_allclose(summed.coef, pooled.coef, atol=1e-10)
    cols = layout.columns[0][layout.columns[0] >= 0]
    direct = fit_ridge(RidgeStatistics.from_rows(px[:, cols], py[:, :1]), None, (summed.penalties[0],))
    np.testing.assert_allclose(summed.coef[0][: len(cols)], direct.coef, atol=1e-10)
    two_fold = fit_local_path_selected(parts, None, layout)  # 2-fold choice, then refit on the sum
    refit = fit_ridge(sum_statistics(parts).group(layout, 0), None, (two_fold.penalties[0],))
    np.testing.assert_allclose(two_fold.coef[0][: len(cols)], refit.coef, atol=1e-10)
    back = LocalStatistics.from_arrays(pooled_stats.as_arrays())
    assert back.n == pooled_stats.n and np.array_equal(back.sxx, pooled_stats.sxx)


def test_mixing_is_chosen_by_squared_error():
    rng = np.random.default_rng(2)
    y = rng.normal(size=(500, 3))
    good, bad = y + 0.1 * rng.normal(size=y.shape), rng.normal(size=y.shape)
    assert choose_mixing(mixing_statistics(bad, good, y)) == 1.0
    assert choose_mixing(mixing_statistics(good, bad, y)) == 0.0
    stats = mixing_statistics(bad, good, y)
    direct = [np.sum((y - ((1 - a) * bad + a * good)) ** 2) for a in (0.0, 0.3, 1.0)]
    np.testing.assert_allclose(mixing_errors(stats, (0.0, 0.3, 1.0)), direct, rtol=1e-10)


# ----------------------------------------------------------------------------------------------
# In the model, and what the server reads

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from fedneurogen.server.local_statistics import check_local, check_mixing, read_layout  # noqa: E402
from fedneurogen.server.statistics import StatisticsRefused  # noqa: E402
from fedneurogen.shared.local_path import LocalSolution  # noqa: E402
from fedneurogen.shared.model.mean import LocalPath  # noqa: E402


@pytest.mark.parametrize("fixed", [True, False])
def test_model_local_path_predicts_as_the_solution(fixed):
    """The model's local path (fixed fMRI layout, or dense fNIRS coefficients) gives the
    installed solution's prediction."""
    rng = np.random.default_rng(4)
    n_per_patch = 10
    if fixed:
        layout = fmri_layout(n_per_patch)
    else:
        layout = fnirs_layout(np.repeat(motor_probe().midpoints[:5], 2, axis=0), n_per_patch)
    coef = rng.normal(size=layout.columns.shape + (layout.points.shape[1],)) * (layout.columns >= 0)[:, :, None]
    coef *= (layout.points >= 0)[:, None, :]
    solution = LocalSolution(layout, coef, rng.normal(size=layout.n_points), np.ones(layout.n_groups))
    n_source = N_PATCHES * n_per_patch
    path = LocalPath(n_source, layout.n_points if fixed else 64, fixed_layout=fixed)
    path.set_solution(solution, 0.7)
    x = rng.normal(size=(2, 3, n_source)).astype(np.float32)
    out = path(torch.from_numpy(x), None if fixed else torch.arange(layout.n_points)).numpy()
    np.testing.assert_allclose(out, solution.predict(x), rtol=1e-4, atol=1e-3)
    assert float(path.weight) == pytest.approx(0.7)
    assert not any(p.requires_grad for p in path.parameters())


def _honest_local(rng, layout, n_source, rows=200):
    x = rng.normal(size=(rows, n_source))
    y = rng.normal(size=(rows, layout.n_points))
    return LocalStatistics.from_rows(x, y, layout)


def test_server_refuses_local_statistics_that_no_rows_could_give():
    rng = np.random.default_rng(5)
    positions = np.repeat(motor_probe().midpoints[:3], 2, axis=0)
    n_per_patch = 2
    n_source = N_PATCHES * n_per_patch
    layout = fnirs_layout(positions, n_per_patch)
    honest = _honest_local(rng, layout, n_source)
    arrays = honest.as_arrays()
    assert check_local(arrays, layout, n_source, honest.n).n == honest.n
    with pytest.raises(StatisticsRefused, match="rows"):
        check_local(arrays, layout, n_source, honest.n + 1)  # not the global statistics' rows
    scaled = dict(arrays, sxy=arrays["sxy"] * 50)
    with pytest.raises(StatisticsRefused, match="sxy"):
        check_local(scaled, layout, n_source, honest.n)
    flipped = dict(arrays, sxx=-arrays["sxx"])
    with pytest.raises(StatisticsRefused, match="positive semi-definite"):
        check_local(flipped, layout, n_source, honest.n)
    padded = arrays["sxx"].copy()
    padded[0, -1, -1] = 1.0  # something hidden in the padding
    with pytest.raises(StatisticsRefused, match="padding"):
        check_local(dict(arrays, sxx=padded), layout, n_source, honest.n)
    with pytest.raises(StatisticsRefused, match="layout"):
        read_layout({"layout.columns": layout.columns + n_source}, n_source, layout.n_points)
    assert np.array_equal(
        read_layout({"layout.columns": layout.columns}, n_source, layout.n_points).columns, layout.columns
    )
    y = rng.normal(size=(50, 4))
    good = mixing_statistics(y, y + 0.1, y)
    assert check_mixing(good, 4).shape == (6, 4)
    bad = good.copy()
    bad[4] = 1e6  # Σgl beyond Cauchy-Schwarz
    with pytest.raises(StatisticsRefused, match="Cauchy"):
        check_mixing(bad, 4)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    names=st.sets(st.sampled_from(["n", "sx", "sy", "syy", "sxx", "sxy", "extra"]), max_size=7),
    shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=5),
    fill=st.floats(allow_nan=True, allow_infinity=True, width=64),
    whole=st.integers(min_value=-(2**40), max_value=2**40),
    as_int=st.booleans(),
)
def test_any_local_reply_is_read_or_refused_by_name(names, shape, fill, whole, as_int):
    """Whatever arrays a site sends as local statistics, mixing sums or a layout, the server
    reads them or refuses them with ``StatisticsRefused``; nothing else escapes."""
    layout = fnirs_layout(np.repeat(motor_probe().midpoints[:2], 2, axis=0), 1)
    value = np.full(shape, whole, dtype=np.int64) if as_int else np.full(shape, fill)
    arrays = {name: value for name in names}
    for call in (
        lambda: check_local(arrays, layout, N_PATCHES, 10.0),
        lambda: check_mixing(value, 4),
        lambda: read_layout({"layout.columns": value} if "sxx" in names else {}, N_PATCHES, 4),
    ):
        try:
            call()
        except StatisticsRefused:
            pass


def test_server_solves_the_local_path_from_the_honest_sites_and_chooses_the_mix(task_identity):
    """Three fNIRS sites answer the statistics query with source features (and the columns
    beneath their channels); one's local statistics are scaled to capture the sum. The local
    path is solved from the other two (as from them alone), the hostile one named; every
    site's mixing sums then set the local share."""
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

    from fedneurogen.server.app import solve_global_ridge
    from fedneurogen.shared.local_path import MIXING_REQUEST
    from fedneurogen.shared.model import NeuroGenModel, get_preset

    config = get_preset("tiny").model_copy(update={"local_path": True})
    model = NeuroGenModel(config, device="cpu")
    width = config.global_features  # the scalp columns and the alpha-gated block
    positions = np.repeat(motor_probe().midpoints[:4], 2, axis=0)
    names = [f"S{i // 2 + 1}_D{i // 2 + 1} {'hbo' if i % 2 == 0 else 'hbr'}" for i in range(len(positions))]
    layout = fnirs_layout(positions, config.source_features // N_PATCHES)
    rng = np.random.default_rng(0)

    def rows(n):
        x = rng.standard_normal((n, width + config.source_features))
        y = x[:, width + layout.columns[:, 0]] * 0.5 + rng.standard_normal((n, len(names)))
        return RidgeStatistics.from_rows(x[:, :width], y), LocalStatistics.from_rows(x[:, width:], y, layout)

    answers, honest = {}, []
    for node in (1, 2, 3):
        (train, local_train), (val, local_val) = rows(60), rows(30)
        statistics = {f"train.{k}": v for k, v in train.as_arrays().items()}
        statistics |= {f"val.{k}": v for k, v in val.as_arrays().items()}
        local = {f"train.{k}": v for k, v in local_train.as_arrays().items()}
        local |= {f"val.{k}": v for k, v in local_val.as_arrays().items()} | {"layout.columns": layout.columns}
        if node == 3:
            local["train.sxy"] = local["train.sxy"] * 1e6
        else:
            honest.append((local_train, local_val))
        y = rng.standard_normal((40, len(names)))
        mixing = mixing_statistics(0.5 * y, y + 0.1 * rng.standard_normal(y.shape), y)  # the local path fits better

        def answer(out, statistics=statistics, local=local, mixing=mixing):
            if out.content["request"]["kind"] == MIXING_REQUEST:
                return Message(RecordDict({"mixing": ArrayRecord({"mixing": Array(mixing)})}), reply_to=out)
            records = {
                "statistics": ArrayRecord({k: Array(np.atleast_1d(v)) for k, v in statistics.items()}),
                "local": ArrayRecord({k: Array(np.atleast_1d(v)) for k, v in local.items()}),
                "site": ConfigRecord({"modality": "fnirs", "points": names}),
            }
            return Message(RecordDict(records), reply_to=out)

        answers[node] = answer

    class Grid:
        def get_node_ids(self):
            return list(answers)

        def send_and_receive(self, messages, *, timeout=None):
            return [answers[m.metadata.dst_node_id](m) for m in messages]

    chosen = solve_global_ridge(Grid(), model, 3, 1.0)["fnirs"]["local_path"]
    assert [r["node"] for r in chosen["refused"]] == [3] and "sxy" in chosen["refused"][0]["reason"]
    assert chosen["weight"] == 1.0 and chosen["mixing_sites"] == 3
    path = model.modality_heads["fnirs"].mean.local
    assert float(path.weight) == 1.0
    alone = fit_local_path_selected([t for t, _ in honest], sum_statistics([v for _, v in honest]), layout)
    x = rng.standard_normal((5, config.source_features)).astype(np.float32)
    got = path(torch.from_numpy(x)[None], torch.arange(len(names)))[0].detach().numpy()
    np.testing.assert_allclose(got, alone.predict(x), rtol=1e-4, atol=1e-4)


def test_a_checkpoint_keeps_the_local_path(tmp_path):
    """Saved and loaded (as evaluate and synthesize load it: built on the meta device), a model
    with a local path predicts exactly as before."""
    from fedneurogen.shared.model import NeuroGenModel, get_preset, load_checkpoint, save_checkpoint

    config = get_preset("tiny").model_copy(update={"local_path": True})
    model = NeuroGenModel(config, device="cpu")
    layout = fmri_layout(config.source_features // N_PATCHES)
    rng = np.random.default_rng(6)
    coef = rng.normal(size=layout.columns.shape + (layout.points.shape[1],)) * (layout.points >= 0)[:, None, :]
    model.modality_heads["fmri"].mean.local.set_solution(
        LocalSolution(layout, coef, rng.normal(size=layout.n_points), np.ones(layout.n_groups)), 0.4
    )
    save_checkpoint(tmp_path / "ckpt", model)
    loaded, _ = load_checkpoint(tmp_path / "ckpt", device="cpu")
    design = torch.from_numpy(rng.normal(size=(2, 8, config.design_width)).astype(np.float32))
    before = model.modality_heads["fmri"].mean(design, None, None, layout.n_points)
    after = loaded.modality_heads["fmri"].mean(design, None, None, layout.n_points)
    torch.testing.assert_close(after, before)
    assert float(loaded.modality_heads["fmri"].mean.local.weight) == pytest.approx(0.4)


def test_a_site_sends_local_statistics_of_its_own_split_and_mixing_sums(tmp_path):
    """A site with source features releases the local statistics of the same training and
    held-out subjects as its global ones (their row counts agree), the columns beneath its
    channels, and, given the solved paths, the mixing sums of its held-out subjects; a site
    without source features releases none."""
    from fedneurogen.client import site as client_site
    from fedneurogen.server.local_statistics import check_local, read_layout
    from fedneurogen.shared.config import PreprocessConfig
    from fedneurogen.shared.model import NeuroGenModel, get_preset
    from fedneurogen.shared.model.mean import fit_ridge_paths
    from fedneurogen.simulations.simulator import simulate_dataset

    (path,) = simulate_dataset(
        tmp_path / "sim", n_sites=1, subjects_per_site=3, modality="fnirs", seed=8, run_seconds=120.0, progress=False
    )
    both = PreprocessConfig(design_space="scalp+source")
    data = client_site.load(path, seed=0, preprocess=both, cache_dir=str(tmp_path / "cache"))
    arrays = client_site.local_statistics(data)
    global_arrays = client_site.ridge_statistics(data)
    config = get_preset("tiny").for_preprocess(both)
    n_points = len(data.train.target_names)
    layout = read_layout(arrays, config.source_features, n_points)
    for part in ("train", "val"):
        local = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith(part + ".")}
        assert check_local(local, layout, config.source_features, float(global_arrays[f"{part}.n"][0])).n > 0
    model = NeuroGenModel(config, device="cpu")
    fit_ridge_paths(model, [data.train], [data.val])
    mixing = client_site.mixing_statistics(data, model)
    assert mixing.shape == (6, n_points) and (mixing[0] > 0).all()
    assert client_site.mixing_statistics(data, model, min_subjects=99) is None  # exact sums over too few subjects

    # explain's source view of the fitted local path: exact shares that add up to 1
    from fedneurogen.shared.workflows.explain_regions import coarse_regions
    from fedneurogen.shared.workflows.explain_sources import local_path_view
    from fedneurogen.shared.workflows.plots import local_path_shares

    model.modality_heads["fnirs"].mean.local.weight.fill_(0.6)
    view = local_path_view(model, data.val, coarse_regions(source_space().patch_centres))
    assert view["weight"] == pytest.approx(0.6) and view["points"] == n_points
    assert sum(view["band_shares"].values()) == pytest.approx(1.0)
    assert sum(view["region_shares"].values()) == pytest.approx(1.0)
    assert set(view["region_shares"]) <= {f"{h} {lobe}" for h in ("left", "right", "midline") for lobe in
                                          ("frontal", "central", "parietal", "temporal", "occipital")}  # fmt: skip
    assert -1.0 < view["own_patch_share"] < 2.0
    assert local_path_shares(view, tmp_path / "local.png").stat().st_size > 0
    model.modality_heads["fnirs"].mean.local.weight.fill_(0.0)
    assert local_path_view(model, data.val, coarse_regions(source_space().patch_centres)) is None  # not in use
    scalp = client_site.load(path, seed=0, cache_dir=str(tmp_path / "cache"))
    assert client_site.local_statistics(scalp) == {}
