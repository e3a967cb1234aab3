"""Benchmark: how well raw in-scanner EEG is cleaned (issue 31), against the simulator's truth.

    python benchmarks/scanner_artifacts.py --out benchmarks/results/scanner_artifacts.json

A fresh seed is simulated twice, with and without ``--scanner-artifacts`` (the same clean EEG,
fMRI and ground truth; ``derivatives/ground_truth`` keeps the clean EEG of the raw one): two
EEG-fMRI sites (EDF 64 ch at 500 Hz with TR 2 s; BrainVision 32 ch at 250 Hz with TR 2.1 s),
``--subjects`` subjects each, ``--seconds`` per run. For every run:

- **gradient artefact**: the raw EEG after the gradient step alone (``bcg_artifact=off``) less the
  clean EEG is the residual; the raw EEG less the clean EEG is the artefact. Their power in the
  artefact's spectral lines (multiples of 1/TR, on the bins of a Welch spectrum of 10-TR
  segments, channel sum) within 1 Hz of the slice frequency (``N_SLICES / (TR - gap)``) and of
  each of its harmonics below 0.95 Nyquist, less the continuum between the lines (the BCG and
  EEG there are not the gradient artefact), gives the reduction in dB at each: the figures
  are the fundamental's and the worst harmonic's (worst run), all harmonics pooled, and the
  residual relative to the clean EEG's own power in those bins (median run);
- **BCG**: after the whole cleaning, the power of the EEG in 1-15 Hz over the clean EEG's (target
  within 10 %), with the power of what is left over (cleaned - clean) beside it, for each
  number of PCA-OBS components (0, 1, 2, 4): the default ``bcg_components`` is chosen here;
- **cost**: seconds of ``clean_scanner_artifacts`` for a site's runs (preloaded, the file read
  not counted) over the seconds of the site's whole first load without artefacts (``load_site``
  on the clean twin, no cache: reading, preprocessing, targets, pairing, design), both medians;
  and the raw site's first load over the clean twin's, less one (the two interleaved);
- **prediction, ridge-HRF**: ridge-HRF (the model's linear path, full rank) fitted on all
  subjects but one and scored on that one (temporal PCC, Fisher-z mean over subjects), on the
  raw site as loaded (cleaned) over the same on the clean twin;
- **prediction, the model** (issue 31's fourth target): the ``--preset`` model trained centrally
  (``train_centralized``, ``--model-minutes`` each, the same seed and so the same subject split)
  once on the raw sites as loaded (cleaned) and once on their clean twins, each scored by
  ``evaluate`` on its sites' held-out subjects (the label-free point prediction, temporal PCC,
  pooled over the sites by windows): raw-then-cleaned over clean (target >= 0.95). With
  ``--model-minutes 0`` not measured.

The EEG of an in-scanner run is cropped to its volumes when loaded (``scanner.crop_to_volumes``):
the clean EEG it is compared with is cut to the same span. The JSON has the load average
before and after.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as bc  # noqa: E402

SEED = 3131
COMPONENTS = (0, 1, 2, 4)


def welch(data: np.ndarray, sfreq: float, tr: float = 2.0):
    """Welch spectrum over segments of 10 TRs: the artefact's lines (multiples of 1/TR) fall on bins."""
    from scipy import signal

    return signal.welch(data, sfreq, nperseg=int(round(10 * tr * sfreq)), axis=-1)


def harmonic_power(
    freqs: np.ndarray, psd: np.ndarray, tr: float, slice_hz: float, sfreq: float, lines_only: bool = True
) -> np.ndarray:
    """Channel-summed power of the artefact's lines (k / TR, each with its two neighbour bins) within
    +-1 Hz of each harmonic of the slice frequency below 0.95 Nyquist (the slices are spread over
    TR less a gap, so the slice frequency itself is not a line: the lines around it are).

    With ``lines_only`` the continuum under the lines (the median bin between them, times the
    bins taken) is taken off: what is left is periodic at TR, the gradient artefact, and not the
    BCG or EEG that share those frequencies (floored at 1e-6 of the power taken, i.e. -60 dB)."""
    total = psd.sum(axis=0)
    step = freqs[1] - freqs[0]
    out = []
    for centre in np.arange(slice_hz, 0.475 * sfreq, slice_hz):
        lines = np.arange(np.ceil((centre - 1.0) * tr), np.floor((centre + 1.0) * tr) + 1) / tr
        bins = np.unique(np.concatenate([np.round(lines / step).astype(int) + d for d in (-1, 0, 1)]))
        bins = bins[bins < len(total)]
        power = total[bins].sum()
        if lines_only:
            near = np.flatnonzero(np.abs(freqs - centre) <= 1.0)
            between = np.setdiff1d(near, bins)
            power = max(power - len(bins) * np.median(total[between]), 1e-6 * power)
        out.append(power)
    return np.array(out)


def band_power(data: np.ndarray, sfreq: float, lo: float = 1.0, hi: float = 15.0) -> float:
    freqs, psd = welch(data - data.mean(axis=-1, keepdims=True), sfreq)
    return float(psd[:, (freqs >= lo) & (freqs <= hi)].sum())


def measure_run(run, truth_path: Path, tr: float) -> dict:
    """Gradient reduction at the slice harmonics, BCG band power per PCA-OBS size, cleaning time."""
    from fedneurogen.shared.config import PreprocessConfig
    from fedneurogen.shared.data.eeg import load_raw_eeg, prepare_channels
    from fedneurogen.shared.data.scanner import clean_scanner_artifacts
    from fedneurogen.simulations.scanner import N_SLICES, SLICE_GAP_S

    raw, _ = prepare_channels(load_raw_eeg(run.eeg), run)
    sfreq = raw.info["sfreq"]
    gradient_only = raw.copy()
    first, stop = clean_scanner_artifacts(gradient_only, PreprocessConfig(bcg_artifact="off"), run).span
    truth = load_raw_eeg(truth_path).get_data()[:, first:stop]  # the volumes, as the cleaning keeps them
    before = raw.get_data(picks="eeg")[:, first:stop]
    after_gradient = gradient_only.get_data(picks="eeg")
    slice_hz = N_SLICES / (tr - SLICE_GAP_S)
    f, p_art = welch(before - truth, sfreq, tr)
    _, p_res = welch(after_gradient - truth, sfreq, tr)
    _, p_eeg = welch(truth, sfreq, tr)
    art, res = (harmonic_power(f, p, tr, slice_hz, sfreq) for p in (p_art, p_res))
    eeg = harmonic_power(f, p_eeg, tr, slice_hz, sfreq, lines_only=False)  # the clean EEG in the same bins
    reduction = 10 * np.log10(art / res)
    row = {
        "run": run.key, "site": run.site_dir.name, "sfreq": sfreq, "tr": tr, "slice_hz": round(slice_hz, 3),
        "harmonics": len(art),
        "gradient_db_at_slice_hz": float(reduction[0]),
        "gradient_db_worst_harmonic": float(reduction.min()),
        "gradient_db_all_harmonics": float(10 * np.log10(art.sum() / res.sum())),
        "residual_vs_clean_db": float(10 * np.log10(res.sum() / eeg.sum())),
        "bcg_before_vs_clean": band_power(after_gradient, sfreq) / band_power(truth, sfreq),
    }  # fmt: skip
    clean_power = band_power(truth, sfreq)
    for k in COMPONENTS:
        cleaned = raw.copy()
        result = clean_scanner_artifacts(cleaned, PreprocessConfig(bcg_components=k), run)
        data = cleaned.get_data(picks="eeg")
        row[f"bcg_ratio_k{k}"] = band_power(data, sfreq) / clean_power
        row[f"bcg_left_k{k}"] = band_power(data - truth, sfreq) / clean_power
        row["r_peaks_from"] = result.r_peak_source
    return row


def loso_ridge_pcc(windows) -> float:
    """Temporal PCC of ridge-HRF (the model's linear path, full rank) over held-out subjects:
    each subject predicted by the ridge fitted on the others, the Fisher-z mean over subjects."""
    from fedneurogen.shared.metrics import temporal_pcc
    from fedneurogen.shared.workflows.baselines.ridge_hrf import RidgeHRFBaseline

    scores = []
    for subject in sorted(set(windows.subjects.tolist())):
        test = windows.subset(np.flatnonzero(windows.subjects == subject))
        model = RidgeHRFBaseline().fit(windows.subset(np.flatnonzero(windows.subjects != subject)))
        pcc = temporal_pcc(model.predict(test), np.asarray(test.target), test.runs, test.onsets, test.target_sfreq)
        scores.append(np.arctanh(np.clip(pcc, -0.999, 0.999)))
    return float(np.tanh(np.mean(scores)))


def model_point_prediction(data: Path, variant: str, args, cache: Path) -> dict:
    """Train the model on a variant's sites (raw-then-cleaned or clean) and score it on their
    held-out subjects: the pooled label-free point prediction, and each site's."""
    from fedneurogen.shared.config import PreprocessConfig
    from fedneurogen.shared.data import load_site
    from fedneurogen.shared.workflows.evaluation import evaluate
    from fedneurogen.shared.workflows.evaluation_report import pool_reports
    from fedneurogen.shared.workflows.centralized import train_centralized

    site_dirs = sorted(p for p in data.iterdir() if p.is_dir() and p.name.startswith("site-"))
    preprocess = PreprocessConfig()
    sites = [load_site(site, preprocess, cache_dir=cache, progress=False) for site in site_dirs]
    run_dir = data.parent / f"run-{variant}"
    started = time.perf_counter()
    checkpoint = train_centralized(
        sites, run_dir, preset=args.preset, seed=args.seed, max_minutes=args.model_minutes,
        preprocess=preprocess.model_dump(), site_names=[s.name for s in site_dirs], site_dirs=site_dirs, progress=False,
    )  # fmt: skip
    train_s = time.perf_counter() - started
    reports = {
        site.name: evaluate(
            checkpoint,
            site,
            run_dir / f"evaluate-{site.name}",
            seed=args.seed,
            n_samples=0,
            baseline_epochs=0,
            cache_dir=cache,
            progress=False,
            pooled_sites=tuple(other for other in site_dirs if other != site),
        )  # fmt: skip
        for site in site_dirs
    }
    pooled = pool_reports(list(reports.values()))
    score = lambda report, row: (report.get(row) or {}).get("pcc_temporal")  # noqa: E731
    return {
        "point_prediction_pcc": score(pooled, "point_prediction"),
        "ridge_hrf_pcc": score(pooled.get("baselines") or {}, "ridge_hrf"),
        "linear_path_pcc": score(pooled, "linear_path"),
        "train_seconds": train_s,
        "test_windows": sum(r["n_test_windows"] for r in reports.values()),
        "sites": {
            name: {"point_prediction_pcc": score(r, "point_prediction"),
                   "ridge_hrf_pcc": score(r.get("baselines") or {}, "ridge_hrf"),
                   "linear_path_pcc": score(r, "linear_path"),
                   "subjects": (r.get("held_out") or {}).get("subjects")}
            for name, r in reports.items()
        },
    }  # fmt: skip


def cleaning_seconds(runs, config, repeats: int) -> float:
    from fedneurogen.shared.data.eeg import load_raw_eeg, prepare_channels
    from fedneurogen.shared.data.scanner import clean_scanner_artifacts

    prepared = [(run, prepare_channels(load_raw_eeg(run.eeg), run)[0]) for run in runs]
    times = []
    for _ in range(repeats):
        total = 0.0
        for run, raw in prepared:
            copy = raw.copy()
            start = time.perf_counter()
            clean_scanner_artifacts(copy, config, run)
            total += time.perf_counter() - start
        times.append(total)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scanner_artifacts.json"))
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--subjects", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=240.0)
    parser.add_argument("--repeats", type=int, default=3, help="timings (median)")
    parser.add_argument("--model-minutes", type=float, default=3.0, help="training per variant (0: no model)")
    parser.add_argument("--preset", default="tiny", help="model preset of the trained comparison")
    args = parser.parse_args(argv)
    load_before = bc.machine()["load_average"]

    from fedneurogen.shared.config import PreprocessConfig
    from fedneurogen.shared.data import find_runs, load_site
    from fedneurogen.simulations.simulator import simulate_dataset

    tmp = Path(tempfile.mkdtemp(prefix="scanner-bench-"))
    try:
        common = dict(
            n_sites=2, subjects_per_site=args.subjects, seed=args.seed, run_seconds=args.seconds, progress=False
        )
        simulate_dataset(tmp / "raw", scanner_artifacts=True, **common)
        simulate_dataset(tmp / "clean", **common)
        model = {}  # first: the longest part, and the one that can fail on data too small to train on
        if args.model_minutes > 0:
            for variant in ("raw", "clean"):
                try:
                    model[variant] = model_point_prediction(tmp / variant, variant, args, tmp / f"cache-{variant}")
                except Exception as err:  # noqa: BLE001 - a figure of None with the reason, the rest still measured
                    model[variant] = {"point_prediction_pcc": None, "error": f"{type(err).__name__}: {err}"}
        rows, cost, prediction = [], [], []
        config = PreprocessConfig()
        for site in ("site-01", "site-02"):
            runs = find_runs(tmp / "raw" / site)
            tr = 2.0 if site == "site-01" else 2.1
            for run in runs:
                truth = tmp / "raw" / site / "derivatives" / "ground_truth" / run.subject / "eeg" / run.eeg.name
                rows.append(measure_run(run, truth, tr))
            clean_s = cleaning_seconds(runs, config, args.repeats)
            loaded = {}

            def load(variant, s=site):
                loaded[variant] = load_site(tmp / variant / s, config, use_cache=False, progress=False)

            times = bc.interleaved({v: lambda v=v: load(v) for v in ("raw", "clean")}, warmup=0, repeats=args.repeats)
            first = {v: statistics.median(t) for v, t in times.items()}
            cost.append({
                "site": site, "cleaning_s": clean_s, "first_load_s": first["clean"], "raw_first_load_s": first["raw"],
                "ratio": clean_s / first["clean"], "ratio_in_load": (first["raw"] - first["clean"]) / first["clean"],
            })  # fmt: skip
            prediction.append({"site": site, **{v: loso_ridge_pcc(w) for v, w in loaded.items()}})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    med = lambda key: float(statistics.median(r[key] for r in rows))  # noqa: E731
    worst = lambda key: float(min(r[key] for r in rows))  # noqa: E731
    by_k = {k: {"ratio": med(f"bcg_ratio_k{k}"), "left": med(f"bcg_left_k{k}")} for k in COMPONENTS}
    default_k = PreprocessConfig().bcg_components
    worst_ratio = max(abs(r[f"bcg_ratio_k{default_k}"] - 1) for r in rows)
    figures = [
        bc.figure("gradient artefact reduction at the slice frequency (worst run)", worst("gradient_db_at_slice_hz"), "dB", ">= 30"),
        bc.figure("gradient artefact reduction, worst slice harmonic of the worst run", worst("gradient_db_worst_harmonic"), "dB", ">= 30"),
        bc.figure("gradient artefact reduction, all slice harmonics (median run)", med("gradient_db_all_harmonics"), "dB"),
        bc.figure("gradient residual at the slice harmonics vs the clean EEG there (median run)", med("residual_vs_clean_db"), "dB"),
        bc.figure(f"1-15 Hz power after cleaning vs clean EEG, |ratio - 1|, worst run (bcg_components={default_k})",
                  worst_ratio, "fraction", "<= 0.1"),
        bc.figure(f"1-15 Hz power left over (cleaned - clean) vs clean EEG (median run, bcg_components={default_k})",
                  by_k[default_k]["left"], "fraction"),
        bc.figure("cleaning time vs the rest of a site's first load (worst site)", max(c["ratio"] for c in cost), "x", "<= 1.5"),
        bc.figure("first load of the raw site over the clean twin's, less one (worst site)",
                  max(c["ratio_in_load"] for c in cost), "x", "<= 1.5"),
        bc.figure("ridge-HRF held-out PCC on raw-then-cleaned EEG / on clean EEG (pooled sites)",
                  sum(p["raw"] for p in prediction) / sum(p["clean"] for p in prediction), "x", ">= 0.95",
                  note="the model's linear path (full-rank ridge on the hemodynamic design), leave-one-subject-out"),
    ]  # fmt: skip
    if model:
        raw_pcc, clean_pcc = model["raw"]["point_prediction_pcc"], model["clean"]["point_prediction_pcc"]
        ratio = raw_pcc / clean_pcc if raw_pcc is not None and clean_pcc else None
        figures.append(bc.figure(
            f"model ({args.preset}, {args.model_minutes:g} min) point-prediction PCC on held-out subjects, "
            "raw-then-cleaned EEG / clean EEG (pooled sites)", ratio, "x", ">= 0.95",
            note=f"trained and scored once per variant: {raw_pcc} vs {clean_pcc}",
        ))  # fmt: skip
    detail = {
        "seed": args.seed, "subjects_per_site": args.subjects, "run_seconds": args.seconds,
        "pca_obs_components": {str(k): v for k, v in by_k.items()}, "default_bcg_components": default_k,
        "cost": cost, "prediction_ridge_hrf_pcc": prediction, "runs": rows,
        "prediction_model": {"preset": args.preset, "minutes_per_variant": args.model_minutes, **model},
        "load_average_before": load_before, "load_average_after": bc.machine()["load_average"],
    }  # fmt: skip
    bc.write_result(args.out, "scanner_artifacts", figures, detail)
    bc.print_figures("scanner artefacts", figures, rows, ["run", "site", "gradient_db_at_slice_hz",
                     "gradient_db_worst_harmonic", "residual_vs_clean_db", "bcg_before_vs_clean",
                     *(f"bcg_ratio_k{k}" for k in COMPONENTS), *(f"bcg_left_k{k}" for k in COMPONENTS)])  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
