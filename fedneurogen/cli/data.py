"""Commands on data: ``simulate`` (simulated BIDS sites with known ground truth), ``validate`` (check
a site dataset) and ``cache`` (the preprocessed windows cached on this machine)."""

from __future__ import annotations

from pathlib import Path

import typer

from fedneurogen.cli.common import EXIT_CONFIG, EXIT_DATA, SimModality, app, console, fail, fail_on, show_progress


@app.command()
def simulate(
    out: Path = typer.Option(..., "--out", help="Folder to write site-01, site-02, ... into."),
    sites: int = typer.Option(3, "--sites", min=1, help="Number of sites."),
    subjects_per_site: int = typer.Option(8, "--subjects-per-site", min=1, help="Subjects per site."),
    modality: SimModality = typer.Option(
        SimModality.fmri, "--modality", help="Target modality of the sites; 'mixed' gives fMRI and fNIRS sites."
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed writes the same data."),
    run_seconds: float | None = typer.Option(
        None, "--run-seconds", help="Length of each run (s); default per scenario."
    ),
    eeg_only_sessions: list[str] = typer.Option(
        [],
        "--eeg-only-sessions",
        help="GROUP:N - every site also gets N subjects of group A or B with an EEG session only (no fMRI/fNIRS); repeatable.",
    ),
    head_model: str = typer.Option(
        "default",
        "--head-model",
        help="Head the EEG is written through: default, or mismatched (another sphere and jittered electrodes: no inverse crime).",
    ),
    physiology: str = typer.Option(
        "default",
        "--physiology",
        help="Population physiology: default, or shifted (slower HRF, other EEG-BOLD coupling and noise: tests a prior fitted on default).",
    ),
    coupling: str = typer.Option(
        "linear",
        "--coupling",
        help="Neurovascular coupling: linear, or nonlinear (saturating BOLD drive gated by the local alpha state).",
    ),
    scanner_artifacts: bool = typer.Option(
        False,
        "--scanner-artifacts",
        help="Write the fMRI sites' EEG raw, as recorded in the scanner (gradient artefact, BCG, ECG, R128 volume triggers); the clean EEG goes to derivatives/ground_truth.",
    ),
    scanner_lead_in: float = typer.Option(
        0.0, "--scanner-lead-in", help="With --scanner-artifacts: seconds of EEG before the first volume."
    ),
    scanner_lead_out: float = typer.Option(
        0.0, "--scanner-lead-out", help="With --scanner-artifacts: seconds of EEG after the last volume."
    ),
    scanner_unsynced_clock: bool = typer.Option(
        False,
        "--no-syncbox",
        help="With --scanner-artifacts: no SyncBox (triggers alternating N and N + 1 samples apart).",
    ),
) -> None:
    """Write simulated paired EEG-fMRI / EEG-fNIRS BIDS datasets with known ground truth."""
    import json

    from fedneurogen.shared.errors import ConfigError
    from fedneurogen.simulations.scanner import ScannerSetup
    from fedneurogen.simulations.simulator import ceilings_table, simulate_dataset

    if scanner_lead_in < 0 or scanner_lead_out < 0:
        fail("--scanner-lead-in / --scanner-lead-out: seconds, at least 0", EXIT_CONFIG)

    sessions = {}
    for item in eeg_only_sessions:
        group, _, count = item.partition(":")
        if not count.strip().isdigit():
            fail(f"--eeg-only-sessions {item!r}: expected GROUP:N, e.g. B:2", EXIT_CONFIG)
        sessions[group.strip()] = int(count)
    try:
        site_dirs = simulate_dataset(
            out, n_sites=sites, subjects_per_site=subjects_per_site, modality=modality.value, seed=seed, run_seconds=run_seconds,
            eeg_only_sessions=sessions, progress=show_progress(), head_model=head_model, physiology=physiology,
            coupling=coupling,
            scanner_artifacts=scanner_artifacts and ScannerSetup(scanner_lead_in, scanner_lead_out, scanner_unsynced_clock),
        )  # fmt: skip
    except ConfigError as err:
        fail_on(err)
    console.print(ceilings_table(json.loads((out / "simulation.json").read_text(encoding="utf-8"))["sites"]))
    console.print(f"Wrote {len(site_dirs)} site datasets under [bold]{out}[/]:")
    for d in site_dirs:
        console.print(f"  {d}")


@app.command()
def validate(
    site_dir: Path = typer.Argument(..., help="A BIDS site dataset."),
    as_json: bool = typer.Option(
        False, "--json", help="Print the report as JSON (usable, status, summary, errors, warnings) instead of tables."
    ),
) -> None:
    """Check a site dataset: print a summary and every problem found.

    The answer is the one the other commands act on. Exit 0: the dataset is usable; its status
    is OK, or USABLE with the runs that have errors listed (train, evaluate, synthesize, ... skip
    them and use the others). Exit 1: UNUSABLE (no run loads, no EEG run at all, or mixed target
    modalities): every command would refuse it."""
    import json

    from fedneurogen.shared.data import validate_dataset
    from fedneurogen.shared.data.validate import render_report

    report = validate_dataset(site_dir)
    if as_json:  # plain stdout: for scripts and pipelines
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        render_report(report, console)
        if report.usable and not report.ok:
            skipped = report.summary.get("skipped_runs", [])
            console.print(
                f"usable: {len(skipped)} run(s) with errors will be skipped ({', '.join(skipped)}); the other "
                f"{report.summary.get('usable_runs', 0)} are used"
                if skipped
                else "usable: no run is skipped; the commands work around the errors above",
                highlight=False,
            )
    if not report.usable:
        raise typer.Exit(EXIT_DATA)


@app.command("cache")
def cache_command(
    cache_dir: Path = typer.Option(
        None, "--dir", help="The cache folder (default: $FEDNEUROGEN_CACHE or ~/.cache/fedneurogen)."
    ),
    purge: bool = typer.Option(
        False, "--purge", help="Delete the cached windows (all, or those older than --older-than)."
    ),
    older_than: float | None = typer.Option(
        None, "--older-than", help="With --purge: only entries not used for this many days."
    ),
) -> None:
    """The preprocessed windows cached on this machine (patient data): list them, or purge them."""
    from rich.table import Table

    from fedneurogen.shared.data.cache import SiteCache
    from fedneurogen.shared.errors import ConfigError

    try:
        cache = SiteCache(cache_dir)
    except ConfigError as err:  # e.g. FEDNEUROGEN_CACHE_DAYS that is not a number
        fail_on(err)
    if older_than is not None and not purge:
        fail("--older-than goes with --purge", EXIT_CONFIG)
    entries = cache.purge(older_than) if purge else cache.entries()
    table = Table(
        "site folder",
        "created",
        "windows",
        "MB",
        title=f"{'removed from' if purge else 'cached in'} {cache.dir}",
        title_justify="left",
    )
    for entry in entries:
        table.add_row(
            str(entry["site_dir"]), str(entry["created"]), str(entry["n_windows"]), f"{entry['bytes'] / 1e6:.1f}"
        )
    console.print(table)
    console.print(
        f"{len(entries)} site(s), {sum(e['bytes'] for e in entries) / 1e6:.1f} MB" + (" removed" if purge else "")
    )
