"""Benchmark: do the explanations of ``fedneurogen explain`` recover the simulator's ground truth?

    python benchmarks/explain.py --out benchmarks/results/explain.json --seed 17

Simulates one EEG-fMRI site (site-01: BioSemi-64 cap, visual task; ``--subjects`` subjects,
cached under ``--work``), trains the ``--preset`` model on it for at most ``--minutes`` (ridge path
from statistics + learned residual), runs the explanation of the command on all its windows
(figures and ``explain.json`` beside the result) and compares it with what the simulator built in:

- bands: the simulator's rhythms are alpha, beta and gamma, whose envelopes follow the cortical
  activity as ``exp(k u)`` with ``|k|`` = 1.5, 0.5, 0.9 (``simulations.eeg.RHYTHMS``); delta and
  theta carry no activity. The true band weight is ``|k|`` (0 for delta and theta). Figures:
  Spearman rank agreement between explained band shares (point prediction, top-10 % points:
  the visual network the model predicts) and true weights; the fraction of (modulated,
  unmodulated) band pairs ranked the right way (target 1: every modulated band above delta and
  theta);
- electrodes: the visual networks lie in occipito-temporal cortex, so the occipital and
  parieto-occipital electrodes (O*, PO*, Iz) should rank above the others: AUC of their shares
  against the rest's (target >= 0.8);
- lag: the effective HRF peak of the model's ridge path over the top points against each group's
  mean HRF peak (group B's HRF is 12 % slower; ``simulation.json``), and the same for ridge paths
  fitted on each group's subjects alone (the same solver as the model's): target within 1 s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

OCCIPITAL_PREFIXES = ("O", "PO", "Iz")


def simulate(work: Path, subjects: int, run_seconds: float | None, seed: int) -> tuple[Path, dict]:
    from fedneurogen.simulations.simulator import simulate_dataset

    folder = work / f"explain-fmri-{subjects}subjects-{int(run_seconds or 0)}s-seed{seed}"
    summary = folder / "simulation.json"
    if not summary.is_file():
        simulate_dataset(
            folder, n_sites=1, subjects_per_site=subjects, modality="fmri", seed=seed, run_seconds=run_seconds
        )
    return folder / "site-01", json.loads(summary.read_text())["sites"][0]


def true_band_weights() -> dict[str, float]:
    from fedneurogen.shared.features import EEG_BANDS
    from fedneurogen.simulations.eeg import RHYTHMS

    coupling = {r.name: abs(r.coupling) for r in RHYTHMS}
    return {band: coupling.get(band, 0.0) for band in EEG_BANDS}


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive outranks a negative), ties counting half."""
    diff = positive[:, None] - negative[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def group_lags(windows, chosen: np.ndarray, config, groups: dict[str, list[str]]) -> dict[str, float]:
    """Effective HRF peak of a ridge path fitted on each group's subjects alone (the model's
    solver: banded, reduced-rank ridge, choices by 2-fold over subjects), over ``chosen`` points."""
    from fedneurogen.shared.design import VIRTUAL_MONTAGE, feature_bands, subject_statistics
    from fedneurogen.shared.workflows.explain_attribution import effective_hrf
    from fedneurogen.shared.model.mean import RIDGE_RANKS
    from fedneurogen.shared.ridge import fit_ridge_selected

    out = {}
    for group, subjects in groups.items():
        mine = windows.subset(np.isin(windows.subjects, subjects))
        parts = subject_statistics(mine)
        solution = fit_ridge_selected(parts, None, ranks=RIDGE_RANKS, groups=feature_bands(parts[0].n_features))
        out[group] = effective_hrf(solution.coef[:, chosen], len(VIRTUAL_MONTAGE), config)["peak_s"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, required=True, help="write the result (JSON) here; figures go to <out stem>/ beside it"
    )
    parser.add_argument("--subjects", type=int, default=8, help="subjects of the simulated site")
    parser.add_argument(
        "--run-seconds", type=float, default=None, help="simulated run length (default: the scenario's ~8 min)"
    )
    parser.add_argument("--minutes", type=float, default=3.0, help="training budget (minutes)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=32, help="integrated-gradient steps")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument(
        "--work", type=Path, default=Path(__file__).resolve().parent / "work", help="simulations and runs (kept)"
    )
    args = parser.parse_args(argv)

    from scipy.stats import spearmanr

    from fedneurogen.shared.config import PreprocessConfig
    from fedneurogen.shared.data import load_site
    from fedneurogen.shared.workflows.explain import explain
    from fedneurogen.shared.workflows.centralized import train_centralized

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import figure, machine, print_figures, work_dir, write_result

    started = time.perf_counter()
    load_before = machine()["load_average"]
    work = work_dir(args.work)
    site, truth = simulate(work, args.subjects, args.run_seconds, args.seed)
    preprocess = PreprocessConfig()
    windows = load_site(site, preprocess)
    simulated_s = time.perf_counter() - started

    run_dir = work / "runs" / f"explain-{args.preset}-seed{args.seed}-{int(time.time())}"
    checkpoint = train_centralized(
        [windows], run_dir, preset=args.preset, seed=args.seed, max_minutes=args.minutes, preprocess=preprocess.model_dump(),
        site_names=[site.name],
    )  # fmt: skip
    trained_s = time.perf_counter() - started - simulated_s
    figures_dir = args.out.parent / args.out.stem
    report = explain(checkpoint, site, figures_dir, steps=args.steps)
    explained_s = time.perf_counter() - started - simulated_s - trained_s

    # bands
    weights = true_band_weights()
    bands = list(weights)
    modulated = [b for b in bands if weights[b] > 0]
    rank = {}
    for path, shares in report["band_shares"].items():
        values = [shares[b] for b in bands]
        rank[path] = {  # no ranking at all where a path contributes nothing (a residual kept at zero)
            "spearman": float(spearmanr(values, [weights[b] for b in bands]).statistic) if np.ptp(values) > 0 else None,
            "pairs_ordered": float(
                np.mean([shares[m] > shares[u] for m in modulated for u in bands if u not in modulated])
            ),
        }
    # electrodes
    names = report["electrodes"]["names"]
    shares = np.asarray(report["electrodes"]["shares"]["prediction"])
    occipital = np.array([n.startswith(OCCIPITAL_PREFIXES) for n in names])
    electrode_auc = auc(shares[occipital], shares[~occipital])
    ranking = report["electrodes"]["ranking"]
    # lags
    subjects = truth["subjects"]
    groups = {
        g: [s["participant_id"] for s in subjects if s["group"] == g] for g in sorted({s["group"] for s in subjects})
    }
    true_peak = {
        g: float(np.mean([s["physiology"]["hrf_peak_s"] for s in subjects if s["group"] == g])) for g in groups
    }
    model_peak = report["effective_hrf"]["selected_points"]["peak_s"]
    chosen = np.asarray(report["points"]["indices"])
    fitted_peak = group_lags(windows, chosen, preprocess, groups)

    figures = [
        figure(
            "band rank agreement (Spearman), point prediction",
            rank["prediction"]["spearman"],
            "rho",
            note="explained band shares vs |coupling| of the simulated rhythms",
        ),
        figure("band rank agreement (Spearman), ridge path", rank["ridge_path"]["spearman"], "rho"),
        figure("band rank agreement (Spearman), learned residual", rank["residual"]["spearman"], "rho"),
        figure(
            "modulated bands above delta and theta (pairs ordered)",
            rank["prediction"]["pairs_ordered"],
            "fraction",
            ">= 1.0",
        ),
        figure("occipital electrodes above the others (AUC)", electrode_auc, "AUC", ">= 0.8"),
        *[
            figure(f"lag error, model's effective HRF vs group {g}", abs(model_peak - true_peak[g]), "s", "<= 1.0")
            for g in groups
        ],
        *[
            figure(f"lag error, ridge path of group {g} alone", abs(fitted_peak[g] - true_peak[g]), "s", "<= 1.0")
            for g in groups
        ],
    ]
    detail = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "site": str(site),
        "checkpoint": str(checkpoint),
        "true_band_weights": weights,
        "explained_band_shares": report["band_shares"],
        "band_rank": rank,
        "electrode_top10": ranking[:10],
        "occipital_in_top10": int(sum(n.startswith(OCCIPITAL_PREFIXES) for n in ranking[:10])),
        "occipital_electrodes": [n for n, o in zip(names, occipital) if o],
        "true_hrf_peak_s": true_peak,
        "model_hrf_peak_s": model_peak,
        "group_ridge_hrf_peak_s": fitted_peak,
        "points": report["points"],
        "residual_fraction_of_prediction_variance": report["variance"]["residual_fraction_of_prediction"],
        "completeness": report["completeness"],
        "regions": {
            name: {
                "dominant_band": r["dominant_band"],
                "peak_s": r["effective_hrf"]["peak_s"],
                "mean_pcc": r["mean_pcc"],
            }
            for name, r in report["regions"]["by_region"].items()
        },
        "figures_dir": str(figures_dir),
        "seconds": {"simulate_and_load": simulated_s, "train": trained_s, "explain": explained_s},
        "load_average_before": load_before,
    }
    result = write_result(args.out, "explain", figures, detail)
    rows = [
        {"band": b, "true |k|": weights[b], **{p: report["band_shares"][p][b] for p in report["band_shares"]}}
        for b in bands
    ]
    print_figures("explanations vs simulator ground truth", figures, rows)
    print(
        f"top electrodes: {', '.join(ranking[:10])}; HRF peaks: model {model_peak:.2f} s, groups {fitted_peak}, true {true_peak}"
    )
    print(f"result: {args.out} (figures in {figures_dir}); load average {result['machine']['load_average']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
