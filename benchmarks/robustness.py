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

Each final global model, and the closed-form start, is scored on every site's held-out test
subjects (never trained on): the temporal PCC of the label-free point prediction vs the real
BOLD (``benchmarks/federated.py``'s ``model_score``, per site, Fisher-z averaged) and the
held-out loss (``val_loss_*``: the diffusion loss on the whitened residual plus the mean head's
MSE, fixed timesteps and noise, so that it is deterministic), with its diffusion part on its own
(``diffusion_loss_*``). The **closed-form start** is what every run starts from after round 0:
the clean run's model with every trained parameter back at the server's initial weights (the
ridge and local paths, class offsets and noise model are set in closed form from the sites'
checked statistics, never averaged).

``--runs integrity`` runs the clean FedAvg run, FedAvg on the honest sites alone
(``clean_without_attacker``: the attacker is the last site) and ``INTEGRITY_RUNS``: FedAvg with
the attacker forging its ridge statistics (scaled, crafted, NaN), its update (sign flip,
float64 1e300, an inflated example count) or its held-out score (``eval_lie``: PCC 0.99 before
training and -0.99 after, over 10^6 x its windows, to keep early stopping at the untrained
residual; that run evaluates every round with patience 1, and early stopping acts on the median
of the sites' scores); ``integrity`` in the JSON says which stay within 5 %
of the clean PCC or of the run without the attacker (the server's checks refuse, drop or weigh
down each lie: ``server/statistics.py``, ``server/strategy.py``).

Goal: "a robust strategy keeps the model within 10 % of the clean run while FedAvg degrades",
judged on what the poisoned update reaches, the averaged weights: the **held-out diffusion
loss** (the DiT and encoders). It only means something if the clean run's averaged part learned
(``clean_learned``: its held-out diffusion loss at least 2 % below the closed-form start's).
Every run evaluates and stops early as a user's run does (the held-out scores ride in the
training replies). The point
prediction is reported beside it (``point_prediction_protected``: every run's PCC within 10 % of
the clean run's, FedAvg's included): its linear paths come from statistics, not averaging, and
its learned residual is kept only past one standard error of the sites' gains, so an attack on
the averaged weights should not reach it.

Budget: the tiny preset trains at about 0.1 s per batch of 8 on an idle 2-core CPU and a Flower
simulation costs about 25 s to start and stop, so the defaults (84 training windows per site,
10 rounds x 3 local epochs, about 1300 batches per run) come to roughly 15 minutes for the five
runs. A loaded machine takes many times longer: reduce --rounds, --local-epochs, --max-windows
and --max-test-windows there (the JSON keeps the settings, wall times and load average).
"""

from __future__ import annotations

import argparse
import copy
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
#: Held-out windows each site scores every round (the point prediction's PCC early stopping reads).
EVAL_PCC_WINDOWS = 16
#: The eval-lie run stops early after one round without gain, so that the attacker's lie about
#: its held-out score gets the most say it could have.
EVAL_LIE_SETTINGS = {"fraction-evaluate": 1.0, "eval-pcc-windows": EVAL_PCC_WINDOWS, "early-stopping-patience": 1}
INTEGRITY_TOLERANCE = 0.05  # "within 5 % of the clean run", or of the run without the attacker
WITHOUT_ATTACKER = "clean_without_attacker"  # FedAvg on the honest sites only (the attacker is the last site)
ROBUST = ("poisoned_fedmedian", "poisoned_fedtrimmedavg", "poisoned_krum")
TOLERANCE = 0.10  # "within 10% of the clean run"
#: The clean run's averaged part learned if training took its held-out diffusion loss 2 % below the
#: closed-form start's: a smaller gain is within what a tenth of the attack's tolerance moves.
LEARNED_LOSS_RATIO = 0.98


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


def closed_form_start(trained: NeuroGenModel, seed: int) -> NeuroGenModel:
    """``trained`` with every trained parameter back at the server's initial weights (it seeds
    torch with the run's seed, then builds the model): what the federation had after round 0,
    whose ridge and local paths, class offsets and noise model are set in closed form from the
    sites' statistics and never trained (frozen parameters and buffers, kept as they are)."""
    torch.manual_seed(seed)
    initial = dict(NeuroGenModel(trained.config, device="cpu").named_parameters())
    start = copy.deepcopy(trained)
    with torch.no_grad():
        for name, p in start.named_parameters():
            if p.requires_grad:
                p.copy_(initial[name])
    return start


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
    """The goal's parts, on the held-out diffusion loss (lower is better): the clean run's averaged
    part learned (below the closed-form start); FedAvg degraded by the attack (above 1.1x clean);
    a robust strategy within 10 % of clean. Beside it, whether every run's point prediction stayed
    within 10 % of the clean run's PCC."""
    clean = report["diffusion_loss_clean"]
    learned = bool(clean <= LEARNED_LOSS_RATIO * report["diffusion_loss_start"])
    # a non-finite score (weights blown up by the attack) counts as degraded, never as kept
    within = lambda run: bool(  # noqa: E731
        math.isfinite(report[f"diffusion_loss_{run}"]) and report[f"diffusion_loss_{run}"] <= (1 + TOLERANCE) * clean
    )
    robust_ok = {run: within(run) for run in ROBUST}
    fedavg_degraded = not within("poisoned_fedavg")
    pcc_kept = {
        run: bool(math.isfinite(report[f"pcc_{run}"]) and report[f"pcc_{run}"] >= (1 - TOLERANCE) * report["pcc_clean"])
        for run in RUNS[1:]
    }
    return {
        "clean_learned": learned,
        "met": {
            "clean_learned": learned,
            "fedavg_degraded": fedavg_degraded,
            "robust_within_10pct": robust_ok,
            "goal": bool(learned and fedavg_degraded and any(robust_ok.values())),
            "point_prediction_kept": pcc_kept,
            "point_prediction_protected": all(pcc_kept.values()),
            "clean_pcc_at_least_start": bool(report["pcc_clean"] >= report["pcc_start"]),
        },
        "criteria": {
            "tolerance": TOLERANCE,
            "clean_learned": f"diffusion_loss_clean <= {LEARNED_LOSS_RATIO} x diffusion_loss_start (the closed-form start)",
            "fedavg_degraded": "diffusion_loss_poisoned_fedavg > 1.1 x diffusion_loss_clean",
            "robust_within_10pct": "diffusion_loss_run <= 1.1 x diffusion_loss_clean",
            "goal": "clean_learned and fedavg_degraded and a robust strategy within 10 %",
            "point_prediction_kept": "pcc_run >= 0.9 x pcc_clean",
            "point_prediction_protected": "point_prediction_kept for every poisoned run, FedAvg's included",
        },
    }


def figures(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The headline numbers for summary.json: whether the clean run's averaged part learned; each
    run's PCC and held-out diffusion loss; the robust strategies' diffusion loss against the clean
    run's (target: within 10 %, <= 1.1) and the attack's damage to FedAvg; the point prediction's
    PCC under poisoned FedAvg against clean (target >= 0.9)."""
    out = [
        bc.figure(
            "robustness: clean run's averaged part learned (held-out diffusion loss 2 % below the closed-form start)",
            float(report["clean_learned"]),
            "bool",
            ">= 1",
        ),
        bc.figure("robustness: held-out diffusion loss, closed-form start", report["diffusion_loss_start"], "loss"),
        bc.figure("robustness: PCC, closed-form start", report["pcc_start"], "r"),
    ]
    for run in RUNS:
        out.append(bc.figure(f"robustness: PCC, {run}", report[f"pcc_{run}"], "r"))
        out.append(bc.figure(f"robustness: held-out diffusion loss, {run}", report[f"diffusion_loss_{run}"], "loss"))
    clean = report["diffusion_loss_clean"]
    for run in ROBUST:
        out.append(
            bc.figure(
                f"robustness: held-out diffusion loss {run} / clean",
                report[f"diffusion_loss_{run}"] / clean,
                "x",
                f"<= {1 + TOLERANCE:g}",
            )
        )
    out.append(
        bc.figure(
            "robustness: held-out diffusion loss poisoned_fedavg / clean (the attack's damage)",
            report["diffusion_loss_poisoned_fedavg"] / clean,
            "x",
        )
    )
    out.append(
        bc.figure(
            "robustness: point prediction PCC poisoned_fedavg / clean",
            report["pcc_poisoned_fedavg"] / report["pcc_clean"] if report["pcc_clean"] else None,
            "x",
            f">= {1 - TOLERANCE:g}",
        )
    )
    return out


def build_report(
    args: argparse.Namespace, results: dict[str, dict], noise: float, timings: dict, windows: dict, load: dict
) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for run in ("start", *RUNS):
        if run in results:
            report[f"pcc_{run}"] = results[run]["pcc"]
            report[f"val_loss_{run}"] = results[run]["val_loss"]
            report[f"diffusion_loss_{run}"] = results[run]["val_loss_parts"].get("diffusion", math.nan)
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
    complete = all(run in results for run in ("start", *RUNS))
    if complete:
        report["relative_to_clean"] = {
            run: {
                "pcc": relative(report[f"pcc_{run}"], report["pcc_clean"]),
                "diffusion_loss": relative(report[f"diffusion_loss_{run}"], report["diffusion_loss_clean"]),
            }
            for run in RUNS[1:]
        }
        report["relative_clean_to_start"] = {
            "pcc": relative(report["pcc_clean"], report["pcc_start"]),
            "diffusion_loss": relative(report["diffusion_loss_clean"], report["diffusion_loss_start"]),
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
    for column in ("run", "PCC", "vs clean", "diffusion loss", "vs clean", "seconds", "verdict"):
        table.add_column(column, justify="left" if column == "run" else "right")
    rel = report.get("relative_to_clean", {})
    met = report.get("met", {})
    yes_no = lambda ok: "[green]yes[/]" if ok else "[red]no[/]"  # noqa: E731
    for run in ("start", *RUNS):
        if f"pcc_{run}" not in report:
            continue
        verdict = ""
        if run in ROBUST and met:
            verdict = f"within 10%: {yes_no(met['robust_within_10pct'][run])}"
        elif run == "poisoned_fedavg" and met:
            verdict = f"degraded: {'yes' if met['fedavg_degraded'] else 'no'}"
        r = rel.get(run, {})
        table.add_row(
            "closed-form start" if run == "start" else run.replace("_", " "),
            cell(report[f"pcc_{run}"]),
            pct(r.get("pcc")),
            cell(report[f"diffusion_loss_{run}"]),
            pct(r.get("diffusion_loss")),
            cell(report["seconds"].get(run), 0),
            verdict,
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
            f"clean run's averaged part learned: {yes_no(report['clean_learned'])}; "
            f"goal met: {yes_no(met['goal'])}; point prediction within 10 % under every attack: "
            f"{yes_no(met['point_prediction_protected'])}; total {report['seconds']['total'] / 60:.1f} min"
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

        num_classes = NeuroGenModel(args.preset, device="cpu").config.num_classes
        class_names = list(class_index(trains + tests))[:num_classes]  # as the server builds it

        common = {
            "preset": args.preset,
            "local-epochs": args.local_epochs,
            "cache-dir": str(cache),
            "max-windows": args.max_windows,
            # evaluation and early stopping as a user's run has them (the app's defaults): the
            # residual kept only past one standard error of the sites' gains; the held-out scores
            # ride in the training replies, so this costs no extra round trip
            "eval-pcc-windows": EVAL_PCC_WINDOWS,
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
            if name == "clean":  # the closed-form start: the same closed-form records, nothing trained
                results["start"] = evaluate_model(
                    closed_form_start(model, args.seed), list(meta["class_names"]), tests, args
                )
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
