"""Benchmark: does the generator earn its place? Its point prediction against its own linear path
and continuous ridge-HRF, its samples against the linear-Gaussian generator's, as data.

    python benchmarks/generator.py --out benchmarks/results/generator.json
    python benchmarks/generator.py --couplings nonlinear --minutes 15 --preset small --out g.json
    python benchmarks/generator.py --no-cross-fit --out g_in_sample.json   # the residual on in-sample targets
    python benchmarks/generator.py --residual-eeg --out g_eeg.json   # the residual also reads EEG

Per scenario (``--couplings``: the simulator's ``linear`` default and ``nonlinear`` coupling,
where a saturating, alpha-gated drive makes linear not enough), on a fresh consortium (``--seed``,
nothing tuned on it; ``--sites`` x ``--subjects`` EEG-fMRI), the ``--preset`` model is trained
centrally for ``--minutes`` (the residual and the diffusion on cross-fitted targets unless
``--no-cross-fit``) and ``fedneurogen evaluate`` scores every site's never-seen subjects with
``--n-samples`` samples per window (at most ``--max-windows`` per site), baselines trained on all
sites' training subjects. Pooled over sites (windows-weighted):

- the label-free point prediction / its own linear path (the model's banded reduced-rank ridge
  path refitted on the linear design, without the alpha-gated block; target >= 1.10 on
  ``nonlinear``), /
  ridge-HRF (>= 1.15 on ``nonlinear``), / the EEG-informed ceiling;
- the samples, model against linear-Gaussian: coverage error (lower is better), log-PSD distance
  (lower), FC similarity (higher), two-sample accuracy (closer to 0.5), TSTR balanced accuracy
  (higher; train on synthetic, test on real); target: the model better on >= 3 of the 5.

The JSON has every pooled and per-site report, the training provenance (cross-fitting's
optimism), the machine and its load average before and after.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import figure, machine, prepare_sites, print_figures, work_dir, write_result  # noqa: E402

#: (metric, label, which way is better: "lower", "higher" or "half" for closer to 0.5)
SAMPLE_METRICS = (
    ("coverage_error", "coverage error", "lower"),
    ("psd_distance", "log-PSD distance", "lower"),
    ("fc_similarity", "FC similarity", "higher"),
    ("two_sample_accuracy", "two-sample accuracy", "half"),
    ("tstr_balanced_accuracy", "TSTR balanced accuracy", "higher"),
)


def better(model: float | None, baseline: float | None, way: str) -> bool | None:
    """Whether the model's value beats the baseline's (None where either is missing)."""
    if model is None or baseline is None:
        return None
    if way == "lower":
        return model < baseline
    if way == "higher":
        return model > baseline
    return abs(model - 0.5) < abs(baseline - 0.5)


def scenario(coupling: str, args, console) -> dict[str, Any]:
    """Train and evaluate on one simulated scenario; the pooled report and its comparisons."""
    from fedneurogen.shared.config import PreprocessConfig
    from fedneurogen.shared.data import load_site
    from fedneurogen.shared.workflows.evaluation import evaluate
    from fedneurogen.shared.workflows.evaluation_report import pool_reports
    from fedneurogen.shared.workflows.centralized import train_centralized
    from fedneurogen.shared.workflows.training import TRAIN_PRESETS

    root = work_dir(args.work)
    data, cache, _ = prepare_sites(
        root, args.sites, args.subjects, args.run_seconds, args.seed, console, coupling=coupling
    )  # fmt: skip
    site_dirs = sorted(p for p in data.iterdir() if p.is_dir() and p.name.startswith("site-"))[: args.sites]
    preprocess = PreprocessConfig()
    sites = [load_site(site, preprocess, cache_dir=cache, progress=False) for site in site_dirs]
    config = TRAIN_PRESETS[args.preset].model_copy(
        update={
            "cross_fit_folds": 0 if args.no_cross_fit else 5,
            "epochs": args.epochs,
            "departure_windows": args.departure_windows,
        }
    )  # the minutes bound the training, not the preset's epochs
    fit = ("in" if args.no_cross_fit else "cross") + ("-eeg" if args.residual_eeg else "")
    run_dir = root / "runs" / f"{coupling}-{args.preset}-{fit}-{int(time.time())}"
    started = time.time()
    checkpoint = train_centralized(
        sites, run_dir, preset=args.preset, seed=args.seed, max_minutes=args.minutes, train_config=config,
        preprocess=preprocess.model_dump(), site_names=[s.name for s in site_dirs], site_dirs=site_dirs,
        residual_eeg=args.residual_eeg,
    )  # fmt: skip
    train_minutes = (time.time() - started) / 60
    provenance = json.loads((checkpoint / "config.json").read_text())["provenance"]
    reports = {}
    for site in site_dirs:
        console.print(f"[bold]{coupling}[/]: evaluating {site.name}")
        reports[site.name] = evaluate(
            checkpoint, site, run_dir / f"evaluate-{site.name}", steps=args.steps, max_windows=args.max_windows,
            seed=args.seed, n_samples=args.n_samples, baseline_epochs=0, cache_dir=cache, progress=False,
            pooled_sites=tuple(other for other in site_dirs if other != site),
        )  # fmt: skip
    pooled = pool_reports(list(reports.values()))
    samples = pooled["sample_metrics"]
    model, linear_gaussian = samples.get("model") or {}, samples.get("linear_gaussian") or {}
    comparison = {
        key: {
            "model": model.get(key),
            "linear_gaussian": linear_gaussian.get(key),
            "better": better(model.get(key), linear_gaussian.get(key), way),
            "better_is": way,
        }
        for key, _, way in SAMPLE_METRICS
    }
    comparison["real_reference"] = samples.get("real_reference")
    return {
        "coupling": coupling,
        "train_minutes": train_minutes,
        "cross_fit": not args.no_cross_fit,
        # what training chose: the ridge path, the optimism cross-fitting removed, the class offsets,
        # the learned residual (kept or not, by the one-standard-error rule)
        # (with the noise model), the samples' share of the DiT's departure from its Gaussian
        "training": {
            key: provenance.get(key)
            for key in ("ridge_path", "cross_fit", "class_offsets", "residual", "departure", "epochs", "steps")
        },
        "pooled": pooled,
        "samples": comparison,
        "samples_better": sum(bool(v["better"]) for k, v in comparison.items() if k != "real_reference"),
        "sites": reports,
    }


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/generator.json"))
    parser.add_argument("--work", type=Path, default=Path("benchmarks/work/generator"))
    parser.add_argument("--couplings", nargs="+", choices=["linear", "nonlinear"], default=["linear", "nonlinear"])
    parser.add_argument("--seed", type=int, default=83, help="a seed nothing was tuned on")
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--subjects", type=int, default=8, help="subjects per site")
    parser.add_argument("--run-seconds", type=float, default=240.0)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--minutes", type=float, default=8.0, help="training budget per scenario")
    parser.add_argument("--epochs", type=int, default=1000, help="most epochs (the minutes stop it first)")
    parser.add_argument(
        "--departure-windows", type=int, default=64, help="validation windows choosing the departure share"
    )
    parser.add_argument("--n-samples", type=int, default=8, help="samples per held-out window")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the preset's)")
    parser.add_argument("--max-windows", type=int, default=40, help="held-out windows scored per site")
    parser.add_argument("--no-cross-fit", action="store_true", help="train the residual on in-sample targets")
    parser.add_argument(
        "--residual-eeg", action="store_true", help="the residual also reads EEG through an encoder of its own"
    )
    args = parser.parse_args(argv)
    console = Console()
    before = machine()
    results = [scenario(coupling, args, console) for coupling in args.couplings]
    figures: list[dict[str, Any]] = []
    rows = []
    for r in results:
        c, pooled = r["coupling"], r["pooled"]
        relative = pooled["relative"]
        nonlinear = c == "nonlinear"
        figures += [
            figure(f"point prediction / own linear path ({c})", relative.get("over_own_linear_path"), "ratio",
                   ">= 1.1" if nonlinear else None),
            figure(f"point prediction / ridge-HRF ({c})", relative.get("over_ridge_hrf"), "ratio",
                   ">= 1.15" if nonlinear else None),
            figure(f"point prediction / EEG-informed ceiling ({c})", relative.get("share_of_eeg_informed_ceiling"), "ratio"),
            figure(f"sample metrics where the model beats linear-Gaussian ({c})", r["samples_better"], "of 5", ">= 3"),
        ]  # fmt: skip
        for key, label, way in SAMPLE_METRICS:
            entry = r["samples"][key]
            rows.append({"scenario": c, "metric": f"{label} ({way})", "model": entry["model"],
                         "linear-Gaussian": entry["linear_gaussian"], "model better": entry["better"]})  # fmt: skip
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    write_result(
        args.out,
        "generator",
        figures,
        {
            "settings": settings,
            "scenarios": results,
            "machine_before": before,
            "load_average_after": machine()["load_average"],
        },
    )
    print_figures("generator against linear-Gaussian", figures, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
