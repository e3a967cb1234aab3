"""Benchmark: the subject-level epsilon of the default DP run, before and after issue 26.

    python benchmarks/subject_epsilon.py --out benchmarks/results/subject_epsilon.json

The default consortium as ``fedneurogen simulate`` makes it (3 fMRI sites x 8 subjects, the
scenario's run length, seed 0), preprocessed with the default settings; each site's training
windows are those of a simulated node (``split_subjects(seed=0)``, ``max-windows`` 0). For the
default DP run config (``dp-target-epsilon`` 8, ``dp-delta`` 1e-5, ``num-server-rounds`` 3, one
local epoch, the ``tiny`` preset's batch, a ``dp-statistics-share`` of 0.1) it gives per site:

- ``before``: the noise calibrated so that one *window* ends at epsilon 8 (the accounting before
  issue 26), and the epsilon of one *subject* under that noise: group privacy over its ``k``
  training windows (``client.privacy.group_step``);
- ``after``: the noise calibrated so that one subject ends at epsilon 8 (the accounting a site
  uses now, ``client/privacy.py``), and what that leaves for one window.

The ledgers are the ones ``client/privacy.py`` writes (the statistics release, then every
planned DP-SGD step), so the numbers are the accountant's, not a formula's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as bc  # noqa: E402


def ledger_of(n_windows: int, group: int, calibrate_per_subject: bool, settings, batch_size: int, epochs: int):
    """The ledger at the end of the planned run: statistics release, then every planned round."""
    from fedneurogen.client import privacy

    ledger = privacy.PrivacyLedger(accountant=settings.accountant, group_size=group if calibrate_per_subject else 1)
    if settings.statistics_share > 0:  # the release's own step (its unit is the subject already)
        ledger.subject_history.append((privacy.statistics_noise_multiplier(ledger, settings), 1.0, 1))
    sigma, rate, steps = privacy.plan_round(ledger, settings, n_windows, batch_size, epochs)
    ledger.history.append((sigma, rate, steps * settings.planned_rounds))
    ledger.group_size = group  # what the run is, per subject, whatever it was calibrated for
    return ledger


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/subject_epsilon.json"))
    parser.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / "work")
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--subjects", type=int, default=8)
    args = parser.parse_args(argv)

    from rich.console import Console

    from fedneurogen.client import privacy
    from fedneurogen.shared.data import load_site
    from fedneurogen.shared.run_config import RunConfig
    from fedneurogen.shared.splits import split_subjects
    from fedneurogen.shared.workflows.training import TRAIN_PRESETS

    console = Console()
    root, cache, _ = bc.prepare_sites(bc.work_dir(args.work), args.sites, args.subjects, None, 0, console)
    run = RunConfig(dp_enabled=True)
    settings = privacy.dp_settings(run)
    batch = TRAIN_PRESETS[run.preset].batch_size
    rows = []
    for folder in sorted(root.glob("site-*"))[: args.sites]:
        windows = load_site(folder, cache_dir=cache, progress=False)
        train = windows.subset(split_subjects(windows.subjects, seed=run.seed).masks(windows.subjects)[0].nonzero()[0])
        n, group = len(train), privacy.windows_per_subject(train.subjects)
        before = ledger_of(n, group, False, settings, batch, run.local_epochs)
        after = ledger_of(n, group, True, settings, batch, run.local_epochs)
        rows.append(
            {
                "site": folder.name, "training_windows": n, "training_subjects": len(set(train.subjects.tolist())),
                "windows_per_subject": group, "sample_rate": 1.0 / privacy.dp_steps_per_epoch(n, batch),
                "steps": run.num_server_rounds * run.local_epochs * privacy.dp_steps_per_epoch(n, batch),
                "before": {
                    "noise_multiplier": before.noise_multiplier, "epsilon_window": before.window_epsilon(run.dp_delta),
                    "epsilon_subject": before.epsilon(run.dp_delta),
                },
                "after": {
                    "noise_multiplier": after.noise_multiplier, "epsilon_window": after.window_epsilon(run.dp_delta),
                    "epsilon_subject": after.epsilon(run.dp_delta),
                },
            }
        )  # fmt: skip
    worst_before = max(r["before"]["epsilon_subject"] for r in rows)
    worst_after = max(r["after"]["epsilon_subject"] for r in rows)
    noise_ratio = max(r["after"]["noise_multiplier"] / r["before"]["noise_multiplier"] for r in rows)
    figures = [
        bc.figure("subject-level epsilon, default DP run, before (worst site)", worst_before, "epsilon"),
        bc.figure(
            "subject-level epsilon, default DP run, after (worst site)",
            worst_after,
            "epsilon",
            f"<= {run.dp_target_epsilon * 1.001:g}",
        ),
        bc.figure("noise multiplier after / before (largest)", noise_ratio, "x"),
    ]
    detail = {
        "run_config": {
            "dp-target-epsilon": run.dp_target_epsilon, "dp-delta": run.dp_delta, "num-server-rounds": run.num_server_rounds,
            "local-epochs": run.local_epochs, "preset": run.preset, "batch_size": batch,
            "dp-statistics-share": run.dp_statistics_share, "accountant": run.dp_accountant,
        },
        "data": {"root": str(root), "sites": args.sites, "subjects_per_site": args.subjects, "seed": 0},
        "sites": rows,
    }  # fmt: skip
    bc.write_result(args.out, "subject_epsilon", figures, detail)
    for r in rows:
        console.print(
            f"{r['site']}: {r['training_windows']} windows, k = {r['windows_per_subject']} per subject; "
            f"before: sigma {r['before']['noise_multiplier']:.3g}, window eps {r['before']['epsilon_window']:.3g}, "
            f"subject eps {r['before']['epsilon_subject']:.4g}; after: sigma {r['after']['noise_multiplier']:.3g}, "
            f"subject eps {r['after']['epsilon_subject']:.3g}, window eps {r['after']['epsilon_window']:.3g}"
        )
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
