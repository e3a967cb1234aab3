"""Benchmark: first (preprocessing) vs cached load of a site with ``load_site``.

    python benchmarks/data_cache.py --out benchmarks/results/data_cache.json
    python benchmarks/data_cache.py --data path/to/site-01 --out result.json

Without ``--data`` it writes its own EEG-fMRI site (the test suite's BIDS factory: 32-channel
EDF at 500 Hz with EOG, fsaverage5 GIFTI at TR 2 s) into a temporary folder. The cache goes to a
temporary folder too, so the first load is always a miss. Three loads are timed: the first
(read + preprocess + write cache), the second (cache hit; inputs are rehashed when they were
too fresh at the first load for the hash memo to trust), the third (cache hit, warm hash memo).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHANNELS_32 = [
    "Fp1", "Fp2", "F7", "F3", "Fz", "F4", "F8", "FC5", "FC1", "FC2", "FC6", "T7", "C3", "Cz", "C4", "T8",
    "CP5", "CP1", "CP2", "CP6", "P7", "P3", "Pz", "P4", "P8", "PO9", "O1", "Oz", "O2", "PO10", "AF7", "AF8",
]  # fmt: skip


def make_dataset(folder: Path, subjects: int, runs: int, duration: float) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    import bids_factory as bf  # the tests' small BIDS writer

    spec = bf.SiteSpec(
        subjects=tuple(f"{i + 1:02d}" for i in range(subjects)),
        runs=tuple(range(1, runs + 1)),
        duration=duration,
        eeg_sfreq=500.0,
        channels=CHANNELS_32,
    )
    return bf.make_site(folder, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="an existing BIDS site (default: write one)")
    parser.add_argument("--out", type=Path, help="write {first_s, cached_s, speedup, ...} as JSON here")
    parser.add_argument("--subjects", type=int, default=3)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--duration", type=float, default=240.0, help="seconds per run")
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    from fedneurogen.shared.data import load_site_data
    from fedneurogen.shared.data.bids import find_runs
    from fedneurogen.shared.data.site import site_inputs

    console = Console()
    with tempfile.TemporaryDirectory(prefix="fng-bench-") as tmp:
        tmp = Path(tmp)
        site = args.data
        if site is None:
            t = time.perf_counter()
            site = make_dataset(tmp / "data", args.subjects, args.runs, args.duration)
            console.print(f"wrote {site} in {time.perf_counter() - t:.1f} s")
        inputs = site_inputs(site, find_runs(site))
        size_mb = sum(p.stat().st_size for p in set(inputs)) / 1e6
        timings = []
        for _ in range(3):
            t = time.perf_counter()
            data = load_site_data(site, cache_dir=tmp / "cache", progress=False)
            timings.append((time.perf_counter() - t, data.from_cache))
        windows = data.windows

    (first, hit1), (cached, hit2), (warm, hit3) = timings
    if hit1 or not (hit2 and hit3):
        console.print("[red]unexpected cache behaviour[/red]", timings)
        return 1
    result = {
        "site": str(site),
        "runs": len({*windows.runs.tolist()}),
        "windows": len(windows),
        "input_mb": round(size_mb, 1),
        "first_s": round(first, 3),
        "cached_s": round(cached, 3),
        "cached_warm_memo_s": round(warm, 3),
        "speedup": round(first / cached, 1),
        "speedup_warm_memo": round(first / warm, 1),
    }
    table = Table(title=f"load_site: {result['runs']} runs, {result['windows']} windows, {size_mb:.0f} MB of input")
    for col in ("load", "seconds", "speed-up"):
        table.add_column(col, justify="right" if col != "load" else "left")
    table.add_row("first (preprocess + store)", f"{first:.2f}", "1.0x")
    table.add_row("cached (rehash inputs)", f"{cached:.3f}", f"{first / cached:.1f}x")
    table.add_row("cached (hash memo warm)", f"{warm:.3f}", f"{first / warm:.1f}x")
    console.print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"wrote {args.out}")
    return 0 if result["speedup"] >= 10 else 2


if __name__ == "__main__":
    raise SystemExit(main())
