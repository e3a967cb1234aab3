"""Every figure the package draws (PNG), in one place; the callers prepare the data and make one call.

- evaluation report (``evaluation_report.write_plots``): ``surface_maps``, ``channel_maps``,
  ``time_courses``, ``metric_bars``, ``spectra_and_connectivity``;
- explanations (``explain.write_figures``, ``fedneurogen explain``): ``dominant_band_map``,
  ``band_share_bars``, ``electrode_shares``, ``effective_hrfs``, ``local_path_shares``;
- fairness (``fairness.report``, ``simulations/fairness_table.py``): ``grouped_bars``,
  ``minority_f1_table``;
- federation (``server/checkpointing.py``): ``rounds_figure``.

Figures are built with matplotlib's object API (``Figure``, no pyplot), so they render with the
Agg canvas whatever backend the session has and never open a window; each file is written
atomically (``save_figure``). fMRI maps are drawn with nilearn on the fsaverage5 inflated surface
(ico4 values upsampled by ``surface.upsample_ico4``); fNIRS maps are channel midpoints seen from
above. This module draws only: it imports the core of ``shared``, never another workflow.
nilearn's plotting is imported inside the two surface figures (it costs ~2 s at import; no
other figure needs it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from fedneurogen.shared.features import EEG_BANDS
from fedneurogen.shared.io import atomic_path
from fedneurogen.shared.surface import FSAVERAGE5_PER_HEMI, load_fsaverage5, upsample_ico4

MAP_CMAP = "RdBu_r"
SERIES_COLORS = {"real": "black", "generated": "tab:red", "ridge": "tab:blue", "regressor": "tab:green"}
BANDS = tuple(EEG_BANDS)
BAND_COLORS = ("tab:purple", "tab:blue", "tab:green", "tab:orange", "tab:red")
SURFACE_VIEWS = (("left", "lateral"), ("left", "medial"), ("right", "lateral"), ("right", "medial"))


def save_figure(fig: Figure, path: str | Path, dpi: int = 100, tight: bool = True) -> Path:
    """Write a figure as PNG, atomically.

    Parameters
    ----------
    fig : Figure
        The figure.
    path : str | Path
        The PNG file.
    dpi : int
        Resolution.
    tight : bool
        Crop to the drawn content (``bbox_inches="tight"``); False keeps the figure's size (for
        figures laid out with ``tight_layout``).

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight" if tight else None)
    return path


def _symmetric_limit(*maps: np.ndarray) -> float:
    """Colour limit shared by maps that are compared: the 99th percentile of |value|."""
    values = np.abs(np.concatenate([np.ravel(m) for m in maps]))
    return float(np.percentile(values, 99)) or 1.0


def _shared_colorbar(fig: Figure, limit: float, label: str) -> None:
    mappable = ScalarMappable(Normalize(-limit, limit), colormaps[MAP_CMAP])
    fig.colorbar(mappable, ax=fig.axes, shrink=0.6, label=label)


def _hbo_mask(point_types: Sequence[str] | None, n_points: int) -> np.ndarray:
    """The HbO channels of an fNIRS montage (every point when the types are unknown)."""
    return np.array([t == "hbo" for t in point_types]) if point_types else np.ones(n_points, bool)


def _surface_row(fig: Figure, n_rows: int, row: int, surface: np.ndarray, draw: Callable[..., Any]) -> None:
    """One row of the four ``SURFACE_VIEWS`` of an fsaverage5 map: ``draw(mesh, part, hemi, view, ax)``."""
    mesh = load_fsaverage5()["inflated"]
    for col, (hemi, view) in enumerate(SURFACE_VIEWS):
        part = surface[:FSAVERAGE5_PER_HEMI] if hemi == "left" else surface[FSAVERAGE5_PER_HEMI:]
        ax = fig.add_subplot(n_rows, len(SURFACE_VIEWS), row * len(SURFACE_VIEWS) + col + 1, projection="3d")
        draw(mesh, part, hemi, view, ax)


def _from_above(ax, xy: np.ndarray, values: np.ndarray, **scatter: Any):
    """Points seen from above (x: left-right, y: posterior-anterior, mm)."""
    dots = ax.scatter(xy[:, 0], xy[:, 1], c=values, edgecolors="grey", **scatter)
    ax.set_aspect("equal")
    ax.set_xlabel("x (mm, left-right)")
    return dots


# ----------------------------------------------------------------------------------------------
# The evaluation report


def surface_maps(maps: Mapping[str, np.ndarray], path: str | Path, title: str, label: str = "BOLD (z)") -> Path:
    """fMRI maps on the inflated fsaverage5 surface, one colour scale for all.

    Parameters
    ----------
    maps : mapping of str to np.ndarray
        One row per map (``{'real': ico4 [5124], 'generated': ...}``): lateral and medial views
        of both hemispheres.
    path : str | Path
        The PNG file.
    title : str
        The figure's title.
    label : str
        The colour bar's label.

    Returns
    -------
    Path
        ``path``.
    """
    from nilearn import datasets, plotting

    sulcal = datasets.load_fsaverage_data("fsaverage5", data_type="sulcal")
    limit = _symmetric_limit(*maps.values())
    fig = Figure(figsize=(3.2 * len(SURFACE_VIEWS), 2.8 * len(maps)))
    for row, (name, values) in enumerate(maps.items()):

        def draw(mesh, part, hemi, view, ax, name=name):
            plotting.plot_surf_stat_map(
                mesh, part, hemi=hemi, view=view, bg_map=sulcal, axes=ax, figure=fig, colorbar=False,
                cmap=MAP_CMAP, vmin=-limit, vmax=limit, symmetric_cbar=True, title=f"{name}: {hemi} {view}",
            )  # fmt: skip

        _surface_row(fig, len(maps), row, upsample_ico4(values), draw)
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
    """fNIRS maps seen from above, HbO channels (all points when types are unknown), one panel
    per map and one colour scale.

    Parameters
    ----------
    maps : mapping of str to np.ndarray
        Name -> one value per point.
    positions : np.ndarray
        ``[n_points, 3]`` positions (mm).
    point_types : sequence of str or None
        ``hbo``/``hbr`` per point; None: unknown.
    path : str | Path
        The PNG file.
    title : str
        The figure's title.

    Returns
    -------
    Path
        ``path``.
    """
    keep = _hbo_mask(point_types, len(positions))
    xy = np.asarray(positions)[keep, :2]
    limit = _symmetric_limit(*(np.asarray(m)[keep] for m in maps.values()))
    fig = Figure(figsize=(5.0 * len(maps), 3.6))
    for i, (name, values) in enumerate(maps.items()):
        ax = fig.add_subplot(1, len(maps), i + 1)
        _from_above(ax, xy, np.asarray(values)[keep], cmap=MAP_CMAP, vmin=-limit, vmax=limit, s=160)
        if i == 0:
            ax.set_ylabel("y (mm, posterior-anterior)")
        ax.set_title(f"{name} (HbO)")
    _shared_colorbar(fig, limit, "HbO (model units: uM by default)")
    fig.suptitle(title)
    return save_figure(fig, path)


def time_courses(
    times: np.ndarray, series: Mapping[str, np.ndarray], point_names: Sequence[str], path: str | Path, title: str
) -> Path:
    """One panel per point, the series overlaid.

    Parameters
    ----------
    times : np.ndarray
        Times of the frames (s).
    series : mapping of str to np.ndarray
        ``{'real': [n_points, n_times], 'generated': ..., ...}``.
    point_names : sequence of str
        The points' names (one panel each).
    path : str | Path
        The PNG file.
    title : str
        The figure's title.

    Returns
    -------
    Path
        ``path``.
    """
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


def metric_bars(rows: Mapping[str, Mapping[str, float | None] | None], path: str | Path, title: str) -> Path:
    """Temporal PCC (all points and top-10 %) and spatial PCC, one bar per row of a report.

    Parameters
    ----------
    rows : mapping of str to mapping or None
        Row label -> its scores (``pcc_temporal``, ``pcc_temporal_top10``, ``pcc_spatial``), in
        the order shown; missing rows and values are left out. The model's rows (labels starting
        with ``point``, ``one sample``, ``mean of``) are red, ceilings grey, the rest blue.
    path : str | Path
        The PNG file.
    title : str
        The figure's title.

    Returns
    -------
    Path
        ``path``.
    """
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


# ----------------------------------------------------------------------------------------------
# Explanations (``fedneurogen explain``)


def dominant_band_map(
    dominant: np.ndarray, modality: str, positions: np.ndarray, point_types: Sequence[str] | None, path: str | Path, title: str
) -> Path:  # fmt: skip
    """The EEG band that dominates each target point: fMRI on the inflated fsaverage5 surface,
    fNIRS HbO channels seen from above.

    Parameters
    ----------
    dominant : np.ndarray
        Index into ``BANDS`` per target point.
    modality : str
        ``fmri`` or ``fnirs``.
    positions : np.ndarray
        ``[n_points, 3]`` target positions (mm; fNIRS only).
    point_types : sequence of str or None
        ``hbo``/``hbr`` per fNIRS point; None or empty: all points drawn.
    path : str | Path
        The PNG file.
    title : str
        The figure's title.

    Returns
    -------
    Path
        ``path``.
    """
    cmap = ListedColormap(BAND_COLORS)
    legend = [Patch(color=c, label=b) for b, c in zip(BANDS, BAND_COLORS)]
    if modality == "fmri":
        from nilearn import plotting

        hot = np.eye(len(BANDS))[dominant]  # categorical: upsample one-hot, keep the largest
        surface = np.argmax(upsample_ico4(hot), axis=1).astype(float) + 1.0
        fig = Figure(figsize=(3.2 * len(SURFACE_VIEWS), 3.2))

        def draw(mesh, part, hemi, view, ax):
            plotting.plot_surf_roi(
                mesh, part, hemi=hemi, view=view, axes=ax, figure=fig, colorbar=False, cmap=cmap, vmin=1, vmax=len(BANDS),
                avg_method="median", title=f"{hemi} {view}",
            )  # fmt: skip

        _surface_row(fig, 1, 0, surface, draw)
    else:
        fig = Figure(figsize=(5.5, 4.5))
        ax = fig.add_subplot(1, 1, 1)
        keep = _hbo_mask(point_types, len(dominant))
        xy = np.asarray(positions)[keep, :2]
        _from_above(ax, xy, dominant[keep], cmap=cmap, vmin=0, vmax=len(BANDS) - 1, s=160)
        ax.set_ylabel("y (mm, posterior-anterior)")
    fig.legend(handles=legend, loc="lower center", ncols=len(BANDS))
    fig.suptitle(title)
    return save_figure(fig, path)


def band_share_bars(
    summary: Mapping[str, Mapping[str, float]], regions: Mapping[str, Mapping], rule: str, path: str | Path
) -> Path:
    """Band shares of the prediction variance: per path over the selected points, and per region.

    Parameters
    ----------
    summary : mapping
        Path (``ridge_path``, ``residual``, ``prediction``, in that order) -> band -> share.
    regions : mapping
        Region -> its report, whose ``band_shares['prediction']`` maps band -> share.
    rule : str
        How the points were selected (in the title).
    path : str | Path
        The PNG file.

    Returns
    -------
    Path
        ``path``.
    """
    fig = Figure(figsize=(14, 5))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 2]})
    width = 0.27
    x = np.arange(len(BANDS))
    for i, (p, color) in enumerate(zip(summary, ("tab:blue", "tab:green", "black"))):
        left.bar(x + (i - 1) * width, [summary[p][b] for b in BANDS], width, label=p.replace("_", " "), color=color)
    left.set_xticks(x, BANDS)
    left.axhline(0, color="black", linewidth=0.8)
    left.set_ylabel("share of prediction variance")
    left.set_title("selected points", fontsize="medium")
    left.legend(fontsize="small")
    names = list(regions)
    bottom_pos, bottom_neg = np.zeros(len(names)), np.zeros(len(names))
    for b, color in zip(BANDS, BAND_COLORS):
        values = np.array([regions[n]["band_shares"]["prediction"][b] for n in names])
        base = np.where(values >= 0, bottom_pos, bottom_neg)
        right.bar(np.arange(len(names)), values, bottom=base, color=color, label=b)
        bottom_pos += np.maximum(values, 0)
        bottom_neg += np.minimum(values, 0)
    right.set_xticks(np.arange(len(names)), names, rotation=40, ha="right", fontsize="small")
    right.axhline(0, color="black", linewidth=0.8)
    right.set_title("per region (point prediction, all points of the region)", fontsize="medium")
    right.legend(fontsize="small", ncols=len(BANDS))
    fig.subplots_adjust(bottom=0.3, wspace=0.2)
    fig.suptitle(f"EEG band shares of the prediction variance; {rule}", fontsize="medium")
    return save_figure(fig, path)


def electrode_shares(positions: np.ndarray, names: Sequence[str], shares: np.ndarray, path: str | Path) -> Path:
    """Share of the prediction variance per virtual electrode: a scalp map and the top 15.

    Parameters
    ----------
    positions : np.ndarray
        ``[n_electrodes, 3]`` positions (mm).
    names : sequence of str
        The electrodes' names.
    shares : np.ndarray
        One share per electrode.
    path : str | Path
        The PNG file.

    Returns
    -------
    Path
        ``path``.
    """
    positions = np.asarray(positions)
    fig = Figure(figsize=(13, 5))
    left, right = fig.subplots(1, 2)
    limit = float(np.abs(shares).max()) or 1.0
    dots = _from_above(left, positions[:, :2], shares, cmap=MAP_CMAP, vmin=-limit, vmax=limit, s=220)
    for (px, py), name in zip(positions[:, :2], names):
        left.annotate(name, (px, py), ha="center", va="center", fontsize=6)
    left.set_ylabel("y (mm, posterior-anterior)")
    left.set_title("share of prediction variance per virtual electrode (seen from above)", fontsize="medium")
    fig.colorbar(dots, ax=left, shrink=0.8)
    top = np.argsort(-shares)[:15]
    right.barh(np.arange(len(top))[::-1], shares[top], color="tab:blue")
    right.set_yticks(np.arange(len(top))[::-1], [names[i] for i in top])
    right.set_title("top 15 electrodes", fontsize="medium")
    return save_figure(fig, path)


def effective_hrfs(hrfs: Mapping[str, Mapping], selected: Mapping[str, Any], path: str | Path) -> Path:
    """The ridge path's effective HRF per region, and that of the selected points in bold.

    Parameters
    ----------
    hrfs : mapping
        Region -> ``lags_s``, ``kernel`` and ``peak_s``.
    selected : mapping
        The same for the selected points.
    path : str | Path
        The PNG file.

    Returns
    -------
    Path
        ``path``.
    """
    fig = Figure(figsize=(9, 5))
    ax = fig.add_subplot(1, 1, 1)
    colors = colormaps["tab10"]
    for i, (name, hrf) in enumerate(hrfs.items()):
        label = f"{name} (peak {hrf['peak_s']:.1f} s)"
        ax.plot(hrf["lags_s"], hrf["kernel"], color=colors(i % 10), linewidth=1.0, label=label)
    label = f"selected points (peak {selected['peak_s']:.1f} s)"
    ax.plot(selected["lags_s"], selected["kernel"], color="black", linewidth=2.2, label=label)
    ax.axhline(0, color="grey", linewidth=0.6)
    ax.set_xlabel("lag after the EEG band power (s)")
    ax.set_ylabel("effective response (unit peak)")
    ax.set_title("effective HRF of the ridge path per region")
    ax.legend(fontsize="x-small", ncols=2)
    return save_figure(fig, path)


def local_path_shares(view: Mapping[str, Any], path: str | Path) -> Path:
    """A band x source-region heat map of the local path's variance shares.

    Parameters
    ----------
    view : mapping
        ``explain_sources.local_path_view``'s result (``band_by_region``, ``weight``,
        ``own_patch_share``).
    path : str | Path
        The PNG file.

    Returns
    -------
    Path
        ``path``.
    """
    regions = list(view["band_by_region"])
    grid = np.array([[view["band_by_region"][r][b] for r in regions] for b in BANDS])
    fig = Figure(figsize=(1.0 + 0.8 * len(regions), 4.2))
    ax = fig.subplots()
    limit = max(float(np.abs(grid).max()), 1e-9)
    image = ax.imshow(grid, cmap=MAP_CMAP, vmin=-limit, vmax=limit, aspect="auto")
    ax.set_yticks(np.arange(len(BANDS)), BANDS)
    ax.set_xticks(np.arange(len(regions)), regions, rotation=40, ha="right", fontsize="small")
    fig.colorbar(image, ax=ax, label="share of local-prediction variance")
    ax.set_title(
        f"local path (share a = {view['weight']:.2f} of the linear prediction): band x source region; "
        f"own patch {view['own_patch_share']:.0%}",
        fontsize="medium",
    )
    fig.subplots_adjust(bottom=0.3)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------------------------
# Fairness


def grouped_bars(
    path: str | Path,
    series: Mapping[str, tuple[Sequence[float], Sequence[float] | None]],
    categories: Sequence[str],
    *,
    title: str,
    ylabel: str,
    highlight: Sequence[str] = (),
) -> Path:
    """Grouped bars (one colour per series, error bars where given).

    Parameters
    ----------
    path : str | Path
        The PNG file.
    series : mapping of str to (sequence of float, sequence of float | None)
        Legend label -> (one mean per category, their standard deviations or None); NaN is drawn as 0.
    categories : sequence of str
        The x-axis categories.
    title : str
        The title.
    ylabel : str
        The y-axis label (the axis spans 0 to 1.05).
    highlight : sequence of str
        Categories to mark with a star (e.g. the minority classes).

    Returns
    -------
    Path
        ``path``.
    """
    x = np.arange(len(categories))
    width = 0.8 / max(len(series), 1)
    fig = Figure(figsize=(max(5.0, 1.4 * len(categories) * max(1, len(series)) / 2), 3.6))
    ax = fig.subplots()
    for k, (label, (means, stds)) in enumerate(series.items()):
        means = np.nan_to_num(np.asarray(means, dtype=float))
        errors = None if stds is None else np.nan_to_num(np.asarray(stds, dtype=float))
        ax.bar(x + (k - (len(series) - 1) / 2) * width, means, width, yerr=errors, capsize=2, label=label)
    ax.set_xticks(x, [f"{c}*" if c in highlight else str(c) for c in categories])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, ncol=min(4, len(series)), loc="lower right")
    fig.tight_layout()
    return save_figure(fig, path, dpi=110, tight=False)


def minority_f1_table(blocks: Sequence[Mapping[str, Any]], strategies: Sequence[str], path: str | Path) -> Path:
    """The fairness table: minority-class F1 per condition and strategy, one panel per protocol,
    the mean majority F1 (no augmentation, and generation) as markers.

    Parameters
    ----------
    blocks : sequence of mapping
        One per protocol: ``protocol['name']`` and ``goals['conditions']``, each condition with
        ``minority``, ``minority_f1`` (strategy -> F1 or None) and ``majority_f1`` (``none``,
        ``generate``).
    strategies : sequence of str
        The strategies drawn, in order (those the conditions have).
    path : str | Path
        The PNG file.

    Returns
    -------
    Path
        ``path``.
    """
    fig = Figure(figsize=(5.5 * len(blocks), 4.4))
    axes = fig.subplots(1, len(blocks), squeeze=False)
    for ax, block in zip(axes[0], blocks):
        conditions = block["goals"]["conditions"]
        x = np.arange(len(conditions))
        names = [n for n in strategies if n in conditions[0]["minority_f1"]]
        width = 0.8 / len(names)
        for k, name in enumerate(names):
            values = [np.nan_to_num(c["minority_f1"][name] or 0.0) for c in conditions]
            ax.bar(x + (k - (len(names) - 1) / 2) * width, values, width, label=f"minority F1, {name}")
        for key, style in (("none", "k_"), ("generate", "r_")):
            majority = [c["majority_f1"][key] for c in conditions]
            ax.plot(x, majority, style, markersize=22, label=f"mean majority F1, {key}")
        ax.set_xticks(x, [f"{c['minority']} cut" for c in conditions])
        ax.set_ylim(0, 1.05)
        ax.set_title(block["protocol"]["name"], fontsize=10)
        ax.set_ylabel("F1 (mean over folds)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    return save_figure(fig, path, dpi=110, tight=False)


# ----------------------------------------------------------------------------------------------
# Federation


def rounds_figure(
    panels: Sequence[tuple[str, Mapping[str, Sequence[tuple[int, float]]], Sequence[tuple[int, float]]]],
    path: str | Path,
) -> Path:
    """Metrics by round, one panel each: the aggregate bold, each site thin.

    Parameters
    ----------
    panels : sequence of (str, mapping, sequence)
        ``(title, {node: [(round, value), ...]}, [(round, aggregate), ...])``; a panel with
        neither says n/a.
    path : str | Path
        The PNG file.

    Returns
    -------
    Path
        ``path``.
    """
    fig = Figure(figsize=(4 * len(panels), 3.2))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, per_site, aggregate) in zip(axes, panels):
        for node, points in per_site.items():
            ax.plot(*zip(*points), lw=0.8, alpha=0.6, marker=".", label=f"node {node[-4:]}")
        if aggregate:
            ax.plot(*zip(*aggregate), lw=2.2, color="black", marker="o", label="aggregate")
        ax.set_title(title)
        ax.set_xlabel("round")
        if not aggregate and not per_site:
            ax.text(0.5, 0.5, "n/a", ha="center", va="center", transform=ax.transAxes)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path, tight=False)
