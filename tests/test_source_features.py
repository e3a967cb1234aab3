"""Cortical-source features (fedneurogen.shared.sources) and the mismatched head model (issue 29)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedneurogen.shared.config import PreprocessConfig
from fedneurogen.shared.errors import ConfigError
from fedneurogen.shared.features import EEG_BANDS
from fedneurogen.shared.recording import Recording
from fedneurogen.shared.sources import (
    N_NEIGHBOURS,
    N_PATCHES,
    NIRS_RADIUS_MM,
    channel_neighbourhoods,
    inverse_kernel,
    local_columns,
    patch_power_operator,
    point_patches,
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
    from fedneurogen.shared.design import N_GATED, feature_bands, n_design_features
    from fedneurogen.shared.model.config import get_preset

    default = PreprocessConfig()
    # without the alpha-gated block, the key from before design_space (and the fields after it)
    # existed: old caches stay valid; the gated design is another design, with another key
    assert PreprocessConfig(alpha_gating=False).cache_key() == "84a1f8fa7e1f2575" != default.cache_key()
    # the block's first (product) gate keeps the key its caches were made with; the default gate has its own
    assert PreprocessConfig(alpha_gate="product").cache_key() == "6700e2c99704e281" != default.cache_key()
    assert PreprocessConfig(alpha_gating=False, alpha_gate="product").cache_key() == "84a1f8fa7e1f2575"
    source = PreprocessConfig.from_overrides("design_space=source")
    both = PreprocessConfig.from_overrides("design_space=scalp+source")
    assert len({source.cache_key(), both.cache_key(), default.cache_key()}) == 3
    assert source.cache_key() == PreprocessConfig(design_space="source", alpha_gating=False).cache_key()  # no block
    assert n_design_features(default) == 640 + N_GATED and n_design_features(source) == N_PATCHES * 5 * 2
    assert n_design_features(both) == 640 + N_GATED + N_PATCHES * 5 * 2
    tiny = get_preset("tiny")
    assert tiny.for_preprocess(both).local_path and tiny.for_preprocess(both).design_width == n_design_features(both)
    tiny.for_preprocess(both).check_preprocess(both)
    with pytest.raises(ConfigError, match="set local_path"):
        tiny.check_preprocess(both)
    from fedneurogen.shared.design import global_part, linear_part, split_design

    scalp, src = split_design(np.zeros((2, 640 + N_PATCHES * 10)))
    assert scalp.shape == (2, 640) and src.shape == (2, N_PATCHES * 10)
    scalp, src = split_design(np.zeros((2, 640 + N_GATED + N_PATCHES * 10)))  # the gated block stays with the scalp
    assert scalp.shape == (2, 640 + N_GATED) and src.shape == (2, N_PATCHES * 10)
    assert linear_part(np.zeros((2, 640 + N_GATED + N_PATCHES * 10))).shape == (2, 640)
    assert linear_part(np.zeros((1, 320 + N_GATED))).shape == (1, 320)
    assert np.bincount(feature_bands(640 + N_GATED)).tolist() == [128] * 5 + [N_GATED]
    assert split_design(np.zeros((1, 320)))[1] is None and split_design(np.zeros((1, N_PATCHES * 5)))[0] is None
    assert global_part(np.zeros((1, 384))).shape == (1, 384)  # not a model design (the ceiling's): all of it
    with pytest.raises(ValueError, match="384"):
        split_design(np.zeros((1, 384)))
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
