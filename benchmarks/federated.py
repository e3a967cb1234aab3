"""Federated vs centralized training of the point prediction, and federated with DP.

    python benchmarks/federated.py --out benchmarks/results/federated.json

Three (or more) simulated fMRI sites that differ in EEG cap, TR, noise and group mix. Every
site splits its subjects with ``split_subjects(seed)`` into training, validation and test
subjects; the centralized model uses the same split of the same sites. All models are scored
by the temporal PCC of the **label-free point prediction** on each site's test subjects
(Fisher-z mean over points and runs, then over sites):

- ``centralized``: ``train_centralized`` on the pooled training subjects (ridge path solved on
  them, its choices on the pooled validation subjects; residual kept at its best validation
  epoch) for ``rounds x local_epochs`` epochs: the same optimiser steps the sites make together;
- ``federated``: the Flower app (local simulation, FedAvg by default, per-modality aggregation):
  the ridge path from the sites' summed statistics, the residual by federated optimisation
  with early stopping on the sites' validation subjects; every round's global model is scored;
- ``dp``: the same with differential privacy at every site (``--epsilon`` per site over the run:
  ridge statistics by the Gaussian mechanism, one subject per unit, then DP-SGD);
- ``ridge_path``: the ridge path alone (the model before any training);
- baselines and ceilings: continuous ridge-HRF fitted on the pooled training subjects
  (penalty on the pooled validation subjects), and the noise ceiling (the noise-free simulated
  BOLD against the measured one).

Targets: federated >= 0.95 x centralized; DP >= 0.85 x federated without DP. Also reported:
the first round whose global model passes ridge-HRF, and how many subjects the subject-level
Gaussian mechanism on the ridge statistics needs before its path is worth having
(``dp_statistics_scaling``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import figure, machine, prepare_sites, print_figure_table, work_dir, write_result  # noqa: E402

from fedneurogen.shared.workflows.baselines import RidgeHRFBaseline
from fedneurogen.shared.config import PreprocessConfig
from fedneurogen.shared.data import load_site
from fedneurogen.shared.workflows.evaluation_baselines import ground_truth_windows, pool_windows
from fedneurogen.shared.metrics import fisher_mean, temporal_pcc
from fedneurogen.shared.model import NeuroGenModel, load_checkpoint
from fedneurogen.shared.model.mean import fit_ridge_paths
from fedneurogen.shared.splits import split_subjects
from fedneurogen.shared.workflows.synthesis import point_predictions
from fedneurogen.shared.workflows.centralized import train_centralized
from fedneurogen.shared.workflows.training import TRAIN_PRESETS, class_index
from fedneurogen.simulations.federated import run_federated


def site_splits(sites: list[Path], seed: int, cache: Path) -> list[dict]:
    """Training, validation and test windows per site, split by subject as the sites split them."""
    out = []
    for site in sites:
        windows = load_site(site, cache_dir=cache, progress=False)
        masks = split_subjects(windows.subjects, seed=seed).masks(windows.subjects)
        out.append(
            {
                "path": site,
                **{name: windows.subset(np.flatnonzero(mask)) for name, mask in zip(("train", "val", "test"), masks)},
            }
        )
    return out


def pcc(pred: np.ndarray, test) -> float:
    """Temporal PCC; 0 for a prediction that does not vary (a switched-off path: no correlation)."""
    return float(np.nan_to_num(temporal_pcc(pred, test.target, test.runs, test.onsets, test.target_sfreq)))


def score(predict, splits: list[dict]) -> dict:
    """PCC of ``predict(test windows)`` on every site's test subjects, and their Fisher-z mean."""
    per_site = [pcc(predict(s["test"]), s["test"]) for s in splits]
    return {"pcc": fisher_mean(np.array(per_site)), "per_site": per_site}


def model_score(model: NeuroGenModel, splits: list[dict]) -> dict:
    return score(lambda test: point_predictions(model, test), splits)


def dp_statistics_scaling(splits: list[dict], settings, scales: tuple[int, ...], preset: str, seed: int) -> list[dict]:
    """How many subjects the Gaussian mechanism on the ridge statistics needs: each site's
    subjects are resampled (with replacement) to ``scale`` x as many, clipped, summed and noised
    exactly as a site releases them (``client.privacy``), the server solves the path from the
    three noisy releases, and the point prediction is scored on the real test subjects. (The
    resampled subjects repeat real ones, so this is the noise's side of the question only.)"""
    from fedneurogen.client import privacy
    from fedneurogen.shared.design import subject_statistics
    from fedneurogen.shared.model.mean import solve_ridge_path
    from fedneurogen.shared.ridge import RidgeStatistics, sum_statistics

    sigma = privacy.statistics_noise_multiplier(privacy.PrivacyLedger(), settings)
    clipped = [
        {
            k: [privacy.clip_subject(x, settings.statistics_clip) for x in subject_statistics(s[k])]
            for k in ("train", "val")
        }
        for s in splits
    ]
    rows = []
    for scale in scales:
        rng = np.random.default_rng([seed, scale])
        train_parts, val_parts = [], []
        for site in clipped:
            for key, out in (("train", train_parts), ("val", val_parts)):
                counts = np.bincount(
                    rng.integers(len(site[key]), size=scale * len(site[key])), minlength=len(site[key])
                )
                total = sum_statistics(
                    [
                        RidgeStatistics(**{k: v * c for k, v in x.as_arrays().items()})
                        for x, c in zip(site[key], counts)
                        if c
                    ]
                )
                noisy = privacy.add_gaussian_noise(total, sigma, settings.statistics_clip, rng)
                noisy.n = max(noisy.n, 1.0)  # as the server does
                out.append(noisy)
        model = NeuroGenModel(preset, device="cpu")
        choice = solve_ridge_path(model, "fmri", train_parts, sum_statistics(val_parts))
        rows.append({
            "training_subjects": int(scale * sum(len(site["train"]) for site in clipped)), "scale": scale,
            "pcc": model_score(model, splits)["pcc"], "switched_off": choice["switched_off"],
        })  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="JSON results file")
    parser.add_argument("--work", type=Path, default=Path("benchmarks/work"), help="simulated data and runs (reused)")
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--subjects-per-site", type=int, default=5)
    parser.add_argument("--run-seconds", type=float, default=300.0)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--preset", default="tiny", choices=sorted(TRAIN_PRESETS))
    parser.add_argument("--strategy", default="fedavg")
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.sites < 3:
        parser.error("the benchmark needs at least 3 sites")
    console = Console()
    before = machine()
    work = work_dir(args.work) / f"federated-seed{args.seed}"
    timings: dict[str, float] = {}
    data_root, cache, timings["data"] = prepare_sites(
        work, args.sites, args.subjects_per_site, args.run_seconds, args.seed, console
    )
    sites = sorted(data_root.glob("site-*"))[: args.sites]
    splits = site_splits(sites, args.seed, cache)
    class_names = list(class_index([w for s in splits for w in (s["train"], s["val"], s["test"])]))

    results: dict[str, dict] = {}
    # Baselines and ceilings on the same test subjects
    pooled = lambda key: pool_windows([(s["path"].name, s[key]) for s in splits])  # noqa: E731
    ridge = RidgeHRFBaseline().fit(pooled("train"), pooled("val"))
    results["ridge_hrf"] = score(ridge.predict, splits)
    noise = [pcc(ground_truth_windows(s["path"], s["test"], PreprocessConfig()), s["test"]) for s in splits]
    results["noise_ceiling"] = {"pcc": fisher_mean(np.array(noise)), "per_site": noise}
    ridge_path = NeuroGenModel(args.preset, device="cpu")
    fit_ridge_paths(ridge_path, [s["train"] for s in splits], [s["val"] for s in splits])
    results["ridge_path"] = model_score(ridge_path, splits)

    # Centralized: the pooled sites, the same optimiser steps as the federation's sites together
    t = time.time()
    config = TRAIN_PRESETS[args.preset].model_copy(update={"epochs": args.rounds * args.local_epochs})
    checkpoint = train_centralized([load_site(p, cache_dir=cache, progress=False) for p in sites], work / "centralized", preset=args.preset,
                                   seed=args.seed, train_config=config, progress=True)  # fmt: skip
    timings["centralized"] = time.time() - t
    results["centralized"] = model_score(load_checkpoint(checkpoint, device="cpu", use_ema=True)[0], splits)

    common = {
        "preset": args.preset,
        "local-epochs": args.local_epochs,
        "strategy": args.strategy,
        "cache-dir": str(cache),
        "classes": ",".join(class_names),
        "keep-checkpoints": args.rounds,
        "site-state-dir": str(work / "site-state"),
    }
    per_round: dict[str, list[float]] = {}
    for name, extra in (("federated", {}), ("dp", {"dp-enabled": True, "dp-target-epsilon": args.epsilon})):
        t = time.time()
        run_dir = work / f"run-{name}"
        if run_dir.exists():  # a fresh run each time (the sites' ledgers too)
            shutil.rmtree(run_dir)
            shutil.rmtree(work / "site-state", ignore_errors=True)
        run_federated(run_dir, data_root, num_sites=args.sites, rounds=args.rounds, modality="fmri",
                      subjects_per_site=args.subjects_per_site, seed=args.seed, run_config={**common, **extra}, timeout=3600)  # fmt: skip
        timings[name] = time.time() - t
        results[name] = model_score(load_checkpoint(run_dir / "checkpoint", device="cpu", use_ema=True)[0], splits)
        per_round[name] = [
            model_score(load_checkpoint(folder, device="cpu", use_ema=True)[0], splits)["pcc"]
            for folder in sorted((run_dir / "rounds").glob("round-*"))
        ]
        history = json.loads((run_dir / "history.json").read_text())
        results[name]["early_stopping"] = history[-1].get("early_stopping")
        results[name]["bytes_per_round"] = history[-1].get("bytes")
        if name == "dp":
            results[name]["epsilon_spent"] = max(
                m.get("epsilon", 0.0) for e in history for m in e["train"]["sites"].values()
            )

    from fedneurogen.client.privacy import dp_settings
    from fedneurogen.shared.run_config import RunConfig

    statistics_settings = dp_settings(
        RunConfig(dp_target_epsilon=args.epsilon, num_server_rounds=args.rounds)
    )  # the run-config defaults otherwise
    scaling = dp_statistics_scaling(splits, statistics_settings, (1, 10, 100, 1000, 10000), args.preset, args.seed)
    for row in scaling:
        console.print(
            f"DP ridge statistics, {row['training_subjects']} training subjects: point prediction PCC {row['pcc']:.3f}{' (path switched off)' if row['switched_off'] else ''}"
        )

    c, f, d, r = (results[k]["pcc"] for k in ("centralized", "federated", "dp", "ridge_hrf"))
    passes = [i + 1 for i, value in enumerate(per_round["federated"]) if value > r]
    figures = [
        figure("federated / centralized (point prediction PCC)", f / c if c > 0 else None, "ratio", ">= 0.95"),
        figure(f"DP (epsilon {args.epsilon:g}) / federated", d / f if f > 0 else None, "ratio", ">= 0.85"),
        figure("federated / ridge-HRF", f / r if r > 0 else None, "ratio", ">= 1.0"),
        figure(
            "rounds until the federated model passes ridge-HRF",
            passes[0] if passes else None,
            "rounds",
            note="round 1 is the first trained global model; the ridge path alone scores as listed",
        ),  # fmt: skip
        figure("federated, share of the noise ceiling", f / results["noise_ceiling"]["pcc"], "ratio"),
        figure(
            "training subjects the DP ridge statistics need to reach 0.85 x federated",
            next((row["training_subjects"] for row in scaling if row["pcc"] >= 0.85 * f), None),
            "subjects",
            note="resampled real subjects; None: not within the scales tried",
        ),  # fmt: skip
    ]
    detail = {
        "results": results,
        "per_round_pcc": per_round,
        "dp_statistics_scaling": {
            "what": "subject-level Gaussian mechanism on the ridge statistics (share 0.1 of epsilon, clip 600) as the number of subjects grows",
            "epsilon_share": statistics_settings.statistics_share * args.epsilon,
            "rows": scaling,
        },
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "windows": {split: [len(s[split]) for s in splits] for split in ("train", "val", "test")},
        "seconds": timings,
        "machine_before": before,
    }
    write_result(args.out, "federated", figures, detail)
    print_figure_table("Federated vs centralized (label-free point prediction, test subjects)", figures, console)
    console.print({k: round(v["pcc"], 4) for k, v in results.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
