"""Benchmark: peak memory of loading and training on a site, against the site's size.

    python benchmarks/memory.py --out benchmarks/results/memory.json
    python benchmarks/memory.py --hours 20 50 100 --out /tmp/memory.json   # needs ~1.4 GB disk per subject-hour

For each size it writes an EEG-fMRI BIDS site of that many subject-hours (one subject = one
hour: four 15-minute runs of 32-channel EDF at 500 Hz and fsaverage5 GIFTI at TR 2 s, from the
tests' BIDS factory) and, in a fresh process, measures:

1. ``load``: ``load_site_data`` with an empty cache (read, preprocess, write the cache);
2. ``cached``: ``load_site_data`` again (a cache hit: the runs are memory-mapped);
3. ``train``: ``train_centralized`` with the ``tiny`` preset on the cached windows for
   ``--train-minutes`` (ridge path fit on every training subject, then DiT steps, validation).

Memory is the process' anonymous resident memory (``RssAnon`` in ``/proc/self/status``: what
must fit in RAM; sampled every 20 ms, peak per phase) above what the process held after its
imports. File pages of the memory-mapped cache are not counted: the kernel reads and drops
them as needed (``RssFile`` is reported beside). ``materialised_mb`` is what the windows
would take copied out, as the loader kept them before this change.

To keep disk use down, the first subject is written once and the others are hard links to its
files under their own names (the loader and the cache treat them as separate subjects; disk
holds one copy of the input). The cache is real: ~140 MB per subject-hour, plus as much again
while a site is being cached.

Figures: peak load and train memory at the largest size and the growth per subject-hour (slope
of a least-squares line over the sizes; target: bounded by the model and one batch, i.e. under
``GROWTH_TARGET_MB`` MB per subject-hour). Exit status 0 once measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as bc  # noqa: E402

RUNS_PER_HOUR, RUN_SECONDS = 4, 900.0
GROWTH_TARGET_MB = 25.0  # per subject-hour: labels, onsets and split indices, not signals


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class PeakSampler:
    """Peak ``RssAnon``/``RssFile`` (MB) while a block runs, sampled on a thread."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval

    def __enter__(self) -> "PeakSampler":
        self.anon = self.file = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._sample()
        self._thread.start()
        return self

    def _sample(self) -> None:
        self.anon = max(self.anon, _status_kb("RssAnon") / 1024)
        self.file = max(self.file, _status_kb("RssFile") / 1024)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def make_site(folder: Path, hours: int) -> Path:
    """A site of ``hours`` one-hour subjects: the first written, the others hard-linked."""
    from fedneurogen.simulations import bids_factory as bf  # small BIDS sites with known signals
    from data_cache import CHANNELS_32

    spec = bf.SiteSpec(
        subjects=("01",),
        runs=tuple(range(1, RUNS_PER_HOUR + 1)),
        duration=RUN_SECONDS,
        eeg_sfreq=500.0,
        channels=CHANNELS_32,
    )
    site = bf.make_site(folder, spec)
    template = [p for p in site.rglob("*") if p.is_file() and "sub-01" in p.as_posix()]
    for k in range(2, hours + 1):
        sub = f"sub-{k:02d}"
        for src in template:
            dst = site / src.relative_to(site).as_posix().replace("sub-01", sub)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.link(src, dst)
    groups = ["A" if k % 2 else "B" for k in range(1, hours + 1)]
    rows = ["participant_id\tsex\tage\tgroup"] + [
        f"sub-{k:02d}\tF\t30\t{g}" for k, g in zip(range(1, hours + 1), groups)
    ]
    (site / "participants.tsv").write_text("\n".join(rows) + "\n")
    return site


def measure(site: Path, cache: Path, run_dir: Path, train_minutes: float) -> dict[str, Any]:
    """The three phases in this process (run as ``--child``)."""
    import numpy as np
    import torch

    from fedneurogen.shared.data import load_site_data
    from fedneurogen.shared.workflows.centralized import train_centralized
    from fedneurogen.shared.workflows.training import TrainConfig

    torch.set_num_threads(2)
    base_anon = _status_kb("RssAnon") / 1024
    out: dict[str, Any] = {"baseline_anon_mb": round(base_anon, 1)}
    for phase in ("load", "cached"):
        t = time.perf_counter()
        with PeakSampler() as peak:
            data = load_site_data(site, cache_dir=cache, progress=False)
        out[phase] = {"seconds": round(time.perf_counter() - t, 1), "peak_anon_mb": round(peak.anon - base_anon, 1),
                      "peak_file_mb": round(peak.file, 1), "from_cache": data.from_cache}  # fmt: skip
    windows = data.windows
    out["windows"] = len(windows)
    out["materialised_mb"] = round(sum(getattr(windows, n).nbytes for n in ("eeg", "target", "design")) / 2**20, 1)
    out["cache_mb"] = round(sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) / 2**20, 1)
    config = TrainConfig(epochs=1, batch_size=8, lr=1e-3, warmup_steps=5, checkpoint_every=10**6)
    t = time.perf_counter()
    with PeakSampler() as peak:
        train_centralized(
            [windows], run_dir, preset="tiny", seed=0, max_minutes=train_minutes, train_config=config, progress=False
        )
    out["train"] = {
        "seconds": round(time.perf_counter() - t, 1),
        "peak_anon_mb": round(peak.anon - base_anon, 1),
        "peak_file_mb": round(peak.file, 1),
    }
    out["subjects"] = int(len(np.unique(windows.subjects)))
    return out


def slope(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 2:
        return None
    import numpy as np

    return float(np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--hours", type=int, nargs="+", default=[1, 2, 4, 8], help="Site sizes in subject-hours.")
    parser.add_argument("--train-minutes", type=float, default=1.0, help="Training time per size (minutes).")
    parser.add_argument(
        "--work", type=Path, default=None, help="Folder for the sites and caches (default: a temporary one)."
    )
    parser.add_argument("--child", nargs=4, metavar=("SITE", "CACHE", "RUN_DIR", "MINUTES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        site, cache, run_dir, minutes = args.child
        print(json.dumps(measure(Path(site), Path(cache), Path(run_dir), float(minutes))))
        return 0

    from rich.console import Console

    console = Console(stderr=True)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        for hours in sorted(args.hours):
            folder = Path(tmp) / f"h{hours}"
            console.print(f"[bold]{hours} subject-hour(s)[/]: writing the site ...")
            site = make_site(folder, hours)
            console.print("  loading, caching and training in a fresh process ...")
            child = subprocess.run(
                [sys.executable, __file__, "--child", str(site), str(folder / "cache"), str(folder / "run"), str(args.train_minutes)],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if child.returncode != 0:
                console.print(child.stderr[-3000:])
                raise SystemExit(f"the measurement at {hours} h failed (exit {child.returncode})")
            result = json.loads(child.stdout.strip().splitlines()[-1])
            result["hours"] = hours
            rows.append(result)
            console.print(f"  load peak {result['load']['peak_anon_mb']} MB, train peak {result['train']['peak_anon_mb']} MB, "
                          f"windows {result['windows']} (materialised {result['materialised_mb']} MB), cache {result['cache_mb']} MB")  # fmt: skip
            subprocess.run(["rm", "-rf", str(folder)], check=False)

    hours = [r["hours"] for r in rows]
    load_growth = slope(hours, [r["load"]["peak_anon_mb"] for r in rows])
    train_growth = slope(hours, [r["train"]["peak_anon_mb"] for r in rows])
    materialised_growth = slope(hours, [r["materialised_mb"] for r in rows])
    largest = rows[-1]
    target = f"<= {GROWTH_TARGET_MB:g}"
    figures = [
        bc.figure("load_growth_mb_per_subject_hour", load_growth, "MB/subject-hour", target),
        bc.figure("train_growth_mb_per_subject_hour", train_growth, "MB/subject-hour", target),
        bc.figure(
            "load_peak_mb_largest", largest["load"]["peak_anon_mb"], "MB", note=f"{largest['hours']} subject-hours"
        ),
        bc.figure(
            "train_peak_mb_largest", largest["train"]["peak_anon_mb"], "MB", note=f"{largest['hours']} subject-hours"
        ),
        bc.figure(
            "materialised_windows_mb_per_subject_hour",
            materialised_growth,
            "MB/subject-hour",
            note="what copied windows would hold",
        ),
    ]
    table = [
        {"subject-hours": r["hours"], "windows": r["windows"], "load MB": r["load"]["peak_anon_mb"], "load s": r["load"]["seconds"],
         "cached MB": r["cached"]["peak_anon_mb"], "train MB": r["train"]["peak_anon_mb"], "materialised MB": r["materialised_mb"],
         "cache MB": r["cache_mb"]}
        for r in rows
    ]  # fmt: skip
    bc.print_figures("Peak memory against site size (anonymous RSS above the imports)", figures, table, list(table[0]))
    bc.write_result(args.out, "memory", figures, {"sizes": rows, "runs_per_subject": RUNS_PER_HOUR, "run_seconds": RUN_SECONDS,
                                                   "train_minutes": args.train_minutes})  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
