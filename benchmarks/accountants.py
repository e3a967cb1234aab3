"""Benchmark: which privacy accountant states the smallest sound epsilon for the same noise.

    python benchmarks/accountants.py --out benchmarks/results/accountants.json

The accountants of ``client.accounting._accounted``: Opacus' ``rdp`` (the run config's default
before this benchmark), ``prv`` (Gopi et al. 2021) and ``gdp`` (a central-limit approximation,
not an upper bound: shown for comparison, never chosen), and ``pld`` (Google's dp-accounting,
privacy loss distributions of both the add and the remove neighbour, rounded pessimistically).
At delta 1e-5:

- (a) the Gaussian release of the ridge statistics (one step of sample rate 1, the subject its
  unit) at the noise multipliers that RDP says spend epsilon 1, 2, 4, 8 and 16, beside the
  analytic Gaussian mechanism's exact epsilon (Balle & Wang 2018), the figure no sound
  accountant can go below;
- (b) the default DP-SGD plan (``RunConfig`` defaults: epsilon 8 over 3 rounds of 1 local
  epoch, the ``tiny`` preset's batch: ``plan_round``) on site-01 of the default consortium
  (3 fMRI sites x 8 subjects: 264 training windows, at most 54 of them one subject's, from
  ``benchmarks/results/subject_epsilon.json``; ``--windows``/``--group`` change them), its
  ledger as ``client/privacy.py`` writes it with RDP's noise for the whole target: per window,
  and per subject (group privacy over the subject's windows, ``group_step``, the accounting a
  site uses); and the default run as ``RunConfig`` configures it (``dp-statistics-share`` of the
  target on the statistics release, the rest, if any, on DP-SGD). For each DP-SGD entry the
  PLD's epsilon of the remove and of the add neighbour alone (PRV composes the remove one only);
- (c) the noise multiplier each sound accountant needs for a subject-level target of 1, 4 and 8
  (the statistics release alone, DP-SGD alone per window and per subject, and the default run
  when it mixes both), found the way a site finds it (``noise_for_budget``, ``plan_round``), and
  its ratio to RDP's: the same guarantee for less noise; with the seconds each took.

The default accountant is the sound one with the smallest epsilon for the default run (ties
within 0.005 go to the faster); its seconds per epsilon evaluation are measured too.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as bc  # noqa: E402

SOUND = ("rdp", "prv", "pld")
ALL = SOUND + ("gdp",)
RELEASE_EPSILONS = (1.0, 2.0, 4.0, 8.0, 16.0)
TARGETS = (1.0, 4.0, 8.0)
TIE = 0.005  # epsilons closer than this are a tie (the numerical accountants' own error is ~0.01)


def analytic_gaussian_epsilon(noise_multiplier: float, delta: float) -> float:
    """The exact epsilon of the Gaussian mechanism at ``delta`` (Balle & Wang 2018, Thm. 8):
    the root of ``Phi(-eps s + 1/(2s)) - e^eps Phi(-eps s - 1/(2s)) = delta``, sensitivity 1."""
    from scipy.optimize import brentq
    from scipy.stats import norm

    s = noise_multiplier

    def excess(eps: float) -> float:
        return norm.cdf(-eps * s + 1 / (2 * s)) - math.exp(eps) * norm.cdf(-eps * s - 1 / (2 * s)) - delta

    if excess(0.0) <= 0:
        return 0.0
    high = 1.0
    while excess(high) > 0:
        high *= 2
    return float(brentq(excess, 0.0, high, xtol=1e-12))


def epsilons(privacy, history: list, delta: float) -> dict[str, float | None]:
    """Every accountant's epsilon; None where Opacus' gdp finds none (its root search is bounded)."""
    out: dict[str, float | None] = {}
    for name in ALL:
        try:
            out[name] = privacy._accounted(name, history, delta)
        except ValueError:
            out[name] = None
    return out


def directions(history: list, delta: float) -> dict[str, float]:
    """PLD epsilon of the remove and of the add neighbour alone, the DP-SGD entry on its own."""
    from dp_accounting.pld import privacy_loss_distribution

    (sigma, rate, steps) = history[0]
    pld = privacy_loss_distribution.from_gaussian_mechanism(
        sigma, sampling_prob=rate, value_discretization_interval=1e-3
    ).self_compose(steps)
    return {
        "remove": float(pld._pmf_remove.get_epsilon_for_delta(delta)),
        "add": float(pld._pmf_add.get_epsilon_for_delta(delta)),
    }


def calibrated(find):
    """``find()``, or None where no noise multiplier reaches the target (``noise_for_budget``'s
    ValueError: RDP cannot state a Gaussian release below epsilon ~0.1 at delta 1e-5)."""
    try:
        return find()
    except ValueError:
        return None


def _cell(value: float | None) -> str:
    return f"{'-':>8}" if value is None else f"{value:8.4f}"


def run_ledger(privacy, settings, n_windows: int, group: int, per_subject: bool, batch: int, epochs: int):
    """A run's ledger at its end, as the site writes it: the statistics release (its share of the
    target), then, unless that share is the whole target, every planned DP-SGD step; the noise
    calibrated by ``settings.accountant``, per subject (group privacy over ``group`` windows) or,
    ``per_subject`` false, per window."""
    ledger = privacy.PrivacyLedger(accountant=settings.accountant, group_size=group if per_subject else 1)
    if settings.statistics_share > 0:
        ledger.subject_history.append((privacy.statistics_noise_multiplier(ledger, settings), 1.0, 1))
    if settings.statistics_share < 1:
        sigma, rate, steps = privacy.plan_round(ledger, settings, n_windows, batch, epochs)
        ledger.history.append((sigma, rate, steps * settings.planned_rounds))
    return ledger


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/accountants.json"))
    parser.add_argument("--windows", type=int, default=264, help="a site's training windows (default consortium)")
    parser.add_argument("--group", type=int, default=54, help="the most training windows of one subject")
    parser.add_argument("--repeats", type=int, default=3, help="timings per accountant (median)")
    args = parser.parse_args(argv)

    from fedneurogen.client import accounting, privacy
    from fedneurogen.shared.run_config import RunConfig
    from fedneurogen.shared.workflows.training import TRAIN_PRESETS

    run = RunConfig(dp_enabled=True, dp_accountant="rdp")
    delta, batch, epochs = run.dp_delta, TRAIN_PRESETS[run.preset].batch_size, run.local_epochs
    rdp_settings = privacy.dp_settings(run)
    sgd_settings = replace(rdp_settings, statistics_share=0.0)  # DP-SGD alone: the whole target
    rate = 1.0 / privacy.dp_steps_per_epoch(args.windows, batch)
    steps = privacy.dp_steps_per_epoch(args.windows, batch) * epochs * rdp_settings.planned_rounds

    def ledger_of(settings, per_subject: bool):
        return run_ledger(privacy, settings, args.windows, args.group, per_subject, batch, epochs)

    # (a) the statistics release alone, at RDP's noise for each epsilon
    release = []
    for eps in RELEASE_EPSILONS:
        sigma = privacy.noise_for_budget(
            privacy.PrivacyLedger(accountant="rdp"), eps, delta, 1.0, 1, subject_level=True
        )
        row = {"rdp_target": eps, "noise_multiplier": sigma, "analytic": analytic_gaussian_epsilon(sigma, delta)}
        release.append(row | epsilons(privacy, [(sigma, 1.0, 1)], delta))

    # (b) DP-SGD alone per window and per subject, and the default run (RDP's noise)
    runs = {}
    for level, settings, per_subject in (
        ("window DP-SGD", sgd_settings, False),
        ("subject DP-SGD", sgd_settings, True),
        ("default run", rdp_settings, True),
    ):
        ledger = ledger_of(settings, per_subject)
        history = [privacy.group_step(*h, ledger.group_size) for h in ledger.history]
        runs[level] = {
            "dp_sgd_noise_multiplier": ledger.noise_multiplier, "dp_sgd_entry": list(history[0]) if history else None,
            "statistics_noise_multiplier": ledger.subject_history[0][0] if ledger.subject_history else None,
            "epsilon": epsilons(privacy, history + ledger.subject_history, delta),
            "pld_directions": directions(history, delta) if history else None,
        }  # fmt: skip

    # seconds per epsilon evaluation (no cache) of the subject-level DP-SGD ledger and the default run's
    seconds = {}
    for level, ledger in (
        ("subject DP-SGD", ledger_of(sgd_settings, True)),
        ("default run", ledger_of(rdp_settings, True)),
    ):
        for name in ALL:

            def evaluate(ledger=replace(ledger, accountant=name)):
                accounting._accounted_cached.cache_clear()
                return ledger.epsilon(delta)

            seconds.setdefault(level, {})[name] = statistics.median(
                bc.time_call(evaluate, warmup=1, repeats=args.repeats)
            )

    # (c) the noise each sound accountant needs for a subject-level target, found as a site finds
    # it: the statistics release alone, DP-SGD alone (per window, per subject), the default run
    share = run.dp_statistics_share
    noise = []
    for target in TARGETS:
        for name in SOUND:
            accounting._accounted_cached.cache_clear()
            start = time.perf_counter()
            sgd = replace(sgd_settings, accountant=name, target_epsilon=target)
            row = {
                "target": target, "accountant": name,
                "statistics_release": calibrated(lambda: privacy.noise_for_budget(
                    privacy.PrivacyLedger(accountant=name), target, delta, 1.0, 1, subject_level=True)),
                "window_dp_sgd": calibrated(lambda: ledger_of(sgd, False).noise_multiplier),
                "subject_dp_sgd": calibrated(lambda: ledger_of(sgd, True).noise_multiplier),
            }  # fmt: skip
            if 0 < share < 1:  # a mixed default run; otherwise it is one of the two above
                mixed = calibrated(lambda: ledger_of(replace(sgd, statistics_share=share), True))
                row["default_run_statistics"] = mixed.subject_history[0][0] if mixed else None
                row["default_run_dp_sgd"] = mixed.noise_multiplier if mixed else None
            row["seconds"] = time.perf_counter() - start
            noise.append(row)
    columns = [c for c in noise[0] if c not in ("target", "accountant", "seconds")]
    by = {(r["target"], r["accountant"]): r for r in noise}
    for r in noise:
        base = by[(r["target"], "rdp")]
        r["ratio_to_rdp"] = {c: r[c] / base[c] if r[c] is not None and base[c] is not None else None for c in columns}

    default_eps, sgd_eps = runs["default run"]["epsilon"], runs["subject DP-SGD"]["epsilon"]
    best = min(default_eps[name] for name in SOUND)
    tied = [name for name in SOUND if default_eps[name] <= best + TIE]
    chosen = min(tied, key=lambda name: seconds["default run"][name])
    at = {(r["target"], r["accountant"]): r["ratio_to_rdp"] for r in noise}
    approximate = "approximate (central limit; Opacus reads only the last history entry), not an upper bound"
    figures = [
        bc.figure(f"{level} subject-level epsilon at RDP's noise, by {name}", runs[level]["epsilon"][name], "epsilon",
                  note=approximate if name == "gdp" else "")
        for level in ("default run", "subject DP-SGD")
        for name in ALL
    ] + [
        bc.figure(f"chosen accountant ({chosen}): default run's epsilon vs rdp's", default_eps[chosen], "epsilon",
                  f"<= {default_eps['rdp']:.6g}"),
        bc.figure(f"chosen accountant ({chosen}): subject DP-SGD epsilon vs rdp's", sgd_eps[chosen], "epsilon",
                  f"<= {sgd_eps['rdp']:.6g}"),
        bc.figure(f"statistics release noise for epsilon 8, {chosen} / rdp", at[(8.0, chosen)]["statistics_release"], "x"),
        bc.figure(f"statistics release noise for epsilon 1, {chosen} / rdp", at[(1.0, chosen)]["statistics_release"], "x"),
        bc.figure(f"subject DP-SGD noise for epsilon 8, {chosen} / rdp", at[(8.0, chosen)]["subject_dp_sgd"], "x"),
        bc.figure(f"seconds per epsilon evaluation, {chosen} (subject DP-SGD ledger)", seconds["subject DP-SGD"][chosen], "s"),
        bc.figure("seconds per epsilon evaluation, rdp (subject DP-SGD ledger)", seconds["subject DP-SGD"]["rdp"], "s"),
    ]  # fmt: skip
    detail = {
        "delta": delta, "chosen": chosen, "sound": list(SOUND), "approximate": ["gdp"],
        "run_config": {
            "dp-target-epsilon": run.dp_target_epsilon, "num-server-rounds": run.num_server_rounds,
            "local-epochs": epochs, "preset": run.preset, "batch_size": batch, "dp-statistics-share": share,
        },
        "site": {"training_windows": args.windows, "windows_per_subject": args.group, "sample_rate": rate, "steps": steps},
        "statistics_release": release, "runs": runs, "seconds_per_epsilon": seconds, "noise_for_target": noise,
    }  # fmt: skip
    bc.write_result(args.out, "accountants", figures, detail)

    print(f"(a) statistics release, delta {delta:g}: epsilon by accountant at RDP's noise")
    print(f"{'sigma':>8} {'analytic':>9} " + " ".join(f"{n:>8}" for n in ALL))
    for r in release:
        print(f"{r['noise_multiplier']:8.4f} {r['analytic']:9.4f} " + " ".join(_cell(r[n]) for n in ALL))
    print(
        f"(b) {args.windows} windows, {args.group} per subject, q {rate:.4f}, {steps} steps, statistics share {share:g}:"
        f" epsilon at RDP's noise for {run.dp_target_epsilon:g} (PLD's remove / add neighbour: DP-SGD entry alone)"
    )
    print(f"{'':>15} {'sigma':>9} " + " ".join(f"{n:>8}" for n in ALL) + f" {'remove':>8} {'add':>8}")
    for level, r in runs.items():
        eps, dirs = r["epsilon"], r["pld_directions"] or {"remove": None, "add": None}
        sigma = r["dp_sgd_noise_multiplier"] or r["statistics_noise_multiplier"]
        print(
            f"{level:>15} {sigma:9.4f} "
            + " ".join(_cell(eps[n]) for n in ALL)
            + f" {_cell(dirs['remove'])} {_cell(dirs['add'])}"
        )
    for level, by_name in seconds.items():
        print(f"seconds per epsilon evaluation, {level}: " + ", ".join(f"{n} {t:.3f}" for n, t in by_name.items()))
    print("(c) noise multiplier for a subject-level target (ratio to rdp's; - : no noise reaches it)")
    print(f"{'target':>6} {'acc':>4} " + " ".join(f"{c:>24}" for c in columns) + f" {'seconds':>8}")
    for r in noise:
        cells = [
            f"{'-':>24}" if r[c] is None else f"{r[c]:12.4f} ({r['ratio_to_rdp'][c] or float('nan'):7.3f})"
            for c in columns
        ]
        print(f"{r['target']:6g} {r['accountant']:>4} " + " ".join(cells) + f" {r['seconds']:8.2f}")
    print(f"chosen: {chosen}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
