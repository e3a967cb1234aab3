"""Which EEG bands, electrodes and cortical regions drive each generated target point:
``fedneurogen explain``, the workflow.

The point prediction is ``ridge path + learned residual`` (``fedneurogen.shared.model.mean``),
both functions of the hemodynamic design: EEG log band power on the 64-electrode virtual montage,
convolved with an HRF basis (features ordered virtual electrode x band x basis function,
``fedneurogen.shared.design``). The explanation attributes the prediction of each target point
to those features and sums the attributions over a feature group (a band, an electrode, a basis
function). Its parts, each in its own module:

- the attribution maths (``explain_attribution.py``): the ridge path's exact attribution, the
  residual's integrated gradients (Captum), their completeness checks, the variance shares and
  the effective hemodynamic response;
- the regions and the points summarised (``explain_regions.py``): coarse lobes per hemisphere
  from MNI coordinates (no surface atlas ships with nilearn offline), the best-predicted points;
- the local path's view (``explain_sources.py``), for a model with a cortical-source design;
- the figures (``plots.py``, every figure of the package).

A group's share of a point's prediction variance over a set of frames is
``Cov(a_G, y) / Var(y)``: the shares of a partition sum to 1 (exactly for the ridge path; up to
the integrated-gradient gap for the residual). With correlated features a share can be negative
(a group that cancels part of another's effect). Summaries over several points weight each point
by its prediction variance: ``Σ_n Cov(a_G,n, y_n) / Σ_n Var(y_n)``. The label enters the
residual's latent after its non-linearity, so within one class it shifts the prediction by a
constant: within-class shares are those of the EEG features alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fedneurogen.shared.config import PreprocessConfig
from fedneurogen.shared.data import load_site
from fedneurogen.shared.design import VIRTUAL_MONTAGE, virtual_positions
from fedneurogen.shared.errors import ConfigError, DataError
from fedneurogen.shared.features import EEG_BANDS
from fedneurogen.shared.io import write_json_atomic
from fedneurogen.shared.model import load_checkpoint
from fedneurogen.shared.recording import PairedWindows
from fedneurogen.shared.sources import source_space
from fedneurogen.shared.workflows import plots
from fedneurogen.shared.workflows.evaluation_subjects import seen_by_checkpoint
from fedneurogen.shared.workflows.explain_attribution import (
    BANDS,
    Contributions,
    Decomposition,
    contributions,
    decompose,
    effective_hrf,
    feature_groups,
    ig_completeness,
    ridge_completeness,
)
from fedneurogen.shared.workflows.explain_regions import REGION_SOURCE, coarse_regions, point_pcc, select_points
from fedneurogen.shared.workflows.explain_sources import local_path_view

EXPLAIN_FILE = "explain.json"
PATHS = ("ridge_path", "residual", "prediction")
METHODS = {
    "ridge_path": "exact: coefficient x (design - training mean); variance shares = coefficients x design covariance, b_G^T (Sigma b)_G / b^T Sigma b",
    "residual": "integrated gradients (Captum, {steps} midpoint steps, baseline: the training mean design) per latent dimension, "
    "through the linear per-point readout",
    "prediction": "sum of the two: Cov(a_ridge_G + a_residual_G, y) / Var(y), y = ridge path + residual",
}
COMPLETENESS_NOTE = (
    "ridge attributions sum to the prediction minus the prediction at the training mean design (exact); "
    "integrated gradients approach the residual's change from the baseline as steps grow (the relative gap is "
    "over frames and points; Captum's convergence delta is per frame and latent dimension, before the readout)"
)
ELECTRODE_SPACE = (
    "the model's 64-electrode virtual montage (BioSemi-64, 10-05 names); a site's cap is mapped onto it by "
    "inverse-square distance weights"
)


# ----------------------------------------------------------------------------------------------
# The analysis


def explain_point_prediction(
    model, windows: PairedWindows, config, *, class_names: Sequence[str] | None = None, label: str | None = None,
    points: str = "top", steps: int = 32, max_rows: int | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """The explanation of ``model``'s point prediction on ``windows``.

    Band, electrode and HRF-basis shares of the prediction variance (overall, per class, per
    region and per point), completeness checks and the effective HRF per region.

    Parameters
    ----------
    model : NeuroGenModel
        The model.
    windows : PairedWindows
        Windows with a hemodynamic design.
    config : PreprocessConfig
        The preprocessing the design was made with.
    class_names : sequence of str | None
        The checkpoint's class names (label index -> name).
    label : str | None
        Restrict the explanation to the windows of this class, conditioned on it; None: all
        windows, label-free.
    points : str
        Point selection (``select_points``).
    steps : int
        Integrated-gradient steps.
    max_rows : int | None
        Use at most this many frames; None: all.

    Returns
    -------
    report : dict of str to Any
        The JSON-ready report.
    arrays : dict of str to Any
        The per-point arrays the figures need (``write_figures``).

    Raises
    ------
    ConfigError
        ``label`` is not one of ``class_names`` or has no window, or as in ``decompose`` and
        ``select_points``.
    """

    names = list(class_names or [])
    windows = _windows_of_class(windows, names, label)
    dec = decompose(model, windows, names.index(label) if label is not None else None, steps=steps, max_rows=max_rows)
    n_electrodes = len(VIRTUAL_MONTAGE)
    electrode, band, basis = feature_groups(dec.design.shape[1], n_electrodes)
    regions = coarse_regions(windows.target_positions, windows.target_names)
    pcc = point_pcc(dec.prediction, dec.target)
    chosen, rule = select_points(points, pcc, regions)

    by_band = contributions(dec, band, len(BANDS))
    by_basis = contributions(dec, basis, int(basis.max()) + 1)
    point_shares = by_band.share("prediction")  # [B, N]
    dominant = np.argmax(point_shares, axis=0)
    band_summary = {p: _shares(by_band.share(p, chosen)) for p in PATHS}
    electrodes, electrode_shares = _electrode_report(contributions(dec, electrode, n_electrodes), chosen)
    region_report, hrfs = _region_report(dec, by_band, regions, pcc, chosen, config)
    hrf_all = effective_hrf(dec.coef[:, chosen], n_electrodes, config)
    report: dict[str, Any] = {
        "modality": windows.target_modality,
        "label": label,
        "frames": int(len(dec.design)),
        "windows": int(len(windows)),
        "subjects": sorted(set(windows.subjects.tolist())),
        "points": {
            "selection": points,
            "rule": rule,
            "count": int(len(chosen)),
            "of": int(dec.ridge.shape[1]),
            "mean_pcc": float(pcc[chosen].mean()),
            "indices": chosen.tolist(),
        },  # fmt: skip
        "methods": {**METHODS, "residual": METHODS["residual"].format(steps=steps)},
        "bands": {band_name: list(EEG_BANDS[band_name]) for band_name in BANDS},
        "band_shares": band_summary,
        "variance": _variance_report(by_band, chosen),
        "completeness": _completeness_report(dec, by_band, chosen),
        "hrf_basis_shares": {p: by_basis.share(p, chosen).tolist() for p in PATHS},
        "classes": _class_report(dec, band, chosen),
        "class_note": "within a class the label shifts the residual by a constant, so the shares are those of the EEG features",
        "electrodes": electrodes,
        "regions": {"source": REGION_SOURCE, "by_region": region_report},
        "effective_hrf": {
            "basis": config.hrf_basis,
            "history_s": config.history_seconds,
            "selected_points": {"peak_s": hrf_all["peak_s"], "basis_weights": hrf_all["basis_weights"].tolist()},
            "how": "dominant direction of the ridge coefficients over the HRF basis functions, as a time course over the lag",
        },
        "per_point": _per_point_report(windows, regions, pcc, dominant, point_shares),
    }
    arrays = {
        "dominant": dominant, "point_shares": point_shares, "chosen": chosen, "pcc": pcc, "regions": regions,
        "region_names": sorted(set(regions)), "hrfs": hrfs, "hrf_selected": hrf_all, "electrode_shares": electrode_shares,
        "band_summary": band_summary, "region_report": region_report,
    }  # fmt: skip
    return report, arrays


def _windows_of_class(windows: PairedWindows, names: list[str], label: str | None) -> PairedWindows:
    """The windows of class ``label`` (all of them for None); a clear error for an unknown or
    absent class."""
    if label is None:
        return windows
    if label not in names:
        raise ConfigError(f"--label {label!r} is not one of the checkpoint's classes {names}")
    windows = windows.subset(np.asarray(windows.labels) == label)
    if not len(windows):
        raise ConfigError(f"--label {label!r}: the windows hold no window of that class")
    return windows


def _shares(values: np.ndarray) -> dict[str, float]:
    return {band: float(v) for band, v in zip(BANDS, values)}


def _variance_report(by_band: Contributions, chosen: np.ndarray) -> dict[str, float | None]:
    """Each path's prediction variance summed over the chosen points, and the residual's fraction."""
    variance = {p: float(by_band.variance[p][chosen].sum()) for p in PATHS}
    total = variance["prediction"]
    return {**variance, "residual_fraction_of_prediction": variance["residual"] / total if total > 0 else None}


def _completeness_report(dec: Decomposition, by_band: Contributions, chosen: np.ndarray) -> dict[str, Any]:
    """The checks that the attributions add up: the shares of a partition sum to 1 (the ridge
    path exactly; the residual up to the integrated-gradient gap)."""
    return {
        "share_sums": {p: float(by_band.share(p, chosen).sum()) for p in PATHS},
        "ridge_path_max_abs_error": ridge_completeness(dec),
        "residual_ig_relative_gap": ig_completeness(dec),
        "residual_ig_max_abs_convergence_delta": float(np.abs(dec.ig_delta).max()) if dec.ig_delta.size else 0.0,
        "note": COMPLETENESS_NOTE,
    }


def _class_report(dec: Decomposition, band: np.ndarray, chosen: np.ndarray) -> dict[str, Any]:
    """Band shares within each class with at least 3 frames."""
    classes = {}
    for name in sorted(set(dec.labels.tolist())):
        rows = np.flatnonzero(dec.labels == name)
        if len(rows) < 3:
            continue
        within = contributions(dec, band, len(BANDS), rows)
        classes[name] = {"frames": int(len(rows)), "band_shares": {p: _shares(within.share(p, chosen)) for p in PATHS}}
    return classes


def _electrode_report(by_electrode: Contributions, chosen: np.ndarray) -> tuple[dict[str, Any], np.ndarray]:
    """The electrodes' shares over the chosen points, per path, with their ranking; and the
    prediction's shares as an array (for the figure)."""
    summary = {p: by_electrode.share(p, chosen).tolist() for p in PATHS}
    shares = np.asarray(summary["prediction"])
    report = {
        "space": ELECTRODE_SPACE,
        "names": list(VIRTUAL_MONTAGE),
        "positions_mm": np.round(virtual_positions(), 2).tolist(),
        "shares": summary,
        "ranking": [VIRTUAL_MONTAGE[i] for i in np.argsort(-shares)],
    }
    return report, shares


def _per_point_report(
    windows: PairedWindows, regions: list[str], pcc: np.ndarray, dominant: np.ndarray, point_shares: np.ndarray
) -> dict[str, list]:
    """Every point's name, region, PCC, dominant band and band shares of the prediction."""
    return {
        "names": list(windows.target_names),
        "region": regions,
        "pcc": np.round(pcc, 4).tolist(),
        "dominant_band": [BANDS[i] for i in dominant],
        "band_shares_prediction": np.round(point_shares.T, 4).tolist(),
    }


def _region_report(
    dec: Decomposition, by_band: Contributions, regions: list[str], pcc: np.ndarray, chosen: np.ndarray, config
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Per region: its points, their PCC and variance, band shares, dominant band and effective
    HRF; and the effective HRFs themselves (for the figure)."""
    region_names = sorted(set(regions))
    region_index = np.array([region_names.index(r) for r in regions])
    report, hrfs = {}, {}
    for r, name in enumerate(region_names):
        mine = np.flatnonzero(region_index == r)
        hrf = effective_hrf(dec.coef[:, mine], len(VIRTUAL_MONTAGE), config)
        hrfs[name] = hrf
        shares = by_band.share("prediction", mine)
        report[name] = {
            "points": int(len(mine)),
            "selected_points": int(np.isin(mine, chosen).sum()),
            "mean_pcc": float(pcc[mine].mean()),
            "prediction_variance": float(by_band.variance["prediction"][mine].sum()),
            "band_shares": {p: _shares(by_band.share(p, mine)) for p in PATHS},
            "dominant_band": BANDS[int(np.argmax(shares))],
            "effective_hrf": {"peak_s": hrf["peak_s"], "basis_weights": hrf["basis_weights"].tolist()},
        }  # fmt: skip
    return report, hrfs


# ----------------------------------------------------------------------------------------------
# The command's entry point


def explain(
    checkpoint: str | Path, site_dir: str | Path, out_dir: str | Path, *, label: str | None = None, points: str = "top",
    steps: int = 32, max_rows: int | None = None, device: str | None = None, cache_dir: str | Path | None = None, progress: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Explain a checkpoint's point prediction on a site's windows (all subjects): ``fedneurogen explain``.

    Loads the checkpoint's EMA weights and the site with the checkpoint's preprocessing, then
    writes ``explain.json`` and the figures to ``out_dir``.

    Parameters
    ----------
    checkpoint : str | Path
        The checkpoint directory.
    site_dir : str | Path
        The site's BIDS root.
    out_dir : str | Path
        Where the report and figures go (created).
    label : str | None
        Explain the windows of this class only (``explain_point_prediction``).
    points : str
        Point selection (``select_points``).
    steps : int
        Integrated-gradient steps.
    max_rows : int | None
        Use at most this many frames; None: all.
    device : str | None
        Where the model runs; None: CUDA when available.
    cache_dir : str | Path | None
        The preprocessed-window cache; None: the default.
    progress : bool
        Show loading progress.

    Returns
    -------
    dict of str to Any
        The report, as written to ``explain.json`` (with the checkpoint, its hash, the site,
        ``subjects_seen_by_checkpoint``: which subjects it trained or validated on, by content,
        since the explanations and their PCC figures use every subject, and the figure names).

    Raises
    ------
    DataError
        ``label`` is one of the checkpoint's classes but the site has no window of it, or the
        site cannot be loaded.
    ConfigError
        The checkpoint has no fitted ridge path for the site's modality, or as in
        ``explain_point_prediction``.
    """

    checkpoint, site_dir, out_dir = Path(checkpoint), Path(site_dir), Path(out_dir)
    model, meta = load_checkpoint(checkpoint, device=device, use_ema=True)
    config = PreprocessConfig.from_stored(meta.get("preprocess"))
    windows = load_site(site_dir, config, cache_dir=cache_dir, progress=progress)
    if (
        label is not None
        and label in (meta.get("class_names") or [])
        and not np.any(np.asarray(windows.labels) == label)
    ):
        raise DataError(site_dir, f"no windows of class {label!r} (the site has {', '.join(windows.classes)})")
    head = model.modality_heads[windows.target_modality].mean
    if not head.ridge.fitted:
        raise ConfigError(
            f"checkpoint {checkpoint} has no fitted {windows.target_modality} ridge path: nothing to explain for this site's modality"
        )
    report, arrays = explain_point_prediction(
        model,
        windows,
        config,
        class_names=meta.get("class_names"),
        label=label,
        points=points,
        steps=steps,
        max_rows=max_rows,
    )
    seen = seen_by_checkpoint(meta, site_dir, windows, cache_dir)
    seen["note"] = "explanations use every subject's windows; their PCC figures are not held-out scores" + (
        f" ({seen['seen_count']} of the subjects were trained or validated on)" if seen["seen_count"] else ""
    )
    report = {
        "checkpoint": str(checkpoint),
        "checkpoint_hash": meta.get("content_hash"),
        "site": str(site_dir),
        "subjects_seen_by_checkpoint": seen,
        **report,
    }
    local = local_path_view(model, windows, coarse_regions(source_space().patch_centres), max_rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    report["plots"] = [p.name for p in write_figures(out_dir, windows, report, arrays)]
    if local is not None:  # the linear prediction is (1 - a) ridge path + a local path: both explained
        local["note"] = (
            "the ridge path above is the global (scalp) path; the model's linear prediction is "
            f"(1 - a) x it + a x the local path, a = {local['weight']:.2f}"
        )
        report["local_path"] = local
        report["plots"].append(plots.local_path_shares(local, out_dir / "local_path.png").name)
    write_json_atomic(out_dir / EXPLAIN_FILE, report)
    return report


# ----------------------------------------------------------------------------------------------
# Figures


def write_figures(out_dir: Path, windows: PairedWindows, report: dict[str, Any], arrays: dict[str, Any]) -> list[Path]:
    """Write the explanation's figures (drawn by ``plots``).

    ``dominant_band.png`` (map: fMRI on the inflated fsaverage5 surface, fNIRS channels seen
    from above), ``band_shares.png`` (bars per band and region), ``electrodes.png`` (scalp map
    and ranking), ``hrf.png`` (effective HRF per region).

    Parameters
    ----------
    out_dir : Path
        The folder.
    windows : PairedWindows
        The explained windows (modality, target positions).
    report : dict of str to Any
        The report of ``explain_point_prediction``.
    arrays : dict of str to Any
        Its arrays.

    Returns
    -------
    list of Path
        The four PNG files.
    """
    what = f"class '{report['label']}'" if report["label"] else "all windows"
    electrodes = report["electrodes"]
    return [
        plots.dominant_band_map(
            arrays["dominant"], windows.target_modality, windows.target_positions, windows.target_point_types,
            out_dir / "dominant_band.png", f"dominant EEG band per point ({what})",
        ),
        plots.band_share_bars(
            arrays["band_summary"], arrays["region_report"], report["points"]["rule"], out_dir / "band_shares.png"
        ),
        plots.electrode_shares(
            electrodes["positions_mm"], electrodes["names"], arrays["electrode_shares"], out_dir / "electrodes.png"
        ),
        plots.effective_hrfs(arrays["hrfs"], arrays["hrf_selected"], out_dir / "hrf.png"),
    ]  # fmt: skip
