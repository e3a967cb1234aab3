"""Robust aggregation against one poisoning site: clean FedAvg vs poisoned FedAvg, FedMedian,
FedTrimmedAvg and Krum.

    python benchmarks/robustness.py --out benchmarks/results/robustness.json
    python benchmarks/robustness.py --out r.json --attack random --rounds 4     # quicker, noise attack
    python benchmarks/robustness.py --out r.json --runs integrity               # lies in every kind of reply

Four simulated EEG-fMRI sites (``ensure_sites``, one dataset for every run) train the Flower app
(local simulation, ``run_federated``) from the same initial weights with the same seeds. In the
poisoned runs the node ``--attack-partition`` replaces its update by a poisoned one every round
(``simulations/drills.py``: ``scale`` sends global + ``--attack-scale`` x (local - global),
``random`` sends Gaussian noise of the update's std x scale). Runs:

- ``clean``: FedAvg, no attack;
- ``poisoned_fedavg``: FedAvg with the attacker;
- ``poisoned_fedmedian``: coordinate-wise median;
- ``poisoned_fedtrimmedavg``: trimmed mean, ``trim-beta`` 0.25 (one of four cut from each tail;
  with four sites this is the mean of the middle two, i.e. the same numbers as the median);
- ``poisoned_krum``: Krum with ``krum-malicious`` 1 (the one update closest to its neighbour).

Each final global model, and the initial (round-0) model, is scored on every site's held-out
test subjects (never trained on) with ``benchmarks/federated.py``'s ``model_score``: the temporal
PCC of the label-free point prediction vs the real BOLD, per site, Fisher-z averaged; next to it the held-out loss
(``val_loss_*``: the diffusion loss on the residual plus the mean head's MSE, fixed timesteps and
noise, so that it is deterministic and far less noisy than the PCC of a small model's samples).

``--runs integrity`` runs the clean FedAvg run, FedAvg on the honest sites alone
(``clean_without_attacker``: the attacker is the last site) and ``INTEGRITY_RUNS``: FedAvg with
the attacker forging its ridge statistics (scaled, crafted, NaN), its update (sign flip,
float64 1e300, an inflated example count) or its held-out score (``eval_lie``: PCC 0.99 before
training and -0.99 after, over 10^6 x its windows, to keep early stopping at the untrained
residual; that run evaluates every round with patience 1, and early stopping acts on the median
of the sites' scores); ``integrity`` in the JSON says which stay within 5 %
of the clean PCC or of the run without the attacker (the server's checks refuse, drop or weigh
down each lie: ``server/statistics.py``, ``server/strategy.py``).

Goal: "a robust strategy keeps the PCC within 10% of the clean run while FedAvg degrades". It
only means something if the clean model learned (``clean_learned``: PCC above 0.05 and 5x the
shuffled-window noise baseline, and held-out loss at most 0.9x the initial model's); ``met``
says which parts hold, for PCC and, as a steadier second reading, for the held-out loss.

Budget: the tiny preset trains at about 0.1 s per batch of 8 on an idle 2-core CPU and a Flower
simulation costs about 25 s to start and stop, so the defaults (84 training windows per site,
10 rounds x 3 local epochs, about 1300 batches per run) come to roughly 15 minutes for the five
runs. A loaded machine takes many times longer: reduce --rounds, --local-epochs, --max-windows
and --max-test-windows there (the JSON keeps the settings, wall times and load average).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

# This folder's federated.py (not `benchmarks.federated`: opacus installs a top-level
# `benchmarks` package that would shadow this one).
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as bc  # noqa: E402
from federated import model_score, site_splits  # noqa: E402

from fedneurogen.shared.workflows.evaluation_subjects import limit_windows  # noqa: E402
from fedneurogen.shared.io import write_json_atomic  # noqa: E402
from fedneurogen.shared.metrics import fisher_mean, shuffled_baseline  # noqa: E402
from fedneurogen.shared.model import Batch, NeuroGenModel, load_checkpoint  # noqa: E402
from fedneurogen.shared.recording import PairedWindows  # noqa: E402
from fedneurogen.shared.workflows.training import TRAIN_PRESETS, class_index  # noqa: E402
from fedneurogen.simulations.federated import ensure_sites, run_federated  # noqa: E402

RUNS = ("clean", "poisoned_fedavg", "poisoned_fedmedian", "poisoned_fedtrimmedavg", "poisoned_krum")
#: FedAvg with the attacker lying in another reply (``simulations/drills.py``), each against the
#: server's checks; not in the default set (each run costs as much as the others): --runs integrity.
INTEGRITY_RUNS = {
    "statistics_scale": ("statistics-scale", 1e6),
    "statistics_crafted": ("statistics-crafted", 1e3),
    "statistics_nan": ("statistics-nan", 1.0),
    "update_sign_flip": ("sign-flip", 10.0),
    "update_float64_huge": ("float64-huge", 1.0),
    "update_count_inflate": ("count-inflate", 1e6),
    "eval_lie": ("eval-lie", 1e6),
}
#: The eval-lie run evaluates every round (the other runs do not: each evaluation costs time), so
#: that early stopping acts on the held-out scores the attacker lies in.
EVAL_LIE_SETTINGS = {"fraction-evaluate": 1.0, "eval-pcc-windows": 16, "early-stopping-patience": 1}
INTEGRITY_TOLERANCE = 0.05  # "within 5 % of the clean run", or of the run without the attacker
WITHOUT_ATTACKER = "clean_without_attacker"  # FedAvg on the honest sites only (the attacker is the last site)
ROBUST = ("poisoned_fedmedian", "poisoned_fedtrimmedavg", "poisoned_krum")
TOLERANCE = 0.10  # "within 10% of the clean run"
LEARNED_PCC, LEARNED_NOISE_MULTIPLE, LEARNED_LOSS_RATIO = 0.05, 5.0, 0.9


def run_settings(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The run-config keys that make run ``name`` what it is."""
    attack = {"attack-partition": args.attack_partition, "attack-mode": args.attack, "attack-scale": args.attack_scale}
    if name == WITHOUT_ATTACKER:
        return {"strategy": "fedavg", "min-train-nodes": args.sites - 1}
    if name in INTEGRITY_RUNS:
        mode, scale = INTEGRITY_RUNS[name]
        return {
            "strategy": "fedavg",
            "attack-partition": args.attack_partition,
            "attack-mode": mode,
            "attack-scale": scale,
            **({**EVAL_LIE_SETTINGS, "min-evaluate-nodes": args.sites} if mode == "eval-lie" else {}),
        }
    return {
        "clean": {"strategy": "fedavg"},
        "poisoned_fedavg": {"strategy": "fedavg", **attack},
        "poisoned_fedmedian": {"strategy": "fedmedian", **attack},
        "poisoned_fedtrimmedavg": {"strategy": "fedtrimmedavg", "trim-beta": args.trim_beta, **attack},
        "poisoned_krum": {"strategy": "krum", "krum-malicious": 1, **attack},
    }[name]


@torch.no_grad()
def held_out_loss(
    model: NeuroGenModel, tests: list[PairedWindows], class_names: list[str], batch_size: int, seed: int
) -> dict[str, float]:
    """The generator's loss on the test windows without the contrastive term (which compares the
    windows of a batch with each other): diffusion loss + mean head's MSE, and each part.
    Timesteps and noise come from one seeded generator, so the same weights give the same numbers."""
    model.eval()
    class_to_index = {name: i for i, name in enumerate(class_names)}
    generator = torch.Generator(device=model.device).manual_seed(seed)
    sums: dict[str, float] = {}
    count = 0
    for test in tests:
        for start in range(0, len(test), batch_size):
            index = np.arange(start, min(start + batch_size, len(test)))
            if len(index) < 2:
                continue
            _, parts = model.loss(Batch.from_windows(test, index, class_to_index, model.device), generator=generator)
            for key in ("diffusion", "mean"):
                if key in parts:
                    sums[key] = sums.get(key, 0.0) + parts[key] * len(index)
            count += len(index)
    out = {k: v / max(count, 1) for k, v in sums.items()}
    out["total"] = out.get("diffusion", math.nan) + model.config.mean_loss_weight * out.get("mean", 0.0)
    return out


def evaluate_model(
    model: NeuroGenModel, class_names: list[str], tests: list[PairedWindows], args: argparse.Namespace
) -> dict[str, Any]:
    result = model_score(model, [{"test": test} for test in tests])  # the label-free point prediction
    loss = held_out_loss(model, tests, class_names, TRAIN_PRESETS[args.preset].batch_size, args.seed)
    return {**result, "val_loss": loss["total"], "val_loss_parts": loss}


def finite(obj: Any) -> Any:
    """``obj`` with NaN and infinities as None (strict JSON has neither)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def rounds_done(run_dir: Path) -> int:
    """Rounds the server has checkpointed so far (for the progress bar)."""
    rounds = run_dir / "rounds"
    return len(list(rounds.glob("round-*"))) if rounds.is_dir() else 0


def relative(value: float, reference: float) -> float | None:
    return (
        (value - reference) / abs(reference)
        if reference and math.isfinite(reference) and math.isfinite(value)
        else None
    )


def judge(report: dict[str, Any]) -> dict[str, Any]:
    """The goal's parts: clean model learned; FedAvg degraded by the attack; a robust strategy
    within 10% of clean. For PCC (higher is better) and held-out loss (lower is better)."""
    pcc_clean, loss_clean = report["pcc_clean"], report["val_loss_clean"]
    noise, loss_initial = report["noise_baseline"], report["val_loss_initial"]
    learned_pcc = bool(pcc_clean > max(LEARNED_PCC, LEARNED_NOISE_MULTIPLE * abs(noise)))
    learned_loss = bool(loss_clean <= LEARNED_LOSS_RATIO * loss_initial)
    # a non-finite score (weights blown up by the attack) counts as degraded, never as kept
    pcc_ok = {
        run: bool(math.isfinite(report[f"pcc_{run}"]) and report[f"pcc_{run}"] >= (1 - TOLERANCE) * pcc_clean)
        for run in ROBUST
    }
    loss_ok = {
        run: bool(
            math.isfinite(report[f"val_loss_{run}"]) and report[f"val_loss_{run}"] <= (1 + TOLERANCE) * loss_clean
        )
        for run in ROBUST
    }
    fedavg_pcc_degraded = not (report["pcc_poisoned_fedavg"] >= (1 - TOLERANCE) * pcc_clean)
    fedavg_loss_degraded = not (report["val_loss_poisoned_fedavg"] <= (1 + TOLERANCE) * loss_clean)
    clean_learned = learned_pcc and learned_loss
    return {
        "clean_learned": clean_learned,
        "met": {
            "clean_learned_pcc": learned_pcc,
            "clean_learned_val_loss": learned_loss,
            "fedavg_degraded_pcc": fedavg_pcc_degraded,
            "fedavg_degraded_val_loss": fedavg_loss_degraded,
            "robust_within_10pct_pcc": pcc_ok,
            "robust_within_10pct_val_loss": loss_ok,
            # the goal as stated (PCC), and only where the clean run learned
            "goal_pcc": bool(clean_learned and fedavg_pcc_degraded and any(pcc_ok.values())),
            "goal_val_loss": bool(learned_loss and fedavg_loss_degraded and any(loss_ok.values())),
        },
        "criteria": {
            "tolerance": TOLERANCE,
            "clean_learned": f"pcc_clean > max({LEARNED_PCC}, {LEARNED_NOISE_MULTIPLE:g} x |noise_baseline|) and val_loss_clean <= {LEARNED_LOSS_RATIO} x val_loss_initial",
            "robust_within_10pct_pcc": "pcc_run >= 0.9 x pcc_clean",
            "robust_within_10pct_val_loss": "val_loss_run <= 1.1 x val_loss_clean",
            "fedavg_degraded_pcc": "pcc_poisoned_fedavg < 0.9 x pcc_clean",
            "fedavg_degraded_val_loss": "val_loss_poisoned_fedavg > 1.1 x val_loss_clean",
        },
    }


def figures(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The headline numbers for summary.json: each run's PCC and held-out loss, and for the robust
    strategies their ratio to the clean run (target: within 10%, i.e. >= 0.9 / <= 1.1)."""
    out = [
        bc.figure(
            "robustness: clean run learned (PCC and held-out loss criteria)",
            float(report["clean_learned"]),
            "bool",
            ">= 1",
        )
    ]
    for run in RUNS:
        out.append(bc.figure(f"robustness: PCC, {run}", report[f"pcc_{run}"], "r"))
        out.append(bc.figure(f"robustness: held-out loss, {run}", report[f"val_loss_{run}"], "loss"))
    for run in ROBUST:
        pcc_ratio = report[f"pcc_{run}"] / report["pcc_clean"] if report["pcc_clean"] else None
        out.append(bc.figure(f"robustness: PCC {run} / clean", pcc_ratio, "x", f">= {1 - TOLERANCE:g}"))
        out.append(
            bc.figure(
                f"robustness: held-out loss {run} / clean",
                report[f"val_loss_{run}"] / report["val_loss_clean"],
                "x",
                f"<= {1 + TOLERANCE:g}",
            )
        )
    out.append(
        bc.figure(
            "robustness: held-out loss poisoned_fedavg / clean (the attack's damage)",
            report["val_loss_poisoned_fedavg"] / report["val_loss_clean"],
            "x",
        )
    )
    return out


def build_report(
    args: argparse.Namespace, results: dict[str, dict], noise: float, timings: dict, windows: dict, load: dict
) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for run in ("initial", *RUNS):
        if run in results:
            report[f"pcc_{run}"] = results[run]["pcc"]
            report[f"val_loss_{run}"] = results[run]["val_loss"]
    report["noise_baseline"] = noise
    attacked = [run for run in INTEGRITY_RUNS if run in results]
    for run in [*attacked, WITHOUT_ATTACKER] if WITHOUT_ATTACKER in results else attacked:
        report[f"pcc_{run}"] = results[run]["pcc"]
        report[f"val_loss_{run}"] = results[run]["val_loss"]
    if attacked and "clean" in results:
        # the target: within 5 % of the clean run, or (the attacker named and dropped) of the run without it
        references = {"clean": report["pcc_clean"], WITHOUT_ATTACKER: report.get(f"pcc_{WITHOUT_ATTACKER}")}
        report["integrity"] = {
            run: {
                "mode": INTEGRITY_RUNS[run][0],
                **{
                    f"pcc_ratio_to_{name}": report[f"pcc_{run}"] / ref if ref else None
                    for name, ref in references.items()
                },
                "within_5pct": bool(
                    math.isfinite(report[f"pcc_{run}"])
                    and any(
                        ref and report[f"pcc_{run}"] >= (1 - INTEGRITY_TOLERANCE) * ref for ref in references.values()
                    )
                ),
            }
            for run in attacked
        }
    complete = all(run in results for run in RUNS)
    if complete:
        report["relative_to_clean"] = {
            run: {
                "pcc": relative(report[f"pcc_{run}"], report["pcc_clean"]),
                "val_loss": relative(report[f"val_loss_{run}"], report["val_loss_clean"]),
            }
            for run in RUNS[1:]
        }
        report["relative_clean_to_initial"] = {
            "pcc": relative(report["pcc_clean"], report["pcc_initial"]),
            "val_loss": relative(report["val_loss_clean"], report["val_loss_initial"]),
        }
        report.update(judge(report))
        report["figures"] = figures(report)
    report["complete"] = complete
    report["per_site_pcc"] = {run: r["per_site"] for run, r in results.items()}
    report["val_loss_parts"] = {run: r["val_loss_parts"] for run, r in results.items()}
    report["settings"] = {
        **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "runs": {run: run_settings(run, args) for run in [*RUNS, *attacked]},
        "scored": "test subjects of every site (the attacker's site included: its data is honest, its updates are not)",
    }
    report["windows"] = windows
    report["seconds"] = {**timings, "total": sum(timings.values())}
    report["load_average"] = load  # 1-minute load average at each run's start and end (machine shared?)
    return report


def render(report: dict[str, Any], console) -> None:
    from rich.table import Table

    def cell(value: float | None, digits: int = 4) -> str:
        return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:+.1f}%"

    s = report["settings"]
    title = (
        f"{s['sites']} fMRI sites, attacker node {s['attack_partition']} ({s['attack']}"
        + (f" x{s['attack_scale']:g}" if s["attack"] == "scale" else f", std x{s['attack_scale']:g}")
        + f"), {s['rounds']} rounds x {s['local_epochs']} local epochs"
    )
    table = Table(title=title, title_justify="left")
    for column in ("run", "PCC", "vs clean", "held-out loss", "vs clean", "seconds", "within 10%"):
        table.add_column(column, justify="left" if column == "run" else "right")
    rel = report.get("relative_to_clean", {})
    met = report.get("met", {})
    for run in ("initial", *RUNS):
        if f"pcc_{run}" not in report:
            continue
        ok = ""
        if run in ROBUST and met:
            ok = "/".join(
                "[green]yes[/]" if met[k][run] else "[red]no[/]"
                for k in ("robust_within_10pct_pcc", "robust_within_10pct_val_loss")
            )
            ok += " (PCC/loss)"
        elif run == "poisoned_fedavg" and met:
            ok = "degraded: " + "/".join(
                "[yes]" if met[k] else "[no]" for k in ("fedavg_degraded_pcc", "fedavg_degraded_val_loss")
            )
            ok = ok.replace("[yes]", "yes").replace("[no]", "no")
        r = rel.get(run, {})
        table.add_row(
            run.replace("_", " "),
            cell(report[f"pcc_{run}"]),
            pct(r.get("pcc")),
            cell(report[f"val_loss_{run}"]),
            pct(r.get("val_loss")),
            cell(report["seconds"].get(run), 0),
            ok,
        )
    for run, verdict in report.get("integrity", {}).items():  # --runs integrity
        table.add_row(
            run.replace("_", " "),
            cell(report[f"pcc_{run}"]),
            pct(relative(report[f"pcc_{run}"], report["pcc_clean"])),
            cell(report[f"val_loss_{run}"]),
            pct(relative(report[f"val_loss_{run}"], report["val_loss_clean"])),
            cell(report["seconds"].get(run), 0),
            "within 5%: " + ("[green]yes[/]" if verdict["within_5pct"] else "[red]no[/]"),
        )
    table.add_row("noise baseline", cell(report["noise_baseline"]), "", "", "", "", "")
    console.print(table)
    if "clean_learned" in report:
        console.print(
            f"clean learned: {'[green]yes[/]' if report['clean_learned'] else '[red]no[/]'} "
            f"(PCC {'yes' if met['clean_learned_pcc'] else 'no'}, held-out loss {'yes' if met['clean_learned_val_loss'] else 'no'}); "
            f"goal met (PCC): {'[green]yes[/]' if met['goal_pcc'] else '[red]no[/]'}; "
            f"(held-out loss): {'[green]yes[/]' if met['goal_val_loss'] else '[red]no[/]'}; "
            f"total {report['seconds']['total'] / 60:.1f} min"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="JSON results file")
    parser.add_argument(
        "--work", type=Path, default=None, help="data, cache and runs (default: a temporary folder); the data is reused"
    )
    parser.add_argument("--attack", choices=("scale", "random"), default="scale")
    parser.add_argument("--attack-scale", type=float, default=100.0)
    parser.add_argument("--attack-partition", type=int, default=3, help="the poisoning node (0-based; 3 = site-04)")
    parser.add_argument("--trim-beta", type=float, default=0.25)
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--subjects-per-site", type=int, default=5)
    parser.add_argument("--run-seconds", type=float, default=240.0)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=3)
    parser.add_argument("--max-windows", type=int, default=0, help="cap on each site's training windows (0 = all)")
    parser.add_argument("--preset", default="tiny", choices=sorted(TRAIN_PRESETS))
    parser.add_argument("--sampling-steps", type=int, default=10)
    parser.add_argument("--max-test-windows", type=int, default=24, help="per site")
    parser.add_argument("--runs", default=",".join(RUNS), help="comma-separated subset of the runs (for trials)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    if "integrity" in runs:  # the clean run and every integrity attack
        runs = list(dict.fromkeys(["clean", WITHOUT_ATTACKER, *(r for r in runs if r != "integrity"), *INTEGRITY_RUNS]))
    if WITHOUT_ATTACKER in runs and args.attack_partition != args.sites - 1:
        parser.error(f"{WITHOUT_ATTACKER} leaves out the last site: use --attack-partition {args.sites - 1}")
    if unknown := set(runs) - set(RUNS) - set(INTEGRITY_RUNS) - {WITHOUT_ATTACKER}:
        parser.error(f"unknown runs {sorted(unknown)}; choose from {', '.join([*RUNS, *INTEGRITY_RUNS])} or integrity")
    if args.sites < 4:
        parser.error("the benchmark needs at least 4 sites (three honest ones and the attacker)")
    if not 0 <= args.attack_partition < args.sites:
        parser.error(f"--attack-partition must be a node of the {args.sites} sites (0..{args.sites - 1})")

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console()
    work = (args.work or Path(tempfile.mkdtemp(prefix="fedneurogen-robust-"))).resolve()
    cache = work / "cache"
    timings: dict[str, float] = {}
    results: dict[str, dict] = {}
    load: dict[str, list[float]] = {}

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        overall = progress.add_task("[bold]robustness[/]", total=2 + len(runs), note="data")
        t = time.time()
        sites = ensure_sites(work / "data", args.sites, "fmri", args.subjects_per_site, args.seed, args.run_seconds)
        splits = site_splits(sites, args.seed, cache)
        trains = [split["train"] for split in splits]
        tests = [limit_windows(split["test"], args.max_test_windows) for split in splits]
        noise = fisher_mean(
            np.array([shuffled_baseline(w.target, w.runs, w.onsets, w.target_sfreq, seed=args.seed) for w in tests])
        )
        windows = {
            "train_per_site": [min(len(w), args.max_windows) if args.max_windows else len(w) for w in trains],
            "test_per_site": [len(w) for w in tests],
        }
        timings["data"] = time.time() - t
        progress.advance(overall)

        # Round 0: the server's initial weights (it seeds torch with the run's seed, then builds the model).
        t = time.time()
        progress.update(overall, note="scoring the initial model")
        torch.manual_seed(args.seed)
        initial = NeuroGenModel(args.preset, device="cpu")
        class_names = list(class_index(trains + tests))[: initial.config.num_classes]  # as the server builds it
        results["initial"] = evaluate_model(initial, class_names, tests, args)
        timings["initial"] = time.time() - t
        progress.advance(overall)

        common = {
            "preset": args.preset,
            "local-epochs": args.local_epochs,
            "cache-dir": str(cache),
            "max-windows": args.max_windows,
            "fraction-evaluate": 0.0,
            "eval-pcc-windows": 0,
            "classes": ",".join(class_names),
            "min-train-nodes": args.sites,
        }
        for name in runs:
            run_dir = work / f"run-{name}"
            for leftover in (run_dir, run_dir.parent / f"{run_dir.name}-site-state"):
                shutil.rmtree(leftover, ignore_errors=True)  # every run starts from round 0
            task = progress.add_task(f"  {name.replace('_', ' ')}", total=args.rounds, note="rounds")
            progress.update(overall, note=name)
            outcome: dict[str, Any] = {}

            def federate(name: str = name, run_dir: Path = run_dir, outcome: dict = outcome) -> None:
                try:
                    run_federated(
                        run_dir,
                        work / "data",
                        num_sites=args.sites - 1 if name == WITHOUT_ATTACKER else args.sites,
                        rounds=args.rounds,
                        modality="fmri",
                        subjects_per_site=args.subjects_per_site,
                        run_seconds=args.run_seconds,
                        seed=args.seed,
                        run_config={**common, **run_settings(name, args)},
                        timeout=3600,
                    )
                except BaseException as err:  # noqa: BLE001 - re-raised in the main thread
                    outcome["error"] = err

            t = time.time()
            load[name] = [os.getloadavg()[0]]
            worker = threading.Thread(target=federate, daemon=True)
            worker.start()
            while worker.is_alive():
                worker.join(timeout=2.0)
                progress.update(task, completed=rounds_done(run_dir))
            if "error" in outcome:
                raise outcome["error"]
            timings[name] = time.time() - t
            load[name].append(os.getloadavg()[0])
            progress.update(task, completed=args.rounds, note="scoring")
            model, meta = load_checkpoint(run_dir / "checkpoint", use_ema=True)
            results[name] = evaluate_model(model, list(meta["class_names"]), tests, args)
            timings[f"{name}_scoring"] = time.time() - t - timings[name]
            progress.update(task, note=f"PCC {results[name]['pcc']:.3f}, loss {results[name]['val_loss']:.4f}")
            progress.advance(overall)
            write_json_atomic(
                args.out, finite(build_report(args, results, noise, timings, windows, load))
            )  # partial results survive a crash

    report = build_report(args, results, noise, timings, windows, load)
    write_json_atomic(args.out, finite(report))
    render(report, console)
    console.print(f"[dim]results: {args.out}; runs: {work}[/]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
