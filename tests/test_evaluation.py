"""Evaluation: the report, its figures, the subject split it honours, ground truth, baselines."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_synthesis import trained_consortium
from typer.testing import CliRunner

from fedneurogen.cli import app
from fedneurogen.shared.workflows import synthesis
from fedneurogen.shared.workflows.evaluation_baselines import fit_predict, ground_truth_windows
from fedneurogen.shared.workflows.evaluation_scores import conditioned_classes, tstr_scores
from fedneurogen.shared.workflows.evaluation_subjects import evaluation_split, limit_windows
from fedneurogen.shared.workflows.baselines import RidgeHRFBaseline
from fedneurogen.shared.config import PreprocessConfig
from fedneurogen.shared.metrics import temporal_pcc
from fedneurogen.shared.outputs import OUTPUT_MARKER
from fedneurogen.shared.recording import PairedWindows
from fedneurogen.shared.workflows.baselines.regressor import RegressorBaseline
from fedneurogen.shared.splits import SeenSubjects, split_subjects


@pytest.fixture(scope="session")
def consortium(tmp_path_factory):
    return trained_consortium(tmp_path_factory.getbasetemp() / "synthesis-consortium")


def _load(site):
    from fedneurogen.shared.data import load_site

    return load_site(site, progress=False)


def _fake_windows(subjects: list[str], per_subject: int = 4) -> PairedWindows:
    n = len(subjects) * per_subject
    rng = np.random.default_rng(0)
    return PairedWindows(
        eeg=rng.standard_normal((n, 2, 400)).astype(np.float32), eeg_sfreq=200.0, eeg_channel_names=["Cz", "Pz"],
        eeg_positions=np.zeros((2, 3)), target=rng.standard_normal((n, 3, 8)).astype(np.float32), target_sfreq=0.5,
        target_modality="fmri", target_names=["a", "b", "c"], target_positions=np.zeros((3, 3)),
        labels=np.array(["rest"] * n), subjects=np.repeat(subjects, per_subject), runs=np.repeat([f"{s}_task-x" for s in subjects], per_subject),
        onsets=np.tile(6.0 + 8.0 * np.arange(per_subject), len(subjects)), lag=6.0,
    )  # fmt: skip


REPORT_NUMBERS = ("noise_baseline", "calibration", "n_test_windows", "test_subjects_count", "steps")
SCORES = ("pcc_temporal", "pcc_temporal_top10", "pcc_spatial", "ssim")


def test_evaluate_scores_only_test_subjects_and_writes_report_and_plots(consortium, tmp_path, monkeypatch):
    checkpoint, fmri_site, _ = consortium
    meta = json.loads((checkpoint / "config.json").read_text())
    provenance = meta["provenance"]
    windows = _load(fmri_site)
    split = split_subjects(
        windows.subjects, provenance["split_seed"], provenance["val_fraction"], provenance["test_fraction"]
    )

    # spies: which subjects are generated for, and which the baselines learn from
    seen = {"generated": set(), "ridge_fit": set(), "regressor_fit": set()}

    def spy(original, key, position):
        def wrapper(*args, **kwargs):
            seen[key] |= set(args[position].subjects.tolist())
            return original(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(synthesis, "generate", spy(synthesis.generate, "generated", 1))
    monkeypatch.setattr(RidgeHRFBaseline, "fit", spy(RidgeHRFBaseline.fit, "ridge_fit", 1))
    monkeypatch.setattr(RegressorBaseline, "fit", spy(RegressorBaseline.fit, "regressor_fit", 1))

    out = tmp_path / "report"
    args = ["evaluate", "--checkpoint", str(checkpoint), "--data", str(fmri_site), "--out", str(out)]
    result = CliRunner().invoke(
        app, [*args, "--steps", "2", "--max-windows", "8", "--baseline-epochs", "1", "--seed", "1", "--n-samples", "2"]
    )
    assert result.exit_code == 0, result.output
    assert "noise ceiling" in result.output and "ridge-HRF" in result.output and "EEG-informed ceiling" in result.output

    report = json.loads((out / "report.json").read_text())
    for key in REPORT_NUMBERS:
        assert isinstance(report[key], (int, float)) and math.isfinite(report[key]), key
    for row in ("point_prediction", "point_prediction_labels", "sample", "samples_mean"):
        assert all(math.isfinite(report[row][m]) for m in SCORES), row
    for name in ("ridge_hrf", "label_only", "regressor", "linear_gaussian_sample"):
        assert all(math.isfinite(report["baselines"][name][m]) for m in SCORES), name
    # samples as data, the model's and linear-Gaussian's, with the same K
    assert "linear-Gaussian: one sample" in result.output and "samples as data" in result.output
    for name in ("model", "linear_gaussian"):
        row = report["sample_metrics"][name]
        assert row["samples"] == 2 and 0 <= row["coverage_50"] <= row["coverage_90"] <= 1, name
        assert row["crps"] > 0 and row["psd_distance"] >= 0 and -1 <= row["fc_similarity"] <= 1, name
        # train on the samples (labelled with their conditioning class), test on the real windows
        for key in ("tstr_balanced_accuracy", "tstr_macro_f1"):
            assert row[key] is None or 0 <= row[key] <= 1, (name, key)
    reference = report["sample_metrics"]["real_reference"]  # the same classifier trained on real windows
    assert reference["tstr_chance"] is None or reference["tstr_chance"] == 1 / len(reference["classes"])
    assert reference["trtr_balanced_accuracy"] is None or 0 <= reference["trtr_balanced_accuracy"] <= 1
    assert "trtr_macro_f1" in reference and "(TRTR)" in result.output
    assert math.isfinite(report["ceilings"]["eeg_informed"]["pcc_temporal"])
    assert report["relative"]["over_ridge_hrf"] == pytest.approx(
        report["point_prediction"]["pcc_temporal"] / report["baselines"]["ridge_hrf"]["pcc_temporal"]
    )
    assert report["steps"] == 2 and report["samples_drawn"] == 2 and 0 < report["n_test_windows"] <= 8
    assert report["site_in_training"] is True

    # scored on the training split's test subjects only; baselines learn from its training subjects only
    assert report["test_subjects"] == list(split.test) and report["test_subjects_count"] == len(split.test)
    assert seen["generated"] == set(split.test)
    assert seen["ridge_fit"] == seen["regressor_fit"] == set(split.train)
    assert not set(split.test) & set(split.train)
    assert report["held_out"]["excluded_count"] == len(split.train) + len(split.val)
    assert {e["subject"] for e in report["held_out"]["excluded"]} == set(split.train + split.val)

    # the noise-free signal tracks the real one far better than a shuffled real signal does
    assert report["ceilings"]["noise"]["pcc_temporal"] > 0.3 > abs(report["noise_baseline"])
    for name in ("maps.png", "timecourses.png", "metrics.png", "samples.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert report["plots"] == ["maps.png", "timecourses.png", "metrics.png", "samples.png"]
    assert sorted(p.name for p in out.iterdir()) == [
        OUTPUT_MARKER,
        "maps.png",
        "metrics.png",
        "report.json",
        "samples.png",
        "timecourses.png",
    ]  # no temp files


def test_tstr_scores_train_on_each_generators_first_sample_with_the_real_reference():
    rng = np.random.default_rng(0)
    subjects = [f"sub-{i:02d}" for i in range(6)]
    windows = _fake_windows(subjects, per_subject=12)
    n, points = len(windows), 20
    labels = np.array(["rest", "motion"] * (n // 2))
    target = rng.standard_normal((n, points, 8)).astype(np.float32)
    target[labels == "motion", :10] += 1.5  # a clear class signal in half the points
    windows = dataclasses.replace(
        windows, target=target, labels=labels, target_positions=rng.standard_normal((points, 3)),
        target_names=[f"v{i}" for i in range(points)],
    )  # fmt: skip
    # the model's classes lack "motion": its windows are sampled with the null label, then left out
    assert conditioned_classes(np.array([0, -1]), ["rest"]).tolist() == ["rest", None]
    classes = ["rest", "motion"]
    conditioned = conditioned_classes(synthesis.label_indices(windows, classes), classes)
    generators = {"copy": target[None], "noise": rng.standard_normal((2, *target.shape)), "none": None}
    scores, reference = tstr_scores(generators, windows, conditioned)
    assert reference["tstr_chance"] == 0.5 and reference["classes"] == ["motion", "rest"] and reference["windows"] == n
    assert reference["trtr_balanced_accuracy"] > 0.9
    # the real windows as samples: the reference itself (same folds, same classifier)
    assert scores["copy"]["tstr_balanced_accuracy"] == reference["trtr_balanced_accuracy"]
    assert scores["copy"]["tstr_macro_f1"] == reference["trtr_macro_f1"]
    assert 0 <= scores["noise"]["tstr_balanced_accuracy"] <= 1 and scores["none"] is None
    only_rest = conditioned_classes(synthesis.label_indices(windows, ["rest"]), ["rest"])
    _, one_class = tstr_scores(generators, windows, only_rest)
    assert one_class["trtr_balanced_accuracy"] is None and one_class["tstr_chance"] is None


def test_site_outside_training_is_all_test_and_baselines_cross_fit():
    windows = _fake_windows(["sub-01", "sub-02", "sub-03", "sub-04"])
    keys = {f"sub-0{i}": f"{i}" * 64 for i in range(1, 5)}  # content keys (splits.subject_keys)
    elsewhere = SeenSubjects(train=frozenset({"a" * 64}), val=frozenset({"b" * 64}))  # another site's runs
    split = evaluation_split(windows, elsewhere, keys, Path("/data/site-01"))
    assert not split.site_in_training and split.train is None
    assert split.split.test == ("sub-01", "sub-02", "sub-03", "sub-04") and "2 folds by subject" in split.note

    fits = []

    class Recorder:
        def fit(self, train):
            fits.append(set(train.subjects.tolist()))
            return self

        def predict(self, test):
            return np.full(test.target.shape, len(fits), dtype=np.float32)

    predicted = fit_predict(Recorder, None, split.test)
    assert fits == [{"sub-02", "sub-04"}, {"sub-01", "sub-03"}]  # each half predicted by the other
    np.testing.assert_array_equal(predicted[np.isin(windows.subjects, ["sub-01", "sub-03"])], 1.0)
    np.testing.assert_array_equal(predicted[np.isin(windows.subjects, ["sub-02", "sub-04"])], 2.0)

    # the same folder, trained on sub-02 (one of its two runs) and validated on sub-04: by content
    keys["sub-02"] = f"{'2' * 64}:{'e' * 64}"
    seen = SeenSubjects(train=frozenset({"e" * 64}), val=frozenset({"4" * 64}))
    trained = evaluation_split(windows, seen, keys, Path("site-01"))
    assert trained.site_in_training and trained.split.train == ("sub-02",) and trained.split.val == ("sub-04",)
    assert trained.split.test == ("sub-01", "sub-03") and set(trained.test.subjects.tolist()) == {"sub-01", "sub-03"}
    assert set(trained.train.subjects.tolist()) == {"sub-02"} and set(trained.val.subjects.tolist()) == {"sub-04"}
    assert trained.held_out()["excluded"] == [
        {"subject": "sub-02", "status": "trained on"},
        {"subject": "sub-04", "status": "validated on"},
    ]


def test_limit_windows_keeps_every_subject_and_consecutive_windows():
    windows = _fake_windows(["sub-01", "sub-02"], per_subject=6)
    limited = limit_windows(windows, 5)
    assert len(limited) == 4 and sorted(set(limited.subjects.tolist())) == ["sub-01", "sub-02"]
    np.testing.assert_array_equal(limited.onsets, [6.0, 14.0, 6.0, 14.0])


def test_ground_truth_gives_the_noise_ceiling_and_is_absent_without_derivatives(consortium, tmp_path):
    _, _, fnirs_site = consortium
    windows = _load(fnirs_site)
    config = PreprocessConfig()
    truth = ground_truth_windows(fnirs_site, windows, config)
    assert truth is not None and truth.shape == windows.target.shape
    ceiling = temporal_pcc(truth, windows.target, windows.runs, windows.onsets, windows.target_sfreq)
    assert 0.3 < ceiling < 0.999  # noisy vs noise-free: related, not identical

    bare = tmp_path / "site-02"
    shutil.copytree(fnirs_site, bare, ignore=shutil.ignore_patterns("ground_truth"))
    assert ground_truth_windows(bare, windows, config) is None


def test_regressor_loss_falls_in_a_short_fit(consortium):
    _, _, fnirs_site = consortium
    windows = _load(fnirs_site).subset(np.arange(4))
    few = dataclasses.replace(
        windows,
        eeg=windows.eeg[:, :8],
        eeg_channel_names=windows.eeg_channel_names[:8],
        eeg_positions=windows.eeg_positions[:8],
    )
    # 60 epochs: with short-channel regression (the default) the fNIRS target has no shared
    # systemic component left, the easy part of the fit, so the loss falls more slowly at first.
    baseline = RegressorBaseline("tiny", epochs=60, batch_size=4, lr=3e-3, warmup_steps=1, seed=0, device="cpu").fit(
        few
    )
    assert len(baseline.history) == 60
    assert baseline.history[-1] < 0.8 * baseline.history[0]
    predicted = baseline.predict(few)
    assert predicted.shape == few.target.shape and np.isfinite(predicted).all()
    # deterministic: the same seed fits the same model
    again = RegressorBaseline("tiny", epochs=60, batch_size=4, lr=3e-3, warmup_steps=1, seed=0, device="cpu").fit(few)
    np.testing.assert_array_equal(again.predict(few), predicted)
