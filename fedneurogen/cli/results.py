"""Commands on a trained model's outputs: ``synthesize`` (targets as BIDS derivatives),
``evaluate`` (held-out scores against baselines) and ``explain`` (what drives the generated target)."""

from __future__ import annotations

from pathlib import Path

import click
import typer

from fedneurogen.cli.common import app, console, fail_on, show_progress, trust_unsigned_option


@app.command()
def synthesize(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Checkpoint directory (its EMA weights are used)."),
    data: Path = typer.Option(..., "--data", help="BIDS site whose EEG drives generation."),
    out: Path = typer.Option(..., "--out", help="Derivatives dataset to write (GIFTI on fsaverage5 / SNIRF)."),
    subjects: list[str] | None = typer.Option(
        None, "--subjects", help="Only these subjects (sub-01 or 01; repeat or comma-separate)."
    ),
    label: str | None = typer.Option(
        None, "--label", help="Condition every window on this class (default: each window's own)."
    ),
    estimate: str = typer.Option(
        "sample",
        "--estimate",
        click_type=click.Choice(["sample", "mean"]),
        help="sample: draws from the model (desc-generated<k>); mean: the deterministic point prediction (desc-mean).",
    ),
    n_samples: int = typer.Option(
        1, "--n-samples", min=1, help="Samples per window, written as desc-generated1, desc-generated2, ..."
    ),
    steps: int | None = typer.Option(
        None, "--steps", min=1, help="Sampling steps (default: the model's sampling_steps)."
    ),
    guidance: float = typer.Option(1.0, "--guidance", help="Classifier-free guidance scale (1 = plain conditional)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sampling noise; sample k uses seed + k - 1."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Windows sampled together."),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)."),
    as_json: bool = typer.Option(
        False, "--json", help="Print what was written as JSON (out, files) instead of a list."
    ),
    trust_unsigned: bool = trust_unsigned_option(),
) -> None:
    """Generate fMRI / fNIRS from a site's EEG and write it as BIDS derivatives."""
    from fedneurogen.shared.errors import FedNeuroGenError
    from fedneurogen.shared.outputs import prepare_output_folder
    from fedneurogen.shared.signing import trusting_unsigned
    from fedneurogen.shared.workflows.synthesis import synthesize as run_synthesis

    wanted = [s.strip() for value in subjects or [] for s in value.split(",") if s.strip()]
    try:
        prepare_output_folder(out, [data])
        with trusting_unsigned(trust_unsigned):
            written = run_synthesis(
                checkpoint, data, out, subjects=wanted or None, label=label, estimate=estimate, n_samples=n_samples,
                steps=steps, guidance_scale=guidance, seed=seed, batch_size=batch_size, device=device,
                progress=show_progress(),
            )  # fmt: skip
    except FedNeuroGenError as err:
        fail_on(err)
    if as_json:  # plain stdout: for scripts and pipelines
        import json

        print(json.dumps({"out": str(out), "files": [str(p) for p in written]}, indent=2))
        return
    console.print(f"Wrote {len(written)} files under [bold]{out}[/]:", highlight=False)
    for path in written:
        console.print(f"  {path}", highlight=False)


@app.command()
def evaluate(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Checkpoint directory (its EMA weights are used)."),
    data: Path = typer.Option(..., "--data", help="BIDS site to evaluate on (the subjects the checkpoint never saw)."),
    out: Path = typer.Option(..., "--out", help="Report directory: report.json and PNG figures."),
    steps: int | None = typer.Option(
        None, "--steps", min=1, help="Sampling steps (default: the model's sampling_steps)."
    ),
    max_windows: int | None = typer.Option(None, "--max-windows", min=1, help="Score at most this many test windows."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sampling noise, the noise baseline and the regressor."),
    guidance: float = typer.Option(1.0, "--guidance", help="Classifier-free guidance scale (1 = plain conditional)."),
    n_samples: int = typer.Option(
        1,
        "--n-samples",
        min=0,
        help="Samples per window (0: none): one is scored alone, all of them as a mean, and their spread gives the calibration.",
    ),
    baseline_epochs: int = typer.Option(
        5, "--baseline-epochs", min=0, help="Training epochs of the regression-transformer baseline (0: skip it)."
    ),
    batch_size: int = typer.Option(
        16, "--batch-size", min=2, help="Windows per batch (sampling and regressor training)."
    ),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)."),
    pooled_sites: list[Path] | None = typer.Option(
        None,
        "--also-trained-on",
        help="Another site the checkpoint was trained on (repeat): the baselines learn from its subjects the checkpoint "
        "trained on too (found by file content).",
    ),
    allow_seen: bool = typer.Option(
        False,
        "--allow-seen",
        help="Also score subjects the checkpoint trained or validated on (or a checkpoint that records none): "
        "each is labelled as seen in the report, and the scores are not held-out.",
    ),
    site_records: list[Path] | None = typer.Option(
        None,
        "--site-record",
        help="A site's own record of its split in this run (split-<run>.json in its state folder; repeat): "
        "DP sites send the server none, so it completes the checkpoint's record of what was seen.",
    ),
    trust_unsigned: bool = trust_unsigned_option(),
) -> None:
    """Score a checkpoint on a site's held-out subjects (never trained or validated on, by file content) against
    baselines, noise baseline and ceiling."""
    from fedneurogen.shared.errors import FedNeuroGenError
    from fedneurogen.shared.workflows.evaluation import REPORT_FILE, report_table
    from fedneurogen.shared.outputs import prepare_output_folder
    from fedneurogen.shared.workflows.evaluation import evaluate as run_evaluation
    from fedneurogen.shared.signing import trusting_unsigned

    try:
        prepare_output_folder(out, [data, *(pooled_sites or ())])
        with trusting_unsigned(trust_unsigned):
            report = run_evaluation(
                checkpoint, data, out, steps=steps, max_windows=max_windows, seed=seed, guidance_scale=guidance,
                n_samples=n_samples, baseline_epochs=baseline_epochs, batch_size=batch_size, device=device,
                pooled_sites=tuple(pooled_sites or ()), allow_seen=allow_seen, progress=show_progress(),
                site_records=tuple(site_records or ()),
            )  # fmt: skip
    except FedNeuroGenError as err:
        fail_on(err)
    console.print(report_table(report))
    console.print(f"report: [bold]{out / REPORT_FILE}[/] (figures: {', '.join(report['plots'])})")


@app.command("explain")
def explain_command(
    checkpoint: Path = typer.Option(
        ..., "--checkpoint", help="Model checkpoint (EMA weights) whose point prediction is explained."
    ),
    data: Path = typer.Option(..., "--data", help="A BIDS site dataset (all its subjects' windows are used)."),
    out: Path = typer.Option(
        ..., "--out", help="Output folder: explain.json, dominant_band.png, band_shares.png, electrodes.png, hrf.png."
    ),
    label: str | None = typer.Option(
        None,
        "--label",
        help="Explain the windows of this class only, conditioned on it (default: all windows, label-free).",
    ),
    points: str = typer.Option(
        "top",
        "--points",
        help="Points summarised: top (best-predicted 10 %), all, or a region (occipital, left occipital, ...).",
    ),
    steps: int = typer.Option(32, "--steps", min=2, help="Integrated-gradient steps for the learned residual."),
    max_frames: int | None = typer.Option(
        None, "--max-frames", min=3, help="Use at most this many frames (evenly spaced) of the site."
    ),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)."),
    trust_unsigned: bool = trust_unsigned_option(),
) -> None:
    """Which EEG bands, electrodes and cortical regions drive the generated target, and the model's effective HRF per region."""
    from fedneurogen.shared.errors import FedNeuroGenError
    from fedneurogen.shared.outputs import prepare_output_folder
    from fedneurogen.shared.signing import trusting_unsigned
    from fedneurogen.shared.workflows.explain import EXPLAIN_FILE, explain

    try:
        prepare_output_folder(out, [data])
        with trusting_unsigned(trust_unsigned):
            report = explain(
                checkpoint,
                data,
                out,
                label=label,
                points=points,
                steps=steps,
                max_rows=max_frames,
                device=device,
                progress=show_progress(),
            )
    except FedNeuroGenError as err:
        fail_on(err)
    shares = report["band_shares"]["prediction"]
    console.print(f"{report['points']['rule']} ({report['points']['count']} of {report['points']['of']})")
    console.print("band shares of the prediction variance: " + ", ".join(f"{b} {v:.2f}" for b, v in shares.items()))
    console.print(
        f"top electrodes: {', '.join(report['electrodes']['ranking'][:8])}; effective HRF peak {report['effective_hrf']['selected_points']['peak_s']:.1f} s"
    )
    console.print(f"report: [bold]{out / EXPLAIN_FILE}[/] (figures: {', '.join(report['plots'])})")
