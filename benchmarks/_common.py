"""Helpers shared by the benchmarks.

- ``synthetic_windows`` / ``synthetic_batch``: EEG-fMRI or EEG-fNIRS windows shaped like the data
  layer's (16 s EEG at 200 Hz on standard 10-05 channels, ico4 fMRI or fNIRS HbO/HbR), random
  values, fixed seed: benchmarks need the shapes, not the signals.
- ``time_call`` / ``interleaved``: warm-up then repeated timings, medians; ``interleaved`` runs
  several variants round-robin so that a loaded, shared machine slows all of them alike.
- ``matmul_peak``: this machine's fp32 matmul throughput (best of several large square products).
- ``figure``: one headline number ``{"name", "value", "unit", "target", "met"}`` as
  ``benchmarks/summarize.py`` collects them (plus ``missed_by`` when a target is missed).
- ``write_result``: the JSON, written atomically, with the machine's description.
- ``work_dir`` / ``prepare_sites``: a reusable folder of simulated sites (and their window
  cache) for the federated benchmarks, simulated once and kept between runs.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedneurogen.shared.config import PreprocessConfig
from fedneurogen.shared.design import n_design_features

# 64 standard 10-20 / 10-10 channel names (all in the encoder's 10-05 vocabulary).
CHANNELS_64 = [
    "Fp1", "Fpz", "Fp2", "AF7", "AF3", "AFz", "AF4", "AF8", "F7", "F5", "F3", "F1", "Fz", "F2", "F4", "F6",
    "F8", "FT7", "FC5", "FC3", "FC1", "FCz", "FC2", "FC4", "FC6", "FT8", "T7", "C5", "C3", "C1", "Cz", "C2",
    "C4", "C6", "T8", "TP7", "CP5", "CP3", "CP1", "CPz", "CP2", "CP4", "CP6", "TP8", "P7", "P5", "P3", "P1",
    "Pz", "P2", "P4", "P6", "P8", "PO7", "PO3", "POz", "PO4", "PO8", "O1", "Oz", "O2", "Iz", "TP9", "TP10",
]  # fmt: skip


def set_threads(threads: int | None) -> int:
    """Use ``threads`` intra-op threads (default: every core this process may use)."""
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, threads))
    return torch.get_num_threads()


def synthetic_windows(n: int, modality: str = "fmri", n_channels: int = 64, seed: int = 0, n_fnirs_channels: int = 20):
    """``PairedWindows`` of random values with the data layer's shapes."""
    from fedneurogen.shared.surface import load_ico4_positions
    from fedneurogen.shared.recording import PairedWindows

    rng = np.random.default_rng(seed)
    names = CHANNELS_64[:n_channels]
    direction = rng.normal(size=(n_channels, 3))
    eeg_positions = 90 * direction / np.linalg.norm(direction, axis=1, keepdims=True)
    common = dict(
        eeg=rng.normal(size=(n, n_channels, 3200)).astype(np.float32),
        eeg_sfreq=200.0,
        eeg_channel_names=names,
        eeg_positions=eeg_positions,
        labels=np.array(["a", "b"] * (n // 2) + ["a"] * (n % 2)),
        subjects=np.array(["sub-01"] * n),
        runs=np.array(["sub-01_run-1"] * n),
        onsets=np.arange(n) * 8.0,
        lag=6.0,
    )
    if modality == "fmri":
        positions = load_ico4_positions()
        return PairedWindows(
            **common,
            target=rng.normal(size=(n, len(positions), 8)).astype(np.float32),
            target_sfreq=0.5,
            design=rng.normal(size=(n, 8, n_design_features(PreprocessConfig()))).astype(np.float32),
            target_modality="fmri",
            target_names=[f"v{i}" for i in range(len(positions))],
            target_positions=positions,
        )
    target_names = [f"S{c}_D{c} {kind}" for c in range(1, n_fnirs_channels + 1) for kind in ("hbo", "hbr")]
    direction = rng.normal(size=(n_fnirs_channels, 3))
    channel = 70 * direction / np.linalg.norm(direction, axis=1, keepdims=True)
    return PairedWindows(
        **common,
        target=rng.normal(size=(n, 2 * n_fnirs_channels, 16)).astype(np.float32),
        target_sfreq=1.0,
        design=rng.normal(size=(n, 16, n_design_features(PreprocessConfig()))).astype(np.float32),
        target_modality="fnirs",
        target_names=target_names,
        target_positions=np.repeat(channel, 2, axis=0),
        target_point_types=[name.split()[-1] for name in target_names],
    )


def synthetic_batch(n: int, modality: str = "fmri", n_channels: int = 64, seed: int = 0, labelled: bool = True):
    from fedneurogen.shared.model import Batch

    windows = synthetic_windows(n, modality, n_channels, seed)
    return Batch.from_windows(windows, class_to_index={"a": 0, "b": 1} if labelled else None, device="cpu")


def synchronize() -> None:
    """Wait for queued GPU kernels (a no-op on CPU and before CUDA is first used)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def time_call(
    fn: Callable[[], Any], *, warmup: int = 1, repeats: int = 5, cpu: list[float] | None = None
) -> list[float]:
    """Wall seconds of each of ``repeats`` calls after ``warmup`` untimed ones; with ``cpu`` (a
    list) the process CPU seconds of each call are appended to it too. On a loaded machine the
    CPU seconds divided by the threads used are the better estimate of the idle wall time.
    GPU work is waited for (``synchronize``) so that the time is the kernels', not their launch."""
    for _ in range(warmup):
        fn()
    synchronize()
    times = []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        synchronize()
        times.append(time.perf_counter() - start)
        if cpu is not None:
            cpu.append(time.process_time() - start_cpu)
    return times


def interleaved(variants: dict[str, Callable[[], Any]], *, warmup: int = 1, repeats: int = 5) -> dict[str, list[float]]:
    """Time the variants round-robin (A B C A B C ...) after warming each up: on a shared machine
    a burst of load then slows every variant, not just one, and the medians stay comparable."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def summary(times: Sequence[float]) -> dict[str, float]:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "repeats": len(times)}


def matmul_peak(sizes: Sequence[int] = (2048, 4096), repeats: int = 5, device: str = "cpu") -> dict[str, Any]:
    """Best FLOP/s of ``torch.matmul`` on square matrices (2 n^3 FLOPs each) on this machine:
    fp32 on CPU; bf16 on CUDA, the precision training runs in there (autocast)."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if device == "cuda":
        sizes = tuple(sizes) + (8192,)
    best: dict[str, float] = {}
    for n in sizes:
        gen = torch.Generator().manual_seed(0)
        a, b = (torch.randn(n, n, generator=gen).to(device, dtype) for _ in range(2))
        out = torch.empty(n, n, device=device, dtype=dtype)
        torch.matmul(a, b, out=out)  # warm-up
        times = [min(time_call(lambda: torch.matmul(a, b, out=out), warmup=0, repeats=1)) for _ in range(repeats)]
        best[str(n)] = 2 * n**3 / min(times)
    return {
        "flops": max(best.values()),
        "by_size": best,
        "threads": torch.get_num_threads(),
        "device": device,
        "dtype": str(dtype),
    }


def resolve_device(device: str | None) -> str:
    """``cuda`` when asked for or (``None``) available, else ``cpu``; a clear error when CUDA is asked for and absent."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: this torch build sees no CUDA device")
    return device


def meets(value: float | None, target: str | None) -> bool | None:
    """Whether ``value`` meets ``target`` (``"<= 0.3"`` or ``">= 10"``); None without either."""
    if target is None or value is None:
        return None
    op, _, bound = target.partition(" ")
    if op not in ("<=", ">="):
        raise ValueError(f"target {target!r}: expected '<= number' or '>= number'")
    return bool(value <= float(bound)) if op == "<=" else bool(value >= float(bound))


def figure(
    name: str, value: float | None, unit: str, target: str | None = None, *, note: str = "", **extra: Any
) -> dict[str, Any]:
    """One headline number as ``summarize.py`` collects them: ``{"name", "value", "unit",
    "target", "met"}``; ``target`` reads ``"<= 0.3"`` / ``">= 0.4"``. A missed target says by
    how much (``missed_by``: value / bound and value - bound)."""
    fig: dict[str, Any] = {
        "name": name,
        "value": None if value is None else float(value),
        "unit": unit,
        "target": target,
        "met": meets(value, target),
    }
    if fig["met"] is False:
        bound = float(target.split()[1])
        fig["missed_by"] = {"ratio_to_target": value / bound if bound else None, "difference": value - bound}
    if note:
        fig["note"] = note
    return {**fig, **extra}


def machine() -> dict[str, Any]:
    import torch

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "load_average": list(load) if load else None,
    }


def work_dir(path: Path) -> Path:
    """The reusable work folder; it ignores itself in git (``*`` in its own .gitignore)."""
    path.mkdir(parents=True, exist_ok=True)
    ignore = path / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n", encoding="utf-8")
    return path


def prepare_sites(
    work: Path,
    n_sites: int,
    subjects: int,
    run_seconds: float | None,
    seed: int,
    console,
    physiology: str = "default",
    coupling: str = "linear",
) -> tuple[Path, Path, float]:
    """Simulated fMRI sites (reused when present) and a warm preprocessed-window cache.
    ``physiology`` is the simulator's (``default`` or ``shifted``; shifted data get their own
    folder), and so is ``coupling`` (``linear`` or ``nonlinear``, in its own folder too).
    Returns (data root, cache folder, seconds spent)."""
    from rich.progress import Progress

    from fedneurogen.shared.data import load_site
    from fedneurogen.simulations.federated import ensure_sites
    from fedneurogen.simulations.physiology import get_coupling
    from fedneurogen.simulations.simulator import simulate_dataset

    started = time.perf_counter()
    variant = "" if physiology == "default" else f"-{physiology}"  # the default folder keeps its name
    variant += "" if coupling == "linear" else f"-{coupling}"
    root = work / f"data-fmri-sub{subjects}-run{int(run_seconds or 0)}-seed{seed}{variant}"
    cache = work / "cache"
    summary = root / "simulation.json"
    stored = json.loads(summary.read_text()) if summary.is_file() else {}
    wanted = get_coupling(coupling).to_dict()  # data an older simulator made under this name is made again
    have = stored.get("n_sites", 0) if stored.get("coupling_parameters", wanted) == wanted else 0
    if have < n_sites:
        console.print(f"simulating {n_sites} sites x {subjects} subjects into {root} (kept for later runs)")
        if root.exists():
            shutil.rmtree(root)
        simulate_dataset(
            root,
            n_sites=n_sites,
            subjects_per_site=subjects,
            modality="fmri",
            seed=seed,
            run_seconds=run_seconds,
            progress=True,
            physiology=physiology,
            coupling=coupling,
        )
    sites = ensure_sites(root, n_sites, "fmri", subjects, seed, run_seconds)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("preprocess / cache sites", total=len(sites))
        for site in sites:
            load_site(site, cache_dir=cache, progress=False)
            progress.advance(task)
    return root, cache, time.perf_counter() - started


def write_result(
    path: Path | None, benchmark: str, figures: list[dict[str, Any]], detail: dict[str, Any]
) -> dict[str, Any]:
    from fedneurogen.shared.io import write_json_atomic

    result = {"benchmark": benchmark, "figures": figures, "machine": machine(), **detail}
    if path is not None:
        write_json_atomic(path, result)
    return result


def print_figures(
    title: str,
    figures: list[dict[str, Any]],
    rows: list[dict[str, Any]] | None = None,
    columns: Sequence[str] | None = None,
) -> None:
    """A rich table of the figures (and one of the detail rows when given)."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if rows:
        columns = list(columns or rows[0].keys())
        table = Table(title=f"{title}: measurements", title_justify="left")
        for c in columns:
            table.add_column(c, justify="right" if isinstance(rows[0].get(c), (int, float)) else "left")
        for row in rows:
            table.add_row(*[_fmt(row.get(c)) for c in columns])
        console.print(table)
    print_figure_table(f"{title}: figures", figures, console)


def print_figure_table(title: str, figures: list[dict[str, Any]], console: Any = None) -> None:
    """The headline figures as a rich table: name, value, unit, target, met."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for c in ("name", "value", "unit", "target", "met"):
        table.add_column(c)
    for fig in figures:
        met = {True: "[green]yes[/]", False: "[red]no[/]", None: "-"}[fig["met"]]
        table.add_row(fig["name"], _fmt(fig["value"]), fig["unit"], _fmt(fig["target"]), met)
    (console or Console()).print(table)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)
