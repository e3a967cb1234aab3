"""Fairness augmentation: leakage guards, report schema, determinism, clear errors.

One small simulated EEG-fNIRS site (binary left/right task, so the equalized-odds path runs) and
a tiny checkpoint trained for a few steps; generation uses 2 sampling steps.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from typer.testing import CliRunner

from fedneurogen.shared.workflows.fairness import (
    AugmentConfig,
    ModelSynthesizer,
    plan_balance,
    prepare_samples,
    run_augmentation,
)
from fedneurogen.shared.workflows import fairness as fm
from fedneurogen.shared.errors import DataError

FOLDS = 2


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from fedneurogen.simulations.simulator import simulate_dataset

    out = tmp_path_factory.mktemp("fair-sim")
    return simulate_dataset(
        out, n_sites=1, subjects_per_site=3, modality="fnirs", seed=5, run_seconds=200.0, progress=False
    )[0]


@pytest.fixture(scope="module")
def windows(site):
    from fedneurogen.shared.data import load_site

    return load_site(site, progress=False)


@pytest.fixture(scope="module")
def checkpoint(windows, tmp_path_factory):
    from fedneurogen.shared.workflows.centralized import train_centralized
    from fedneurogen.shared.workflows.training import TRAIN_PRESETS

    config = TRAIN_PRESETS["tiny"].model_copy(update={"epochs": 1, "batch_size": 8})
    run = tmp_path_factory.mktemp("fair-model")
    return train_centralized([windows], run, preset="tiny", seed=0, train_config=config, device="cpu", progress=False)


@pytest.fixture(scope="module")
def synthesizer(checkpoint):
    from fedneurogen.shared.model import load_checkpoint

    model, meta = load_checkpoint(checkpoint, device="cpu", use_ema=True)
    return ModelSynthesizer(model, meta["class_names"], steps=2, guidance_scale=2.0)


@pytest.fixture(scope="module")
def imbalanced(windows):
    """Left/right windows with 'left' cut to 8: the minority class."""
    rng = np.random.default_rng(0)
    left = np.flatnonzero(windows.labels == "left")
    right = np.flatnonzero(windows.labels == "right")
    keep = np.sort(np.concatenate([rng.choice(left, 8, replace=False), right]))
    return windows.subset(keep)


# target features only: the EEG band power of 64 channels is the slow part and adds nothing here
CONFIG = AugmentConfig(folds=FOLDS, sensitive_attribute="group", seed=3, steps=2, use_eeg=False)


class Spy:
    """Wraps the synthesizer: records the subject and window of every EEG window it is given."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __call__(self, windows, seed):
        self.calls.append({"subjects": set(windows.subjects.tolist()), "ids": set(fm.window_ids(windows).tolist())})
        return self.inner(windows, seed)


def test_minority_rule():
    labels = np.array(["a"] * 150 + ["b"] * 150 + ["c"] * 30)
    plan = plan_balance(labels, ["a", "b", "c"], None, None, 0.8)
    assert plan.minority == ["c"]
    # a 4/5 training fold is topped up to 4/5 of 150
    train = np.concatenate([np.arange(120), np.arange(150, 270), np.arange(300, 324)])
    assert plan.fold_deficits(train, len(labels)) == {"c": round(150 * len(train) / len(labels)) - 24}


def test_generated_samples_train_only_and_come_from_training_subjects(imbalanced, synthesizer):
    spy = Spy(synthesizer)
    config = replace(CONFIG, sensitive_attribute=None)  # balance classes: every fold tops up 'left'
    samples = prepare_samples(imbalanced, config, "site-x")
    folds = fm.subject_folds(samples.labels, samples.windows.subjects, samples.classes, FOLDS, config.seed, "site-x")
    from fedneurogen.shared.workflows.fairness import GenerationLog, generate_strategy

    log = GenerationLog()
    strategy = generate_strategy(samples, spy, log)
    seen = {"fit": [], "predict": []}

    class Recorder:
        """An estimator that records what it is fitted on and asked to predict."""

        def __init__(self, class_weight):
            self.inner = fm.make_classifier("logreg", samples.features, samples.classes, class_weight=class_weight)

        def fit(self, X, y):
            seen["fit"].append(np.asarray(X))
            self.inner.fit(X, y)
            return self

        def predict(self, X):
            seen["predict"].append(np.asarray(X))
            return self.inner.predict(X)

    trainings = []

    def recording_strategy(fold):
        training = strategy(fold)
        trainings.append((fold, training))
        return training

    ids = samples.ids
    fm.cross_validate(
        "generate",
        recording_strategy,
        samples.features.values,
        samples.labels,
        samples.windows.subjects,
        ids,
        folds,
        Recorder,
        samples.classes,
        config.seed,
    )
    assert len(spy.calls) == len(folds)
    for (fold, training), call, scored in zip(trainings, spy.calls, seen["predict"]):
        test_subjects = set(samples.windows.subjects[fold.test].tolist())
        generated = training.origin == "generated"
        assert generated.sum() > 0
        # no EEG of a test subject (or a test window) went into the generator for this fold
        assert not call["subjects"] & test_subjects
        assert not call["ids"] & set(ids[fold.test].tolist())
        assert set(training.source_subjects[generated].tolist()) == call["subjects"]
        # every generated row is flagged, labelled with the minority class, and only in training
        assert set(training.labels[generated].tolist()) == {"left"}
        assert np.array_equal(scored, samples.features.values[fold.test])
        generated_rows = {row.tobytes() for row in training.features[generated]}
        assert not generated_rows & {row.tobytes() for row in scored}


def test_linear_gaussian_is_fitted_on_each_training_fold_only(imbalanced, monkeypatch):
    from fedneurogen.shared.workflows.baselines import LinearGaussianGenerator

    fitted = []
    original = LinearGaussianGenerator.fit

    def spy(self, train, val=None):
        fitted.append(set(train.subjects.tolist()))
        return original(self, train, val)

    monkeypatch.setattr(LinearGaussianGenerator, "fit", spy)
    config = replace(CONFIG, sensitive_attribute=None, strategies=("none", "linear-gaussian"))
    report, log = run_augmentation(imbalanced, config, "site-x")  # no model needed
    entry = report["strategies"]["linear-gaussian"]
    assert entry["n_synthetic"] > 0 and 0 <= entry["generated_label_fidelity"] <= 1
    assert len(fitted) == len(report["fold_test_subjects"]) == FOLDS
    for subjects, test in zip(fitted, report["fold_test_subjects"]):
        assert subjects and not subjects & set(test)  # never a test subject's target
    assert log.calls == []  # the model's generation log is not the baseline's


def test_a_strategy_that_uses_test_subjects_is_refused(imbalanced):
    samples = prepare_samples(imbalanced, replace(CONFIG, sensitive_attribute=None), "site-x")
    folds = fm.subject_folds(samples.labels, samples.windows.subjects, samples.classes, FOLDS, 3, "site-x")

    def leaky(fold):
        base = fm.real_training_set(
            samples.features.values, samples.labels, samples.windows.subjects, samples.ids, fold.train
        )
        t = fold.test[:2]
        return fm.stack(
            base,
            samples.features.values[t],
            samples.labels[t],
            "generated",
            samples.windows.subjects[t],
            samples.ids[t],
        )

    def make(class_weight):
        return fm.make_classifier("logreg", samples.features, samples.classes)

    with pytest.raises(RuntimeError, match="test subject"):
        fm.cross_validate(
            "leaky",
            leaky,
            samples.features.values,
            samples.labels,
            samples.windows.subjects,
            samples.ids,
            folds,
            make,
            samples.classes,
            3,
        )


def test_report_is_deterministic_and_logs_sources(imbalanced, synthesizer):
    config = replace(CONFIG, strategies=("none", "generate"))
    first, log = run_augmentation(imbalanced, config, "site-x", synthesizer=synthesizer)
    second, _ = run_augmentation(imbalanced, config, "site-x", synthesizer=synthesizer)
    assert json.dumps(first["strategies"], sort_keys=True) == json.dumps(second["strategies"], sort_keys=True)
    # class x group cells below 0.8 x (largest class / number of groups) are the minority units
    cell_target = first["target_per_class"] / len(first["group_counts"])
    assert first["minority_units"] == [u for u, n in first["unit_counts"].items() if 0 < n < 0.8 * cell_target]
    assert "left" in first["minority_classes"]
    assert first["strategies"]["generate"]["n_synthetic"] == sum(len(c["subjects"]) for c in log.calls) > 0
    for call in log.calls:
        assert not set(call["subjects"]) & set(first["fold_test_subjects"][call["fold"]])
    for fold in first["strategies"]["generate"]["folds"]:
        assert fold["test_windows_used_as_sources"] == 0
    # generation noise follows the seed
    sub = imbalanced.subset(np.arange(4))
    assert np.array_equal(synthesizer(sub, seed=1), synthesizer(sub, seed=1))
    assert not np.array_equal(synthesizer(sub, seed=1), synthesizer(sub, seed=2))


def test_cli_report_schema(site, checkpoint, tmp_path):
    from fedneurogen.cli import app

    out = tmp_path / "report"
    result = CliRunner().invoke(
        app,
        ["augment", "--checkpoint", str(checkpoint), "--data", str(site), "--out", str(out), "--sensitive-attribute", "group",
         "--folds", str(FOLDS), "--steps", "2", "--target-per-class", "40", "--seed", "1"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["classes"] == ["left", "right"]
    assert report["minority_classes"] == ["left", "right"]  # both below 0.8 x 40
    assert report["sensitive_attribute"] == "group" and report["folds"] == FOLDS
    assert set(report["strategies"]) == {"none", "oversample", "class-weight", "smote", "generate", "linear-gaussian"}
    assert report["strategies"]["linear-gaussian"]["n_synthetic"] > 0
    assert report["strategies"]["smote"]["n_interpolated"] > 0
    generate = report["strategies"]["generate"]  # label fidelity of generated and of held-out real windows
    assert 0 <= generate["generated_label_fidelity"] <= 1 and 0 <= generate["real_label_fidelity"] <= 1
    for name, entry in report["strategies"].items():
        assert set(entry["per_class_f1_mean"]) == set(entry["per_class_f1_std"]) == {"left", "right"}
        for key in ("accuracy_mean", "macro_f1_mean", "n_synthetic"):
            assert key in entry
        group = entry["per_group"]
        assert set(group["by_group"]) == set(report["group_counts"])
        assert {"worst_group", "difference", "ratio"} <= set(group)
        assert group["equalized_odds_difference"]["positive_class"] in ("left", "right")
    assert report["strategies"]["generate"]["n_synthetic"] > 0
    assert report["strategies"]["none"]["n_synthetic"] == 0
    assert "| generate |" in (out / "report.md").read_text()
    for png in ("per_class_f1.png", "per_group.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_class_without_eeg_is_a_clear_error(windows):
    config = AugmentConfig(folds=FOLDS, classes=("left", "right", "tongue"))
    with pytest.raises(DataError, match="tongue") as err:
        run_augmentation(windows, config, "site-07", synthesizer=lambda w, seed: w.target)
    assert "site-07" in str(err.value)


def test_a_missing_participants_table_or_column_is_named(windows, tmp_path):
    """--sensitive-attribute reads participants.tsv: its absence and a missing column are told apart."""
    config = AugmentConfig(folds=FOLDS, sensitive_attribute="handedness")
    with pytest.raises(
        DataError, match=r"participants.tsv is missing; --sensitive-attribute 'handedness' reads the column"
    ):
        run_augmentation(windows, config, tmp_path, synthesizer=lambda w, seed: w.target)  # a site folder with no table
    (tmp_path / "participants.tsv").write_text("participant_id\tgroup\nsub-01\tA\n")
    with pytest.raises(DataError, match=r"participants.tsv: has no column 'handedness' for --sensitive-attribute"):
        run_augmentation(windows, config, tmp_path, synthesizer=lambda w, seed: w.target)


def test_class_smaller_than_folds_is_a_clear_error(windows, site, checkpoint, tmp_path):
    few = windows.subset(
        np.sort(
            np.concatenate([np.flatnonzero(windows.labels == "left")[:2], np.flatnonzero(windows.labels == "right")])
        )
    )
    with pytest.raises(DataError, match="'left' has 2 window") as err:
        run_augmentation(few, AugmentConfig(folds=3, strategies=("none",), use_eeg=False), "site-07")
    assert "site-07" in str(err.value)

    from fedneurogen.cli import app

    result = CliRunner().invoke(
        app, ["augment", "--data", str(site), "--out", str(tmp_path / "r"), "--strategy", "oversample", "--folds", "9"]
    )
    assert result.exit_code == 1
    output = result.output.replace("\n", "")
    assert "folds" in output and site.name in output


def test_riemann_and_lda_pipelines_fit():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(40, 3, 50))
    a[20:, 0] *= 3.0  # class 'b' has more power on channel 0
    covs = fm.eeg_covariances(a)
    target = rng.normal(size=(40, 4)).astype(np.float32)
    features = fm.Features(np.concatenate([covs, target], axis=1), {"eeg_cov": (0, 9), "target": (9, 13)})
    labels = np.array(["a"] * 20 + ["b"] * 20)
    clf = fm.make_classifier("riemann", features, ["a", "b"]).fit(features.values[::2], labels[::2])
    assert (clf.predict(features.values[1::2]) == labels[1::2]).mean() >= 0.8
    lda = fm.make_classifier("lda", fm.Features(target, {"target": (0, 4)}), ["a", "b"], class_weight="balanced").fit(
        target, labels
    )
    assert np.allclose(lda.named_steps["clf"].priors_, 0.5)


def test_table_protocol_cut_and_goals(imbalanced):
    from fedneurogen.simulations.fairness_table import Protocol, cut_condition, goal_figures

    protocol = Protocol("motor", "fnirs", ("left", "right"), 10, 4, 2)
    kept, pool = cut_condition(imbalanced, protocol, "left", np.random.default_rng(0))
    assert (kept.labels == "left").sum() == 4 and (kept.labels == "right").sum() == 10
    assert len(pool) == 4 and set(pool.labels) == {"left"} and not np.any(pool.target)
    assert not set(fm.window_ids(pool)) & set(fm.window_ids(kept))

    def report(minority_f1):
        names = ("none", "oversample", "class-weight", "smote", "generate")
        return {"strategies": {n: {"per_class_f1_mean": {"left": f, "right": 0.9}} for n, f in zip(names, minority_f1)}}

    goals = goal_figures([{"minority": "left", "report": report((0.3, 0.4, 0.4, 0.5, 0.8))}], ("left", "right"))
    assert goals["mean"]["goals"] == {
        "minority_f1 >= 0.8 x mean majority F1": True,
        "majority F1 drop <= 0.03": True,
        "generate beats none, oversample, class-weight and SMOTE on minority F1": True,
    }
    assert goals["mean"]["minority_f1_smote"] == 0.5
    beaten_by_smote = goal_figures(
        [{"minority": "left", "report": report((0.3, 0.4, 0.4, 0.85, 0.8))}], ("left", "right")
    )
    assert not beaten_by_smote["mean"]["goals"][
        "generate beats none, oversample, class-weight and SMOTE on minority F1"
    ]


def test_smote_interpolates_within_the_minority_of_the_training_fold(imbalanced):
    from fedneurogen.shared.workflows.fairness import smote_strategy

    samples = prepare_samples(imbalanced, replace(CONFIG, sensitive_attribute=None), "site-x")
    splits = fm.subject_folds(samples.labels, samples.windows.subjects, samples.classes, FOLDS, 3, "site-x")
    for fold in [fm.Fold(i, train, test, seed=i) for i, (train, test) in enumerate(splits)]:
        training = smote_strategy(samples)(fold)
        added = training.origin == "interpolated"
        need = samples.plan.fold_deficits(fold.train, len(samples.labels))["left"]
        assert added.sum() == need and set(training.labels[added]) == {"left"}
        # each new row lies between minority rows of the training fold (inside their bounding box)
        own = samples.features.values[fold.train][samples.labels[fold.train] == "left"]
        rows = training.features[added]
        assert np.all(rows >= own.min(axis=0) - 1e-6) and np.all(rows <= own.max(axis=0) + 1e-6)
        assert not {r.tobytes() for r in rows} & {r.tobytes() for r in samples.features.values[fold.test]}


def test_label_fidelity_is_judged_by_a_class_balanced_classifier(imbalanced):
    from fedneurogen.shared.workflows.fairness import GenerationLog, generate_strategy

    samples = prepare_samples(imbalanced, replace(CONFIG, sensitive_attribute=None), "site-x")
    (train, test), *_ = fm.subject_folds(samples.labels, samples.windows.subjects, samples.classes, FOLDS, 3, "site-x")
    fold = fm.Fold(0, train, test, seed=0)
    asked = []

    def make_estimator(class_weight):
        asked.append(class_weight)
        return fm.make_classifier("logreg", samples.features, samples.classes, class_weight=class_weight)

    recorded = RecordedTargetsOf(samples.windows)  # a perfect generator: the recorded targets
    training = generate_strategy(samples, recorded, GenerationLog(), make_estimator)(fold)
    assert asked == ["balanced"]
    assert training.log["label_fidelity"] is not None and training.log["label_fidelity_real"] is not None
    # recorded targets of training windows are labelled as well as held-out real ones, or better
    assert training.log["label_fidelity"] >= training.log["label_fidelity_real"] - 0.2


class RecordedTargetsOf:
    def __init__(self, windows):
        self.index = {wid: i for i, wid in enumerate(fm.window_ids(windows))}
        self.windows = windows

    def __call__(self, windows, seed):
        return self.windows.target[[self.index[w] for w in fm.window_ids(windows)]]


def test_generation_setting_is_chosen_on_training_subjects_only(imbalanced, synthesizer):
    """``auto``: each fold tries the settings on an inner split of its training subjects; no
    setting ever sees a test subject's EEG, and the choice is recorded."""
    from fedneurogen.shared.workflows.fairness import GenerationLog, generate_strategy

    calls = []

    class SpyingSynthesizer:
        def __init__(self, inner):
            self.inner = inner

        def with_settings(self, estimate, guidance):
            return SpyingSynthesizer(self.inner.with_settings(estimate, guidance))

        def __call__(self, windows, seed):
            calls.append((self.inner.settings, set(windows.subjects.tolist())))
            return self.inner(windows, seed)

    samples = prepare_samples(imbalanced, replace(CONFIG, sensitive_attribute=None), "site-x")
    splits = fm.subject_folds(samples.labels, samples.windows.subjects, samples.classes, FOLDS, 3, "site-x")
    train, test = max(
        splits, key=lambda fold: len(set(samples.windows.subjects[fold[0]].tolist()))
    )  # two training subjects to split
    make = lambda cw: fm.make_classifier("logreg", samples.features, samples.classes, class_weight=cw)  # noqa: E731
    choices = (("sample", 2.0), ("mean", 0.0))
    training = generate_strategy(samples, SpyingSynthesizer(synthesizer), GenerationLog(), make, choices)(
        fm.Fold(0, train, test, seed=0)
    )
    test_subjects = set(samples.windows.subjects[test].tolist())
    assert {settings for settings, _ in calls} == set(
        choices
    )  # both tried (then the chosen one generates for the fold)
    assert all(not subjects & test_subjects for _, subjects in calls)
    assert training.log["chosen_setting"] in training.log["setting_scores"] and len(training.log["setting_scores"]) == 2
    mean = synthesizer.with_settings("mean", 0.0)
    window = samples.windows.subset(np.arange(2))
    assert np.array_equal(mean(window, seed=1), mean(window, seed=2))  # the mean is deterministic


def test_group_variant_cuts_group_b_in_every_class(windows):
    from fedneurogen.simulations.fairness_table import Protocol, cut_group

    protocol = Protocol("motor", "fnirs", ("left", "right"), 10, 2, 2)
    kept, pool = cut_group(windows, protocol, "B", np.random.default_rng(0))
    groups = kept.group_of("group").astype(str)
    for c in protocol.classes:
        assert ((kept.labels == c) & (groups == "B")).sum() == 2
        assert 0 < ((kept.labels == c) & (groups == "A")).sum() <= 10
    assert set(pool.group_of("group").astype(str)) == {"B"} and not np.any(pool.target)
    assert not set(fm.window_ids(pool)) & set(fm.window_ids(kept))
    with pytest.raises(DataError, match="group B has"):
        cut_group(windows, Protocol("motor", "fnirs", ("left", "right"), 10, 10_000, 2), "B", np.random.default_rng(0))


def test_subject_variant_keeps_whole_subjects_and_pools_the_other_group_b_subjects_eeg(windows):
    from fedneurogen.simulations.fairness_table import cut_group_subjects

    groups = windows.group_of("group").astype(str)
    n_b = len(set(windows.subjects[groups == "B"].tolist()))
    kept, pool = cut_group_subjects(windows, ("left", "right"), 1, n_b - 1, np.random.default_rng(0))
    kept_groups = kept.group_of("group").astype(str)
    assert len(set(kept.subjects[kept_groups == "A"].tolist())) == 1
    assert len(set(kept.subjects[kept_groups == "B"].tolist())) == n_b - 1
    for subject in set(kept.subjects.tolist()):  # every task window of a kept subject
        assert (kept.subjects == subject).sum() == np.sum(
            (windows.subjects == subject) & np.isin(windows.labels, ["left", "right"])
        )
    assert set(pool.group_of("group").astype(str)) == {"B"} and not np.any(pool.target)
    assert not set(pool.subjects.tolist()) & set(kept.subjects.tolist())
    with pytest.raises(DataError, match="group B has"):
        cut_group_subjects(windows, ("left", "right"), 1, n_b, np.random.default_rng(0))


def test_table_rows_carry_every_strategy_and_the_oracle(windows, synthesizer, tmp_path):
    from fedneurogen.simulations.fairness_table import STRATEGIES, Protocol, run_group_variant, run_protocol

    protocol = Protocol("motor", "fnirs", ("left", "right"), 10, 4, 2)
    (row, *_) = run_protocol(
        windows, protocol, synthesizer, tmp_path, seed=0, source="pool", classifier="logreg", with_eeg=False
    )
    assert set(row["report"]["strategies"]) == set(STRATEGIES) | {"oracle"}
    saved = json.loads((tmp_path / "conditions" / "fnirs-left" / "report.json").read_text())
    assert set(saved["strategies"]) == set(STRATEGIES) | {"oracle"}
    variant = run_group_variant(
        windows,
        Protocol("motor", "fnirs", ("left", "right"), 10, 2, 2),
        synthesizer,
        tmp_path,
        seed=0,
        classifier="logreg",
        with_eeg=False,
    )
    assert set(variant["groups"]) == set(STRATEGIES) | {"oracle"} and all(
        "gap" in g for g in variant["groups"].values()
    )


def test_na_is_no_group_in_the_group_metrics_or_the_balance_plan():
    """BIDS ``n/a`` (a subject without a value) is missing, never a group: the worst group and the
    equalized-odds difference are computed over the real groups only, and its windows are counted."""
    y_true = np.array(["a", "b", "a", "b", "a", "b", "a", "b"])
    y_pred = np.array(["a", "b", "a", "a", "b", "a", "b", "a"])  # the n/a windows are all wrong
    sensitive = np.array(["F", "F", "M", "M", "n/a", "n/a", "n/a", "n/a"])
    out = fm.group_metrics(y_true, y_pred, sensitive, ["a", "b"])
    assert set(out["by_group"]) == {"F", "M"} and out["left_out"] == 4
    assert out["worst_group"]["group"] == "M" and out["worst_group"]["macro_f1"] > 0
    assert set(
        fm.group_fold_scores(
            fm.StrategyResult("none", [], y_true, y_pred), sensitive, [(np.arange(0), np.arange(8))], ["a", "b"]
        )
    ) == {"F", "M"}

    plan = plan_balance(y_true, ["a", "b"], sensitive, None, 0.8)
    assert (
        all("n/a" not in unit for unit in plan.targets) and plan.targets["a | F"] == 1.0
    )  # 2 grouped a's over 2 groups


def test_why_no_strategy_added_windows_is_said():
    from fedneurogen.shared.workflows.fairness.report import nothing_added_reason

    entry = {"n_synthetic": 0, "n_oversampled": 0, "n_interpolated": 0, "folds": [{"units_not_topped_up": []}]}
    report = {"strategies": {"none": dict(entry), "oversample": dict(entry)}, "minority_units": [],
              "sensitive_attribute": "sex", "minority_rule": "cell with fewer than 0.8 x 2 windows"}  # fmt: skip
    assert nothing_added_reason(report).startswith(
        "No strategy added windows: no class x group cell is under-represented"
    )
    report["minority_units"] = ["a | M"]
    report["strategies"]["oversample"] = {**entry, "folds": [{"units_not_topped_up": ["a | M"]}]}
    assert "a | M had no training windows" in nothing_added_reason(report)
    report["strategies"]["oversample"] = {**entry, "n_oversampled": 3}
    assert nothing_added_reason(report) is None
