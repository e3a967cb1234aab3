"""Benchmark: round time and peak memory of a local Flower simulation with 2, 8 and 32 sites.

    python benchmarks/scale.py --out benchmarks/results/scale.json
    python benchmarks/scale.py --out /tmp/scale.json --sites 2,8 --rounds 1

Each size is one ``run_federated`` run (SuperLink in simulation mode, ServerApp, Ray site
actors) with the tiny preset on deliberately tiny sites (2 subjects x 60 s runs, at most
``--max-windows`` training windows each): the point is what the federation itself costs as the
number of sites grows, not training.

- Round time: the server's round ``seconds`` (train, with the held-out scores folded into the
  training replies), median over the middle rounds: not the first (the actors' first model
  build, the frozen ridge path sent), nor, with three rounds or more, the last (its own evaluate
  round, in which up to 32 sites also sample to score the departure shares: the run's final
  scoring, reported as ``final_round_seconds``); all rounds are in the JSON. With
  ``cpus // client_cpus`` site actors (2 on a 2-core machine with the default ``client_cpus``
  of 1) sites run two at a time, so round time grows about linearly with sites:
  ``seconds_per_site`` shows it. The server keeps two messages per CPU in flight
  (``server/pacing.py``): with every site's message pushed at once, the simulation engine's
  search for each site's next message took a core of its own at 256 sites. Targets (issue 32,
  ``tiny``, this 2-core, 24 GB machine): a 256-site round within 60 s and 16 GB, and round
  time per site no higher at 256 sites than at 32.
- Peak memory: every process this benchmark starts (flower-superlink, flower-superexec,
  flwr-simulation which hosts the ServerApp and the simulation engine, the Ray processes and
  site actors, the ``flwr run`` client), found through ``/proc`` parent links and sampled every
  ``--interval`` seconds. ``peak_rss_mb`` sums resident sets (shared pages such as torch's
  libraries counted once per process, so it overstates); ``peak_pss_mb`` sums proportional set
  sizes (shared pages split between the processes: the honest total). Per-group RSS at the
  peak shows where memory goes (a site actor keeps every site it has served in memory).
- Bytes per round per site (array bytes, the server's count in ``history.json``), each way, as a
  multiple of the model's trained parameters: in a middle round (neither the first, which sends
  the frozen ridge path to every site, nor the last, which adds the final evaluate round; needs
  ``--rounds`` >= 3), and over the whole run. Target (issue 32): <= 1.2x each way.

Simulated sites and the preprocessed-window cache live under ``--work`` (default
``benchmarks/work/``) and are reused: the first run simulates 32 sites x 2 subjects (about a
minute on 2 cores). Runtime at the defaults on an idle 2-core CPU: about 5-8 minutes, almost all
of it the 32-site run (32 sites trained and evaluated one after another, twice); ``--sites 2,8``
takes about 2 minutes.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as bc  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WORK = ROOT / "benchmarks" / "work"
PAGE = os.sysconf("SC_PAGE_SIZE")


# -- small helpers (kept in this file: each benchmark script runs on its own) --------------------


def _meminfo(key: str) -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


# -- process-tree memory ---------------------------------------------------------------------------


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the name may hold spaces and parentheses
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def descendants(pid: int) -> list[int]:
    children, out, todo = _children_map(), [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def group_of(cmdline: str) -> str:
    for key, group in (
        ("flower-superlink", "superlink"),
        ("flower-superexec", "superexec"),
        ("flwr-simulation", "ServerApp + simulation engine"),
        ("flwr run", "flwr run (CLI)"),
    ):
        if key in cmdline:
            return group
    head = cmdline.split(" ", 1)[0]
    if (head.startswith("ray::") and "Agent" not in head) or "default_worker.py" in cmdline:
        return "Ray site actors / workers"  # ray::ClientAppActor..., ray::IDLE
    return "Ray services (gcs, raylet, agents)" if "ray" in cmdline else "other"


def process_memory(pid: int) -> tuple[float, float | None, str] | None:
    """(RSS MB, PSS MB or None, group) of a live process; None when it is gone."""
    try:
        rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 2**20
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, IndexError, ValueError):
        return None
    pss = None
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1]) / 1024
                break
    except OSError:
        pass
    return rss, pss, group_of(cmdline)


class TreeMemory(threading.Thread):
    """Samples the memory of every descendant of ``root`` until stopped; keeps the peaks."""

    def __init__(self, root: int, interval: float = 0.5):
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.stopped = threading.Event()
        self.peak_rss = self.peak_pss = 0.0
        self.peak_processes = 0
        self.groups_at_peak: dict[str, float] = {}
        self.samples = 0
        self.pss_fallbacks = 0  # process samples without PSS, counted by RSS instead

    def run(self) -> None:
        while not self.stopped.is_set():
            self.sample()
            self.stopped.wait(self.interval)

    def sample(self) -> None:
        rss = pss = 0.0
        groups: dict[str, float] = {}
        count = 0
        for pid in descendants(self.root):
            mem = process_memory(pid)
            if mem is None:
                continue
            count += 1
            rss += mem[0]
            if mem[1] is None:  # no smaps_rollup (a process on its way out): count its RSS
                self.pss_fallbacks += 1
            pss += mem[1] if mem[1] is not None else mem[0]
            groups[mem[2]] = groups.get(mem[2], 0.0) + mem[0]
        self.samples += 1
        self.peak_processes = max(self.peak_processes, count)
        if rss > self.peak_rss:
            self.peak_rss, self.groups_at_peak = rss, groups
        self.peak_pss = max(self.peak_pss, pss)

    def stop(self) -> None:
        self.stopped.set()
        self.join()


# -- the measurement -------------------------------------------------------------------------------


def _trained_bytes(preset: str) -> int:
    """Bytes of the model's trained parameters (the frozen ridge path left out)."""
    from fedneurogen.shared.model import NeuroGenModel
    from fedneurogen.shared.transport import frozen_names

    model = NeuroGenModel(preset, device="cpu")
    frozen = set(frozen_names(model))
    return sum(p.numel() * p.element_size() for name, p in model.named_parameters() if name not in frozen)


def _bytes_per_site(history: list[dict], sites: int, trained_bytes: int) -> dict[str, Any]:
    """Array bytes per site each way: every round's, a middle round's and the run's mean, also
    as multiples of ``trained_bytes``."""
    rounds = [h.get("bytes") or {} for h in history]
    out: dict[str, Any] = {"trained_parameter_bytes": trained_bytes}
    for way in ("sent", "received"):
        per_site = [float(r.get(way, 0)) / sites for r in rounds]
        out[f"bytes_{way}_per_site_by_round"] = per_site
        out[f"run_{way}_x_trained"] = statistics.mean(per_site) / trained_bytes if per_site else None
        middle = per_site[1:-1]
        out[f"middle_round_{way}_x_trained"] = statistics.median(middle) / trained_bytes if middle else None
    return out


def growth_plot(path: Path, rows: list[dict[str, Any]], title: str) -> None:
    """Round time and peak memory against the number of sites (log-log), with the line of linear
    growth through the smallest run: a curve above it grows faster than linearly."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sites = [r["sites"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 4.0))
    seconds = [r["round_seconds"] for r in rows]
    left.plot(sites, seconds, "o-", label="measured")
    left.plot(sites, [seconds[0] * n / sites[0] for n in sites], "k:", label="linear from the smallest run")
    left.set_ylabel("seconds per round")
    memory = [(r["peak_pss_mb"] or r["peak_rss_mb"]) / 1024 for r in rows]
    right.plot(sites, memory, "o-", color="tab:orange")
    right.set_ylabel("peak memory of the run, GB (PSS)")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("simulated sites")
        ax.set_xticks(sites, [str(n) for n in sites])
    left.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "scale.json",
        help="JSON results (plot beside it, .png)",
    )
    parser.add_argument(
        "--work", type=Path, default=DEFAULT_WORK, help="simulated data and window cache, reused across runs"
    )
    parser.add_argument("--sites", default="2,8,32", help="comma-separated site counts")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per run (>= 3 for a middle round's bytes)")
    parser.add_argument("--subjects-per-site", type=int, default=2)
    parser.add_argument("--run-seconds", type=float, default=60.0, help="length of each simulated run (>= 60)")
    parser.add_argument("--max-windows", type=int, default=8, help="cap on each site's training windows")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument(
        "--client-cpus", type=int, default=1, help="CPUs per site actor (Ray runs cpus // client_cpus sites at a time)"
    )
    parser.add_argument(
        "--ray-nodes",
        type=int,
        default=0,
        help="run on a local Ray cluster of this many nodes (simulations/ray_cluster.py; the CPUs split "
        "between them); 0 = the simulation's own Ray instance",
    )
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between memory samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds one federated run may take")
    args = parser.parse_args(argv)
    counts = sorted({int(s) for s in args.sites.split(",") if s.strip()})
    if not counts or counts[0] < 2:
        parser.error("--sites: comma-separated counts of at least 2")

    from rich.console import Console
    from rich.table import Table

    from fedneurogen.shared.io import write_json_atomic
    from fedneurogen.simulations.federated import run_federated

    trained_bytes = _trained_bytes(args.preset)

    console = Console(width=None if sys.stdout.isatty() else 132)  # logs: wide enough for the tables
    os.environ["PATH"] = (
        str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    )  # flower-superlink, flwr
    started = time.perf_counter()
    work = bc.work_dir(args.work.resolve())
    root, cache, data_seconds = bc.prepare_sites(
        work, counts[-1], args.subjects_per_site, args.run_seconds, args.seed, console
    )
    concurrency = max(1, (os.cpu_count() or 1) // args.client_cpus)
    cluster = None
    if args.ray_nodes:  # its processes are this benchmark's children: in the memory figures too
        from fedneurogen.simulations.ray_cluster import LocalRayCluster

        per_node = max(1, (os.cpu_count() or 1) // args.ray_nodes)
        cluster = LocalRayCluster(nodes=args.ray_nodes, cpus_per_node=per_node).start()
        atexit.register(cluster.stop)  # however the benchmark ends
        concurrency = max(1, args.ray_nodes * (per_node // args.client_cpus))
    config = {"preset": args.preset, "local-epochs": 1, "max-windows": args.max_windows, "cache-dir": str(cache)}

    rows: list[dict[str, Any]] = []
    for n in counts:
        run_dir = work / "runs" / f"scale-{n}"
        for stale in (run_dir, run_dir.parent / f"{run_dir.name}-site-state"):
            shutil.rmtree(stale, ignore_errors=True)
        console.print(f"[bold]{n} sites[/]: {args.rounds} rounds, {concurrency} site(s) at a time ...")
        memory = TreeMemory(os.getpid(), args.interval)
        memory.start()
        t = time.perf_counter()
        try:
            run_federated(
                run_dir,
                root,
                num_sites=n,
                rounds=args.rounds,
                modality="fmri",
                subjects_per_site=args.subjects_per_site,
                run_seconds=args.run_seconds,
                seed=args.seed,
                run_config=config,
                timeout=args.timeout,
                client_cpus=args.client_cpus,
                ray_address=cluster.address if cluster is not None else None,
            )
        finally:
            memory.stop()
        wall = time.perf_counter() - t
        history = json.loads((run_dir / "history.json").read_text())
        seconds = [float(h["seconds"]) for h in history]
        steady = seconds[1:-1] if len(seconds) >= 3 else seconds[1:] or seconds  # the middle rounds
        train = [float(m.get("train-seconds", 0.0)) for h in history for m in h["train"].get("sites", {}).values()]
        failed = sum(len(h["train"].get("failed", [])) + len(h["evaluate"].get("failed", [])) for h in history)
        row = {
            "sites": n,
            "round_seconds": statistics.median(steady),
            "seconds_per_site": statistics.median(steady) / n,
            "rounds_seconds": seconds,
            "final_round_seconds": seconds[-1] if len(seconds) >= 3 else None,
            "site_train_seconds_mean": statistics.mean(train) if train else None,
            "run_wall_seconds": wall,
            "outside_rounds_seconds": wall - sum(seconds),
            "failed_site_replies": failed,
            "peak_rss_mb": memory.peak_rss,
            "peak_pss_mb": memory.peak_pss,
            "pss_fallback_samples": memory.pss_fallbacks,
            "peak_processes": memory.peak_processes,
            "rss_mb_by_group_at_peak": memory.groups_at_peak,
            "memory_samples": memory.samples,
            **_bytes_per_site(history, n, trained_bytes),
        }
        rows.append(row)
        pss = f"{row['peak_pss_mb']:.0f}" if row["peak_pss_mb"] is not None else "n/a"
        console.print(
            f"  round {row['round_seconds']:.1f} s, peak PSS {pss} MB, RSS {row['peak_rss_mb']:.0f} MB, {wall:.0f} s in all"
        )

    figures = []
    for row in rows:
        n = row["sites"]
        targeted = n == 256 and args.preset == "tiny"  # issue 32: a 256-site tiny round on this 2-core, 24 GB machine
        figures.append(
            bc.figure(f"scale: round time, {n} sites", row["round_seconds"], "s", target="<= 60" if targeted else None)
        )
        mem = row["peak_pss_mb"] if row["peak_pss_mb"] is not None else row["peak_rss_mb"]
        figures.append(
            bc.figure(
                f"scale: peak memory of the federation processes, {n} sites",
                mem,
                "MB",
                target="<= 16384" if targeted else None,
                measure="PSS" if row["peak_pss_mb"] is not None else "RSS",
            )
        )
    for way in ("sent", "received"):
        worst = max((r.get(f"middle_round_{way}_x_trained") for r in rows), default=None, key=lambda v: v or 0)
        if worst is not None:
            figures.append(
                bc.figure(
                    f"scale: bytes {way} per site in a middle round / trained parameters' bytes",
                    worst,
                    "x",
                    target="<= 1.2",
                    note="largest over the site counts; the frozen ridge path goes once per run (round 1)",
                )
            )
    if len(rows) >= 2:
        first, last = rows[0], rows[-1]
        figures.append(
            bc.figure(
                f"scale: round time per site, {last['sites']} vs {first['sites']} sites",
                last["seconds_per_site"] / first["seconds_per_site"],
                "x",
                target="<= 1.0",
                note="1.0 = round time grows linearly with the number of sites",
            )
        )

    table = Table(
        title=f"Scale: {args.preset}, {args.subjects_per_site} subjects x {args.run_seconds:g} s per site, "
        f"max {args.max_windows} windows, {concurrency} site(s) at a time"
    )
    for col in (
        "sites",
        "round s",
        "s / site",
        "site train s",
        "run s",
        "peak PSS MB",
        "peak RSS MB",
        "processes",
        "site actors RSS MB",
    ):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            str(r["sites"]),
            f"{r['round_seconds']:.1f}",
            f"{r['seconds_per_site']:.2f}",
            f"{r['site_train_seconds_mean'] or 0:.2f}",
            f"{r['run_wall_seconds']:.0f}",
            "n/a" if r["peak_pss_mb"] is None else f"{r['peak_pss_mb']:.0f}",
            f"{r['peak_rss_mb']:.0f}",
            str(r["peak_processes"]),
            f"{r['rss_mb_by_group_at_peak'].get('Ray site actors / workers', 0):.0f}",
        )
    console.print(table)
    bc.print_figure_table("figures", figures, console)

    result = {
        "benchmark": "scale",
        "figures": figures,
        "rows": rows,
        "definition": {
            "round_seconds": "median of the server's round seconds over the middle rounds (not the first; with 3 rounds or more, not the last, which adds the final evaluate round)",
            "memory": "every descendant process of this benchmark, sampled every --interval s from /proc; "
            "RSS summed (shared pages counted per process) and PSS summed (shared pages split)",
            "concurrency": f"{concurrency} site actor(s) at a time (cpus {os.cpu_count()} // client_cpus {args.client_cpus})",
            "ray": f"a local Ray cluster of {args.ray_nodes} nodes"
            if args.ray_nodes
            else "the simulation's own Ray instance",
        },
        "run_config": config,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "data_seconds": data_seconds,
        "seconds": time.perf_counter() - started,
        "machine": {**bc.machine(), "memory_total_mb": _meminfo("MemTotal")},
    }
    write_json_atomic(args.out, result)
    growth_plot(
        args.out.with_suffix(".png"),
        rows,
        f"{args.preset}, {concurrency} site(s) at a time, {result['definition']['ray']}",
    )
    console.print(f"wrote {args.out} and its plot ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
