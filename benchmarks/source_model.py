"""Benchmark: the federated model with cortical-source features (the local path) against the same model without.

    python benchmarks/source_model.py --out benchmarks/results/source_model.json
    python benchmarks/source_model.py --modality fnirs --out benchmarks/results/source_model_fnirs.json

On a fresh simulated EEG-fMRI (or EEG-fNIRS) consortium (``--seed``, nothing tuned on it; ``--sites`` x
``--subjects``), once with the simulator's own head model and once with the mismatched one (the
EEG written through another sphere and jittered electrodes, so the inverse never shares the
simulator's lead field: no inverse crime), the Flower app trains the ``tiny`` model twice for
``--rounds`` rounds — ``design_space = scalp`` (today's default) and ``scalp+source`` (the local
path, its statistics summed across sites, its share chosen on the sites' held-out subjects) —
and ``fedneurogen evaluate`` scores each on every site's never-seen subjects (baselines trained
on all sites' training subjects). Per scenario, over sites (weighted by test subjects):

- the point prediction's temporal PCC, continuous ridge-HRF's, the EEG-informed ceiling (ridge on
  the expected scalp band power) and the source-space ceiling (each point's ridge on the expected
  rhythm power of the parcels beneath it: what a perfect inverse would give);
- figures: source model / ridge-HRF (target >= 1.3; fNIRS 1.15), / the scalp ceiling (target
  >= 0.8; fNIRS 0.75), / the
  source-space ceiling, and the scalp model's for comparison; the first load with source
  features over without (target <= 2), timed from an empty cache on one site.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import figure, print_figures, work_dir, write_result  # noqa: E402

DESIGNS = {"scalp": "scalp", "source": "scalp+source"}
#: Issue 29's targets per modality: source model / ridge-HRF, / the EEG-informed ceiling.
TARGETS = {"fmri": (">= 1.3", ">= 0.8"), "fnirs": (">= 1.15", ">= 0.75")}


def weighted(reports: list[dict], path: tuple[str, ...]) -> float | None:
    """Mean of a score over sites, weighted by their test subjects (None where a site lacks it)."""
    values, weights = [], []
    for r in reports:
        node = r
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if node is None:
            return None
        values.append(float(node))
        weights.append(r["test_subjects_count"])
    return float(np.average(values, weights=weights))


def first_load(site: Path, design_space: str, cache: Path) -> float:
    from fedneurogen.shared.config import PreprocessConfig
    from fedneurogen.shared.data import load_site

    shutil.rmtree(cache, ignore_errors=True)
    started = time.perf_counter()
    load_site(site, PreprocessConfig(design_space=design_space), cache_dir=cache, progress=False)
    return time.perf_counter() - started


def scenario(root: Path, head_model: str, args, console) -> dict:
    from fedneurogen.shared.workflows.evaluation import evaluate
    from fedneurogen.simulations.federated import run_federated
    from fedneurogen.simulations.simulator import simulate_dataset

    data = root / f"{args.modality}-{head_model}-{args.sites}x{args.subjects}-{int(args.run_seconds)}s-seed{args.seed}"
    if not (data / "simulation.json").is_file():
        console.print(f"[{head_model}] simulating {args.sites} sites x {args.subjects} subjects")
        simulate_dataset(
            data, n_sites=args.sites, subjects_per_site=args.subjects, modality=args.modality, seed=args.seed,
            run_seconds=args.run_seconds, progress=False, head_model=head_model,
        )  # fmt: skip
    sites = sorted(p for p in data.glob("site-*") if p.is_dir())
    out: dict = {"head_model": head_model, "models": {}}
    out["first_load_seconds"] = {
        name: first_load(sites[0], space, root / "load-cache") for name, space in DESIGNS.items()
    }
    for name, space in DESIGNS.items():
        run_dir = root / f"run-{args.modality}-{head_model}-{name}"
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(run_dir.with_name(run_dir.name + "-site-state"), ignore_errors=True)
        console.print(f"[{head_model}] federated run, design {space}")
        started = time.perf_counter()
        run_federated(
            run_dir, data, num_sites=len(sites), rounds=args.rounds, modality=args.modality, seed=args.seed,
            run_config={"preset": "tiny", "preprocess": f"design_space={space}", "round-timeout": 1800.0},
            timeout=3600,
        )  # fmt: skip
        train_s = time.perf_counter() - started
        reports = []
        for site in sites:
            console.print(f"[{head_model}] evaluating {name} on {site.name}")
            others = tuple(s for s in sites if s != site)
            reports.append(
                evaluate(
                    run_dir / "checkpoint",
                    site,
                    root / f"report-{args.modality}-{head_model}-{name}-{site.name}",
                    n_samples=0,
                    baseline_epochs=0,
                    max_windows=args.max_windows,
                    progress=False,
                    pooled_sites=others,
                )  # fmt: skip
            )
        history = json.loads((run_dir / "history.json").read_text())
        out["models"][name] = {
            "pcc_temporal": {
                "point_prediction": weighted(reports, ("point_prediction", "pcc_temporal")),
                "ridge_hrf": weighted(reports, ("baselines", "ridge_hrf", "pcc_temporal")),
                "eeg_informed_ceiling": weighted(reports, ("ceilings", "eeg_informed", "pcc_temporal")),
                "source_ceiling": weighted(reports, ("ceilings", "eeg_informed_source", "pcc_temporal")),
                "noise_ceiling": weighted(reports, ("ceilings", "noise", "pcc_temporal")),
            },
            "per_site": {s.name: r["point_prediction"]["pcc_temporal"] for s, r in zip(sites, reports)},
            "test_subjects": sum(r["test_subjects_count"] for r in reports),
            "ridge_path": history[0].get("ridge_path", {}).get(args.modality, {}).get("local_path"),
            "train_seconds": train_s,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/source_model.json"))
    parser.add_argument("--work", type=Path, default=Path("benchmarks/work/source_model"))
    parser.add_argument("--modality", choices=["fmri", "fnirs"], default="fmri", help="the sites' target modality")
    parser.add_argument("--seed", type=int, default=71, help="a seed nothing was tuned on")
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--subjects", type=int, default=8, help="subjects per site")
    parser.add_argument("--run-seconds", type=float, default=240.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-windows", type=int, default=200, help="test windows scored per site")
    parser.add_argument("--head-models", nargs="+", default=["default", "mismatched"])
    args = parser.parse_args(argv)
    console = Console()
    root = work_dir(args.work)
    results = [scenario(root, hm, args, console) for hm in args.head_models]
    figures, (of_ridge, of_ceiling) = [], TARGETS[args.modality]
    for r in results:
        hm, models = r["head_model"], r["models"]
        src, scalp = models["source"]["pcc_temporal"], models["scalp"]["pcc_temporal"]
        figures += [
            figure(
                f"source model / ridge-HRF ({hm} head)", src["point_prediction"] / src["ridge_hrf"], "ratio", of_ridge
            ),
            figure(
                f"source model / EEG-informed ceiling ({hm} head)",
                src["point_prediction"] / src["eeg_informed_ceiling"],
                "ratio",
                of_ceiling,
            ),
            figure(
                f"source model / source-space ceiling ({hm} head)",
                src["point_prediction"] / src["source_ceiling"],
                "ratio",
            ),
            figure(f"scalp model / ridge-HRF ({hm} head)", scalp["point_prediction"] / scalp["ridge_hrf"], "ratio"),
            figure(
                f"scalp model / EEG-informed ceiling ({hm} head)",
                scalp["point_prediction"] / scalp["eeg_informed_ceiling"],
                "ratio",
            ),
            figure(
                f"first load with / without source features ({hm} head)",
                r["first_load_seconds"]["source"] / r["first_load_seconds"]["scalp"],
                "ratio",
                "<= 2",
            ),
        ]
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    write_result(args.out, "source model", figures, {"settings": settings, "scenarios": results})
    rows = [
        {
            "head model": r["head_model"],
            "design": name,
            **{k: round(v, 3) for k, v in m["pcc_temporal"].items() if v is not None},
        }
        for r in results
        for name, m in r["models"].items()
    ]
    print_figures("source model", figures, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
