"""The ``fedneurogen`` command line.

Each subcommand is a thin layer over a library function; heavy imports happen inside the
command so that ``fedneurogen --help`` stays fast.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(
    name="fedneurogen",
    help="Federated cross-modal neuroimaging generation: EEG -> fMRI BOLD / fNIRS HbO-HbR.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


class SimModality(str, Enum):
    fmri = "fmri"
    fnirs = "fnirs"
    mixed = "mixed"


def _fail(message: str, code: int = 1) -> None:
    err_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


@app.command()
def simulate(
    out: Path = typer.Option(..., "--out", help="Folder to write site-01, site-02, ... into."),
    sites: int = typer.Option(3, "--sites", min=1, help="Number of sites."),
    subjects_per_site: int = typer.Option(8, "--subjects-per-site", min=1, help="Subjects per site."),
    modality: SimModality = typer.Option(SimModality.fmri, "--modality", help="Target modality of the sites; 'mixed' gives fMRI and fNIRS sites."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed writes the same data."),
    run_seconds: float | None = typer.Option(None, "--run-seconds", help="Length of each run (s); default per scenario."),
) -> None:
    """Write simulated paired EEG-fMRI / EEG-fNIRS BIDS datasets with known ground truth."""
    from fedneurogen.simulations.simulator import simulate_dataset

    site_dirs = simulate_dataset(
        out, n_sites=sites, subjects_per_site=subjects_per_site, modality=modality.value, seed=seed, run_seconds=run_seconds
    )
    console.print(f"Wrote {len(site_dirs)} site datasets under [bold]{out}[/]:")
    for d in site_dirs:
        console.print(f"  {d}")


@app.command()
def validate(
    site_dir: Path = typer.Argument(..., help="A BIDS site dataset."),
) -> None:
    """Check a site dataset: print a summary and every problem found (non-zero exit if unusable)."""
    from fedneurogen.shared.data import validate_dataset
    from fedneurogen.shared.data.validate import render_report

    report = validate_dataset(site_dir)
    render_report(report, console)
    if not report.ok:
        raise typer.Exit(1)


class Preset(str, Enum):
    tiny = "tiny"
    small = "small"
    base = "base"


def _load_sites(data: list[Path]):
    from fedneurogen.shared.config import PreprocessConfig
    from fedneurogen.shared.data import load_site

    preprocess = PreprocessConfig()
    return [load_site(d, preprocess) for d in data], preprocess


@app.command()
def info(preset: Preset = typer.Option(Preset.tiny, "--preset", help="Model preset.")) -> None:
    """Print a preset's architecture and parameter counts."""
    from rich.table import Table

    from fedneurogen.shared.model import get_preset, parameter_count

    config = get_preset(preset.value)
    counts = parameter_count(config)
    table = Table(title=f"preset {preset.value}: {counts['total']:,} parameters", title_justify="left")
    table.add_column("part")
    table.add_column("parameters", justify="right")
    for part, n in counts.items():
        if part != "total":
            table.add_row(part, f"{n:,}")
    table.add_row("[bold]total[/]", f"[bold]{counts['total']:,}[/]")
    console.print(table)
    console.print(
        f"EEG encoder {config.eeg_depth} x {config.eeg_dim}, DiT {config.depth} x {config.hidden_dim} ({config.heads} heads), "
        f"fMRI tokens {config.fmri.n_patches}, {config.prediction}-prediction, {config.sampling_steps} DDIM steps"
    )


@app.command()
def train(
    data: list[Path] = typer.Option(..., "--data", help="A BIDS site dataset; repeat for several sites."),
    out: Path = typer.Option(..., "--out", help="Run directory (checkpoint/, log.jsonl, tensorboard/)."),
    preset: Preset = typer.Option(Preset.tiny, "--preset", help="Model preset."),
    max_minutes: float | None = typer.Option(None, "--max-minutes", help="Stop (and checkpoint) after this many minutes."),
    seed: int = typer.Option(0, "--seed", help="Seed for the subject split, initialisation and batches."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)."),
) -> None:
    """Centralized training on one or more sites (subject-level train/validation/test split)."""
    from fedneurogen.shared.training import train_centralized

    sites, preprocess = _load_sites(data)
    checkpoint = train_centralized(
        sites, out, preset=preset.value, seed=seed, max_minutes=max_minutes, resume=resume, device=device,
        preprocess=preprocess.model_dump(), site_names=[d.name for d in data],
    )
    console.print(f"checkpoint: [bold]{checkpoint}[/]")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
