"""Federated vs centralized training on non-IID simulated sites, and federated with DP-SGD.

    python benchmarks/federated.py --out benchmarks/results/federated.json

The sites come from the simulator (they differ in EEG cap, TR, noise and group mix). Each site
splits its subjects with ``split_subjects(seed)``; all three models are scored by the temporal
PCC of samples for the test subjects' windows, per site, Fisher-z averaged over sites:

- ``pcc_centralized``: one model trained on the pooled training subjects of all sites, for
  ``rounds x local_epochs`` epochs (the same passes over the data each site makes);
- ``pcc_federated``: the Flower app (local simulation, FedAvg, per-modality aggregation) for
  ``rounds`` rounds of ``local_epochs``;
- ``pcc_dp``: the same with DP-SGD at each site, budget ``--epsilon`` per site over the run
  (``epsilon_spent``: the largest cumulative epsilon any site reported).

``ratio`` = pcc_federated / pcc_centralized (target >= 0.9), ``ratio_dp`` likewise;
``ratio_meaningful`` says whether the centralized model learned enough for the ratio to mean
anything (PCC above 0.05 and 5x the shuffled-window baseline). The defaults take about 15
minutes on a 4-core laptop CPU with the tiny preset; a model that learns needs more (--rounds,
--preset small, a GPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fedneurogen.shared.data import load_site
from fedneurogen.shared.evaluation import limit_windows
from fedneurogen.shared.io import write_json_atomic
from fedneurogen.shared.metrics import fisher_mean, shuffled_baseline, temporal_pcc
from fedneurogen.shared.model import NeuroGenModel, load_checkpoint
from fedneurogen.shared.splits import split_subjects
from fedneurogen.shared.synthesis import generate, label_indices
from fedneurogen.shared.training import TRAIN_PRESETS, class_index, make_optimizer, train_epochs
from fedneurogen.simulations.federated import ensure_sites, run_federated


def site_splits(sites: list[Path], seed: int, cache: Path):
    """(train, test) windows per site, split by subject exactly as the sites do."""
    out = []
    for site in sites:
        windows = load_site(site, cache_dir=cache, progress=False)
        train, _, test = split_subjects(windows.subjects, seed=seed).masks(windows.subjects)
        out.append((windows.subset(np.flatnonzero(train)), windows.subset(np.flatnonzero(test))))
    return out


def score(model: NeuroGenModel, class_names: list[str], tests, steps: int, seed: int) -> dict:
    """Temporal PCC of generated vs real test windows, per site and Fisher-z averaged."""
    per_site = []
    for test in tests:
        generated = generate(model, test, label_indices(test, class_names), steps=steps, seed=seed)[0]
        per_site.append(float(temporal_pcc(generated, test.target, test.runs, test.onsets, test.target_sfreq)))
    return {"pcc": fisher_mean(np.array(per_site)), "per_site": per_site}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON results file")
    parser.add_argument("--work", type=Path, default=None, help="data and runs (default: a temporary folder)")
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--subjects-per-site", type=int, default=5)
    parser.add_argument("--run-seconds", type=float, default=300.0)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--preset", default="tiny", choices=sorted(TRAIN_PRESETS))
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--sampling-steps", type=int, default=10)
    parser.add_argument("--max-test-windows", type=int, default=48, help="per site")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.sites < 3:
        parser.error("the benchmark needs at least 3 sites")

    work = args.work or Path(tempfile.mkdtemp(prefix="fedneurogen-bench-"))
    cache = work / "cache"
    timings: dict[str, float] = {}
    t = time.time()
    sites = ensure_sites(work / "data", args.sites, "fmri", args.subjects_per_site, args.seed, args.run_seconds)
    splits = site_splits(sites, args.seed, cache)
    tests = [limit_windows(test, args.max_test_windows) for _, test in splits]
    timings["data"] = time.time() - t

    # Centralized: the pooled training subjects, the same epochs each site makes in the federation.
    t = time.time()
    trains = [train for train, _ in splits]
    class_names = list(class_index(trains + [test for _, test in splits]))  # the sorted union, as the server builds it
    torch.manual_seed(args.seed)  # the same initial weights as the federated server's
    central = NeuroGenModel(args.preset)
    config = TRAIN_PRESETS[args.preset]
    class_names = class_names[: central.config.num_classes]
    optimizer = make_optimizer(central.parameters(), config)
    train_epochs(central, optimizer, trains, epochs=args.rounds * args.local_epochs, config=config,
                 class_to_index={n: i for i, n in enumerate(class_names)}, seed=args.seed)
    timings["centralized"] = time.time() - t
    results = {"centralized": score(central, class_names, tests, args.sampling_steps, args.seed)}

    common = {
        "preset": args.preset, "local-epochs": args.local_epochs, "strategy": "fedavg", "cache-dir": str(cache),
        "fraction-evaluate": 0.0, "eval-pcc-windows": 0, "classes": ",".join(class_names),
    }
    for name, extra in (("federated", {}), ("dp", {"dp-enabled": True, "dp-target-epsilon": args.epsilon})):
        t = time.time()
        run_dir = run_federated(work / f"run-{name}", work / "data", num_sites=args.sites, rounds=args.rounds, modality="fmri",
                                subjects_per_site=args.subjects_per_site, seed=args.seed, run_config={**common, **extra}, timeout=3600)
        timings[name] = time.time() - t
        model, meta = load_checkpoint(run_dir / "checkpoint", use_ema=True)
        results[name] = score(model, meta["class_names"], tests, args.sampling_steps, args.seed)
        if name == "dp":
            last = json.loads((run_dir / "history.json").read_text())[-1]
            results[name]["epsilon_spent"] = max(m["epsilon"] for m in last["train"]["sites"].values())

    pcc_c, pcc_f, pcc_dp = (results[k]["pcc"] for k in ("centralized", "federated", "dp"))
    noise = fisher_mean(np.array([shuffled_baseline(t.target, t.runs, t.onsets, t.target_sfreq, seed=args.seed) for t in tests]))
    report = {
        "pcc_federated": pcc_f,
        "pcc_centralized": pcc_c,
        "ratio": pcc_f / pcc_c if pcc_c else None,
        "pcc_dp": pcc_dp,
        "ratio_dp": pcc_dp / pcc_c if pcc_c else None,
        "epsilon_spent": results["dp"]["epsilon_spent"],
        "epsilon_target": args.epsilon,
        "target_ratio": 0.9,
        "per_site": {k: v["per_site"] for k, v in results.items()},
        "noise_baseline": noise,
        # a ratio of two noise-level correlations says nothing: the centralized model must
        # have learned something first (well above the shuffled-window baseline)
        "ratio_meaningful": bool(pcc_c > max(0.05, 5 * abs(noise))),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "windows": {"train_per_site": [len(tr) for tr in trains], "test_per_site": [len(te) for te in tests]},
        "seconds": timings,
    }
    write_json_atomic(args.out, report)
    print(json.dumps({k: report[k] for k in ("pcc_federated", "pcc_centralized", "ratio", "pcc_dp", "epsilon_spent", "noise_baseline", "ratio_meaningful")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
