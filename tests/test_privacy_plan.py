"""The privacy planner (fedneurogen/privacy_plan.py): deterministic, sensible, cached safely, and its CLI."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedneurogen.cli import app
from fedneurogen.shared.errors import ConfigError
from fedneurogen import privacy_plan
from fedneurogen.privacy_plan import Reference, cache_dir, cache_file, load_reference, plan

#: A tiny reference (2 sites x 4 subjects, 100 s runs, the non-DP path with one penalty): built
#: once per session in the session's FEDNEUROGEN_HOME (tests/conftest.py).
TINY = Reference(n_sites=2, subjects_per_site=4, run_seconds=100.0, exact_path="ridge")
runner = CliRunner()


@pytest.fixture(scope="session")
def tiny_reference() -> dict[str, np.ndarray]:
    return load_reference(TINY)


def test_the_cache_lies_in_the_session_home_and_is_written_atomically(tiny_reference):
    path = cache_file(TINY)
    assert path.parent == cache_dir() == Path(os.environ["FEDNEUROGEN_HOME"]) / "planner"
    assert path.is_file() and [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []
    assert privacy_plan._read(path) is not None
    # the reference holds what a plan scores on, and its exact path predicts something
    assert tiny_reference["test.design"].shape[0] == tiny_reference["test.target"].shape[0] > 0
    assert float(tiny_reference["exact_pcc"]) > 0.05


def test_the_denominator_follows_the_learning_curve_in_one_over_n(tiny_reference):
    # the reference's curve ends at its own training subjects, with the exact path's PCC there
    assert tiny_reference["curve.subjects"][-1] > 0
    assert float(tiny_reference["curve.pcc"][-1]) == float(tiny_reference["exact_pcc"])
    curve = {"curve.subjects": np.array([5.0, 10.0, 20.0]), "curve.pcc": np.array([0.10, 0.15, 0.175])}
    assert privacy_plan.exact_at(curve, 10) == pytest.approx(0.15)
    assert privacy_plan.exact_at(curve, 2) == pytest.approx(0.10)  # before the first point: the first point
    # between points linear in 1/n: n = 40/3 lies halfway between 1/10 and 1/20
    assert privacy_plan.exact_at(curve, 40 / 3) == pytest.approx(0.1625)
    # beyond the last point along the last segment: 1/n -> 0 adds the segment's slope times 1/20
    assert privacy_plan.exact_at(curve, 10**9) == pytest.approx(0.2, abs=1e-6)
    falling = {"curve.subjects": np.array([5.0, 10.0]), "curve.pcc": np.array([0.2, 0.1])}
    assert privacy_plan.exact_at(falling, 100) == pytest.approx(0.1)  # never below the last point


def test_a_corrupt_cache_is_rebuilt_the_same(tiny_reference, tmp_path):
    folder = tmp_path / "planner"
    folder.mkdir()
    path = cache_file(TINY, folder)
    shutil.copy(cache_file(TINY), path)
    path.write_bytes(path.read_bytes()[:1000])  # truncated, as by a crash without atomic writes
    assert privacy_plan._read(path) is None
    rebuilt = load_reference(TINY, folder)
    assert privacy_plan._read(path) is not None
    assert float(rebuilt["exact_pcc"]) == pytest.approx(float(tiny_reference["exact_pcc"]), rel=1e-6)
    np.testing.assert_allclose(rebuilt["prior.train.sxy"], tiny_reference["prior.train.sxy"], rtol=1e-6)


def test_the_plan_is_deterministic_for_a_seed(tiny_reference):
    first = plan(3, 8, 8.0, seed=5, draws=4, reference=TINY)
    again = plan(3, 8, 8.0, seed=5, draws=4, reference=TINY)
    other = plan(3, 8, 8.0, seed=6, draws=4, reference=TINY)
    assert first == again
    assert (other.ratio, other.penalty_floor) != (first.ratio, first.penalty_floor)  # the seed drives the noise
    assert first.reduction == "prior gains" and (first.inputs, first.outputs) == (10, 1)
    assert first.training_subjects == 3 * 5 and 0 < first.noise_multiplier < 1
    pooled = plan(3, 8, 8.0, prior=False, draws=2, reference=TINY)
    assert pooled.reduction == "pooled regression" and (pooled.inputs, pooled.outputs) == (80, 16)


def test_more_subjects_or_more_epsilon_never_predict_much_less(tiny_reference):
    for prior in (True, False):
        strict = plan(3, 8, 1.0, prior=prior, draws=6, reference=TINY)
        loose = plan(3, 8, 16.0, prior=prior, draws=6, reference=TINY)
        big = plan(10, 30, 1.0, prior=prior, draws=6, reference=TINY)
        assert loose.noise_multiplier < strict.noise_multiplier
        assert loose.ratio >= strict.ratio - 0.1, (prior, loose.text, strict.text)
        assert big.ratio >= strict.ratio - 0.1, (prior, big.text, strict.text)


def test_the_plans_release_is_release_statistics_with_seeded_noise(tiny_reference):
    from fedneurogen.client import privacy
    from fedneurogen.shared.private_path import BLOCK_WEIGHTS
    from fedneurogen.shared.ridge import RidgeStatistics

    fields = ("n", "sx", "sy", "sxx", "sxy", "syy")
    subjects = [
        RidgeStatistics(**{f: tiny_reference[f"prior.train.{f}"][i] for f in fields})
        for i in range(len(tiny_reference["prior.train.n"]))
    ]
    settings = privacy.DPSettings(target_epsilon=1e7, delta=1e-5, max_grad_norm=1.0, planned_rounds=1)
    ledger = privacy.PrivacyLedger(accountant=settings.accountant)
    real = privacy.release_statistics(ledger, settings, subjects, None, BLOCK_WEIGHTS)
    clipped = privacy_plan.stacked([privacy.clip_subject(s, settings.statistics_clip, BLOCK_WEIGHTS) for s in subjects])
    sigma = ledger.statistics["noise_multiplier"]
    mine = privacy_plan.release(
        clipped, np.ones(len(subjects)), sigma, settings.statistics_clip, np.random.default_rng(0)
    )
    for field, value in mine.as_arrays().items():  # equal up to both noises (tiny at this epsilon)
        std = sigma * np.sqrt(2.0) * settings.statistics_clip / BLOCK_WEIGHTS.get(field, 1.0)
        got = np.asarray(real[f"train.{field}"]).reshape(np.shape(value))
        np.testing.assert_allclose(value, got, rtol=0, atol=12 * std, err_msg=field)
        if field in ("sxx", "sxy"):  # a comparison that means something: the noise is far below the values
            assert 12 * std < 0.01 * np.abs(got).max()
    # and the noise it adds at a real epsilon has the stated scale, block by block (std / weight)
    ones = np.ones(len(subjects))
    loud = privacy_plan.release(clipped, ones, 2.0, 4.0, np.random.default_rng(1))
    exact = privacy_plan.release(clipped, ones, 0.0, 4.0, np.random.default_rng(1))
    upper = np.triu_indices(loud.sxx.shape[0])
    z = np.concatenate(
        [
            (loud.sx - exact.sx) * BLOCK_WEIGHTS["sx"],
            (loud.sxy - exact.sxy).ravel() * BLOCK_WEIGHTS["sxy"],
            (loud.sxx - exact.sxx)[upper] * BLOCK_WEIGHTS["sxx"],
        ]
    ) / (2.0 * np.sqrt(2.0) * 4.0)
    assert np.std(z) == pytest.approx(1.0, rel=0.3)


@pytest.mark.parametrize(
    "args, problem",
    [((3, 8, 0.0), "epsilon"), ((3, 8, float("nan")), "epsilon"), ((0, 8, 8.0), "sites"), ((3, 2, 8.0), "subjects")],
)
def test_bad_values_are_refused_before_anything_is_simulated(args, problem, tmp_path):
    with pytest.raises(ConfigError, match=problem):
        plan(*args, folder=tmp_path / "planner")
    assert not (tmp_path / "planner").exists()


@pytest.fixture
def default_reference_cached(tiny_reference):
    """The CLI plans on the default reference: stand the tiny one in for it (its cache file), so
    the CLI test simulates nothing; removed afterwards."""
    path = cache_file(Reference())
    shutil.copy(cache_file(TINY), path)
    yield
    path.unlink()


def test_cli_prints_json_and_a_table(default_reference_cached):
    result = runner.invoke(
        app, ["privacy-plan", "--sites", "3", "--subjects-per-site", "8", "--epsilon", "8", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["sites"] == 3 and data["epsilon"] == 8.0 and data["prior"] is True and 0 <= data["spread"]
    assert data["ratio"] == pytest.approx(plan(3, 8, 8.0).ratio)
    table = runner.invoke(
        app, ["privacy-plan", "--sites", "2", "--subjects-per-site", "5", "--epsilon", "4", "--no-prior"]
    )
    assert table.exit_code == 0 and "pooled regression" in table.output and "2 x 5" in table.output


def test_cli_bad_epsilon_exits_2_with_one_line():
    result = runner.invoke(app, ["privacy-plan", "--sites", "3", "--subjects-per-site", "8", "--epsilon", "-1"])
    assert result.exit_code == 2
    assert "epsilon" in result.output and len(result.output.strip().splitlines()) == 1


def test_federate_round_zero_line_names_a_failed_plan(tmp_path):
    from fedneurogen.shared.run_config import RunConfig
    from fedneurogen.privacy_plan import privacy_plan_line

    sites = []
    for name in ("site-01", "site-02"):
        for subject in ("sub-01", "sub-02"):  # too few subjects to plan for
            (tmp_path / name / subject).mkdir(parents=True)
        sites.append(tmp_path / name)
    line = privacy_plan_line(RunConfig(dp_enabled=True), sites)
    assert line.startswith("round 0: no privacy plan") and "subjects per site" in line and "\n" not in line


def test_federate_prints_the_plan_line_only_under_dp(tmp_path, capsys):
    from fedneurogen.cli.train import _print_privacy_plan
    from fedneurogen.shared.run_config import RunConfig

    sites = []
    for name in ("site-01", "site-02"):
        (tmp_path / name / "sub-01").mkdir(parents=True)
        sites.append(tmp_path / name)
    _print_privacy_plan(RunConfig(dp_enabled=False), sites)
    assert capsys.readouterr().out == ""
    _print_privacy_plan(RunConfig(dp_enabled=True), sites)  # too few subjects: a plan that names why not
    assert capsys.readouterr().out.startswith("round 0: no privacy plan")
