"""Figures of an evaluation report: maps, time courses, metric bars, spectra and connectivity (PNG).

Figures are built with matplotlib's object API (``Figure``, no pyplot), so they render with the
Agg canvas whatever backend the session has and never open a window; each file is written
atomically. fMRI maps are drawn with nilearn on the fsaverage5 inflated surface (ico4 values
upsampled by ``surface.upsample_ico4``); fNIRS maps are channel midpoints seen from above.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from fedneurogen.shared.io import atomic_path

MAP_CMAP = "RdBu_r"
SERIES_COLORS = {"real": "black", "generated": "tab:red", "ridge": "tab:blue", "regressor": "tab:green"}


def save_figure(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return path


def _symmetric_limit(*maps: np.ndarray) -> float:
    """Colour limit shared by maps that are compared: the 99th percentile of |value|."""
    values = np.abs(np.concatenate([np.ravel(m) for m in maps]))
    return float(np.percentile(values, 99)) or 1.0


def _shared_colorbar(fig: Figure, limit: float, label: str) -> None:
    mappable = ScalarMappable(Normalize(-limit, limit), colormaps[MAP_CMAP])
    fig.colorbar(mappable, ax=fig.axes, shrink=0.6, label=label)


def surface_maps(maps: Mapping[str, np.ndarray], path: str | Path, title: str, label: str = "BOLD (z)") -> Path:
    """One row per map (``{'real': ico4 [5124], 'generated': ...}``), lateral and medial views of
    both hemispheres on the fsaverage5 inflated surface, one colour scale for all."""
    from nilearn import datasets, plotting

    from fedneurogen.shared.surface import FSAVERAGE5_PER_HEMI, load_fsaverage5, upsample_ico4

    mesh = load_fsaverage5()["inflated"]
    sulcal = datasets.load_fsaverage_data("fsaverage5", data_type="sulcal")
    limit = _symmetric_limit(*maps.values())
    views = [("left", "lateral"), ("left", "medial"), ("right", "lateral"), ("right", "medial")]
    fig = Figure(figsize=(3.2 * len(views), 2.8 * len(maps)))
    for row, (name, values) in enumerate(maps.items()):
        surface = upsample_ico4(values)
        for col, (hemi, view) in enumerate(views):
            part = surface[:FSAVERAGE5_PER_HEMI] if hemi == "left" else surface[FSAVERAGE5_PER_HEMI:]
            ax = fig.add_subplot(len(maps), len(views), row * len(views) + col + 1, projection="3d")
            plotting.plot_surf_stat_map(
                mesh, part, hemi=hemi, view=view, bg_map=sulcal, axes=ax, figure=fig, colorbar=False,
                cmap=MAP_CMAP, vmin=-limit, vmax=limit, symmetric_cbar=True, title=f"{name}: {hemi} {view}",
            )  # fmt: skip
    _shared_colorbar(fig, limit, label)
    fig.suptitle(title)
    return save_figure(fig, path)


def channel_maps(
    maps: Mapping[str, np.ndarray],
    positions: np.ndarray,
    point_types: Sequence[str] | None,
    path: str | Path,
    title: str,
) -> Path:
    """fNIRS maps seen from above (x: left-right, y: posterior-anterior, mm), HbO channels (all
    points when types are unknown), one panel per map and one colour scale."""
    keep = np.array([t == "hbo" for t in point_types]) if point_types is not None else np.ones(len(positions), bool)
    xy = np.asarray(positions)[keep, :2]
    limit = _symmetric_limit(*(np.asarray(m)[keep] for m in maps.values()))
    fig = Figure(figsize=(5.0 * len(maps), 3.6))
    for i, (name, values) in enumerate(maps.items()):
        ax = fig.add_subplot(1, len(maps), i + 1)
        ax.scatter(
            xy[:, 0],
            xy[:, 1],
            c=np.asarray(values)[keep],
            cmap=MAP_CMAP,
            vmin=-limit,
            vmax=limit,
            s=160,
            edgecolors="grey",
        )
        ax.set_aspect("equal")
        ax.set_xlabel("x (mm, left-right)")
        if i == 0:
            ax.set_ylabel("y (mm, posterior-anterior)")
        ax.set_title(f"{name} (HbO)")
    _shared_colorbar(fig, limit, "HbO (model units: uM by default)")
    fig.suptitle(title)
    return save_figure(fig, path)


def time_courses(
    times: np.ndarray, series: Mapping[str, np.ndarray], point_names: Sequence[str], path: str | Path, title: str
) -> Path:
    """One panel per point: the series ``{'real': [n_points, n_times], 'generated': ..., ...}``."""
    fig = Figure(figsize=(10, 2.2 * len(point_names)))
    axes = fig.subplots(len(point_names), 1, sharex=True, squeeze=False)[:, 0]
    for i, (ax, name) in enumerate(zip(axes, point_names)):
        for key, values in series.items():
            ax.plot(times, values[i], label=key, color=SERIES_COLORS.get(key), linewidth=1.6 if key == "real" else 1.1)
        ax.set_ylabel(name)
    axes[0].legend(loc="upper right", ncols=len(series), fontsize="small")
    axes[-1].set_xlabel("time in run (s)")
    fig.suptitle(title)
    return save_figure(fig, path)


def metric_bars(report: Mapping, path: str | Path, title: str) -> Path:
    """Temporal PCC (all points and top-10 %) of the model's point prediction and sample, the
    baselines and the ceilings; spatial PCC of those that have it. Missing values are left out."""
    from fedneurogen.shared.workflows.evaluation import ROWS, report_row

    rows = {label.replace("model: ", ""): report_row(dict(report), p) for label, p in ROWS}
    fig = Figure(figsize=(14, 5.5))
    axes = fig.subplots(1, 3)
    for ax, metric in zip(axes, ("pcc_temporal", "pcc_temporal_top10", "pcc_spatial")):
        bars = {name: row.get(metric) for name, row in rows.items() if row}
        bars = {k: float(v) for k, v in bars.items() if v is not None and np.isfinite(v)}
        colors = [
            "tab:red" if k.startswith(("point", "one sample", "mean of")) else "grey" if "ceiling" in k else "tab:blue"
            for k in bars
        ]
        ax.bar(list(bars), list(bars.values()), color=colors)
        for x, v in enumerate(bars.values()):
            ax.annotate(f"{v:.3f}", (x, v), ha="center", va="bottom" if v >= 0 else "top", fontsize="small")
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_title(metric.replace("_", " ").replace("top10", "top-10 %"))
        ax.set_xticks(range(len(bars)), list(bars), rotation=40, ha="right", fontsize="small")
    fig.subplots_adjust(bottom=0.38, wspace=0.25)
    fig.suptitle(title)
    return save_figure(fig, path)


def spectra_and_connectivity(
    freqs: np.ndarray, spectra: Mapping[str, np.ndarray], fcs: Mapping[str, np.ndarray], path: str | Path, title: str
) -> Path:  # fmt: skip
    """Real vs generated samples as data: mean log-power spectra, then FC matrices side by side.

    Parameters
    ----------
    freqs : np.ndarray
        Frequencies of the spectra, Hz.
    spectra : mapping of str to np.ndarray
        ``{'real': [n_freqs], 'model': ..., 'linear-Gaussian': ...}`` mean log10 power over points.
    fcs : mapping of str to np.ndarray
        The same keys: ``[n_parcels, n_parcels]`` connectivity.
    path : path-like
        The PNG file.
    title : str
        The figure's title.

    Returns
    -------
    Path
        ``path``.
    """
    fig = Figure(figsize=(4.2 * (1 + len(fcs)), 3.8))
    axes = fig.subplots(1, 1 + len(fcs), squeeze=False)[0]
    colors = {"real": "black", "model": "tab:red", "linear-Gaussian": "tab:blue"}
    for name, values in spectra.items():
        axes[0].plot(freqs, values, label=name, color=colors.get(name), linewidth=1.6 if name == "real" else 1.1)
    axes[0].set_xlabel("frequency (Hz)")
    axes[0].set_ylabel("log10 power (mean over points)")
    axes[0].legend(fontsize="small")
    axes[0].set_title("spectra")
    image = None
    for ax, (name, fc) in zip(axes[1:], fcs.items()):
        image = ax.imshow(fc, vmin=-1, vmax=1, cmap=MAP_CMAP)
        ax.set_title(f"FC: {name}")
        ax.set_xticks([])
        ax.set_yticks([])
    if image is not None:
        fig.colorbar(image, ax=list(axes[1:]), shrink=0.8, label="correlation")
    fig.suptitle(title)
    return save_figure(fig, path)
