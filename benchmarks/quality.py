"""Benchmark: fidelity of a centrally trained model's point prediction, against what is achievable.

    python benchmarks/quality.py --out benchmarks/results/quality_fmri.json --seed 7
    python benchmarks/quality.py --out q.json --modality fnirs --minutes 5 --subjects 5
    python benchmarks/quality.py --out q.json --data path/site-01 --data path/site-02

Simulates the default consortium (3 sites x 8 subjects, ``--modality`` fMRI or fNIRS; cached
under ``--work``) unless ``--data`` names sites, trains the ``--preset`` model centralized for at
most ``--minutes`` (the residual's early stopping and every choice look at validation subjects
only), then evaluates every site on its held-out test subjects (``fedneurogen.shared.workflows.evaluation``)
and pools them. The headline is the label-free point prediction's temporal PCC; the targets:

- >= 1.15 x the continuous ridge-HRF baseline over all target points,
- >= 1.05 x ridge-HRF over the top-10 % points (chosen on training subjects),
- >= 0.6 x the EEG-informed ceiling (ridge on the simulator's expected scalp band power).

Report final figures on a ``--seed`` nobody tuned on. The JSON has the pooled report, every
site's report, the targets, the machine and its load average before and after.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

#: (name, report path of the value, threshold factor, path of the reference it multiplies)
TARGETS = (
    ("over_ridge_hrf", ("point_prediction", "pcc_temporal"), 1.15, ("baselines", "ridge_hrf", "pcc_temporal")),
    (
        "over_ridge_hrf_top10",
        ("point_prediction", "pcc_temporal_top10"),
        1.05,
        ("baselines", "ridge_hrf", "pcc_temporal_top10"),
    ),
    (
        "share_of_eeg_informed_ceiling",
        ("point_prediction", "pcc_temporal"),
        0.6,
        ("ceilings", "eeg_informed", "pcc_temporal"),
    ),
)


def simulate(work: Path, modality: str, sites: int, subjects: int, run_seconds: float | None, seed: int) -> list[Path]:
    """The simulated sites for these settings, simulating them unless already there."""
    from fedneurogen.simulations.simulator import simulate_dataset

    folder = work / f"{modality}-{sites}sites-{subjects}subjects-{int(run_seconds or 0)}s-seed{seed}"
    summary = folder / "simulation.json"
    if summary.is_file():
        return [folder / site["site_id"] for site in json.loads(summary.read_text())["sites"]]
    return simulate_dataset(
        folder, n_sites=sites, subjects_per_site=subjects, modality=modality, seed=seed, run_seconds=run_seconds
    )


def _get(report: dict[str, Any], path: tuple[str, ...]) -> float | None:
    value: Any = report
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def targets(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target: the value, the threshold (factor x reference) and whether it is met."""
    out = {}
    for name, value_path, factor, reference_path in TARGETS:
        value, reference = _get(report, value_path), _get(report, reference_path)
        threshold = None if reference is None else factor * reference
        met = None if value is None or threshold is None else bool(value >= threshold)
        out[name] = {"value": value, "threshold": threshold, "factor": factor, "reference": reference, "met": met}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="write the pooled report (JSON) here")
    parser.add_argument("--modality", choices=("fmri", "fnirs"), default="fmri")
    parser.add_argument("--minutes", type=float, default=15.0, help="training budget (minutes)")
    parser.add_argument("--data", type=Path, action="append", help="existing BIDS sites (default: simulate)")
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--subjects", type=int, default=8, help="subjects per simulated site")
    parser.add_argument(
        "--run-seconds", type=float, default=None, help="simulated run length (default: the scenario's ~8 min)"
    )
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the preset's)")
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--n-samples", type=int, default=2, help="samples per window (one scored alone, all as a mean)")
    parser.add_argument("--max-windows", type=int, default=None, help="test windows scored per site")
    parser.add_argument("--baseline-epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--checkpoint", type=Path, default=None, help="evaluate this checkpoint instead of training one"
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=Path.home() / ".cache" / "fedneurogen" / "bench-quality",
        help="simulations and runs",
    )
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    from fedneurogen.shared.config import PreprocessConfig
    from fedneurogen.shared.data import load_site
    from fedneurogen.shared.workflows.evaluation import evaluate
    from fedneurogen.shared.workflows.evaluation_report import pool_reports, render_report
    from fedneurogen.shared.io import write_json_atomic
    from fedneurogen.shared.workflows.centralized import train_centralized

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import machine

    console = Console()
    machine_before = machine()
    site_dirs = args.data or simulate(args.work, args.modality, args.sites, args.subjects, args.run_seconds, args.seed)
    preprocess = PreprocessConfig()
    sites = [load_site(site, preprocess) for site in site_dirs]

    start = time.time()
    if args.checkpoint is None:
        run_dir = args.work / "runs" / f"{args.preset}-{args.modality}-{int(time.time())}"
        checkpoint = train_centralized(
            sites, run_dir, preset=args.preset, seed=args.seed, max_minutes=args.minutes, preprocess=preprocess.model_dump(),
            site_names=[site.name for site in site_dirs], site_dirs=site_dirs,
        )  # fmt: skip
        train_minutes = (time.time() - start) / 60
    else:  # trained before: its minutes are in its run's log.jsonl, not measured here
        checkpoint, train_minutes = args.checkpoint, None

    reports = {}
    for site in site_dirs:
        reports[site.name] = evaluate(
            checkpoint, site, args.out.parent / f"{args.out.stem}-{site.name}", steps=args.steps, max_windows=args.max_windows,
            seed=args.seed, guidance_scale=args.guidance, n_samples=args.n_samples, baseline_epochs=args.baseline_epochs,
            pooled_sites=tuple(other for other in site_dirs if other != site),  # baselines see the model's training subjects
        )  # fmt: skip
        render_report(reports[site.name], console)
    report = {**pool_reports(list(reports.values())), "train_minutes": train_minutes, "checkpoint": str(checkpoint)}
    report["provenance"] = json.loads((checkpoint / "config.json").read_text())["provenance"]
    report["targets"] = targets(report)
    report["sites"] = reports
    report["machine"] = {**machine_before, "load_average_after": machine()["load_average"]}
    report["settings"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    write_json_atomic(args.out, report)

    trained = "given checkpoint" if train_minutes is None else f"{train_minutes:.1f} min training"
    table = Table(title=f"quality targets ({args.modality}, preset {args.preset}, {trained})", title_justify="left")
    for column in ("target", "model", "threshold", "met"):
        table.add_column(column)
    for name, target in report["targets"].items():
        value = "-" if target["value"] is None else f"{target['value']:.3f}"
        threshold = (
            "-"
            if target["threshold"] is None
            else f"{target['factor']} x {target['reference']:.3f} = {target['threshold']:.3f}"
        )
        met = {True: "[green]yes[/]", False: "[red]no[/]", None: "-"}[target["met"]]
        table.add_row(name, value, threshold, met)
    render_report(report, console)
    console.print(table)
    console.print(f"report: {args.out}")
    return 0  # measured; a missed target is a figure (summarize.py --strict fails on it), not an error


if __name__ == "__main__":
    sys.exit(main())
