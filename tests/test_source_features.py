"""Cortical-source features (fedneurogen.shared.sources) and the mismatched head model (issue 29)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from fedneurogen.shared.config import PreprocessConfig
from fedneurogen.shared.errors import ConfigError
from fedneurogen.shared.features import EEG_BANDS
from fedneurogen.shared.recording import Recording
from fedneurogen.shared.ridge import RidgeStatistics, fit_ridge, sum_statistics
from fedneurogen.shared.sources import (
    N_NEIGHBOURS,
    N_PATCHES,
    NIRS_RADIUS_MM,
    channel_neighbourhoods,
    fit_local_path,
    fit_local_path_selected,
    inverse_kernel,
    local_columns,
    patch_power_operator,
    point_patches,
    restrict,
    run_source_power,
    source_space,
)
from fedneurogen.simulations.geometry import eeg_lead_field, load_cortex, motor_probe, standard_positions

CAP_32 = tuple(
    "Fp1 Fp2 F7 F3 Fz F4 F8 FC5 FC1 FC2 FC6 T7 C3 Cz C4 T8 TP9 CP5 CP1 CP2 CP6 TP10 P7 P3 Pz P4 P8 PO9 O1 Oz O2 PO10".split()
)
CAP_64 = tuple(
    "Fp1 Fpz Fp2 AF7 AF3 AFz AF4 AF8 F7 F5 F3 F1 Fz F2 F4 F6 F8 FT7 FC5 FC3 FC1 FCz FC2 FC4 FC6 FT8 T7 C5 C3 C1 Cz "
    "C2 C4 C6 T8 TP7 CP5 CP3 CP1 CPz CP2 CP4 CP6 TP8 P7 P5 P3 P1 Pz P2 P4 P6 P8 PO7 PO3 POz PO4 PO8 O1 Oz O2 Iz".split()
)


@pytest.mark.parametrize("head_model", ["default", "mismatched"])
def test_inverse_recovers_a_single_dipole(head_model):
    """A dipole written through the simulator's lead field (its own sphere, or the mismatched head)
    peaks in the inverse within 3 cm of where it is."""
    cortex, space = load_cortex(), source_space()
    positions = standard_positions(CAP_32)
    gain = eeg_lead_field(CAP_32, positions, head_model)  # [32, 1284] ico3 dipoles of the simulator
    kernel = inverse_kernel(CAP_32, positions)
    assert kernel.shape == (space.n_sources, len(CAP_32))
    errors = []
    for dipole in range(0, gain.shape[1], 97):
        estimate = np.abs(kernel @ (gain[:, dipole] - gain[:, dipole].mean()))  # average reference
        truth = cortex.mid[cortex.source_vertices[dipole]]
        errors.append(np.linalg.norm(space.positions[np.argmax(estimate)] - truth))
    assert np.median(errors) < 15.0 and max(errors) < 30.0, errors


def test_local_design_uses_only_its_neighbourhood():
    """A vertex's local design holds the columns of N_NEIGHBOURS patches of its own hemisphere, close
    to it; changing any other column leaves its prediction unchanged."""
    space = source_space()
    n_per_patch = 10
    vertex = 1234
    patch = space.patch[vertex]
    cols = local_columns(patch, n_per_patch)
    assert len(cols) == N_NEIGHBOURS * n_per_patch
    used = np.unique(cols // n_per_patch)
    assert patch in used and len(used) == N_NEIGHBOURS
    patch_hemi = np.repeat([0, 1], N_PATCHES // 2)
    assert np.all(patch_hemi[used] == space.hemi[vertex])
    assert np.all(np.linalg.norm(space.patch_centres[used] - space.positions[vertex], axis=1) < 60.0)

    rng = np.random.default_rng(0)
    points = np.array([vertex, 4000])
    x = rng.normal(size=(300, N_PATCHES * n_per_patch))
    y = x[:, cols[:3]] @ np.array([[1.0, 0.0], [0.5, 0.0], [-1.0, 0.0]]) + rng.normal(size=(300, 2))
    solution = fit_local_path(RidgeStatistics.from_rows(x, y), None, space.patch[points], n_per_patch, (1.0,))
    other = np.setdiff1d(np.arange(x.shape[1]), cols)
    moved = x.copy()
    moved[:, other] += rng.normal(size=(300, len(other)))
    np.testing.assert_allclose(solution.predict(moved)[:, 0], solution.predict(x)[:, 0], rtol=1e-5, atol=1e-5)
    assert not np.allclose(solution.predict(moved)[:, 1], solution.predict(x)[:, 1])  # the other vertex sees them
    assert np.corrcoef(solution.predict(x)[:, 0], y[:, 0])[0, 1] > 0.7


def test_fnirs_channel_local_design_lies_beneath_it():
    """An fNIRS channel's local columns are the patches of the sources within NIRS_RADIUS_MM of its
    midpoint's projection on the cortex, its own hemisphere only; HbO and HbR share them, other
    columns do not move its prediction, and fMRI vertices keep their patch and its neighbours."""
    space = source_space()
    midpoints = motor_probe().midpoints
    positions = np.repeat(midpoints, 2, axis=0)  # HbO and HbR of a channel share its midpoint
    groups, neighbourhoods = channel_neighbourhoods(positions)
    assert np.array_equal(groups[0::2], groups[1::2]) and len(neighbourhoods) == len(midpoints)
    patch_hemi = np.repeat([0, 1], N_PATCHES // 2)
    for channel, midpoint in enumerate(midpoints):
        vertex = int(np.argmin(np.linalg.norm(space.pial - midpoint, axis=1)))
        hemi = space.hemi[vertex]
        assert hemi == int(midpoint[0] > 0)  # the probe's left channels over the left hemisphere
        beneath = (np.linalg.norm(space.pial - space.pial[vertex], axis=1) <= NIRS_RADIUS_MM) & (space.hemi == hemi)
        patches = neighbourhoods[groups[2 * channel]]
        assert patches[0] == space.patch[vertex]  # the patch under the projection first
        assert sorted(patches.tolist()) == sorted(set(space.patch[beneath].tolist()))
        assert np.all(patch_hemi[patches] == hemi)

    n_per_patch = 4
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, N_PATCHES * n_per_patch))
    cols = np.flatnonzero(np.isin(np.arange(x.shape[1]) // n_per_patch, neighbourhoods[groups[0]]))
    y = x[:, cols[:4]].sum(1, keepdims=True) + rng.normal(size=(300, len(positions)))
    stats = RidgeStatistics.from_rows(x, y)
    solution = fit_local_path(stats, None, groups, n_per_patch, (1.0,), neighbourhoods=neighbourhoods)
    for group, columns in solution.columns.items():
        assert sorted(set((columns // n_per_patch).tolist())) == sorted(neighbourhoods[group].tolist())
    moved = x.copy()
    moved[:, np.setdiff1d(np.arange(x.shape[1]), cols)] += rng.normal(size=(300, x.shape[1] - len(cols)))
    np.testing.assert_allclose(solution.predict(moved)[:, :2], solution.predict(x)[:, :2], rtol=1e-5, atol=1e-5)
    assert np.corrcoef(solution.predict(x)[:, 0], y[:, 0])[0, 1] > 0.5

    # fMRI: groups are patches and each takes its own and its nearest, exactly as before
    vertices = np.array([0, 1234, 4000, 5000])
    patches = point_patches(space.pial[vertices])
    assert patches.tolist() == space.patch[vertices].tolist()
    y = rng.normal(size=(300, len(vertices)))
    stats = RidgeStatistics.from_rows(x, y)
    fmri = fit_local_path(stats, None, patches, n_per_patch, (1.0,))
    explicit = fit_local_path(stats, None, patches, n_per_patch, (1.0,), neighbourhoods=list(space.neighbours))
    for patch in fmri.columns:
        old = (space.neighbours[patch][:, None] * n_per_patch + np.arange(n_per_patch)).reshape(-1)
        assert np.array_equal(fmri.columns[patch], old)
        assert np.array_equal(fmri.coef[patch], explicit.coef[patch])


def test_local_path_from_summed_statistics_equals_pooled_fit():
    rng = np.random.default_rng(1)
    n_per_patch = 2
    points = rng.choice(source_space().n_sources, size=40, replace=False)
    patches = source_space().patch[points]
    subjects = []
    for _ in range(4):
        x = rng.normal(size=(120, N_PATCHES * n_per_patch))
        y = 0.3 * x[:, :40] + rng.normal(size=(120, 40))
        subjects.append((x, y))
    parts = [RidgeStatistics.from_rows(x, y) for x, y in subjects]
    pooled_x = np.concatenate([x for x, _ in subjects])
    pooled_y = np.concatenate([y for _, y in subjects])
    val_x, val_y = rng.normal(size=(80, N_PATCHES * n_per_patch)), rng.normal(size=(80, 40))
    val = RidgeStatistics.from_rows(val_x, val_y)
    summed = fit_local_path_selected(parts, val, patches, n_per_patch)
    pooled = fit_local_path(RidgeStatistics.from_rows(pooled_x, pooled_y), val, patches, n_per_patch)
    assert summed.penalties == pooled.penalties
    np.testing.assert_allclose(summed.intercept, pooled.intercept, atol=1e-10)
    for patch in summed.coef:
        np.testing.assert_allclose(summed.coef[patch], pooled.coef[patch], atol=1e-10)
    # one point's fit is the ridge of its own columns alone (the restriction of the sum is the sum of restrictions)
    patch = int(patches[0])
    mine = np.flatnonzero(patches == patch)
    cols = local_columns(patch, n_per_patch)
    direct = fit_ridge(
        RidgeStatistics.from_rows(pooled_x[:, cols], pooled_y[:, mine]), None, (summed.penalties[patch],)
    )
    np.testing.assert_allclose(summed.coef[patch], direct.coef, atol=1e-10)
    assert restrict(sum_statistics(parts), cols, mine).sxx.shape == (len(cols), len(cols))
    # without validation statistics: 2-fold choice, then the same refit on the sum
    two_fold = fit_local_path_selected(parts, None, patches, n_per_patch)
    refit = fit_ridge(restrict(sum_statistics(parts), cols, mine), None, (two_fold.penalties[patch],))
    np.testing.assert_allclose(two_fold.coef[patch], refit.coef, atol=1e-10)


PERIODS = (20.0, 13.0)  # s: the slow amplitude modulation of each of the two rhythms


def _two_rhythm_eeg(names, patches, seconds: float = 90.0, sfreq: float = 200.0) -> Recording:
    """EEG of two alpha rhythms, one in each of two patches, their amplitudes following slow sines
    of different periods (through the simulator's lead field), plus sensor noise."""
    cortex, space = load_cortex(), source_space()
    positions = standard_positions(names)
    gain = eeg_lead_field(names, positions)
    t = np.arange(int(seconds * sfreq)) / sfreq
    rng = np.random.default_rng(2)
    data = 5e-7 * rng.normal(size=(len(names), len(t)))
    for patch, period, freq in zip(patches, PERIODS, (10.0, 11.0)):
        near = np.argsort(np.linalg.norm(cortex.mid[cortex.source_vertices] - space.patch_centres[patch], axis=1))[:3]
        source = 1e-8 * (1.0 + 0.8 * np.sin(2 * np.pi * t / period)) * np.sin(2 * np.pi * freq * t)
        data += gain[:, near].sum(1)[:, None] * source[None, :]
    data -= data.mean(0, keepdims=True)
    return Recording(data=1e4 * data, sfreq=sfreq, names=list(names), positions=positions, modality="eeg")


def test_32_and_64_channel_caps_share_the_source_space():
    """Both caps give band power on the same 324 patches, and the patch where a dipole's power
    peaks lies close to the dipole, and close to the other cap's peak."""
    config = PreprocessConfig(design_space="source")
    cortex, space = load_cortex(), source_space()
    patches = [int(np.argmin(np.linalg.norm(space.patch_centres - c, axis=1))) for c in ([-30, -75, 20], [40, -20, 55])]
    dipoles = np.arange(0, cortex.source_vertices.size, 23)
    shapes, peaks = [], []
    for cap in (CAP_32, CAP_64):
        power, _ = run_source_power(_two_rhythm_eeg(cap, patches), config)
        assert np.isfinite(power).all()
        shapes.append(power.shape)
        positions = standard_positions(cap)
        fields = eeg_lead_field(cap, positions)[:, dipoles]
        fields -= fields.mean(0)  # average reference
        patch_power = np.einsum("pcd,cs,ds->ps", patch_power_operator(cap, positions), fields, fields)
        peaks.append(space.patch_centres[np.argmax(patch_power, axis=0)])
        error = np.linalg.norm(peaks[-1] - cortex.mid[cortex.source_vertices[dipoles]], axis=1)
        assert np.median(error) < 20.0 and np.percentile(error, 90) < 35.0, (len(cap), np.sort(error))
    assert shapes[0] == shapes[1] and shapes[0][:2] == (N_PATCHES, len(EEG_BANDS))
    assert np.median(np.linalg.norm(peaks[0] - peaks[1], axis=1)) < 20.0


def test_design_space_switch_keeps_the_default_and_refuses_a_model_of_another_width():
    from fedneurogen.shared.design import feature_bands, n_design_features
    from fedneurogen.shared.model.config import get_preset

    default = PreprocessConfig()
    legacy = default.model_dump()
    del legacy["design_space"]
    assert default.cache_key() == hashlib.sha256(json.dumps(legacy, sort_keys=True).encode()).hexdigest()[:16]
    source = PreprocessConfig.from_overrides("design_space=source")
    assert source.cache_key() != default.cache_key()
    assert n_design_features(default) == 640 and n_design_features(source) == N_PATCHES * 5 * 2
    assert np.bincount(feature_bands(n_design_features(source))).tolist() == [N_PATCHES * 2] * 5
    with pytest.raises(ConfigError, match="design_space = 'source' gives 3240 design features"):
        get_preset("tiny").check_preprocess(source)
    with pytest.raises(ConfigError, match="design_space"):
        PreprocessConfig.from_overrides("design_space=sensor")
    assert point_patches(source_space().pial[[0, 5000]]).tolist() == source_space().patch[[0, 5000]].tolist()


def test_mismatched_head_model_changes_the_lead_field_and_nothing_else(tmp_path):
    from fedneurogen.simulations.simulator import simulate_dataset

    positions = standard_positions(CAP_32)
    default, mismatched = eeg_lead_field(CAP_32, positions), eeg_lead_field(CAP_32, positions, "mismatched")
    assert np.linalg.norm(mismatched - default) / np.linalg.norm(default) > 0.1
    with pytest.raises(ConfigError, match="head_model"):
        simulate_dataset(
            tmp_path / "bad", n_sites=1, subjects_per_site=1, run_seconds=60.0, progress=False, head_model="x"
        )

    roots = {}
    for head_model in ("default", "mismatched"):
        roots[head_model] = tmp_path / head_model
        simulate_dataset(
            roots[head_model], n_sites=1, subjects_per_site=1, seed=5, run_seconds=60.0, progress=False, n_jobs=1,
            head_model=head_model,
        )  # fmt: skip
    files = sorted(p.relative_to(roots["default"]) for p in roots["default"].rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(roots["mismatched"]) for p in roots["mismatched"].rglob("*") if p.is_file())
    differ = [str(f) for f in files if (roots["default"] / f).read_bytes() != (roots["mismatched"] / f).read_bytes()]
    # what the EEG carries differs (the recording, the expected band power of the ceiling), and the record says why
    assert "simulation.json" in differ
    assert any(f.endswith(("_eeg.edf", "_eeg.eeg", "_eeg.set", "_eeg.fdt")) for f in differ), differ
    lead_field_only = [f for f in differ if f != "simulation.json" and "/eeg/" not in f]
    assert lead_field_only == [], lead_field_only
    summaries = [json.loads((roots[h] / "simulation.json").read_text()) for h in ("default", "mismatched")]
    assert summaries[1].pop("head_model") == "mismatched" and summaries[0].pop("head_model") == "default"
    assert summaries[0] == summaries[1]


def test_simulate_command_takes_the_head_model(tmp_path):
    from typer.testing import CliRunner

    from fedneurogen.cli import app

    runner = CliRunner()
    out = tmp_path / "sim"
    args = ["simulate", "--out", str(out), "--sites", "1", "--subjects-per-site", "1", "--run-seconds", "60"]
    result = runner.invoke(app, args + ["--head-model", "mismatched"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "simulation.json").read_text())["head_model"] == "mismatched"
    refused = runner.invoke(app, args + ["--head-model", "realistic"])
    assert refused.exit_code == 2 and "head_model must be one of default, mismatched" in refused.output
