"""Collect the headline figures of every benchmark result into one summary.

    python benchmarks/summarize.py                      # benchmarks/results/*.json -> summary.json
    python benchmarks/summarize.py --results DIR --out DIR/summary.json --strict

Reads every ``*.json`` in ``--results`` that has a ``figures`` list (each figure
``{"name", "value", "unit", "target", "met"}``; ``target`` is a string such as ``"<= 0.10"``, a
number, or null) and writes ``{"figures": [...], "machine": {...}, "generated": ..., "sources":
[...]}``: each figure gains ``benchmark`` (the file it came from); ``sources`` lists the files with
their modification times, so a stale result stands out. Prints a table. Exit status: 0; with
``--strict``, 1 when a figure missed its target; with ``--expect a,b``, 1 when a named result
file is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ("name", "value", "unit", "target", "met")


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        info["cpu_model"] = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        info["cpu_model"] = platform.processor() or platform.machine()
    try:
        info["memory_total_gb"] = round(
            int(
                next(
                    line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
                ).split()[1]
            )
            / 2**20,
            1,
        )
    except (OSError, StopIteration):
        pass
    try:
        import torch

        info.update(
            torch=torch.__version__,
            threads=torch.get_num_threads(),
            device="cuda" if torch.cuda.is_available() else "cpu",
        )
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        info.update(torch=None, device="cpu")
    return info


def collect(results: Path, out: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """(figures, sources, problems) from the result files in ``results``."""
    figures, sources, problems = [], [], []
    for path in sorted(results.glob("*.json")):
        if path.resolve() == out.resolve():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            problems.append(f"{path.name}: unreadable ({err})")
            continue
        if not isinstance(data, dict) or not isinstance(data.get("figures"), list):
            continue  # an older result without figures
        modified = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")
        sources.append(
            {
                "file": path.name,
                "benchmark": data.get("benchmark", path.stem),
                "modified": modified,
                "figures": len(data["figures"]),
            }
        )
        for fig in data["figures"]:
            if not isinstance(fig, dict) or not {"name", "value"} <= fig.keys():
                problems.append(f"{path.name}: a figure without name/value: {fig!r}")
                continue
            figures.append({**{k: fig.get(k) for k in FIELDS}, "benchmark": path.stem})
    return figures, sources, problems


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--results", type=Path, default=ROOT / "benchmarks" / "results", help="folder of result JSON files"
    )
    parser.add_argument("--out", type=Path, default=None, help="default: RESULTS/summary.json")
    parser.add_argument(
        "--expect", default="", help="result names (file stems, comma- or space-separated) that must be present"
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a figure missed its target")
    args = parser.parse_args(argv)
    out = args.out or args.results / "summary.json"

    from rich.console import Console
    from rich.table import Table

    sys.path.insert(0, str(ROOT))
    from fedneurogen.shared.io import write_json_atomic

    console = Console(width=None if sys.stdout.isatty() else 132)  # logs: wide enough for the tables
    figures, sources, problems = collect(args.results, out)
    present = {s["file"].removesuffix(".json") for s in sources}
    missing = [name for name in args.expect.replace(",", " ").split() if name not in present]
    problems += [f"{name}.json: missing (no result with figures)" for name in missing]

    summary = {
        "figures": figures,
        "machine": machine(),
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sources": sources,
        "problems": problems,
    }
    write_json_atomic(out, summary)

    table = Table(title=f"Benchmark summary ({len(figures)} figures from {len(sources)} results)", title_justify="left")
    for col in ("benchmark", "figure", "value", "unit", "target", "met"):
        table.add_column(col, justify="right" if col == "value" else "left")
    for f in figures:
        met = {True: "[green]yes[/]", False: "[red]no[/]"}.get(f["met"], "-")
        table.add_row(f["benchmark"], str(f["name"]), fmt(f["value"]), fmt(f["unit"]), fmt(f["target"]), met)
    console.print(table)
    m = summary["machine"]
    console.print(
        f"machine: {m.get('cpu_model')}, {m['cpu_count']} CPUs, torch {m.get('torch')}, {m.get('device')}, "
        f"load {', '.join(f'{x:.1f}' for x in m['load_average'] or [])}"
    )
    for problem in problems:
        console.print(f"[yellow]{problem}[/]")
    console.print(f"wrote {out}")
    missed = [f["name"] for f in figures if f["met"] is False]
    if missing:
        return 1
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
