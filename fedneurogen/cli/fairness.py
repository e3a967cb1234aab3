"""Fairness commands: ``augment`` (a site's generative augmentation against baselines) and
``fairness-table`` (the paper's Table 1 on simulated data)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import click
import typer

from fedneurogen.cli.common import EXIT_CONFIG, Preset, app, console, fail, fail_on, trust_unsigned_option


class AugmentStrategy(str, Enum):
    generate = "generate"
    linear_gaussian = "linear-gaussian"
    oversample = "oversample"
    class_weight = "class-weight"
    smote = "smote"
    none = "none"
    all = "all"


class DownstreamClassifier(str, Enum):
    logreg = "logreg"
    lda = "lda"
    riemann = "riemann"


@app.command()
def augment(
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="Global model checkpoint (EMA weights); needed for --strategy generate/all."
    ),
    data: Path = typer.Option(..., "--data", help="The site's BIDS dataset (read locally; nothing is sent anywhere)."),
    out: Path = typer.Option(
        ..., "--out", help="Report directory: report.json, report.md, per_class_f1.png, per_group.png."
    ),
    target: str = typer.Option(
        "trial_type", "--target", help="Label to predict: trial_type or a participants.tsv column."
    ),
    sensitive_attribute: str | None = typer.Option(
        None, "--sensitive-attribute", help="participants.tsv column for per-group metrics and class x group balancing."
    ),
    strategy: list[AugmentStrategy] = typer.Option(
        [AugmentStrategy.all], "--strategy", help="Strategy to compare with 'none' (repeatable); 'all' runs every one."
    ),
    folds: int = typer.Option(5, "--folds", min=2, help="Cross-validation folds (stratified, grouped by subject)."),
    target_per_class: int | None = typer.Option(
        None, "--target-per-class", min=1, help="Windows per class after balancing (default: the largest class)."
    ),
    classes: str | None = typer.Option(
        None, "--classes", help="Comma-separated classes to decode (default: all but 'rest')."
    ),
    classifier: DownstreamClassifier = typer.Option(
        DownstreamClassifier.logreg,
        "--classifier",
        help="logreg / shrinkage lda on EEG band power + target features, or riemann (EEG covariance tangent space + target features).",
    ),
    features: str = typer.Option(
        "eeg,target", "--features", help="Feature blocks for logreg/lda: eeg, target or eeg,target."
    ),
    minority_ratio: float = typer.Option(
        0.8, "--minority-ratio", min=0.01, max=1.0, help="Under-represented: fewer than this x the target size."
    ),
    steps: int | None = typer.Option(
        None, "--steps", min=1, help="Sampling steps (default: the model's sampling_steps)."
    ),
    guidance: float = typer.Option(2.0, "--guidance", help="Classifier-free guidance scale on the class label."),
    seed: int = typer.Option(0, "--seed", help="Seed of the folds, oversampling, generation noise and classifiers."),
    eeg_only: bool = typer.Option(
        False, "--eeg-only", help="Also generate from the site's EEG-only runs (EEG recorded without fMRI/fNIRS)."
    ),
    estimate: str = typer.Option(
        "auto",
        "--estimate",
        click_type=click.Choice(["auto", "sample", "mean"]),
        help="Generated target: sample (point prediction + sampled residual, --guidance), mean (point prediction), or auto: "
        "chosen per fold on an inner split of its training subjects among sample (--guidance), sample (no guidance) and mean.",
    ),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)."),
    trust_unsigned: bool = trust_unsigned_option(),
) -> None:
    """Site-side fairness augmentation: rebalance under-represented classes/groups with generated data and report per-class and per-group F1 against baselines."""
    from fedneurogen.shared.outputs import prepare_output_folder
    from fedneurogen.shared.workflows.fairness import STRATEGIES, AugmentConfig, augment_site
    from fedneurogen.shared.errors import FedNeuroGenError
    from fedneurogen.shared.signing import trusting_unsigned

    chosen = {s.value for s in strategy}
    names = STRATEGIES if "all" in chosen else tuple(n for n in STRATEGIES if n in chosen | {"none"})
    blocks = {b.strip() for b in features.split(",") if b.strip()}
    if not blocks or blocks - {"eeg", "target"}:
        fail(f"--features must be eeg, target or eeg,target; got {features!r}", EXIT_CONFIG)
    try:
        config = AugmentConfig(
            target=target, sensitive_attribute=sensitive_attribute, strategies=names, folds=folds, target_per_class=target_per_class,
            classifier=classifier.value, use_eeg="eeg" in blocks, use_target="target" in blocks, minority_ratio=minority_ratio,
            classes=tuple(c.strip() for c in classes.split(",") if c.strip()) if classes else None,
            steps=steps, guidance_scale=guidance, seed=seed, eeg_only=eeg_only,
            generation_choices=tuple(dict.fromkeys((("sample", guidance), ("sample", 0.0), ("mean", 0.0)))) if estimate == "auto" else ((estimate, guidance),),
        )  # fmt: skip
        prepare_output_folder(out, [data])
        with trusting_unsigned(trust_unsigned):
            report = augment_site(checkpoint, data, out, config, device=device)
    except FedNeuroGenError as err:
        fail_on(err)
    console.print(f"minority: {', '.join(report['minority_units']) or 'none'} ({report['minority_rule']})")
    from fedneurogen.shared.workflows.fairness.report import nothing_added_reason

    if reason := nothing_added_reason(report):  # otherwise identical F1 rows would go unexplained
        console.print(reason, highlight=False)
    for name, row in report["summary"].items():
        minority_f1 = "n/a" if row["minority_f1"] is None else f"{row['minority_f1']:.3f}"
        console.print(
            f"  {name:>12}: minority F1 {minority_f1}, macro F1 {report['strategies'][name]['macro_f1_mean']:.3f}"
        )
    console.print(f"report: [bold]{out / 'report.json'}[/], {out / 'report.md'}")


class TableSource(str, Enum):
    pool = "pool"
    paired = "paired"


@app.command("fairness-table")
def fairness_table(
    out: Path = typer.Option(..., "--out", help="Output folder (data/, model/, conditions/, table.json/.md/.png)."),
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="Use this generator instead of training one (it needs the task labels)."
    ),
    quick: bool = typer.Option(
        False, "--quick", help="Reduced sizes (5 subjects, 20 vs 5 / 24 vs 6 windows, 3 folds)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the simulation, the cuts, the folds and generation."),
    preset: Preset = typer.Option(Preset.tiny, "--preset", help="Generator preset when training one."),
    train_minutes: float = typer.Option(6.0, "--train-minutes", help="Generator training time when no --checkpoint."),
    steps: int = typer.Option(10, "--steps", min=1, help="Sampling steps per generated window."),
    guidance_scale: float = typer.Option(2.0, "--guidance-scale", help="Classifier-free guidance on the class label."),
    source: TableSource = typer.Option(
        TableSource.pool,
        "--source",
        help="EEG for generation: the cut windows' EEG (pool) or the kept paired windows'.",
    ),
    classifier: str = typer.Option("logreg", "--classifier", help="logreg | lda | riemann (riemann needs --with-eeg)."),
    with_eeg: bool = typer.Option(False, "--with-eeg", help="Add EEG band-power features to the target's."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    oracle: bool = typer.Option(
        True, "--oracle/--no-oracle", help="The upper-bound rows that use the recorded targets of the source windows."
    ),
    trust_unsigned: bool = trust_unsigned_option(),
) -> None:
    """Reproduce the paper's Table 1 (fairness by generative augmentation) on simulated data."""
    from fedneurogen.shared.errors import FedNeuroGenError
    from fedneurogen.shared.signing import trusting_unsigned
    from fedneurogen.simulations.fairness_table import TableSettings, render_table, run

    try:
        settings = TableSettings(
            out=out, checkpoint=checkpoint, quick=quick, seed=seed, preset=preset.value, train_minutes=train_minutes,
            steps=steps, guidance_scale=guidance_scale, source=source.value, classifier=classifier, with_eeg=with_eeg,
            device=device, oracle=oracle,
        )  # fmt: skip
        with trusting_unsigned(trust_unsigned):  # --checkpoint
            result = run(settings)
    except FedNeuroGenError as err:
        fail_on(err)
    print(render_table(result))
