"""Benchmark: federation overhead of a local Flower simulation, and bytes moved per round.

    python benchmarks/federation_overhead.py --out benchmarks/results/federation_overhead.json
    python benchmarks/federation_overhead.py --out /tmp/fo.json --subjects-per-site 2 --run-seconds 60 --rounds 2

Four simulated EEG-fMRI sites (tiny preset; by default the data of `make demo`'s sites: 4
subjects with ~8-minute runs, the app's default of 1 local epoch) train through the real stack (``run_federated``:
SuperLink in simulation mode, ServerApp, Ray site actors). Two runs:

- ``train-only``: ``fraction-evaluate=0``, so the server's round ``seconds`` is the wall time of
  the train phase alone (send weights, site training, replies, per-modality aggregation);
- ``full``: the app's default round (train, then evaluation on every site's held-out subjects).

What counts as compute. Each site reports ``train-seconds``: its ``train_epochs`` loop only.
Ray runs ``cpus // client_cpus`` site actors at a time (``run_federated``'s ``client_cpus``; on
a 2-core machine with the default of 2 that is ONE site at a time, so the sites train one after
another). The shortest train phase the sites' own work allows is therefore not the slowest site
but ``max(max_i t_i, sum_i t_i / c)`` with ``c`` concurrent sites (exact for ``c = 1``: the sum).
Sites do not report evaluation time, so for the ``full`` run each site's evaluation
(``client.site.evaluate`` with the run's settings) is re-timed in this process on the final
global model: an estimate, labelled as such.

    overhead (train phase) = (round seconds - ideal train phase) / round seconds     [train-only run]
    overhead (whole round) = (round seconds - ideal train - ideal eval) / round seconds  [full run]

Both are totals over the steady-state rounds (round 1 is left out when there are 2 or more: it
carries the site actors' first model build and warm-up); every round is in the JSON. The
issue's literal "(round - slowest site) / round" is reported as ``naive_vs_slowest_site`` for
reference: with sequential sites it measures the other sites' training, not overhead.

Bytes: the server's history entries carry ``"bytes": {"sent", "received"}`` (array bytes) when
the server records them; otherwise the bytes are computed from the preset's parameter sizes
(what ``model_parameters`` sends: full model to each site for training and again for
evaluation; each site returns the backbone and its own modality head) and labelled
``source: "estimated from parameter sizes"``.

The simulated data (about 1.2 GB at the defaults) and the preprocessed-window cache live under
``--work`` (default ``benchmarks/work/``) and are reused by later runs. About 3-4 minutes at the
defaults on an idle 2-core CPU once the data exist (the first run also simulates and
preprocesses 16 subjects: 2 minutes more). Quick check: ``--subjects-per-site 2 --run-seconds 60
--rounds 2``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as bc  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WORK = ROOT / "benchmarks" / "work"


# -- small helpers (kept in this file: each benchmark script runs on its own) --------------------


def parameter_bytes(preset: str) -> dict[str, int]:
    """Bytes of what travels (``model_parameters``): whole model and per part."""
    import torch

    from fedneurogen.server.checkpointing import model_parameters
    from fedneurogen.shared.model import NeuroGenModel, parameter_modality

    torch.manual_seed(0)
    parts: dict[str, int] = {}
    for name, p in model_parameters(NeuroGenModel(preset, device="cpu")).items():
        part = parameter_modality(name) or "backbone"
        parts[part] = parts.get(part, 0) + p.numel() * p.element_size()
    parts["model"] = sum(parts.values())
    return parts


def round_bytes(entry: dict, sizes: dict[str, int]) -> dict[str, Any]:
    """The round's array bytes: measured by the server when its history has them, else the
    expected bytes from the parameter sizes."""
    if isinstance(entry.get("bytes"), dict) and "sent" in entry["bytes"]:
        return {
            "sent": int(entry["bytes"]["sent"]),
            "received": int(entry["bytes"]["received"]),
            "source": "measured (history.json bytes)",
        }
    train, evaluate = entry.get("train", {}), entry.get("evaluate", {})
    sent_train = len(train.get("sites", {})) + len(train.get("failed", []))
    sent_eval = len(evaluate.get("sites", {})) + len(evaluate.get("failed", []))
    received = sum(sizes["backbone"] + sizes.get(m.get("modality", ""), 0) for m in train.get("sites", {}).values())
    return {
        "sent": (sent_train + sent_eval) * sizes["model"],
        "received": received,
        "source": "estimated from parameter sizes",
    }


# -- the measurement -------------------------------------------------------------------------------


def ideal_seconds(times: list[float], concurrency: int) -> float:
    """Shortest phase the sites' own work allows with ``concurrency`` sites at a time."""
    if not times:
        return 0.0
    return max(max(times), sum(times) / max(1, concurrency))


def time_evaluation(
    run_dir: Path, sites: list[Path], run_config: dict[str, Any], preset: str, seed: int
) -> list[float]:
    """Seconds of each site's ``client.site.evaluate`` on the run's final global model, in this
    process, with the settings the sites used (one untimed warm-up call first)."""
    from fedneurogen.client import site as site_mod
    from fedneurogen.shared.model import load_checkpoint
    from fedneurogen.shared.workflows.training import TRAIN_PRESETS

    model, meta = load_checkpoint(run_dir / "checkpoint", device="cpu")
    class_names = list(meta.get("class_names") or [])
    kwargs = dict(
        class_names=class_names,
        batch_size=TRAIN_PRESETS[preset].batch_size,
        seed=seed,
        pcc_windows=int(run_config["eval-pcc-windows"]),
    )
    data = [
        site_mod.load(
            s, seed=seed, max_windows=int(run_config.get("max-windows", 0)), cache_dir=run_config["cache-dir"]
        )
        for s in sites
    ]
    site_mod.evaluate(model, data[0], **kwargs)  # warm-up
    times = []
    for d in data:
        t = time.perf_counter()
        site_mod.evaluate(model, d, **kwargs)
        times.append(time.perf_counter() - t)
    return times


def analyse(
    history: list[dict], concurrency: int, sizes: dict[str, int], eval_times: list[float] | None
) -> dict[str, Any]:
    rounds = []
    for entry in history:
        train_times = [float(m.get("train-seconds", 0.0)) for m in entry["train"].get("sites", {}).values()]
        ideal_train = ideal_seconds(train_times, concurrency)
        ideal_eval = ideal_seconds(eval_times, concurrency) if eval_times else 0.0
        wall = float(entry["seconds"])
        rounds.append(
            {
                "round": entry["round"],
                "seconds": wall,
                "sites": len(train_times),
                "failed": len(entry["train"].get("failed", [])),
                "site_train_seconds": train_times,
                "ideal_train_s": ideal_train,
                "ideal_eval_s_estimated": ideal_eval if eval_times else None,
                "overhead": (wall - ideal_train - ideal_eval) / wall if wall > 0 else None,
                "naive_vs_slowest_site": (wall - max(train_times)) / wall if wall > 0 and train_times else None,
                "bytes": round_bytes(entry, sizes),
            }
        )
    steady = rounds[1:] if len(rounds) >= 2 else rounds
    wall = sum(r["seconds"] for r in steady)
    compute = sum(r["ideal_train_s"] + (r["ideal_eval_s_estimated"] or 0.0) for r in steady)
    return {
        "rounds": rounds,
        "steady_rounds": [r["round"] for r in steady],
        "steady_round_seconds": wall,
        "steady_compute_seconds": compute,
        "overhead": (wall - compute) / wall if wall > 0 else None,
        "overhead_all_rounds": 1
        - sum(r["ideal_train_s"] + (r["ideal_eval_s_estimated"] or 0.0) for r in rounds)
        / sum(r["seconds"] for r in rounds),
        "median_round_seconds": statistics.median(r["seconds"] for r in steady),
        "bytes_sent_per_round": statistics.mean(r["bytes"]["sent"] for r in rounds),
        "bytes_received_per_round": statistics.mean(r["bytes"]["received"] for r in rounds),
        "bytes_source": sorted({r["bytes"]["source"] for r in rounds}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "federation_overhead.json")
    parser.add_argument(
        "--work", type=Path, default=DEFAULT_WORK, help="simulated data and window cache, reused across runs"
    )
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--subjects-per-site", type=int, default=4)
    parser.add_argument(
        "--run-seconds",
        type=float,
        default=None,
        help="length of each simulated run (>= 60; default: the simulator's ~8 minutes, as `make demo`'s sites)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--max-windows", type=int, default=0, help="cap on each site's training windows (0 = all)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument(
        "--client-cpus", type=int, default=2, help="CPUs per site actor (Ray runs cpus // client_cpus sites at a time)"
    )
    parser.add_argument("--modes", default="train-only,full", help="comma-separated: train-only, full")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds a federated run may take")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not set(modes) <= {"train-only", "full"} or not modes:
        parser.error("--modes takes train-only and/or full")

    from rich.console import Console
    from rich.table import Table

    from fedneurogen.shared.io import write_json_atomic
    from fedneurogen.simulations.federated import run_federated

    console = Console(width=None if sys.stdout.isatty() else 132)  # logs: wide enough for the tables
    os.environ.setdefault("PATH", "")
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]  # flower-superlink, flwr
    started = time.perf_counter()
    work = bc.work_dir(args.work.resolve())
    root, cache, data_seconds = bc.prepare_sites(
        work, args.sites, args.subjects_per_site, args.run_seconds, args.seed, console
    )
    sites = [root / f"site-{i + 1:02d}" for i in range(args.sites)]
    sizes = parameter_bytes(args.preset)
    concurrency = max(1, (os.cpu_count() or 1) // args.client_cpus)
    console.print(
        f"{args.sites} sites, {args.preset} model {sizes['model'] / 1e6:.2f} MB, {concurrency} site(s) at a time "
        f"({os.cpu_count()} CPUs // client_cpus {args.client_cpus})"
    )

    base = {
        "preset": args.preset,
        "local-epochs": args.local_epochs,
        "max-windows": args.max_windows,
        "cache-dir": str(cache),
        "eval-pcc-windows": 4,
    }
    runs: dict[str, Any] = {}
    for mode in modes:
        config = dict(base)
        if mode == "train-only":
            config.update({"fraction-evaluate": 0.0, "eval-pcc-windows": 0})
        run_dir = work / "runs" / f"overhead-{mode}"
        for stale in (run_dir, run_dir.parent / f"{run_dir.name}-site-state"):
            shutil.rmtree(stale, ignore_errors=True)
        console.print(f"[bold]{mode}[/]: {args.rounds} rounds ...")
        t = time.perf_counter()
        run_federated(
            run_dir,
            root,
            num_sites=args.sites,
            rounds=args.rounds,
            modality="fmri",
            subjects_per_site=args.subjects_per_site,
            run_seconds=args.run_seconds,
            seed=args.seed,
            run_config=config,
            timeout=args.timeout,
            client_cpus=args.client_cpus,
        )
        wall = time.perf_counter() - t
        history = json.loads((run_dir / "history.json").read_text())
        eval_times = time_evaluation(run_dir, sites, config, args.preset, args.seed) if mode == "full" else None
        result = analyse(history, concurrency, sizes, eval_times)
        result.update(
            run_wall_seconds=wall,
            outside_rounds_seconds=wall - sum(r["seconds"] for r in result["rounds"]),
            eval_seconds_estimated=eval_times,
            run_config=config,
        )
        runs[mode] = result
        console.print(f"  {wall:.0f} s, overhead {result['overhead']:.1%} (steady rounds {result['steady_rounds']})")

    n = args.sites
    figures = []
    if "train-only" in runs:
        r = runs["train-only"]
        figures.append(
            bc.figure(
                f"federation overhead, train phase ({n} sites)",
                r["overhead"],
                "fraction",
                "<= 0.10",
                note=f"(round s - ideal train phase) / round s; {concurrency} site(s) at a time, steady rounds",
            )
        )
    if "full" in runs:
        r = runs["full"]
        figures.append(
            bc.figure(
                f"federation overhead, whole round incl. evaluate ({n} sites)",
                r["overhead"],
                "fraction",
                "<= 0.10",
                note="evaluation compute re-timed in-process (estimate)",
            )
        )
    ref = runs.get("full") or runs[modes[0]]
    figures += [
        bc.figure(
            f"bytes sent per round / ({n} sites x model size)",
            ref["bytes_sent_per_round"] / (n * sizes["model"]),
            "x",
            source=ref["bytes_source"],
        ),
        bc.figure(
            f"bytes received per round / ({n} sites x model size)",
            ref["bytes_received_per_round"] / (n * sizes["model"]),
            "x",
            source=ref["bytes_source"],
        ),
        bc.figure(
            f"federated run time outside rounds (start-up, checkpoints; {n} sites)", ref["outside_rounds_seconds"], "s"
        ),
    ]

    table = Table(title=f"Federation overhead: {n} sites, {args.preset}, {concurrency} site(s) at a time")
    for col in ("run", "round", "round s", "site train s (sum)", "ideal s", "overhead", "sent MB", "recv MB"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for mode, r in runs.items():
        for row in r["rounds"]:
            ideal = row["ideal_train_s"] + (row["ideal_eval_s_estimated"] or 0.0)
            table.add_row(
                mode,
                str(row["round"]),
                f"{row['seconds']:.1f}",
                f"{sum(row['site_train_seconds']):.1f}",
                f"{ideal:.1f}",
                f"{row['overhead']:.1%}",
                f"{row['bytes']['sent'] / 1e6:.1f}",
                f"{row['bytes']['received'] / 1e6:.1f}",
            )
    console.print(table)
    bc.print_figure_table("figures", figures, console)

    result = {
        "benchmark": "federation_overhead",
        "figures": figures,
        "definition": {
            "overhead": "(sum of steady-round seconds - sum of ideal compute) / sum of steady-round seconds",
            "ideal_phase": "max(max_i t_i, sum_i t_i / concurrency) over the sites' own seconds (train-seconds; for evaluate, "
            "client.site.evaluate re-timed in the benchmark process); exact when concurrency = 1 (sites one after another)",
            "concurrency": concurrency,
            "concurrency_rule": "Ray runs cpus // client_cpus site actors at a time",
            "steady_rounds": "round 1 left out when there are 2 or more rounds (first model build and warm-up in the actors)",
            "naive_vs_slowest_site": "(round s - slowest site's train-seconds) / round s, the issue's literal formula; "
            "with sites running one after another it counts the other sites' training as overhead",
            "bytes": "array bytes per round; history.json 'bytes' when present, else estimated from parameter sizes "
            "(sent: full model per train and per evaluate message; received: backbone + the site's modality head)",
        },
        "model_bytes": sizes,
        "runs": runs,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "data_seconds": data_seconds,
        "seconds": time.perf_counter() - started,
        "machine": bc.machine(),
    }
    write_json_atomic(args.out, result)
    console.print(f"wrote {args.out} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
