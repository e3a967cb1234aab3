"""Synthesis: GIFTI on fsaverage5 and SNIRF written from a checkpoint and a site's EEG."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import mne
import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from fedneurogen.cli import app
from fedneurogen.shared.config import PreprocessConfig
from fedneurogen.shared.errors import ConfigError
from fedneurogen.shared.outputs import OUTPUT_MARKER
from fedneurogen.shared.surface import ico4_to_fsaverage5, upsample_ico4
from fedneurogen.shared.workflows.synthesis import generate, label_indices, stitch_run, synthesize, uncovered_seconds

RUN_SECONDS = 160.0


@functools.lru_cache(maxsize=None)
def trained_consortium(root: Path) -> tuple[Path, Path, Path]:
    """site-01 (EEG-fMRI) and site-02 (EEG-fNIRS), 3 subjects of 160 s each, and a tiny model
    trained for a few steps on both: ``(checkpoint, fmri_site, fnirs_site)``. Built once per
    session, also for ``test_evaluation`` (which calls this with the same root)."""
    from fedneurogen.shared.data import load_site
    from fedneurogen.shared.workflows.centralized import train_centralized
    from fedneurogen.shared.workflows.training import TrainConfig
    from fedneurogen.simulations.simulator import simulate_dataset

    fmri_site, fnirs_site = simulate_dataset(
        root / "data", n_sites=2, subjects_per_site=3, modality="mixed", seed=3, run_seconds=RUN_SECONDS, progress=False
    )
    sites = [load_site(site, progress=False) for site in (fmri_site, fnirs_site)]
    checkpoint = train_centralized(
        sites, root / "run", preset="tiny", seed=0, preprocess=PreprocessConfig().model_dump(),
        train_config=TrainConfig(epochs=1, batch_size=8, lr=1e-3, warmup_steps=1), site_names=[fmri_site.name, fnirs_site.name],
        site_dirs=[fmri_site, fnirs_site], progress=False,
    )  # fmt: skip
    return checkpoint, fmri_site, fnirs_site


@pytest.fixture(scope="session")
def consortium(tmp_path_factory) -> tuple[Path, Path, Path]:
    return trained_consortium(tmp_path_factory.getbasetemp() / "synthesis-consortium")


def _windows(site: Path, subject: str):
    from fedneurogen.shared.data import load_site

    windows = load_site(site, progress=False)
    return windows.subset(windows.subjects == subject)


def _fsaverage5_sphere():
    from nilearn import datasets

    sphere = datasets.load_fsaverage("fsaverage5")["sphere"]
    return [(np.asarray(sphere.parts[h].coordinates), np.asarray(sphere.parts[h].faces)) for h in ("left", "right")]


# ----------------------------------------------------------------------------------------------
# ico4 -> fsaverage5


def _bids_errors(dataset, allowed: tuple[str, ...] = ()) -> list[str]:
    """The BIDS validator's errors on a generated derivative dataset (tests/test_bids_validator.py),
    but for the codes in ``allowed``."""
    from test_bids_validator import _validate, _validator

    issues = _validate(_validator(), dataset)["issues"]["issues"]
    return [
        f"{i.get('code')}: {i.get('location')}"
        for i in issues
        if i["severity"] == "error" and i.get("code") not in allowed
    ]


def test_upsampling_keeps_ico4_values_and_interpolates_the_rest():
    rng = np.random.default_rng(0)
    values = rng.standard_normal((5124, 3))
    surface = upsample_ico4(values)
    assert surface.shape == (20484, 3)
    # ico4 is the first 2562 vertices of each fsaverage5 hemisphere: kept exactly
    np.testing.assert_array_equal(surface[:2562], values[:2562].astype(np.float32))
    np.testing.assert_array_equal(surface[10242 : 10242 + 2562], values[2562:].astype(np.float32))
    np.testing.assert_allclose(np.asarray(ico4_to_fsaverage5().sum(axis=1)).ravel(), 1.0)

    for h, (coords, faces) in enumerate(_fsaverage5_sphere()):
        # every other vertex is the mean of its ico4 neighbours on the mesh
        for v in (2562, 5000, 10241):
            neighbours = np.unique(faces[(faces == v).any(axis=1)])
            parents = neighbours[neighbours < 2562]
            assert len(parents) == 2
            np.testing.assert_allclose(surface[h * 10242 + v], values[h * 2562 + parents].mean(axis=0), rtol=1e-5)
        # a smooth field (the sphere's own x coordinate) is interpolated to within a fraction of a mesh edge
        radius = np.linalg.norm(coords[0])
        field = np.zeros((5124, 1))
        field[h * 2562 : (h + 1) * 2562, 0] = coords[:2562, 0]
        error = upsample_ico4(field)[h * 10242 : (h + 1) * 10242, 0] - coords[:, 0]
        assert np.abs(error).max() < 0.01 * radius


def test_upsampling_rejects_other_point_counts():
    with pytest.raises(ValueError, match="5124"):
        upsample_ico4(np.zeros((2562, 2)))


# ----------------------------------------------------------------------------------------------
# Stitching and labels


def test_denormalisation_restores_a_runs_scale_and_pools_the_site_for_eeg_only_runs():
    from fedneurogen.shared.workflows.synthesis import StitchedRun, TargetScale, site_scale, units_sidecar

    rng = np.random.default_rng(0)
    real = 800 + rng.uniform(0, 200, (4, 1)) + rng.uniform(2, 12, (4, 1)) * rng.standard_normal((4, 300))
    z = (real - real.mean(1, keepdims=True)) / real.std(1, keepdims=True)
    scale = TargetScale(real.mean(1), real.std(1), "test")
    restored = scale.apply(StitchedRun(data=z.astype(np.float32), covered=np.ones(300, bool))).data
    np.testing.assert_allclose(restored.mean(1), real.mean(1), rtol=1e-5)
    np.testing.assert_allclose(restored.std(1), real.std(1), rtol=1e-3)
    other = TargetScale(real.mean(1) + 10, real.std(1) * 3, "test")
    pooled = site_scale([scale, other])
    np.testing.assert_allclose(pooled.mean, real.mean(1) + 5)
    np.testing.assert_allclose(pooled.sd, real.std(1) * 2)
    assert "2 real run(s) pooled" in pooled.source
    assert "site's 2 real run(s)" in units_sidecar("fmri", True, pooled)["Normalization"]
    assert units_sidecar("fmri", True, None)["Units"] == "z (per vertex)"


def test_stitch_run_averages_overlaps_and_keeps_gaps_in_place():
    sfreq = 0.5
    values = np.stack([np.full((2, 4), 1.0), np.full((2, 4), 3.0), np.full((2, 4), 5.0)])
    run = stitch_run(values, onsets=np.array([6.0, 10.0, 22.0]), sfreq=sfreq)  # frames 3-6, 5-8, 11-14
    assert run.data.shape == (2, 15)
    np.testing.assert_array_equal(run.data[0], [0, 0, 0, 1, 1, 2, 2, 3, 3, 0, 0, 5, 5, 5, 5])
    assert uncovered_seconds(run, sfreq) == [[0.0, 6.0], [18.0, 22.0]]


def test_labels_are_the_windows_own_or_the_requested_class(consortium):
    _, fmri_site, _ = consortium
    windows = _windows(fmri_site, "sub-01")
    names = ["faces", "motion", "rest"]
    own = label_indices(windows, names)
    expected = [names.index(label) if label in names else -1 for label in windows.labels]
    np.testing.assert_array_equal(own, expected)
    assert (own == -1).any()  # scenes/tools windows fall back to the null label
    np.testing.assert_array_equal(label_indices(windows, names, "motion"), np.full(len(windows), 1))
    with pytest.raises(ConfigError, match="is not a class of"):
        label_indices(windows, names, "left")


# ----------------------------------------------------------------------------------------------
# Generation and files


def test_generation_is_deterministic_by_seed(consortium):
    from fedneurogen.shared.model import load_checkpoint

    checkpoint, fmri_site, _ = consortium
    model, meta = load_checkpoint(checkpoint, device="cpu", use_ema=True)
    windows = _windows(fmri_site, "sub-02").subset(np.arange(3))
    labels = label_indices(windows, meta["class_names"])
    first = generate(model, windows, labels, n_samples=2, steps=2, seed=5, batch_size=2)
    again = generate(model, windows, labels, n_samples=2, steps=2, seed=5, batch_size=2)
    assert first.shape == (2, 3, 5124, 8) and np.isfinite(first).all()
    np.testing.assert_array_equal(first, again)
    # sample k is drawn with seed + k; another seed gives other samples
    np.testing.assert_array_equal(first[1], generate(model, windows, labels, steps=2, seed=6, batch_size=2)[0])
    assert not np.allclose(first[0], first[1])


def test_synthesize_writes_gifti_on_fsaverage5_with_provenance(consortium, tmp_path):
    checkpoint, fmri_site, _ = consortium
    out = tmp_path / "generated"
    args = ["synthesize", "--checkpoint", str(checkpoint), "--data", str(fmri_site), "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--subjects", "sub-01", "--steps", "2", "--seed", "3"])
    assert result.exit_code == 0, result.output

    func = out / "sub-01" / "func"
    stem = "sub-01_task-visual_run-1"
    hemis = [nib.load(func / f"{stem}_hemi-{h}_space-fsaverage5_desc-generated_bold.func.gii") for h in "LR"]
    # only the subject asked for (and the CLI's marker of a folder it made)
    assert sorted(p.name for p in out.iterdir()) == [".bidsignore", OUTPUT_MARKER, "dataset_description.json", "sub-01"]
    assert _bids_errors(out) == []
    windows = _windows(fmri_site, "sub-01")
    n_volumes = int(round(windows.onsets.max() * windows.target_sfreq)) + windows.target.shape[-1]
    for img in hemis:
        data = np.stack([d.data for d in img.darrays], axis=1)
        assert data.shape == (10242, n_volumes) and np.isfinite(data).all()
    first = int(PreprocessConfig().history_seconds * windows.target_sfreq)
    # in the data's own units: the subject's real run's per-vertex mean and SD (ico4 vertices, kept as is)
    from fedneurogen.shared.data import find_runs

    (real_run,) = [r for r in find_runs(fmri_site) if r.subject == "sub-01"]
    for img, path in zip(hemis, real_run.target):
        data = np.stack([d.data for d in img.darrays], axis=1)[:2562].astype(np.float64)
        real = np.stack([d.data for d in nib.load(path).darrays], axis=1)[:2562].astype(np.float64)
        real_mean, real_sd = real.mean(axis=1), real.std(axis=1)
        # frames before the hemodynamic history (30 s) are uncovered: the baseline, i.e. the real mean
        np.testing.assert_allclose(data[:, :first], np.repeat(real_mean[:, None], first, 1), rtol=1e-5)
        generated = data[:, first:]
        assert np.abs(generated - real_mean[:, None]).max() > 0  # generated, not the baseline
        assert np.median(np.abs(generated.mean(axis=1) - real_mean) / real_sd) < 1.0
        ratio = np.median(generated.std(axis=1) / real_sd)
        assert 0.1 < ratio < 3.0, ratio  # on the real run's scale, not z units (real SD is far from 1)
        assert abs(np.median(real_sd) - 1) > 0.5 and np.median(real_mean) > 10
    assert "CortexLeft" in hemis[0].meta["AnatomicalStructurePrimary"]

    sidecar = json.loads((func / f"{stem}_space-fsaverage5_desc-generated_bold.json").read_text())
    meta = json.loads((checkpoint / "config.json").read_text())
    assert sidecar["RepetitionTime"] == 2.0 and sidecar["UncoveredSeconds"] == [
        [0.0, PreprocessConfig().history_seconds]
    ]
    assert sidecar["GeneratedBy"]["CheckpointHash"] == meta["content_hash"]
    assert sidecar["SpatialReference"]["CIFTI_STRUCTURE_CORTEX_LEFT"].endswith("_hemi-L_den-10k_sphere.surf.gii")
    assert sidecar["GeneratedBy"]["Steps"] == 2 and sidecar["GeneratedBy"]["Seed"] == 3
    assert sidecar["Sources"] == [f"sub-01/eeg/{stem}_eeg.edf"]
    assert "BOLD units" in sidecar["Units"] and "this run's real recording" in sidecar["Normalization"]
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "FedNeuroGen"
    assert str(func / f"{stem}_hemi-L_space-fsaverage5_desc-generated_bold.func.gii") in result.output.replace("\n", "")

    # the same seed writes the same data
    again = synthesize(checkpoint, fmri_site, tmp_path / "again", subjects=["01"], steps=2, seed=3, progress=False)
    left = nib.load(again[2])
    np.testing.assert_array_equal(
        np.stack([d.data for d in left.darrays], 1), np.stack([d.data for d in hemis[0].darrays], 1)
    )


def test_estimate_mean_writes_the_deterministic_point_prediction(consortium, tmp_path):
    checkpoint, fmri_site, _ = consortium
    base = [
        "synthesize",
        "--checkpoint",
        str(checkpoint),
        "--data",
        str(fmri_site),
        "--subjects",
        "sub-01",
        "--estimate",
        "mean",
    ]
    stem = "sub-01/func/sub-01_task-visual_run-1_hemi-L_space-fsaverage5_desc-mean_bold.func.gii"
    arrays = []
    for out, seed in ((tmp_path / "a", "1"), (tmp_path / "b", "2")):  # the seed does not matter: nothing is sampled
        result = CliRunner().invoke(app, [*base, "--out", str(out), "--seed", seed])
        assert result.exit_code == 0, result.output
        arrays.append(np.stack([d.data for d in nib.load(out / stem).darrays], axis=1))
        sidecar = json.loads(
            (out / "sub-01/func/sub-01_task-visual_run-1_space-fsaverage5_desc-mean_bold.json").read_text()
        )
        assert sidecar["GeneratedBy"]["Estimate"].startswith("point prediction")
    np.testing.assert_array_equal(arrays[0], arrays[1])
    assert np.abs(arrays[0]).max() > 0


def test_synthesize_writes_snirf_on_the_sites_probe(consortium, tmp_path, snirf_problems):
    checkpoint, _, fnirs_site = consortium
    written = synthesize(
        checkpoint,
        fnirs_site,
        tmp_path / "gen",
        subjects=["sub-02"],
        label="left",
        n_samples=2,
        steps=2,
        seed=1,
        progress=False,
    )
    stem = "sub-02_task-motor_run-1"
    nirs = tmp_path / "gen" / "sub-02" / "nirs"
    assert [p.name for p in written[2:]] == [
        f"{stem}_desc-generatedLeft1_nirs.snirf", f"{stem}_desc-generatedLeft1_nirs.json",
        f"{stem}_desc-generatedLeft2_nirs.snirf", f"{stem}_desc-generatedLeft2_nirs.json",
    ]  # fmt: skip

    # the one known deviation: the schema has no desc- entity for _nirs files (the estimate's name)
    assert _bids_errors(tmp_path / "gen", allowed=("ENTITY_NOT_IN_RULE",)) == []
    raw = mne.io.read_raw_snirf(nirs / f"{stem}_desc-generatedLeft1_nirs.snirf", preload=True, verbose="error")
    windows = _windows(fnirs_site, "sub-02")
    assert set(raw.get_channel_types()) == {"hbo", "hbr"}
    assert sorted(raw.ch_names) == sorted(windows.target_names) and raw.info["sfreq"] == 1.0
    assert set(raw.annotations.description) <= {"left", "right"} and len(raw.annotations) > 0

    # optodes are the site's own: source/detector positions match its recording channel by channel
    site_raw = mne.io.read_raw_snirf(fnirs_site / "sub-02" / "nirs" / f"{stem}_nirs.snirf", verbose="error")
    site_locs = {name.rsplit(" ", 1)[0]: ch["loc"][3:9] for name, ch in zip(site_raw.ch_names, site_raw.info["chs"])}
    for name, ch in zip(raw.ch_names, raw.info["chs"]):
        np.testing.assert_allclose(ch["loc"][3:9], site_locs[name.rsplit(" ", 1)[0]])

    # the values are the generated ones (uM in the file; MNE reads mol/L), on the run's time grid
    from fedneurogen.shared.model import load_checkpoint

    model, meta = load_checkpoint(checkpoint, device="cpu", use_ema=True)
    samples = generate(
        model, windows, label_indices(windows, meta["class_names"], "left"), steps=2, seed=1, batch_size=16
    )
    expected = stitch_run(samples[0], windows.onsets, windows.target_sfreq).data
    rows = [windows.target_names.index(n) for n in raw.ch_names]
    np.testing.assert_allclose(raw.get_data() * 1e6, expected[rows], rtol=1e-4, atol=1e-6)
    sidecar = json.loads((nirs / f"{stem}_desc-generatedLeft2_nirs.json").read_text())
    assert sidecar["GeneratedBy"]["Label"] == "left" and sidecar["GeneratedBy"]["Seed"] == 2
    assert sidecar["ProbeFrom"].endswith(f"{stem}_nirs.snirf")
    assert sidecar["Units"] == "umol/L" and "band-passed" in sidecar["Normalization"]
    assert (sidecar["NIRSSourceOptodeCount"], sidecar["NIRSDetectorOptodeCount"]) == (8, 18)  # the site's probe
    for path in written[2::2]:  # the format's own validator: no error, no warning
        assert snirf_problems(path) == [], path
