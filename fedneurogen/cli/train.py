"""Commands that train: ``info`` (a preset's architecture), ``train`` (centralized) and ``federate``
(a local multi-site Flower federation, with its per-round progress)."""

from __future__ import annotations

from pathlib import Path

import typer

from fedneurogen.cli.common import (
    Preset,
    SimModality,
    app,
    console,
    fail_on,
    load_sites,
    show_progress,
    trust_unsigned_option,
)


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
        f"fMRI tokens {config.fmri.n_patches}, {config.prediction}-prediction, {config.sampling_steps} {config.sampler} sampling steps"
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
    residual_eeg: bool = typer.Option(
        False,
        "--residual-eeg",
        help="The learned residual also reads EEG through an encoder of its own (kept only where validation supports it).",
    ),
    eeg_encoder: Path | None = typer.Option(
        None,
        "--eeg-encoder",
        help="A LaBraM checkpoint (labram-base.pth; your own file, nothing is downloaded) the EEG encoders start from.",
    ),
    trust_unsigned: bool = trust_unsigned_option(),
) -> None:
    """Centralized training on one or more sites (subject-level train/validation/test split)."""
    from fedneurogen.shared.config import PreprocessConfig
    from fedneurogen.shared.errors import FedNeuroGenError
    from fedneurogen.shared.model import get_preset
    from fedneurogen.shared.outputs import prepare_output_folder
    from fedneurogen.shared.signing import trusting_unsigned
    from fedneurogen.shared.workflows.centralized import train_centralized

    try:
        preprocess = PreprocessConfig.from_overrides(preprocess_overrides)
        get_preset(preset.value).for_preprocess(preprocess).check_preprocess(preprocess)  # before any data is read
        prepare_output_folder(out, data, own=False)  # a run folder: --resume continues it
        sites = load_sites(data, preprocess)
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
                progress=show_progress(),
                residual_eeg=residual_eeg,
                eeg_encoder=eeg_encoder,
            )
    except FedNeuroGenError as err:  # a bad dataset or configuration: one line naming the file
        fail_on(err)
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
    ray_address: str = typer.Option(
        "",
        "--ray-address",
        help="HOST:PORT of a Ray cluster (ray start --head) to run the sites on, across its machines; "
        "'' = a Ray instance on this machine.",
    ),
    site_cpus: int = typer.Option(
        2, "--site-cpus", min=1, help="CPUs per simulated site (Ray runs CPUs / this at once)."
    ),
) -> None:
    """Local multi-site federated training: a Flower SuperLink on this machine, one SuperNode per site
    (Flower's simulation engine: Ray actors on this machine or on a Ray cluster's nodes)."""
    from fedneurogen.shared.errors import FedNeuroGenError
    from fedneurogen.simulations.federated import parse_overrides, run_federated

    overrides = {"preset": preset.value, **parse_overrides(set_)}
    total = int(overrides.get("num-server-rounds", rounds))
    try:
        with _round_progress(total, enabled=show_progress()) as show_round:
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
                client_cpus=site_cpus,
                ray_address=ray_address or None,
            )
    except FedNeuroGenError as err:  # e.g. a bad run config: the ServerApp's ConfigError leads the message
        fail_on(err)
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
                before = entry.get("evaluated_before")  # the previous round's model, scored in this round's replies
                if (held_out.get("aggregate") or {}).get("withheld"):  # DP sites send no losses or scores
                    line += ", losses and held-out PCC withheld under DP"
                elif before is not None:
                    previous = (before.get("aggregate") or {}).get("pcc")
                    line += f", train loss {fmt(loss)}, held-out PCC of round {before['round']}'s model {fmt(previous)}"
                else:
                    line += f", train loss {fmt(loss)}, held-out PCC {fmt(pcc)}"
                line += f", epsilon per subject {max(epsilon):.2f}" if epsilon else ""
                stopping = entry.get("early_stopping") or {}
                if stopping.get("best_round") is not None:
                    line += f", residual best at round {stopping['best_round']}" + (
                        " (stopped)" if stopping.get("stopped") else ""
                    )
                    if stopping.get("kept") is not None and stopping["best_round"] != 0:
                        line += ", kept" if stopping["kept"] else ", not kept (gain within one standard error)"
                bar.console.print(f"{line}, {entry.get('seconds', 0.0):.0f} s")
                if entry.get("ended"):  # too few valid replies (server/app.py end_run)
                    bar.console.print(f"[red]run ended at round {entry['round']}:[/] {escape(entry['ended'])}")
                bar.update(task, completed=entry["round"])

            yield show

    return context()


def _print_privacy_plan(run, sites: list[Path]) -> None:
    """Under DP, print the privacy planner's prediction before round 1 (nothing spent yet)."""
    if run.dp_enabled:
        from fedneurogen.privacy_plan import privacy_plan_line

        print(privacy_plan_line(run, sites), flush=True)
