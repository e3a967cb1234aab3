"""The paper's Table 1 on simulated data: ``fedneurogen fairness-table --out DIR`` (``run(TableSettings(...))``).

Protocol (paper, "Cross-Modal Data Augmentation Enhances Fairness of BCI Decoding Models"):

(a) four visual-task classes decoded from fMRI: each class in turn is cut to 30 windows, the
    others to 150; 120 windows are generated for it; 5-fold cross-validation;
(b) left/right motor imagery decoded from fNIRS: one class 30 vs 120, 90 generated; 3-fold CV.

What this script does:

- simulates an evaluation consortium (one EEG-fMRI site, one EEG-fNIRS site; 10 subjects with
  15-minute runs give about 175 fMRI windows per visual class and 260 fNIRS windows per motor
  class) and, unless ``--checkpoint`` is given, a separate training consortium whose subjects
  the generator is trained on (so the generator never saw an evaluation subject);
- trains a small generator centrally for ``--train-minutes`` (the task windows of the training
  consortium, EMA weights), or loads ``--checkpoint``;
- per condition, draws the windows of the protocol at random (seeded). The cut class keeps the
  EEG of the windows whose target was dropped: an *EEG-only pool* (the paper's premise: EEG is
  cheap, the expensive modality is what is missing). Their targets are zeroed before anything
  sees them. ``--source paired`` uses only the 30 paired windows' EEG instead (several noise
  draws per window);
- cross-validates, grouped by subject, the strategies ``none`` (the paper's "original" rows),
  ``oversample`` (random oversampling baseline), ``class-weight``, ``smote``, ``generate``
  (``fedneurogen.shared.workflows.fairness``; its setting chosen per fold on the fold's training subjects)
  and ``linear-gaussian`` (the same sources and sizes, targets from the honest generative baseline
  fitted on each fold's training windows; generation must beat it by 0.02 minority F1);
  generated samples join training folds only and come from EEG of non-test subjects;
- the classifier reads target-modality features only, like the paper (fMRI: mean and slope of
  BOLD in 64 cortical ROIs; fNIRS: mean and slope of each HbO/HbR channel); ``--with-eeg`` adds
  EEG log band power;
- a *group variant* on the fMRI site: group B cut to ``n_minority`` windows per class (group A
  keeps up to ``n_majority``), its cut windows the EEG-only pool, class x group cells balanced,
  scored per group (worst group and gap);
- a *subject variant* (full sizes only): a separately simulated EEG-fMRI site of which 14 group-A
  and 2 group-B subjects are kept (group B is 2 of 16 subjects, every window of theirs), the other
  group-B subjects' EEG the pool; class x group cells balanced, scored per group;
- adds an *oracle* row (``--no-oracle`` skips it): the same folds, source windows and sizes as
  ``generate`` but with the target actually recorded with each source EEG window. It is the
  ceiling a perfect generator could reach under this protocol, and tells a protocol problem
  from a generator problem; it is not a method. Each ``generate`` fold also reports the label
  fidelity of its generated windows (see ``fedneurogen.shared.workflows.fairness.strategies.generate_strategy``).

Sizes: with CV the training folds hold (k-1)/k of the windows, so "30 + 120(Gen)" is about
24 real + 96 generated per 5-fold training set (the minority is topped up to the majority's
training size). ``--quick`` (for tests) uses 5 subjects with 5-minute runs (about 25-35 fMRI
windows per class), 20 vs 5 (fMRI) and 24 vs 6 (fNIRS) windows, 3 folds for both tasks: it checks
the pipeline, its numbers mean little.

Writes ``DIR/table.json``, ``DIR/table.md``, ``DIR/table.png`` and one report per condition
under ``DIR/conditions/``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fedneurogen.shared.workflows.fairness import (
    AugmentConfig,
    ModelSynthesizer,
    minority_summary,
    prepare_samples,
    run_augmentation,
    write_report,
)
from fedneurogen.shared.workflows import fairness as fm
from fedneurogen.shared.workflows import plots
from fedneurogen.shared.errors import ConfigError, DataError
from fedneurogen.shared.io import write_json_atomic, write_text_atomic
from fedneurogen.shared.recording import PairedWindows
from fedneurogen.shared.data import load_site
from fedneurogen.simulations.simulator import simulate_dataset

log = logging.getLogger(__name__)

STRATEGIES = ("none", "oversample", "class-weight", "smote", "generate", "linear-gaussian")
BASELINES = ("none", "oversample", "class-weight", "smote")  # what generation must beat
PAPER = {"minority_f1_before": 0.54, "minority_f1_after": 0.88, "majority_f1_drop": (0.07, 0.13)}


@dataclass(frozen=True)
class Protocol:
    name: str
    modality: str
    classes: tuple[str, ...]
    n_majority: int
    n_minority: int
    folds: int


@dataclass(frozen=True)
class Scale:
    eval_subjects: int
    eval_run_seconds: float
    train_subjects: int
    train_run_seconds: float
    protocols: tuple[Protocol, ...]
    # the subject variant's fMRI site: simulated subjects (about half group B), their runs'
    # length, and the kept roster (group A, group B); None: no subject variant
    subject_variant: tuple[int, float, int, int] | None = None


FULL = Scale(
    eval_subjects=10,
    eval_run_seconds=900.0,
    train_subjects=4,
    train_run_seconds=600.0,
    protocols=(
        Protocol("visual stimulus decoding (fMRI)", "fmri", ("faces", "motion", "scenes", "tools"), 150, 30, 5),
        Protocol("motor imagery (fNIRS)", "fnirs", ("left", "right"), 120, 30, 3),
    ),
    subject_variant=(32, 600.0, 14, 2),  # group B 2 of 16 subjects
)
QUICK = Scale(
    eval_subjects=5,
    eval_run_seconds=300.0,
    train_subjects=3,
    train_run_seconds=200.0,
    protocols=(
        Protocol("visual stimulus decoding (fMRI)", "fmri", ("faces", "motion", "scenes", "tools"), 20, 5, 3),
        Protocol("motor imagery (fNIRS)", "fnirs", ("left", "right"), 24, 6, 3),
    ),
)


# -- data and model ---------------------------------------------------------------------------


def ensure_simulated(
    out: Path, subjects: int, run_seconds: float, seed: int, modality: str = "mixed", n_sites: int = 2
) -> list[Path]:  # fmt: skip
    """A consortium under ``out`` (by default mixed: site-01 EEG-fMRI, site-02 EEG-fNIRS); reused
    when ``out/simulation.json`` says it was simulated with the same parameters."""
    summary = out / "simulation.json"
    wanted = {
        "seed": seed,
        "modality": modality,
        "n_sites": n_sites,
        "subjects_per_site": subjects,
        "run_seconds": run_seconds,
    }
    if summary.is_file():
        have = json.loads(summary.read_text())
        if all(have.get(k) == v for k, v in wanted.items()):
            return [out / f"site-{i + 1:02d}" for i in range(n_sites)]
    return simulate_dataset(
        out, n_sites=n_sites, subjects_per_site=subjects, modality=modality, seed=seed, run_seconds=run_seconds,
        progress=False,
    )  # fmt: skip


def train_generator(
    sites: list[PairedWindows], out: Path, *, preset: str, minutes: float, seed: int, device: str | None
) -> Path:
    """The product's own centralized training (``train_centralized``: the ridge path, class
    offsets and noise model in closed form, the learned residual kept by validation, the DiT,
    its departure share and the noise's spread chosen on validation subjects) on ``sites`` for
    ``minutes``. A quarter of the subjects validate; none is held out for test here, since the
    table is scored on separately simulated subjects. Returns the checkpoint folder."""
    from fedneurogen.shared.workflows.centralized import train_centralized
    from fedneurogen.shared.workflows.training import TRAIN_PRESETS

    config = TRAIN_PRESETS[preset].model_copy(
        update={"epochs": 10_000, "val_fraction": 0.25, "test_fraction": 0.0, "departure_windows": 64}
    )  # the minutes bound the training
    return train_centralized(
        sites, out, preset=preset, seed=seed, max_minutes=minutes, device=device, train_config=config, progress=False
    )


# -- one condition ----------------------------------------------------------------------------


def cut_condition(
    windows: PairedWindows, protocol: Protocol, minority: str, rng: np.random.Generator
) -> tuple[PairedWindows, PairedWindows]:
    """The protocol's windows (minority class ``n_minority``, others ``n_majority``) and the EEG-only
    pool: the minority windows left out, with their targets zeroed."""
    keep, pool = [], []
    for c in protocol.classes:
        index = np.flatnonzero(windows.labels == c)
        n = protocol.n_minority if c == minority else protocol.n_majority
        if len(index) < n:
            raise DataError(
                f"simulated {protocol.modality} site",
                f"class {c!r} has {len(index)} windows, the protocol needs {n}: simulate more subjects or longer runs",
            )
        order = rng.permutation(index)
        keep.append(order[:n])
        if c == minority:
            pool.append(order[n:])
    kept = windows.subset(np.sort(np.concatenate(keep)))
    left = windows.subset(np.sort(np.concatenate(pool)))
    return kept, replace(left, target=np.zeros(left.target.shape, np.float32))  # nothing may use these targets


def cut_group(
    windows: PairedWindows, protocol: Protocol, minority_group: str, rng: np.random.Generator
) -> tuple[PairedWindows, PairedWindows]:
    """The group variant: per class, up to ``n_majority`` windows of the other group and
    ``n_minority`` of ``minority_group`` (whose windows left out become the EEG-only pool,
    targets zeroed)."""
    groups = windows.group_of("group").astype(str)
    keep, pool = [], []
    for c in protocol.classes:
        minority = rng.permutation(np.flatnonzero((windows.labels == c) & (groups == minority_group)))
        if len(minority) < protocol.n_minority:
            raise DataError(
                f"simulated {protocol.modality} site",
                f"group {minority_group} has {len(minority)} windows of {c!r}, the group variant needs {protocol.n_minority}",
            )
        others = rng.permutation(np.flatnonzero((windows.labels == c) & (groups != minority_group)))
        keep += [minority[: protocol.n_minority], others[: protocol.n_majority]]
        pool.append(minority[protocol.n_minority :])
    kept = windows.subset(np.sort(np.concatenate(keep)))
    left = windows.subset(np.sort(np.concatenate(pool)))
    return kept, replace(left, target=np.zeros(left.target.shape, np.float32))


def cut_group_subjects(
    windows: PairedWindows, classes: tuple[str, ...], n_a: int, n_b: int, rng: np.random.Generator
) -> tuple[PairedWindows, PairedWindows]:
    """A site whose group B is ``n_b`` of ``n_a + n_b`` subjects: every window of ``classes`` of
    ``n_a`` group-A and ``n_b`` group-B subjects (drawn at random) is kept; the windows of the
    other group-B subjects become the EEG-only pool (targets zeroed), the other A subjects' go."""
    groups = windows.group_of("group").astype(str)
    subjects = {g: sorted(set(windows.subjects[groups == g].tolist())) for g in ("A", "B")}
    for g, n in (("A", n_a), ("B", n_b + 1)):
        if len(subjects[g]) < n:
            raise DataError(
                f"simulated {windows.target_modality} site",
                f"group {g} has {len(subjects[g])} subjects, the subject variant needs {n}",
            )
    kept_a = rng.permutation(subjects["A"])[:n_a]
    order_b = rng.permutation(subjects["B"])
    task = np.isin(windows.labels, classes)
    kept = windows.subset(task & np.isin(windows.subjects, np.concatenate([kept_a, order_b[:n_b]])))
    left = windows.subset(task & np.isin(windows.subjects, order_b[n_b:]))
    return kept, replace(left, target=np.zeros(left.target.shape, np.float32))  # nothing may use these targets


def target_rois(windows: PairedWindows, protocol: Protocol) -> np.ndarray | None:
    """The fMRI target's 64 cortical ROIs (the classifier's features); None for fNIRS."""
    return fm.target_parcellation(windows.target_positions, 64, seed=0) if protocol.modality == "fmri" else None


def evaluate_condition(
    windows: PairedWindows,
    kept: PairedWindows,
    pool: PairedWindows | None,
    config: AugmentConfig,
    site: str,
    synthesizer: ModelSynthesizer,
    rois: np.ndarray | None,
    oracle: bool,
    folder: Path,
) -> dict[str, Any]:
    """Every strategy cross-validated on one condition (``kept`` windows, EEG-only ``pool``), with
    the oracle row when asked; the report is written to ``folder`` and returned."""
    samples = prepare_samples(kept, config, site, pool=pool, rois=rois)
    report, _ = run_augmentation(kept, config, site, synthesizer=synthesizer, samples=samples)
    if oracle:  # same folds, sources and sizes; the recorded targets instead of generated ones
        upper, _ = run_augmentation(
            kept, replace(config, strategies=("generate",)), site, synthesizer=RecordedTargets(windows), samples=samples
        )
        report["strategies"]["oracle"] = upper["strategies"]["generate"]
        report["summary"] = minority_summary(report["strategies"], report["classes"], report["minority_classes"])
    write_report(report, folder)
    return report


def score_groups(
    windows: PairedWindows, kept: PairedWindows, pool: PairedWindows, protocol: Protocol,
    synthesizer: ModelSynthesizer, site: str, folder: Path, *, seed: int, classifier: str, with_eeg: bool, oracle: bool,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Every strategy on ``kept`` with class x group cells balanced, scored per group: per strategy
    the macro F1 of groups A and B, the worst group and the gap."""
    config = AugmentConfig(
        sensitive_attribute="group", strategies=STRATEGIES, folds=protocol.folds, classifier=classifier, use_eeg=with_eeg,
        classes=protocol.classes, seed=seed, steps=synthesizer.steps, guidance_scale=synthesizer.guidance_scale,
    )  # fmt: skip
    rois = target_rois(windows, protocol)
    report = evaluate_condition(windows, kept, pool, config, site, synthesizer, rois, oracle, folder)
    groups = {}
    for name, entry in report["strategies"].items():
        by_group = entry["per_group"]["by_group"]
        groups[name] = {
            "macro_f1": {g: by_group[g]["macro_f1"] for g in sorted(by_group) if g in ("A", "B")},
            "worst_group": entry["per_group"]["worst_group"],
            "gap": entry["per_group"]["difference"]["macro_f1"],
        }
    return groups


def run_group_variant(
    windows: PairedWindows,
    protocol: Protocol,
    synthesizer: ModelSynthesizer,
    out: Path,
    *,
    seed: int,
    classifier: str,
    with_eeg: bool,
    oracle: bool = True,
) -> dict[str, Any]:
    """Group B under-represented in every class: class x group cells balanced by each strategy,
    scored per group (worst group, gap)."""
    t0 = time.time()
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0xB,)))
    kept, pool = cut_group(windows, protocol, "B", rng)
    site = f"simulated {protocol.modality} site (group B cut to {protocol.n_minority} per class)"
    groups = score_groups(
        windows, kept, pool, protocol, synthesizer, site, out / "conditions" / f"{protocol.modality}-group-B",
        seed=seed, classifier=classifier, with_eeg=with_eeg, oracle=oracle,
    )  # fmt: skip
    log.info(
        f"group variant: gap none {groups['none']['gap']:.3f}, oversample {groups['oversample']['gap']:.3f}, generate {groups['generate']['gap']:.3f} ({time.time() - t0:.0f} s)",
    )
    return {
        "protocol": protocol.__dict__, "pool_windows": len(pool), "groups": groups,
        "goal": {"generate narrows the worst-group gap more than oversample": bool(groups["generate"]["gap"] < groups["oversample"]["gap"])},
    }  # fmt: skip


def run_subject_variant(
    windows: PairedWindows,
    protocol: Protocol,
    synthesizer: ModelSynthesizer,
    out: Path,
    *,
    n_a: int,
    n_b: int,
    seed: int,
    classifier: str,
    with_eeg: bool,
    oracle: bool = True,
) -> dict[str, Any]:
    """A site whose group B is ``n_b`` of ``n_a + n_b`` subjects (``cut_group_subjects``), every
    strategy balancing class x group cells; the goals of issue 30: group B's macro F1 at least
    the best non-generative strategy's + 0.03, group A's drop at most 0.03."""
    t0 = time.time()
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0xB5,)))
    kept, pool = cut_group_subjects(windows, protocol.classes, n_a, n_b, rng)
    site = f"simulated {protocol.modality} site (group B {n_b} of {n_a + n_b} subjects)"
    groups = score_groups(
        windows, kept, pool, protocol, synthesizer, site, out / "conditions" / f"{protocol.modality}-group-B-subjects",
        seed=seed, classifier=classifier, with_eeg=with_eeg, oracle=oracle,
    )  # fmt: skip
    b = {name: g["macro_f1"].get("B") for name, g in groups.items()}
    a = {name: g["macro_f1"].get("A") for name, g in groups.items()}
    best_other = max(b[name] for name in BASELINES)
    figures = {
        "group_b_generate": b["generate"],
        "group_b_linear_gaussian": b.get("linear-gaussian"),
        "group_b_best_non_generative": best_other,
        "group_a_drop_generate": a["none"] - a["generate"],
    }
    log.info(
        f"subject variant: group B generate {b['generate']:.3f} vs best non-generative {best_other:.3f}, group A drop {figures['group_a_drop_generate']:.3f} ({time.time() - t0:.0f} s)",
    )
    return {
        "protocol": protocol.__dict__, "subjects": {"A": n_a, "B": n_b}, "kept_windows": len(kept),
        "group_windows": {g: int(np.sum(kept.group_of("group").astype(str) == g)) for g in ("A", "B")},
        "pool_windows": len(pool), "groups": groups, "figures": figures,
        "goal": {
            "group B macro F1 >= best non-generative + 0.03": bool(b["generate"] >= best_other + 0.03),
            "group A drop <= 0.03": bool(figures["group_a_drop_generate"] <= 0.03),
        },
    }  # fmt: skip


class RecordedTargets:
    """The oracle "generator": returns the target actually recorded with each EEG window. Used
    only for the table's upper-bound row (what generation could give if the generator were
    perfect); it reads the simulator's real targets, so it is a diagnostic, not a method."""

    def __init__(self, windows: PairedWindows):
        self.windows = windows
        self.index = {wid: i for i, wid in enumerate(fm.window_ids(windows))}

    def __call__(self, windows: PairedWindows, seed: int) -> np.ndarray:
        return self.windows.target[[self.index[wid] for wid in fm.window_ids(windows)]]


def run_protocol(
    windows: PairedWindows,
    protocol: Protocol,
    synthesizer: ModelSynthesizer,
    out: Path,
    *,
    seed: int,
    source: str,
    classifier: str,
    with_eeg: bool,
    oracle: bool = True,
) -> list[dict[str, Any]]:
    rows = []
    rois = target_rois(windows, protocol)
    for k, minority in enumerate(protocol.classes):
        t0 = time.time()
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(k, len(protocol.classes))))
        kept, pool = cut_condition(windows, protocol, minority, rng)
        config = AugmentConfig(
            strategies=STRATEGIES,
            folds=protocol.folds,
            target_per_class=protocol.n_majority,
            classifier=classifier,
            use_eeg=with_eeg,
            classes=protocol.classes,
            seed=seed,
            steps=synthesizer.steps,
            guidance_scale=synthesizer.guidance_scale,
        )
        site = f"simulated {protocol.modality} site ({minority} cut to {protocol.n_minority})"
        folder = out / "conditions" / f"{protocol.modality}-{minority}"
        report = evaluate_condition(
            windows, kept, pool if source == "pool" else None, config, site, synthesizer, rois, oracle, folder
        )
        rows.append(
            {
                "minority": minority,
                "pool_windows": len(pool) if source == "pool" else 0,
                "seconds": round(time.time() - t0, 1),
                "report": report,
            }
        )
        gen = report["strategies"]["generate"]["per_class_f1_mean"][minority]
        base = report["strategies"]["none"]["per_class_f1_mean"][minority]
        log.info(
            f"{protocol.modality} {minority}: minority F1 {base:.3f} -> {gen:.3f} ({time.time() - t0:.0f} s)",
        )
    return rows


# -- the table --------------------------------------------------------------------------------


def _pm(report: dict, strategy: str, c: str) -> str:
    e = report["strategies"][strategy]
    m, s = e["per_class_f1_mean"][c], e["per_class_f1_std"][c]
    return "n/a" if m is None else f"{m:.3f} ± {s:.3f}"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _mean_or_none(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else float(np.mean(values))


def _group_table(groups: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown rows of ``score_groups``' figures: macro F1 per group, worst group, gap."""
    rows = ["| strategy | macro F1 A | macro F1 B | worst group | gap |", "|---|---|---|---|---|"]
    for name, g in groups.items():
        a, b, worst = g["macro_f1"].get("A"), g["macro_f1"].get("B"), (g["worst_group"] or {}).get("group", "n/a")
        rows.append(f"| {name} | {_fmt(a)} | {_fmt(b)} | {worst} | {_fmt(g['gap'])} |")
    return rows


def goal_figures(rows: list[dict[str, Any]], classes: tuple[str, ...]) -> dict[str, Any]:
    """Per condition and averaged: minority F1 (none, oversample, generate), mean majority F1 after
    generation and its ratio to the minority F1, and the majority F1 drop against none."""
    per = []
    for row in rows:
        r, c = row["report"], row["minority"]
        f1 = {name: r["strategies"][name]["per_class_f1_mean"] for name in r["strategies"]}
        majority = [k for k in classes if k != c]
        maj = {name: float(np.mean([f1[name][k] for k in majority])) for name in f1}
        per.append(
            {
                "minority": c,
                "minority_f1": {name: f1[name][c] for name in f1},
                "minority_recall": {name: r["strategies"][name].get("per_class_recall_mean", {}).get(c) for name in f1},
                "majority_f1": maj,
                "minority_over_majority_generate": f1["generate"][c] / maj["generate"] if maj["generate"] else None,
                "majority_f1_drop_generate": maj["none"] - maj["generate"],
                "majority_f1_drop_oversample": maj["none"] - maj["oversample"],
                "generate_beats_oversample": f1["generate"][c] > f1["oversample"][c],
                "generate_beats_every_baseline": all(f1["generate"][c] > f1[b][c] for b in BASELINES if b in f1),
                "generated_label_fidelity": r["strategies"]["generate"].get("generated_label_fidelity"),
                "real_label_fidelity": r["strategies"]["generate"].get("real_label_fidelity"),
            }
        )
    mean = lambda key, name=None: float(np.mean([p[key][name] if name else p[key] for p in per]))  # noqa: E731
    summary = {
        "minority_f1_none": mean("minority_f1", "none"),
        "minority_f1_oversample": mean("minority_f1", "oversample"),
        "minority_f1_class_weight": mean("minority_f1", "class-weight"),
        "minority_f1_smote": mean("minority_f1", "smote") if "smote" in per[0]["minority_f1"] else None,
        "minority_f1_generate": mean("minority_f1", "generate"),
        # the honest generative baseline: the model's generation must beat it, not only resampling
        "minority_f1_linear_gaussian": mean("minority_f1", "linear-gaussian")
        if "linear-gaussian" in per[0]["minority_f1"]
        else None,
        "minority_f1_oracle": mean("minority_f1", "oracle") if "oracle" in per[0]["minority_f1"] else None,
        "majority_f1_oracle": mean("majority_f1", "oracle") if "oracle" in per[0]["majority_f1"] else None,
        "majority_f1_none": mean("majority_f1", "none"),
        "majority_f1_generate": mean("majority_f1", "generate"),
        "minority_over_majority_generate": mean("minority_over_majority_generate"),
        "majority_f1_drop_generate": mean("majority_f1_drop_generate"),
        "majority_f1_drop_oversample": mean("majority_f1_drop_oversample"),
        "generate_beats_oversample": f"{sum(p['generate_beats_oversample'] for p in per)}/{len(per)} conditions",
        "minority_recall": {
            name: _mean_or_none([p["minority_recall"][name] for p in per]) for name in per[0]["minority_recall"]
        },
        "generate_beats_every_baseline": f"{sum(p['generate_beats_every_baseline'] for p in per)}/{len(per)} conditions",
        "generated_label_fidelity": _mean_or_none([p["generated_label_fidelity"] for p in per]),
        "real_label_fidelity": _mean_or_none([p["real_label_fidelity"] for p in per]),
        "chance": 1.0 / len(classes),
    }
    summary["goals"] = {
        "minority_f1 >= 0.8 x mean majority F1": bool(summary["minority_over_majority_generate"] >= 0.8),
        "majority F1 drop <= 0.03": bool(summary["majority_f1_drop_generate"] <= 0.03),
        "generate beats none, oversample, class-weight and SMOTE on minority F1": bool(
            all(
                summary["minority_f1_generate"] > summary[f"minority_f1_{b.replace('-', '_')}"]
                for b in BASELINES
                if summary.get(f"minority_f1_{b.replace('-', '_')}") is not None
            )
        ),
    }
    if summary["minority_f1_linear_gaussian"] is not None:
        summary["goals"]["generate beats linear-Gaussian generation by >= 0.02 on minority F1"] = bool(
            summary["minority_f1_generate"] >= summary["minority_f1_linear_gaussian"] + 0.02
        )
    return {"conditions": per, "mean": summary}


def render_table(result: dict[str, Any]) -> str:
    lines = [
        "# Table 1 on simulated data: fairness of BCI decoding with generative augmentation",
        "",
        f"Generator: {result['model']['description']}. Classifier `{result['classifier']}` on {result['features']} features; "
        f"subject-grouped stratified CV; generation source: {result['source']}; seed {result['seed']}"
        + (" (--quick sizes)" if result["quick"] else "")
        + ".",
        "Rows 'Gen' generate for the cut class; 'Over' are the random-oversampling baseline; 'CW' class weights; "
        "'Oracle' (an upper bound, not a method) uses the recorded target of each source EEG window instead of a generated one. "
        "Sizes are for the whole condition; each CV training fold holds (k-1)/k of them, the cut class topped up to the majority's fold size.",
    ]
    for block in result["protocols"]:
        p = block["protocol"]
        classes = p["classes"]
        lines += [
            "",
            f"## {p['name']} ({p['folds']}-fold CV)",
            "",
            "| " + " | ".join(f"n {c}" for c in classes) + " | " + " | ".join(f"F1 {c}" for c in classes) + " |",
            "|---" * (2 * len(classes)) + "|",
        ]
        for row in block["rows"]:
            r, m = row["report"], row["minority"]
            added = p["n_majority"] - p["n_minority"]
            for label, strategy in (
                ("", "none"),
                (f" + {added}(Gen)", "generate"),
                (f" + {added}(LinGauss)", "linear-gaussian"),
                (f" + {added}(Over)", "oversample"),
                (" (CW)", "class-weight"),
                (f" + {added}(SMOTE)", "smote"),
                (f" + {added}(Oracle)", "oracle"),
            ):
                if strategy not in r["strategies"]:
                    continue
                sizes = [f"{p['n_minority']}{label}" if c == m else str(p["n_majority"]) for c in classes]
                lines.append("| " + " | ".join(sizes) + " | " + " | ".join(_pm(r, strategy, c) for c in classes) + " |")
        g = block["goals"]["mean"]
        lines += [
            "",
            f"Mean over conditions: minority F1 none {g['minority_f1_none']:.3f}, oversample {g['minority_f1_oversample']:.3f}, "
            f"class weights {g['minority_f1_class_weight']:.3f}, SMOTE {_fmt(g.get('minority_f1_smote'))}, generate {g['minority_f1_generate']:.3f}, "
            f"linear-Gaussian {_fmt(g.get('minority_f1_linear_gaussian'))}; "
            f"mean majority F1 none {g['majority_f1_none']:.3f}, generate {g['majority_f1_generate']:.3f} "
            f"(drop {g['majority_f1_drop_generate']:+.3f}; oversample drop {g['majority_f1_drop_oversample']:+.3f}); "
            f"minority / majority after generation {g['minority_over_majority_generate']:.2f}; generate beats oversample in "
            f"{g['generate_beats_oversample']}, every baseline in {g['generate_beats_every_baseline']}.",
            "",
            "Minority recall (prevalence-free; test folds keep the 1:5 / 1:4 imbalance, which caps minority precision and F1): "
            + ", ".join(f"{name} {value:.3f}" for name, value in g["minority_recall"].items() if value is not None)
            + ".",
            "",
            f"Label fidelity of the generated windows: {_fmt(g['generated_label_fidelity'])}, of held-out real windows of the same class "
            f"{_fmt(g['real_label_fidelity'])} (accuracy of a class-balanced classifier fitted on the fold's real training windows; "
            f"chance {g['chance']:.2f}).",
            *(
                [
                    "",
                    f"Oracle upper bound (recorded instead of generated targets for the same source windows): minority F1 {g['minority_f1_oracle']:.3f}, mean majority F1 {g['majority_f1_oracle']:.3f}.",
                ]
                if g.get("minority_f1_oracle") is not None
                else []
            ),
            "",
            "Goals: " + "; ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in g["goals"].items()) + ".",
        ]
    variant = result.get("group_variant")
    if variant:
        p = variant["protocol"]
        lines += [
            "",
            f"## Group variant: group B cut to {p['n_minority']} windows per class (group A up to {p['n_majority']}), {p['folds']}-fold CV",
            "",
            *_group_table(variant["groups"]),
        ]
        lines += [
            "",
            "Goal: " + "; ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in variant["goal"].items()) + ".",
        ]
    variant = result.get("subject_variant")
    if variant:
        n = variant["subjects"]
        lines += [
            "",
            f"## Subject variant: group B is {n['B']} of {n['A'] + n['B']} subjects ({variant['group_windows']['B']} of "
            f"{variant['kept_windows']} windows), {variant['protocol']['folds']}-fold CV",
            "",
            *_group_table(variant["groups"]),
        ]
        lines += [
            "",
            "Goals: " + "; ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in variant["goal"].items()) + ".",
        ]
    lines += [
        "",
        f"Paper (real data): minority F1 {PAPER['minority_f1_before']} -> {PAPER['minority_f1_after']}, majority F1 drop {PAPER['majority_f1_drop'][0]}-{PAPER['majority_f1_drop'][1]}.",
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class TableSettings:
    """What ``fedneurogen fairness-table`` runs (its options; the module docstring has the protocol)."""

    out: Path
    checkpoint: Path | None = None  # use this generator instead of training one (it needs the task labels)
    quick: bool = False  # reduced sizes for tests
    seed: int = 0
    preset: str = "tiny"  # generator preset when training one
    train_minutes: float = 6.0  # generator training time when no checkpoint
    steps: int = 10  # sampling steps per generated window
    guidance_scale: float = 2.0  # classifier-free guidance on the class label
    source: Literal["pool", "paired"] = "pool"  # EEG for generation: the cut windows' EEG or the kept paired windows'
    classifier: str = "logreg"
    with_eeg: bool = False  # add EEG band-power features to the target-modality features
    device: str = "cpu"
    oracle: bool = True  # the upper-bound rows that use the recorded targets of the source windows

    def __post_init__(self) -> None:
        if self.classifier not in fm.CLASSIFIERS:
            raise ConfigError(f"classifier {self.classifier!r}: choose one of {', '.join(fm.CLASSIFIERS)}")
        if self.classifier == "riemann" and not self.with_eeg:
            raise ConfigError("the riemann classifier reads EEG covariances: add --with-eeg")
        if self.source not in ("pool", "paired"):
            raise ConfigError(f"source {self.source!r}: choose pool or paired")


def run(settings: TableSettings) -> dict[str, Any]:
    """Run the protocol (see the module docstring) and write the table under ``settings.out``."""
    from fedneurogen.shared.model import load_checkpoint

    out = Path(settings.out)
    scale = QUICK if settings.quick else FULL
    t0 = time.time()
    log.info(f"simulating / reusing data under {out / 'data'} ...")
    eval_sites = ensure_simulated(
        out / "data" / "eval", scale.eval_subjects, scale.eval_run_seconds, settings.seed + 101
    )
    checkpoint = Path(settings.checkpoint) if settings.checkpoint else None
    if checkpoint is None:
        train_dirs = ensure_simulated(
            out / "data" / "train", scale.train_subjects, scale.train_run_seconds, settings.seed + 202
        )
        train_sites = [load_site(d, progress=False) for d in train_dirs]
        log.info(f"training a {settings.preset} generator for {settings.train_minutes} min on separate subjects ...")
        checkpoint = train_generator(
            train_sites,
            out / "model",
            preset=settings.preset,
            minutes=settings.train_minutes,
            seed=settings.seed,
            device=settings.device,
        )
    model, meta = load_checkpoint(checkpoint, device=settings.device, use_ema=True)
    synthesizer = ModelSynthesizer(
        model, meta.get("class_names"), steps=settings.steps, guidance_scale=settings.guidance_scale
    )
    missing = sorted({c for p in scale.protocols for c in p.classes} - set(meta.get("class_names") or []))
    if missing:
        log.warning(f"the model has no label for {missing}; those classes are generated unconditionally")

    result: dict[str, Any] = {
        "quick": settings.quick,
        "seed": settings.seed,
        "classifier": settings.classifier,
        "features": "target-modality (+ EEG band power)" if settings.with_eeg else "target-modality",
        "source": "EEG-only pool of the cut windows (training subjects)"
        if settings.source == "pool"
        else "the cut class's paired training windows (several draws each)",
        "model": {
            "checkpoint": str(checkpoint),
            "content_hash": meta.get("content_hash"),
            "class_names": meta.get("class_names"),
            "provenance": meta.get("provenance"),
            "description": f"{meta.get('preset')} preset, {meta.get('provenance', {}).get('steps', '?')} steps, guidance {settings.guidance_scale}, {settings.steps or 'default'} sampling steps",
        },
        "protocols": [],
    }
    for protocol, site_dir in zip(scale.protocols, eval_sites):
        windows = load_site(site_dir, progress=False)
        counts = {c: int(np.sum(windows.labels == c)) for c in protocol.classes}
        log.info(f"{protocol.name}: {counts} windows available")
        rows = run_protocol(
            windows,
            protocol,
            synthesizer,
            out,
            seed=settings.seed,
            source=settings.source,
            classifier=settings.classifier,
            with_eeg=settings.with_eeg,
            oracle=settings.oracle,
        )
        result["protocols"].append(
            {
                "protocol": protocol.__dict__,
                "available_windows": counts,
                "rows": rows,
                "goals": goal_figures(rows, protocol.classes),
            }
        )
        if protocol.modality == "fmri":  # and the group variant on the same site
            result["group_variant"] = run_group_variant(
                windows, protocol, synthesizer, out, seed=settings.seed, classifier=settings.classifier, with_eeg=settings.with_eeg, oracle=settings.oracle
            )  # fmt: skip
    if scale.subject_variant is not None:
        n_subjects, run_seconds, n_a, n_b = scale.subject_variant
        (site_dir,) = ensure_simulated(
            out / "data" / "group", n_subjects, run_seconds, settings.seed + 303, modality="fmri", n_sites=1
        )
        protocol = next(p for p in scale.protocols if p.modality == "fmri")
        result["subject_variant"] = run_subject_variant(
            load_site(site_dir, progress=False), protocol, synthesizer, out, n_a=n_a, n_b=n_b, seed=settings.seed,
            classifier=settings.classifier, with_eeg=settings.with_eeg, oracle=settings.oracle,
        )  # fmt: skip
    result["seconds"] = round(time.time() - t0, 1)
    for block in result["protocols"]:  # the full reports are under conditions/; keep the table small
        for row in block["rows"]:
            row["report"] = {
                k: row["report"][k] for k in ("classes", "minority_classes", "class_counts", "strategies", "summary")
            }
            for entry in row["report"]["strategies"].values():
                entry.pop("folds", None)
    write_json_atomic(out / "table.json", result)
    text = render_table(result)
    write_text_atomic(out / "table.md", text)
    plots.minority_f1_table(result["protocols"], (*STRATEGIES, "oracle"), out / "table.png")
    return result
