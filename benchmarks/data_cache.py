"""Benchmark: first (preprocessing) vs cached load of a site with ``load_site``, and the time to
simulate the default dataset.

    python benchmarks/data_cache.py --out benchmarks/results/data_cache.json
    python benchmarks/data_cache.py --data path/to/site-01 --out result.json
    python benchmarks/data_cache.py --out /tmp/dc.json --simulate-subjects 2 --simulate-run-seconds 60   # quick

1. Load of one site. Without ``--data`` it writes its own EEG-fMRI site (the test suite's BIDS
   factory: 32-channel EDF at 500 Hz with EOG, fsaverage5 GIFTI at TR 2 s) into a temporary
   folder. The cache goes to a temporary folder too, so the first load is always a miss. Three
   loads are timed: the first (read + preprocess + write cache), the second (cache hit; inputs
   are rehashed when they were too fresh at the first load for the hash memo to trust), the
   third (cache hit, warm hash memo).
2. ``simulate``: ``simulate_dataset`` for the dataset ``fedneurogen simulate`` writes by default
   (3 EEG-fMRI sites x 8 subjects, ~8-minute runs, about 1.9 GB) into a temporary folder, then
   the same first/cached loads of its ``site-01`` (8 subjects). ``--no-simulate`` skips this part.

Figures (``figures`` in the JSON, collected by ``benchmarks/summarize.py``): the cached-load
speed-ups (target >= 10x), the first-load seconds, the simulate seconds and seconds per subject.
Exit status 0 once measured; with ``--strict`` 2 when a speed-up misses its target.
About 2-3 minutes at the defaults on an idle 2-core CPU (the simulation is most of it).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as bc  # noqa: E402

CHANNELS_32 = [
    "Fp1", "Fp2", "F7", "F3", "Fz", "F4", "F8", "FC5", "FC1", "FC2", "FC6", "T7", "C3", "Cz", "C4", "T8",
    "CP5", "CP1", "CP2", "CP6", "P7", "P3", "Pz", "P4", "P8", "PO9", "O1", "Oz", "O2", "PO10", "AF7", "AF8",
]  # fmt: skip
SPEEDUP_TARGET = ">= 10"


def make_dataset(folder: Path, subjects: int, runs: int, duration: float) -> Path:
    from fedneurogen.simulations import bids_factory as bf  # small BIDS sites with known signals

    spec = bf.SiteSpec(
        subjects=tuple(f"{i + 1:02d}" for i in range(subjects)),
        runs=tuple(range(1, runs + 1)),
        duration=duration,
        eeg_sfreq=500.0,
        channels=CHANNELS_32,
    )
    return bf.make_site(folder, spec)


def time_loads(site: Path, cache: Path, console, label: str) -> dict[str, Any] | None:
    """First, cached and warm-memo loads of ``site`` with an empty ``cache``; None on a cache surprise."""
    from rich.progress import Progress

    from fedneurogen.shared.data import load_site_data
    from fedneurogen.shared.data.bids import find_runs
    from fedneurogen.shared.data.site import site_inputs

    inputs = site_inputs(site, find_runs(site))
    size_mb = sum(p.stat().st_size for p in set(inputs)) / 1e6
    timings = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"load {label}", total=3)
        for _ in range(3):
            t = time.perf_counter()
            data = load_site_data(site, cache_dir=cache, progress=False)
            timings.append((time.perf_counter() - t, data.from_cache))
            progress.advance(task)
    windows = data.windows
    (first, hit1), (cached, hit2), (warm, hit3) = timings
    if hit1 or not (hit2 and hit3):
        console.print(f"[red]unexpected cache behaviour for {label}[/red]", timings)
        return None
    return {
        "site": str(site),
        "subjects": len({*windows.subjects.tolist()}),
        "runs": len({*windows.runs.tolist()}),
        "windows": len(windows),
        "input_mb": round(size_mb, 1),
        "first_s": round(first, 3),
        "cached_s": round(cached, 3),
        "cached_warm_memo_s": round(warm, 3),
        "speedup": round(first / cached, 1),
        "speedup_warm_memo": round(first / warm, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--data", type=Path, help="an existing BIDS site (default: write one)")
    parser.add_argument("--out", type=Path, help="write the results (JSON with a 'figures' list) here")
    parser.add_argument("--subjects", type=int, default=3)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--duration", type=float, default=240.0, help="seconds per run")
    parser.add_argument("--no-simulate", action="store_true", help="skip timing simulate_dataset")
    parser.add_argument("--simulate-sites", type=int, default=3, help="as `fedneurogen simulate` (default 3)")
    parser.add_argument(
        "--simulate-subjects", type=int, default=8, help="per site, as `fedneurogen simulate` (default 8)"
    )
    parser.add_argument(
        "--simulate-run-seconds", type=float, default=None, help="default: the simulator's (~8 minutes)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strict", action="store_true", help="exit 2 when a speed-up misses its target")
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    from fedneurogen.shared.io import write_json_atomic

    console = Console(width=None if sys.stdout.isatty() else 132)  # logs: wide enough for the tables
    started = time.perf_counter()
    simulated: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="fng-bench-") as tmp:
        tmp = Path(tmp)
        site = args.data
        if site is None:
            t = time.perf_counter()
            site = make_dataset(tmp / "data", args.subjects, args.runs, args.duration)
            console.print(f"wrote {site} in {time.perf_counter() - t:.1f} s")
        result = time_loads(site, tmp / "cache", console, site.name)
        if result is None:
            return 1
        if not args.no_simulate:
            from fedneurogen.simulations.simulator import simulate_dataset

            n_subjects = args.simulate_sites * args.simulate_subjects
            console.print(
                f"simulate: {args.simulate_sites} sites x {args.simulate_subjects} subjects (as `fedneurogen simulate` defaults)"
            )
            t = time.perf_counter()
            sites = simulate_dataset(
                tmp / "sim",
                n_sites=args.simulate_sites,
                subjects_per_site=args.simulate_subjects,
                modality="fmri",
                seed=args.seed,
                run_seconds=args.simulate_run_seconds,
                progress=True,
            )
            seconds = time.perf_counter() - t
            disk_mb = sum(p.stat().st_size for p in (tmp / "sim").rglob("*") if p.is_file()) / 1e6
            simulated = {
                "sites": args.simulate_sites,
                "subjects_per_site": args.simulate_subjects,
                "run_seconds": args.simulate_run_seconds,
                "seconds": round(seconds, 2),
                "seconds_per_subject": round(seconds / n_subjects, 3),
                "disk_mb": round(disk_mb, 1),
                "workers": min(2, os.cpu_count() or 1),
            }
            loads = time_loads(sites[0], tmp / "cache-sim", console, f"simulated {sites[0].name}")
            if loads is None:
                return 1
            simulated["site_01_load"] = loads

    figures = [
        bc.figure("data: cached load speed-up (factory site)", result["speedup"], "x", SPEEDUP_TARGET),
        bc.figure("data: first load (factory site)", result["first_s"], "s", windows=result["windows"]),
    ]
    if simulated:
        loads = simulated["site_01_load"]
        default_size = (simulated["sites"], simulated["subjects_per_site"], simulated["run_seconds"]) == (3, 8, None)
        figures += [
            bc.figure(
                f"data: simulate {simulated['sites']} sites x {simulated['subjects_per_site']} subjects"
                + (" (the default dataset)" if default_size else ", reduced"),
                simulated["seconds"],
                "s",
                disk_mb=simulated["disk_mb"],
            ),
            bc.figure("data: simulate, seconds per subject", simulated["seconds_per_subject"], "s"),
            bc.figure(
                f"data: cached load speed-up (simulated site-01, {loads['subjects']} subjects)",
                loads["speedup"],
                "x",
                SPEEDUP_TARGET,
            ),
            bc.figure(
                f"data: first load (simulated site-01, {loads['subjects']} subjects)",
                loads["first_s"],
                "s",
                windows=loads["windows"],
            ),
        ]

    table = Table(
        title=f"load_site: {result['runs']} runs, {result['windows']} windows, {result['input_mb']:.0f} MB of input"
    )
    for col in ("load", "seconds", "speed-up"):
        table.add_column(col, justify="right" if col != "load" else "left")
    rows = [("factory site", result)] + ([("simulated site-01", simulated["site_01_load"])] if simulated else [])
    for label, r in rows:
        table.add_row(f"{label}: first (preprocess + store)", f"{r['first_s']:.2f}", "1.0x")
        table.add_row(f"{label}: cached (rehash inputs)", f"{r['cached_s']:.3f}", f"{r['speedup']:.1f}x")
        table.add_row(
            f"{label}: cached (hash memo warm)", f"{r['cached_warm_memo_s']:.3f}", f"{r['speedup_warm_memo']:.1f}x"
        )
    console.print(table)
    if simulated:
        console.print(
            f"simulate: {simulated['seconds']:.1f} s for {simulated['sites']} x {simulated['subjects_per_site']} subjects "
            f"({simulated['seconds_per_subject']:.2f} s each, {simulated['disk_mb']:.0f} MB)"
        )
    bc.print_figure_table("figures", figures, console)

    # the first keys are the ones this benchmark always wrote (factory site), kept for readers of older results
    output = {
        **result,
        "benchmark": "data_cache",
        "figures": figures,
        "simulate": simulated,
        "seconds": round(time.perf_counter() - started, 1),
        "machine": bc.machine(),
    }
    if args.out:
        write_json_atomic(args.out, output)
        console.print(f"wrote {args.out}")
    missed = any(f["met"] is False for f in figures)
    return 2 if args.strict and missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
