"""The ``fedneurogen`` command line.

Each subcommand is a thin layer over a library function; heavy imports happen inside the
command so that ``fedneurogen --help`` stays fast.

Output: a command's results go to stdout (``console``). The library reports status through
``logging`` (loggers under ``fedneurogen``); ``_main`` shows those records on stderr, one line
each, at INFO (``--verbose``: DEBUG; ``--quiet``: WARNING), and ``--quiet`` also turns progress
bars off: commands pass ``progress=_show_progress()`` to the library functions that draw them.
"""

from __future__ import annotations

import logging
from enum import Enum
from pathlib import Path

import click
import typer
import typer.rich_utils
from rich.console import Console
from rich.table import Table
from rich.text import Text

app = typer.Typer(
    name="fedneurogen",
    help="Federated cross-modal neuroimaging generation: EEG -> fMRI BOLD / fNIRS HbO-HbR.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


class _OptionsTable(Table):
    """The table typer draws a command's options in, laid out to leave the help text room.

    typer gives each row a cell for: the required marker (when some option is required), the
    long names, the short names, the ``--no-`` names and their short forms, the metavar, the
    help. At 80 columns rich shrinks the widest columns to one width, so a choice metavar
    (``[generate|linear-gaussian|...]``) or a ``--no-`` column left the help a word or two a
    line. Here a ``--no-`` name goes under its option, the metavar column is capped at a fifth
    of the width (a longer one folds), and the columns empty in every row are left out. Other
    tables (the commands panel) are drawn as typer draws them.
    """

    def add_row(self, *renderables, **kwargs) -> None:
        cells = list(renderables)
        if len(cells) >= 6:  # an options row: [required,] long, short, --no- long, --no- short, metavar, help
            for name, negative in ((-6, -4), (-5, -3)):
                if isinstance(cells[name], Text) and isinstance(cells[negative], Text) and cells[negative].plain:
                    merged = cells[name].copy()
                    merged.append("\n")
                    merged.append_text(cells[negative])
                    cells[name], cells[negative] = merged, Text("")
        super().add_row(*cells, **kwargs)

    def _fit(self, width: int) -> None:
        if len(self.columns) < 6:  # not an options table (or already fitted)
            return
        self.columns[-2].max_width = max(18, width // 5)  # the metavar
        self.columns[:] = [c for c in self.columns if any(str(cell) for cell in c.cells)]

    def __rich_measure__(self, console, options):
        self._fit(options.max_width)
        return super().__rich_measure__(console, options)

    def __rich_console__(self, console, options):
        self._fit(options.max_width)
        yield from super().__rich_console__(console, options)


typer.rich_utils.Table = _OptionsTable  # typer has no setting for the options table's layout
#: Line width of output that is not a terminal (a pipe, a file): wide enough that rich never breaks
#: a path or cuts a table cell, which it does at its default of 80 columns.
PIPE_WIDTH = 4096

#: The logger whose records the command line shows: the parent of every library module's
#: ``logging.getLogger(__name__)``.
LOGGER = "fedneurogen"
#: Settings of the running command, from the global options (reset when it ends).
_settings = {"progress": True}


class SimModality(str, Enum):
    fmri = "fmri"
    fnirs = "fnirs"
    mixed = "mixed"


def _show_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        console.print(
            f"fedneurogen {version('fedneurogen')} (flwr {version('flwr')}, torch {version('torch')})", highlight=False
        )
        raise typer.Exit()


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001 - warnings.showwarning's signature
    """A warning as one readable line (``warning: <file>: <problem>``), not Python's
    ``file:line: Category`` form with the source line."""
    from rich.markup import escape

    err_console.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)


def _show_progress() -> bool:
    """Whether the running command shows progress bars (``--quiet`` turns them off)."""
    return _settings["progress"]


def _configure_logging(ctx: typer.Context, level: int) -> None:
    """Show the library's log records from ``level`` up on stderr, one line each, while the
    command runs; the logger is restored when it ends (tests run many commands in one process)."""
    from rich.logging import RichHandler

    logger = logging.getLogger(LOGGER)
    handler = RichHandler(console=err_console, show_time=False, show_path=False, markup=False)
    handler.setFormatter(logging.Formatter("%(message)s"))
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)

    def restore() -> None:
        logger.removeHandler(handler)
        logger.setLevel(previous)
        _settings["progress"] = True

    ctx.call_on_close(restore)


@app.callback()
def _main(
    ctx: typer.Context,
    show_version: bool = typer.Option(
        False, "--version", callback=_show_version, is_eager=True, help="Print the versions and exit."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also show debug messages."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Show only warnings and errors; no progress bars."),
) -> None:
    """Federated cross-modal neuroimaging generation: EEG -> fMRI BOLD / fNIRS HbO-HbR."""
    import warnings

    if verbose and quiet:
        raise click.UsageError("--verbose and --quiet cannot be used together", ctx=ctx)
    warnings.showwarning = _show_warning  # e.g. "warning: sub-02/eeg/...edf: run ... skipped: truncated"
    _settings["progress"] = not quiet
    _configure_logging(ctx, logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    _unwrapped_when_piped(ctx)


def _unwrapped_when_piped(ctx: typer.Context) -> None:
    """Output that is not a terminal is not wrapped: a path copied from a log or a pipe must be
    whole. ``COLUMNS``, when set, is respected; the consoles are restored when the command ends."""
    import os

    saved = [(c, c.soft_wrap, c.width) for c in (console, err_console)]
    for c in (console, err_console):
        if not c.is_terminal and not os.environ.get("COLUMNS", "").isdigit():
            c.soft_wrap = True
            c.width = PIPE_WIDTH

    def restore() -> None:
        for c, soft_wrap, width in saved:
            c.soft_wrap, c.width = soft_wrap, width

    ctx.call_on_close(restore)


#: Exit codes: 1 a dataset, checkpoint or other input file cannot be used (DataError and the
#: like); 2 the command was called wrongly: an option, a preset or a run config (ConfigError,
#: and click's own usage errors, which also exit 2).
EXIT_DATA, EXIT_CONFIG = 1, 2


def _fail_on(err: Exception) -> None:
    """One line for a library error, with the exit code of its kind."""
    from fedneurogen.shared.errors import ConfigError

    _fail(str(err), EXIT_CONFIG if isinstance(err, ConfigError) else EXIT_DATA)


def _trust_unsigned_option() -> typer.models.OptionInfo:
    """``--trust-unsigned`` of every command that loads a checkpoint (``shared/signing.py``)."""
    return typer.Option(
        False,
        "--trust-unsigned",
        help="Load a checkpoint that is unsigned or signed by a key you do not trust (`fedneurogen keys`), with a "
        "warning; its files are still checked against its manifest. Only for a checkpoint whose source you trust.",
    )


def _fail(message: str, code: int = 1) -> None:
    from rich.markup import escape

    # file names and patterns may hold [brackets]; soft wrap: a path is never broken by a newline
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


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
        _fail("--scanner-lead-in / --scanner-lead-out: seconds, at least 0", EXIT_CONFIG)

    sessions = {}
    for item in eeg_only_sessions:
        group, _, count = item.partition(":")
        if not count.strip().isdigit():
            _fail(f"--eeg-only-sessions {item!r}: expected GROUP:N, e.g. B:2", EXIT_CONFIG)
        sessions[group.strip()] = int(count)
    try:
        site_dirs = simulate_dataset(
            out, n_sites=sites, subjects_per_site=subjects_per_site, modality=modality.value, seed=seed, run_seconds=run_seconds,
            eeg_only_sessions=sessions, progress=_show_progress(), head_model=head_model, physiology=physiology,
            coupling=coupling,
            scanner_artifacts=scanner_artifacts and ScannerSetup(scanner_lead_in, scanner_lead_out, scanner_unsynced_clock),
        )  # fmt: skip
    except ConfigError as err:
        _fail_on(err)
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


class Preset(str, Enum):
    tiny = "tiny"
    small = "small"
    base = "base"


def _load_sites(data: list[Path], preprocess):
    """Each site's windows; a skipped run is one warning line, and a site with skipped runs
    gets a closing line saying that the others are used."""
    from fedneurogen.shared.data import load_site_data

    sites = []
    for folder in data:
        loaded = load_site_data(folder, preprocess, progress=_show_progress())
        loaded.warn()
        if loaded.skipped:
            used = len(set(loaded.windows.runs.tolist()))
            err_console.print(f"{folder}: {len(loaded.skipped)} run(s) skipped (above), {used} used", highlight=False)
        sites.append(loaded.windows)
    return sites


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
    max_minutes: float | None = typer.Option(
        None, "--max-minutes", help="Stop (and checkpoint) after this many minutes."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for the subject split, initialisation and batches."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)."),
    preprocess_overrides: list[str] = typer.Option(
        [],
        "--preprocess",
        metavar="KEY=VALUE",
        help="Change a preprocessing setting (shared/config.py PreprocessConfig), e.g. eeg_ica=false; repeat for more.",
    ),
    trust_unsigned: bool = _trust_unsigned_option(),
) -> None:
    """Centralized training on one or more sites (subject-level train/validation/test split)."""
    from fedneurogen.shared.config import PreprocessConfig
    from fedneurogen.shared.errors import FedNeuroGenError
    from fedneurogen.shared.model import get_preset
    from fedneurogen.shared.outputs import prepare_output_folder
    from fedneurogen.shared.signing import trusting_unsigned
    from fedneurogen.shared.workflows.training import train_centralized

    try:
        preprocess = PreprocessConfig.from_overrides(preprocess_overrides)
        get_preset(preset.value).for_preprocess(preprocess).check_preprocess(preprocess)  # before any data is read
        prepare_output_folder(out, data, own=False)  # a run folder: --resume continues it
        sites = _load_sites(data, preprocess)
        with trusting_unsigned(trust_unsigned):  # --resume loads the run's checkpoint
            checkpoint = train_centralized(
                sites,
                out,
                preset=preset.value,
                seed=seed,
                max_minutes=max_minutes,
                resume=resume,
                device=device,
                preprocess=preprocess.model_dump(),
                site_names=[d.name for d in data],
                site_dirs=data,  # the checkpoint records its subjects by content: evaluate scores only unseen ones
                progress=_show_progress(),
            )
    except FedNeuroGenError as err:  # a bad dataset or configuration: one line naming the file
        _fail_on(err)
    console.print(f"checkpoint: [bold]{checkpoint}[/]")


@app.command()
def federate(
    run_dir: Path = typer.Option(
        ..., "--run-dir", help="Server output: checkpoint, history.json, metrics.png, tensorboard/."
    ),
    data_root: Path = typer.Option(
        ...,
        "--data-root",
        help="Folder of site-01, site-02, ... (BIDS folders or links to them, used read-only as they are); "
        "simulated only when the folder is absent or empty.",
    ),
    sites: int = typer.Option(3, "--sites", min=1, help="Sites (SuperNodes) in the simulation."),
    rounds: int = typer.Option(3, "--rounds", min=1, help="Federated rounds."),
    modality: SimModality = typer.Option(SimModality.fmri, "--modality", help="Modality of simulated sites."),
    subjects_per_site: int = typer.Option(4, "--subjects-per-site", min=1, help="Subjects of each simulated site."),
    preset: Preset = typer.Option(Preset.tiny, "--preset", help="Model preset."),
    seed: int = typer.Option(0, "--seed", help="Seed of the simulation, initial weights, splits and batches."),
    set_: list[str] = typer.Option(
        [], "--set", help="Any run-config key, e.g. --set strategy=fedprox --set dp-enabled=true."
    ),
    simulate: bool = typer.Option(
        False, "--simulate", help="Simulate the missing sites of a data root that the simulator made (never over data)."
    ),
) -> None:
    """Local multi-site federated training: a Flower SuperLink on this machine, one SuperNode per site."""
    from fedneurogen.shared.errors import FedNeuroGenError
    from fedneurogen.simulations.federated import parse_overrides, run_federated

    overrides = {"preset": preset.value, **parse_overrides(set_)}
    total = int(overrides.get("num-server-rounds", rounds))
    try:
        with _round_progress(total, enabled=_show_progress()) as show_round:
            out = run_federated(
                run_dir,
                data_root,
                num_sites=sites,
                rounds=rounds,
                modality=modality.value,
                subjects_per_site=subjects_per_site,
                seed=seed,
                run_config=overrides,
                on_round=show_round,
                simulate=simulate,
                before_start=_print_privacy_plan,
            )
    except FedNeuroGenError as err:  # e.g. a bad run config: the ServerApp's ConfigError leads the message
        _fail_on(err)
    if not (out / "checkpoint").exists():  # the run ended before any round was good (history.json says why)
        console.print(
            f"no checkpoint: the run ended before a round had enough valid replies\nhistory: {out / 'history.json'}"
        )
        raise typer.Exit(1)
    console.print(
        f"checkpoint: [bold]{out / 'checkpoint'}[/]\nhistory:    {out / 'history.json'}\nplot:       {out / 'metrics.png'}"
    )


def _round_progress(total: int, enabled: bool = True):
    """A progress bar over the federated rounds (unless not ``enabled``) and a line per round as
    it ends: sites that answered, training loss, held-out PCC of the point prediction, epsilon
    per subject (with DP: the largest a site reports), seconds."""
    import contextlib

    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    @contextlib.contextmanager
    def context():
        columns = (TextColumn("[bold]federated rounds"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, disable=not enabled) as bar:
            task = bar.add_task("rounds", total=total)

            def show(entry: dict) -> None:
                train, held_out = entry.get("train", {}), entry.get("evaluate", {})
                answered = len(train.get("sites", {}))
                failed = len(train.get("failed", []))
                loss, pcc = (train.get("aggregate") or {}).get("loss"), (held_out.get("aggregate") or {}).get("pcc")
                epsilon = [m["epsilon"] for m in train.get("sites", {}).values() if "epsilon" in m]
                fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
                line = f"round {entry['round']}/{total}: {answered} site(s) answered" + (
                    f", {failed} failed" if failed else ""
                )
                if (held_out.get("aggregate") or {}).get("withheld"):  # DP sites send no losses or scores
                    line += ", losses and held-out PCC withheld under DP"
                else:
                    line += f", train loss {fmt(loss)}, held-out PCC {fmt(pcc)}"
                line += f", epsilon per subject {max(epsilon):.2f}" if epsilon else ""
                stopping = entry.get("early_stopping") or {}
                if stopping.get("best_round") is not None:
                    line += f", residual best at round {stopping['best_round']}" + (
                        " (kept)" if stopping.get("stopped") else ""
                    )
                bar.console.print(f"{line}, {entry.get('seconds', 0.0):.0f} s")
                if entry.get("ended"):  # too few valid replies (server/app.py end_run)
                    bar.console.print(f"[red]run ended at round {entry['round']}:[/] {escape(entry['ended'])}")
                bar.update(task, completed=entry["round"])

            yield show

    return context()


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
    steps: int | None = typer.Option(None, "--steps", min=1, help="DDIM steps (default: the model's sampling_steps)."),
    guidance: float = typer.Option(1.0, "--guidance", help="Classifier-free guidance scale (1 = plain conditional)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sampling noise; sample k uses seed + k - 1."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Windows sampled together."),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)."),
    as_json: bool = typer.Option(
        False, "--json", help="Print what was written as JSON (out, files) instead of a list."
    ),
    trust_unsigned: bool = _trust_unsigned_option(),
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
                progress=_show_progress(),
            )  # fmt: skip
    except FedNeuroGenError as err:
        _fail_on(err)
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
    steps: int | None = typer.Option(None, "--steps", min=1, help="DDIM steps (default: the model's sampling_steps)."),
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
    trust_unsigned: bool = _trust_unsigned_option(),
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
                pooled_sites=tuple(pooled_sites or ()), allow_seen=allow_seen, progress=_show_progress(),
                site_records=tuple(site_records or ()),
            )  # fmt: skip
    except FedNeuroGenError as err:
        _fail_on(err)
    console.print(report_table(report))
    console.print(f"report: [bold]{out / REPORT_FILE}[/] (figures: {', '.join(report['plots'])})")


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
    steps: int | None = typer.Option(None, "--steps", min=1, help="DDIM steps (default: the model's sampling_steps)."),
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
    trust_unsigned: bool = _trust_unsigned_option(),
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
        _fail(f"--features must be eeg, target or eeg,target; got {features!r}", EXIT_CONFIG)
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
        _fail_on(err)
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
    trust_unsigned: bool = _trust_unsigned_option(),
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
                progress=_show_progress(),
            )
    except FedNeuroGenError as err:
        _fail_on(err)
    shares = report["band_shares"]["prediction"]
    console.print(f"{report['points']['rule']} ({report['points']['count']} of {report['points']['of']})")
    console.print("band shares of the prediction variance: " + ", ".join(f"{b} {v:.2f}" for b, v in shares.items()))
    console.print(
        f"top electrodes: {', '.join(report['electrodes']['ranking'][:8])}; effective HRF peak {report['effective_hrf']['selected_points']['peak_s']:.1f} s"
    )
    console.print(f"report: [bold]{out / EXPLAIN_FILE}[/] (figures: {', '.join(report['plots'])})")


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
    steps: int = typer.Option(10, "--steps", min=1, help="DDIM steps per generated window."),
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
    trust_unsigned: bool = _trust_unsigned_option(),
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
        _fail_on(err)
    print(render_table(result))


@app.command("audit")
def audit_command(
    log: Path = typer.Argument(
        ..., help="A run's audit log, RUN_DIR/audit/received.jsonl, or a site's own STATE_DIR/sent.jsonl."
    ),
    preset: Preset | None = typer.Option(
        None, "--preset", help="Check array names and shapes against this preset (default: inferred from the names)."
    ),
    forbid: list[str] = typer.Option(
        [], "--forbid", help="Text no config value may contain, e.g. a data root or a site's name (repeat)."
    ),
) -> None:
    """What each site sent in a federated run, and anything that is not a model parameter, a known metric or a task label.

    Given a site's own sent.jsonl: what it sent, and any run whose run config changed seeds,
    windows, preprocessing or DP settings between its messages. Exit 1 if anything is flagged."""
    from fedneurogen.server.audit import SITE_LOG, check_log, check_site_log

    if not log.is_file():
        _fail(f"{log}: no such audit log (a run writes RUN_DIR/audit/received.jsonl)", EXIT_CONFIG)
    if log.name == SITE_LOG:  # the site's own record of what it was asked and sent
        found = check_site_log(log)
        print(found.summary)
        if found.problems:
            print("\n".join(found.problems))
            raise typer.Exit(1)
        print(f"{found.messages} messages: every run kept its seeds, windows, preprocessing and DP settings")
        return
    found = check_log(log, preset.value if preset else None, forbid)
    print(found.summary)
    if found.problems:
        print("\n".join(found.problems))
        raise typer.Exit(1)
    # a check of the messages' structure, not of what the weights memorised
    print(
        f"{found.messages} messages: no unexpected records (model parameters of the expected shapes, known metrics, task labels)"
    )


def _print_privacy_plan(run, sites: list[Path]) -> None:
    """Under DP, print the privacy planner's prediction before round 1 (nothing spent yet)."""
    if run.dp_enabled:
        from fedneurogen.privacy_plan import privacy_plan_line

        print(privacy_plan_line(run, sites), flush=True)


@app.command("privacy-plan")
def privacy_plan(
    sites: int = typer.Option(..., "--sites", help="Sites of the consortium."),
    subjects_per_site: int = typer.Option(..., "--subjects-per-site", help="Subjects of each site (at least 3)."),
    epsilon: float = typer.Option(..., "--epsilon", help="Subject-level epsilon (the run's dp-target-epsilon)."),
    delta: float = typer.Option(1e-5, "--delta", help="The run's dp-delta."),
    prior: bool = typer.Option(
        True,
        "--prior/--no-prior",
        help="Adapt the public prior (dp-prior = simulated) or release the pooled regression.",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the resampled subjects and noise draws."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
) -> None:
    """Predict, before any budget is spent, what DP leaves of the point prediction (ratio to no DP).

    Sites of the asked size are resampled from a simulated reference consortium (simulated once,
    about a minute, then cached under $FEDNEUROGEN_HOME/planner) and released through the same
    mechanism and server solve as a run (``fedneurogen/privacy_plan.py``)."""
    import json

    from rich.table import Table

    from fedneurogen.shared.errors import FedNeuroGenError
    from fedneurogen.privacy_plan import plan

    try:
        result = plan(sites, subjects_per_site, epsilon, delta, prior=prior, seed=seed)
    except FedNeuroGenError as err:
        _fail_on(err)
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))  # plain: for other programs to parse
        return
    table = Table(
        "consortium", "epsilon (delta)", "released regression", "noise multiplier", "predicted ratio to no DP"
    )
    table.add_row(
        f"{result.sites} x {result.subjects_per_site} subjects",
        f"{result.epsilon:g} ({result.delta:g})",
        f"{result.reduction}: {result.inputs} -> {result.outputs}",
        f"{result.noise_multiplier:.3g}",
        f"{result.ratio:.2f} +- {result.spread:.2f}",
    )
    console.print(table)
    console.print(
        f"over {result.draws} noise draws on a simulated reference (non-DP temporal PCC {result.reference_pcc:.3f}); "
        f"the server's penalty floor {result.penalty_floor:.3g}; it kept "
        f"{'the prior unchanged' if result.prior else 'only the mean (path switched off)'} in {result.switched_off:.0%} "
        "of draws. Resampled subjects repeat the reference's: this is the noise's side only."
    )


@app.command("privacy-budget")
def privacy_budget(
    state_dir: Path = typer.Option(..., "--state-dir", help="The site's state folder (its --node-config state-dir)."),
    delta: float = typer.Option(1e-5, "--delta", help="The run's dp-delta."),
    run_dir: str | None = typer.Option(
        None, "--run-dir", help="Only the ledger of this run (its run-config run-dir, as the server wrote it)."
    ),
    release: str | None = typer.Option(
        None,
        "--release",
        metavar="RUN",
        help="Release the unused reservation of a run that was stopped before its last round: RUN is its ledger as "
        "this command lists it (privacy-<hash>.json) or its run-dir. It then counts only what it spent against the "
        "site's dp-lifetime-epsilon (a later message of it reserves again, checked again). Refused while a message "
        "of the run is using its ledger.",
    ),
) -> None:
    """A site's spent differential-privacy budget per subject: one line per federated run it trained in.

    Every epsilon is one subject's (group privacy over the most windows one subject has at the
    site, ``client/privacy.py``); the window-level figure is shown beside it for comparison."""
    import json

    from rich.table import Table

    from fedneurogen.client.privacy import PrivacyLedger, ledger_path

    if release is not None:
        _release_reservation(state_dir, release, delta)
        return
    paths = [ledger_path(state_dir, run_dir)] if run_dir else sorted(state_dir.glob("privacy-*.json"))
    paths = [p for p in paths if p.is_file()]
    if not paths:
        _fail(f"no privacy ledger in {state_dir}" + (f" for run-dir {run_dir!r}" if run_dir else ""))
    table = Table(
        "ledger", "accountant", "noise multiplier", "DP steps", "statistics released", "windows per subject",
        f"epsilon per subject (delta={delta:g})", "per window",
    )  # fmt: skip
    total = 0.0
    for path in paths:
        try:
            ledger = PrivacyLedger.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError) as err:
            _fail(f"{path}: not a readable privacy ledger ({err})")
        multiplier = f"{ledger.noise_multiplier:.3f}" if ledger.noise_multiplier else "-"
        epsilon = ledger.epsilon(delta)
        total += epsilon
        table.add_row(
            path.name,
            ledger.accountant,
            multiplier,
            str(ledger.steps),
            "yes" if ledger.statistics else "no",
            str(ledger.group_size),
            f"{epsilon:.3f}",
            f"{ledger.window_epsilon(delta):.3f}",
        )
    console.print(table)
    if len(paths) > 1:  # runs on the same data compose: their epsilons add up (deltas too)
        console.print(
            f"all {len(paths)} runs on this site's data together: epsilon per subject <= {total:.3f} (delta <= {len(paths) * delta:g}; basic composition)"
        )


def _release_reservation(state_dir: Path, run: str, delta: float) -> None:
    """``privacy-budget --release RUN``: the run's reservation becomes what it spent
    (``privacy.release``), under the run's own lock, taken without waiting: a run with a message
    in progress is refused."""
    import re

    from fedneurogen.client import privacy
    from fedneurogen.client.refusal import SiteRefusal

    name = run.strip()
    if re.fullmatch(r"privacy-[0-9a-f]{16}(\.json)?", name):  # the name the listing shows
        path = state_dir / f"{name.removesuffix('.json')}.json"
    else:  # the run's run-dir, as the server wrote it in the run config
        path = privacy.ledger_path(state_dir, name)
    if not path.is_file():
        _fail(
            f"{state_dir}: no privacy ledger for run {run!r} (give a ledger name that `fedneurogen privacy-budget "
            f"--state-dir {state_dir}` lists, or the run's run-dir)",
            EXIT_CONFIG,
        )
    try:
        with privacy.run_lock(path):
            before = privacy.load_ledger(path, "rdp")
            after = privacy.release(state_dir, path)
    except SiteRefusal:
        _fail(
            f"{path}: run {run!r} is in progress at this site (a message of it is using its ledger); "
            "release its reservation once the run has stopped"
        )
    except (ValueError, KeyError, TypeError) as err:
        _fail(f"{path}: not a readable privacy ledger ({err})")
    console.print(
        f"released {path.name}: it counts epsilon {after.committed(delta):.3f} per subject (delta={delta:g}, what it "
        f"spent) against the site's lifetime limit, no longer its reservation of {before.reserved:g}",
        highlight=False,
    )


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
        _fail_on(err)
    if older_than is not None and not purge:
        _fail("--older-than goes with --purge", EXIT_CONFIG)
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


@app.command("app-hash")
def app_hash_command(
    app_folder: Path = typer.Option(None, "--app", help="The Flower app folder (default: this FedNeuroGen release)."),
) -> None:
    """The SHA-256 of the app a run of this release sends: the line a site puts in its allowlist of apps.

    The allowlist is read by the site's app gate (fedneurogen.client.site_exec)."""
    from fedneurogen.shared.apps import app_hash
    from fedneurogen.shared.errors import ConfigError
    from fedneurogen.simulations.federated import app_dir

    folder = app_folder or app_dir()
    try:
        console.print(f"{app_hash(folder)}  # {folder}", highlight=False, soft_wrap=True)
    except ConfigError as err:
        _fail_on(err)


certs_app = typer.Typer(
    help="Certificates and keys for a deployed federation (TLS, SuperNode authentication).", no_args_is_help=True
)
app.add_typer(certs_app, name="certs")


def _certs_call(fn, *args, **kwargs):
    from fedneurogen.shared.errors import ConfigError

    try:
        return fn(*args, **kwargs)
    except ConfigError as err:
        _fail_on(err)


@certs_app.command("ca")
def certs_ca(
    out: Path = typer.Option(..., "--out", help="Folder for ca.crt and ca.key (keep ca.key on the coordinator only)."),
    organization: str = typer.Option(
        "FedNeuroGen consortium", "--organization", help="Organization named in the certificates."
    ),
    days: int = typer.Option(3650, "--days", min=1, help="Validity in days."),
    force: bool = typer.Option(
        False, "--force", help="Replace an existing CA (every site must then get the new ca.crt)."
    ),
) -> None:
    """Create the consortium's certificate authority."""
    from fedneurogen.shared.pki import make_ca

    pair = _certs_call(make_ca, out, organization=organization, days=days, force=force)
    console.print(
        f"CA certificate: [bold]{pair.certificate_or_public}[/] (give it to every site)\nCA key:         {pair.private} (keep it here)"
    )


@certs_app.command("server")
def certs_server(
    ca: Path = typer.Option(..., "--ca", help="Folder holding ca.crt and ca.key."),
    out: Path = typer.Option(..., "--out", help="Folder for superlink.crt and superlink.key."),
    host: list[str] = typer.Option(
        ..., "--host", help="A host name or IP address sites use to reach the SuperLink (repeat for each)."
    ),
    days: int = typer.Option(825, "--days", min=1, help="Validity in days."),
    force: bool = typer.Option(False, "--force", help="Replace an existing certificate."),
) -> None:
    """Create the SuperLink's TLS certificate, signed by the CA, valid for the given hosts."""
    from fedneurogen.shared.pki import make_server_certificate

    pair = _certs_call(make_server_certificate, ca, out, host, days=days, force=force)
    console.print(
        f"SuperLink certificate: [bold]{pair.certificate_or_public}[/] (names: {', '.join(host)})\nSuperLink key:         {pair.private}"
    )


@certs_app.command("node-key")
def certs_node_key(
    out: Path = typer.Option(..., "--out", help="Folder for the key pair."),
    name: str = typer.Option(..., "--name", help="Key name, e.g. the site's name (site-01)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing key pair (register the new public key)."),
) -> None:
    """Create a site's SuperNode authentication key pair (send only the .pub to the coordinator)."""
    from fedneurogen.shared.pki import make_node_keypair

    pair = _certs_call(make_node_keypair, out, name, force=force)
    console.print(
        f"private key: [bold]{pair.private}[/] (stays at the site, mode 0600)\npublic key:  {pair.certificate_or_public} (send to the coordinator)"
    )


@certs_app.command("check")
def certs_check(
    cert: Path = typer.Option(..., "--cert", help="The SuperLink certificate."),
    ca: Path = typer.Option(..., "--ca-cert", help="The CA certificate sites use (ca.crt)."),
    host: list[str] = typer.Option(..., "--host", help="A name sites dial (repeat for each)."),
) -> None:
    """Check that sites dialling HOST will accept the SuperLink's certificate."""
    from fedneurogen.shared.pki import check_server_certificate

    problems = [p for h in host for p in check_server_certificate(cert, ca, h)]
    for problem in problems:
        err_console.print(f"[bold red]problem:[/] {problem}")
    if problems:
        raise typer.Exit(1)
    console.print(f"{cert}: signed by {ca}, valid now, names {', '.join(host)}")


keys_app = typer.Typer(
    help="Checkpoint signing keys: every checkpoint is signed by its writer's key and loads only for a user who "
    "trusts that key (their own, or one trusted with `keys trust`).",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")


@keys_app.command("export")
def keys_export(
    out: Path | None = typer.Option(None, "--out", help="Write the public key to this file (default: stdout)."),
) -> None:
    """Print (or write) this user's public signing key, for others to trust: a coordinator hands it to the sites,
    which run `fedneurogen keys trust FILE` once. The key is made on first use."""
    from fedneurogen.shared.errors import ConfigError
    from fedneurogen.shared.io import write_text_atomic
    from fedneurogen.shared.signing import key_id, own_key, public_key_pem

    try:
        public = own_key().public_key()
    except ConfigError as err:
        _fail_on(err)
    if out is None:
        print(public_key_pem(public), end="")
    else:
        write_text_atomic(out, public_key_pem(public))
        console.print(f"public key {key_id(public)} written to [bold]{out}[/]", highlight=False)


@keys_app.command("trust")
def keys_trust(
    public_key: Path = typer.Argument(..., help="A public key file from another user's `fedneurogen keys export`."),
) -> None:
    """Trust a public key: checkpoints it signed load for this user (e.g. the coordinator's server rounds)."""
    from fedneurogen.shared.errors import ConfigError
    from fedneurogen.shared.signing import trust_key

    try:
        ident, stored = trust_key(public_key)
    except ConfigError as err:
        _fail_on(err)
    console.print(f"trusted key {ident} (kept as {stored})", highlight=False)


@keys_app.command("list")
def keys_list() -> None:
    """This user's key id and the keys it trusts."""
    from fedneurogen.shared.errors import ConfigError
    from fedneurogen.shared.signing import TRUSTED_DIR, key_dir, key_id, own_key, read_public_key

    try:
        console.print(f"own key:     {key_id(own_key().public_key())} ({key_dir()})", highlight=False)
        for file in sorted((key_dir() / TRUSTED_DIR).glob("*.pub")):
            console.print(f"trusted key: {key_id(read_public_key(file))} ({file})", highlight=False)
    except ConfigError as err:
        _fail_on(err)


consortium_app = typer.Typer(
    help="A local consortium on loopback for rehearsal (TLS, node authentication, the proxy); a real coordinator's proxy.",
    no_args_is_help=True,
)
app.add_typer(consortium_app, name="consortium")


@consortium_app.command("up")
def consortium_up(
    folder: Path = typer.Argument(..., help="The consortium's folder (certificates, keys, logs, endpoints.env)."),
    sites: int = typer.Option(2, "--sites", min=1, help="Site daemons to start."),
    data_root: Path | None = typer.Option(
        None,
        "--data-root",
        help="BIDS folders site-01, site-02, ... used read-only as they are (default DIR/data, simulated when absent).",
    ),
    modality: SimModality = typer.Option(SimModality.fmri, "--modality", help="Simulated sites' target modality."),
    subjects_per_site: int = typer.Option(3, "--subjects-per-site", min=1, help="Simulated subjects per site."),
    site_config: str = typer.Option(
        'dp-max-epsilon="10" dp-max-delta="1e-5"',
        "--site-config",
        help="Added to every site's node config (its privacy policy).",
    ),
    allowed_apps: Path | None = typer.Option(
        None, "--allowed-apps", help="The sites' allowlist of app hashes (default: this FedNeuroGen release)."
    ),
    simulate: bool = typer.Option(
        False, "--simulate", help="Simulate the missing sites of a data root that the simulator made (never over data)."
    ),
) -> None:
    """Start the SuperLink behind its proxy and authenticated site daemons, as real processes."""
    from fedneurogen.shared.errors import FedNeuroGenError
    from fedneurogen.simulations.consortium import CONNECTION, up

    try:
        endpoints = up(
            folder, sites=sites, data_root=data_root, modality=modality.value, subjects_per_site=subjects_per_site,
            site_config=site_config, allowed_apps=allowed_apps, simulate=simulate,
        )  # fmt: skip
    except FedNeuroGenError as err:
        _fail_on(err)
    print(f"consortium up in {folder.resolve()}:")
    print(endpoints.env_file(), end="")
    print(f"submit a run: FLWR_HOME={endpoints.flwr_home} flwr run . {CONNECTION}")


@consortium_app.command("down")
def consortium_down(folder: Path = typer.Argument(..., help="The folder given to `up`.")) -> None:
    """Stop exactly the processes `up` started."""
    from fedneurogen.simulations.consortium import down

    names = down(folder)
    print(f"stopped: {', '.join(names)}" if names else f"nothing running in {folder}")


@consortium_app.command("proxy-config")
def consortium_proxy_config(
    out: Path = typer.Option(..., "--out", help="The nginx.conf to write."),
    site_listen: str = typer.Option(..., "--site-listen", help="address:port the sites reach, e.g. 0.0.0.0:8443."),
    admin_listen: str = typer.Option(
        ..., "--admin-listen", help="address:port on the admins' network only, e.g. 10.1.0.5:9443."
    ),
    certs: Path = typer.Option(
        ..., "--certs", help="Folder with superlink.crt, superlink.key, ca.crt (fedneurogen certs / make-certs.sh)."
    ),
    upstream: str = typer.Option("127.0.0.1:8000", "--upstream", help="Where the SuperLink listens (loopback)."),
    upstream_name: str = typer.Option("localhost", "--upstream-name", help="A name the SuperLink's certificate lists."),
    state: Path = typer.Option(Path("/var/lib/fedneurogen/proxy"), "--state", help="The proxy's pid file and logs."),
) -> None:
    """Write the proxy's nginx.conf for a real coordinator: sites get the Fleet API only, admins
    the Control API only (deploy/README.md)."""
    from fedneurogen.shared.io import write_text_atomic
    from fedneurogen.simulations.consortium import CONTROL_PREFIX, FLEET_PREFIX, nginx_config
    from fedneurogen.simulations.federated import TlsFiles

    from fedneurogen.shared.errors import FedNeuroGenError

    try:
        tls = TlsFiles.in_folder(certs)
        tls.flags()  # the three files exist, or a ConfigError names the missing one
        text = nginx_config(state, tls, upstream, site_listen, admin_listen, upstream_name=upstream_name)
        write_text_atomic(out, text)
    except FedNeuroGenError as err:
        _fail_on(err)
    print(f"wrote {out}: sites {site_listen} -> {FLEET_PREFIX}, admins {admin_listen} -> {CONTROL_PREFIX}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
