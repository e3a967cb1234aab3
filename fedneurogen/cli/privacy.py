"""Privacy commands: ``audit`` (what sites sent in a run), ``privacy-plan`` (what DP will leave of
the point prediction, before any budget is spent) and ``privacy-budget`` (a site's spent budget)."""

from __future__ import annotations

from pathlib import Path

import typer

from fedneurogen.cli.common import EXIT_CONFIG, Preset, app, console, fail, fail_on


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
        fail(f"{log}: no such audit log (a run writes RUN_DIR/audit/received.jsonl)", EXIT_CONFIG)
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
        fail_on(err)
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
        fail(f"no privacy ledger in {state_dir}" + (f" for run-dir {run_dir!r}" if run_dir else ""))
    table = Table(
        "ledger", "accountant", "noise multiplier", "DP steps", "statistics released", "windows per subject",
        f"epsilon per subject (delta={delta:g})", "per window",
    )  # fmt: skip
    total = 0.0
    for path in paths:
        try:
            ledger = PrivacyLedger.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError) as err:
            fail(f"{path}: not a readable privacy ledger ({err})")
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
        fail(
            f"{state_dir}: no privacy ledger for run {run!r} (give a ledger name that `fedneurogen privacy-budget "
            f"--state-dir {state_dir}` lists, or the run's run-dir)",
            EXIT_CONFIG,
        )
    try:
        with privacy.run_lock(path):
            before = privacy.load_ledger(path, "rdp")
            after = privacy.release(state_dir, path)
    except SiteRefusal:
        fail(
            f"{path}: run {run!r} is in progress at this site (a message of it is using its ledger); "
            "release its reservation once the run has stopped"
        )
    except (ValueError, KeyError, TypeError) as err:
        fail(f"{path}: not a readable privacy ledger ({err})")
    console.print(
        f"released {path.name}: it counts epsilon {after.committed(delta):.3f} per subject (delta={delta:g}, what it "
        f"spent) against the site's lifetime limit, no longer its reservation of {before.reserved:g}",
        highlight=False,
    )
