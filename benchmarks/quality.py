"""Benchmark: generation quality of a centrally trained model against its targets.

    python benchmarks/quality.py --out benchmarks/results/quality_fmri.json
    python benchmarks/quality.py --out q.json --modality fnirs --minutes 5 --subjects 5 --run-seconds 240
    python benchmarks/quality.py --out q.json --data path/site-01 --data path/site-02

Simulates the default consortium (3 sites, ``--modality`` fMRI or fNIRS; cached under
``--work``, reused when the same settings were simulated before) unless ``--data`` names sites,
trains the ``--preset`` model (default ``small``) centralized for at most ``--minutes``, then
evaluates every site on its held-out test subjects (``fedneurogen.shared.evaluation``: the
generator, the ridge-HRF and regression-transformer baselines, the noise baseline and the noise
ceiling). Writes the pooled report (the keys of ``report.json`` plus ``train_minutes``,
``sites`` with each site's report, and ``targets``) and prints whether the targets are met:

- the generator's temporal PCC is above both baselines,
- it is at least 0.6 x the noise ceiling,
- it is at least 5 x |noise baseline|.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

CEILING_FRACTION = 0.6
NOISE_MULTIPLE = 5.0


def simulate(work: Path, modality: str, sites: int, subjects: int, run_seconds: float | None, seed: int) -> list[Path]:
    """The simulated sites for these settings, simulating them unless already there."""
    from fedneurogen.simulations.simulator import simulate_dataset

    folder = work / f"{modality}-{sites}sites-{subjects}subjects-{int(run_seconds or 0)}s-seed{seed}"
    summary = folder / "simulation.json"
    if summary.is_file():
        return [folder / site["site_id"] for site in json.loads(summary.read_text())["sites"]]
    return simulate_dataset(folder, n_sites=sites, subjects_per_site=subjects, modality=modality, seed=seed, run_seconds=run_seconds)


def targets(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target: the generator's temporal PCC, the threshold it must pass, and whether it does."""
    pcc = report["pcc_temporal"]
    baselines = [b["pcc_temporal"] for b in report["baselines"].values() if b]
    ceiling, noise = report["noise_ceiling"], report["noise_baseline"]
    out = {"above_baselines": {"value": pcc, "threshold": max(baselines) if baselines else None}}
    out["ceiling_fraction"] = {"value": pcc, "threshold": None if ceiling is None else CEILING_FRACTION * ceiling}
    out["noise_multiple"] = {"value": pcc, "threshold": NOISE_MULTIPLE * abs(noise)}
    for name, target in out.items():
        threshold = target["threshold"]
        target["met"] = None if threshold is None or pcc is None else bool(pcc > threshold if name == "above_baselines" else pcc >= threshold)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="write the pooled report (JSON) here")
    parser.add_argument("--modality", choices=("fmri", "fnirs"), default="fmri")
    parser.add_argument("--minutes", type=float, default=15.0, help="training budget (minutes)")
    parser.add_argument("--data", type=Path, action="append", help="existing BIDS sites (default: simulate)")
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--subjects", type=int, default=8, help="subjects per simulated site")
    parser.add_argument("--run-seconds", type=float, default=None, help="simulated run length (default: the scenario's ~8 min)")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the preset's)")
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--n-samples", type=int, default=1, help="samples per window, averaged before scoring")
    parser.add_argument("--max-windows", type=int, default=None, help="test windows scored per site")
    parser.add_argument("--baseline-epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "fedneurogen" / "bench-quality", help="simulations and runs")
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    from fedneurogen.shared.config import PreprocessConfig
    from fedneurogen.shared.data import load_site
    from fedneurogen.shared.evaluation import evaluate, pool_reports, render_report
    from fedneurogen.shared.io import write_json_atomic
    from fedneurogen.shared.training import train_centralized

    console = Console()
    site_dirs = args.data or simulate(args.work, args.modality, args.sites, args.subjects, args.run_seconds, args.seed)
    preprocess = PreprocessConfig()
    sites = [load_site(site, preprocess) for site in site_dirs]

    run_dir = args.work / "runs" / f"{args.preset}-{args.modality}-{int(time.time())}"
    start = time.time()
    checkpoint = train_centralized(
        sites, run_dir, preset=args.preset, seed=args.seed, max_minutes=args.minutes, preprocess=preprocess.model_dump(),
        site_names=[site.name for site in site_dirs],
    )  # fmt: skip
    train_minutes = (time.time() - start) / 60

    reports = {}
    for site in site_dirs:
        reports[site.name] = evaluate(
            checkpoint, site, args.out.parent / f"{args.out.stem}-{site.name}", steps=args.steps, max_windows=args.max_windows,
            seed=args.seed, guidance_scale=args.guidance, n_samples=args.n_samples, baseline_epochs=args.baseline_epochs,
        )  # fmt: skip
        render_report(reports[site.name], console)
    report = {**pool_reports(list(reports.values())), "train_minutes": train_minutes, "checkpoint": str(checkpoint)}
    report["provenance"] = json.loads((checkpoint / "config.json").read_text())["provenance"]
    report["targets"] = targets(report)
    report["sites"] = reports
    write_json_atomic(args.out, report)

    table = Table(title=f"quality targets ({args.modality}, preset {args.preset}, {train_minutes:.1f} min training)", title_justify="left")
    for column in ("target", "temporal PCC", "threshold", "met"):
        table.add_column(column)
    for name, target in report["targets"].items():
        threshold = "-" if target["threshold"] is None else f"{target['threshold']:.3f}"
        met = {True: "[green]yes[/]", False: "[red]no[/]", None: "-"}[target["met"]]
        table.add_row(name, f"{target['value']:.3f}", threshold, met)
    console.print(table)
    console.print(f"report: {args.out}")
    return 0 if all(t["met"] for t in report["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
