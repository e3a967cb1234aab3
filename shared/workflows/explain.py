"""Which EEG bands, electrodes and cortical regions drive each generated target point.

The point prediction is ``ridge path + learned residual`` (``fedneurogen.shared.model.mean``),
both functions of the hemodynamic design: EEG log band power on the 64-electrode virtual montage,
convolved with an HRF basis (features ordered virtual electrode x band x basis function,
``fedneurogen.shared.design``). Every explanation here attributes the prediction of each target
point to those features, then sums the attributions over a feature group (a band, an electrode,
a basis function):

- ridge path, exact: feature ``j`` contributes ``a_j(x) = b_j (x_j - m_j)`` (``m``: the training
  mean the path stores), so the attributions of a frame sum to its prediction minus the
  prediction at ``m`` (completeness, to rounding);
- learned residual, integrated gradients (Captum's ``IntegratedGradients``, midpoint rule; the
  baseline is the same training mean, which the residual sees as the zero input): for each latent
  dimension of the residual network, then through its linear per-point readout, which is exact
  because integrated gradients are linear in the output. Their sum approaches the residual minus
  its value at the baseline as the number of steps grows (the gap and Captum's convergence delta
  are reported);
- the label enters the residual's latent after its non-linearity, so within one class it shifts
  the prediction by a constant: within-class shares are those of the EEG features alone.

A group's share of a point's prediction variance over a set of frames is
``Cov(a_G, y) / Var(y)``: the shares of a partition sum to 1 (exactly for the ridge path; up to
the integrated-gradient gap for the residual), and for the ridge path ``Cov(a_G, y_ridge)`` is its
coefficients times the design covariance, ``b_Gᵀ (Σ b)_G``. With correlated features a share can
be negative (a group that cancels part of another's effect). Summaries over several points weight
each point by its prediction variance: ``Σ_n Cov(a_G,n, y_n) / Σ_n Var(y_n)``.

Regions: no cortical surface atlas ships with nilearn offline (``fetch_atlas_surf_destrieux``
downloads), so points and electrodes are grouped into coarse lobes per hemisphere from their MNI
coordinates (``coarse_regions``); the output says so.

The effective hemodynamic response of a region is the ridge path's HRF-basis weights as a time
course: the dominant direction (first right singular vector) of its points' coefficients over
the basis functions, ``Σ_k v_k h_k(lag)``, signed so that its largest excursion is positive.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from captum.attr import IntegratedGradients

from fedneurogen.shared.config import PreprocessConfig
from fedneurogen.shared.data import load_site
from fedneurogen.shared.design import (
    HRF_BASES,
    VIRTUAL_MONTAGE,
    _basis_table,
    global_part,
    unique_frames,
    virtual_positions,
)
from fedneurogen.shared.errors import ConfigError, DataError
from fedneurogen.shared.features import EEG_BANDS
from fedneurogen.shared.io import write_json_atomic
from fedneurogen.shared.model import Batch, load_checkpoint
from fedneurogen.shared.recording import PairedWindows
from fedneurogen.shared.sources import source_space
from fedneurogen.shared.workflows import plots
from fedneurogen.shared.workflows.evaluation_subjects import seen_by_checkpoint
from fedneurogen.shared.workflows.explain_sources import local_path_view

EXPLAIN_FILE = "explain.json"
BANDS = tuple(EEG_BANDS)
PATHS = ("ridge_path", "residual", "prediction")
REGION_SOURCE = (
    "coarse lobes per hemisphere from MNI coordinates (frontal, central, parietal, temporal, occipital): no cortical surface "
    "atlas ships with nilearn offline (fetch_atlas_surf_destrieux downloads one)"
)
METHODS = {
    "ridge_path": "exact: coefficient x (design - training mean); variance shares = coefficients x design covariance, b_G^T (Sigma b)_G / b^T Sigma b",
    "residual": "integrated gradients (Captum, {steps} midpoint steps, baseline: the training mean design) per latent dimension, "
    "through the linear per-point readout",
    "prediction": "sum of the two: Cov(a_ridge_G + a_residual_G, y) / Var(y), y = ridge path + residual",
}
#: Captum's quadrature rule for the integrated gradients: the midpoints of ``steps`` equal intervals.
IG_METHOD = "riemann_middle"
#: Fraction of target points the ``top`` selection keeps (best in-sample PCC on the site).
TOP_FRACTION = 0.1


# ----------------------------------------------------------------------------------------------
# Feature layout and regions


def feature_groups(
    n_features: int, n_electrodes: int, n_bands: int = len(BANDS)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``(electrode, band, basis)`` index of every design column (electrode x band x basis order).

    Parameters
    ----------
    n_features : int
        Width of the design.
    n_electrodes : int
        Virtual electrodes (64).
    n_bands : int
        EEG bands.

    Returns
    -------
    electrode, band, basis : np.ndarray
        int ``[n_features]`` each.

    Raises
    ------
    ConfigError
        ``n_features`` is not ``n_electrodes x n_bands x`` a whole number of basis functions.
    """
    n_basis, leftover = divmod(n_features, n_electrodes * n_bands)
    if leftover or n_basis < 1:
        raise ConfigError(
            f"a design of {n_features} columns is not {n_electrodes} electrodes x {n_bands} bands x an HRF basis"
        )
    column = np.arange(n_features)
    return column // (n_bands * n_basis), (column // n_basis) % n_bands, column % n_basis


def one_hot(groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Indicator matrix of each feature's group.

    Parameters
    ----------
    groups : np.ndarray
        int ``[n_features]`` group index of each feature.
    n_groups : int
        Number of groups.

    Returns
    -------
    np.ndarray
        float64 ``[n_features, n_groups]``.
    """
    out = np.zeros((len(groups), n_groups))
    out[np.arange(len(groups)), groups] = 1.0
    return out


def lobe(position_mm: Sequence[float]) -> str:
    """Coarse lobe of a point from its MNI/fsaverage coordinates.

    Boundaries follow the parieto-occipital sulcus (y ~ -72), the central sulcus region
    (-40 < y < -5 above z = 5) and the Sylvian fissure (z ~ 5).

    Parameters
    ----------
    position_mm : sequence of float
        ``(x, y, z)`` in mm.

    Returns
    -------
    str
        ``frontal``, ``central``, ``parietal``, ``temporal`` or ``occipital``.
    """
    _, y, z = (float(v) for v in position_mm)
    if y < -72:
        return "occipital"
    if z < 5 and y < 10:
        return "temporal"
    if y < -40:
        return "parietal"
    if y < -5:
        return "central"
    return "frontal"


def coarse_regions(positions: np.ndarray, names: Sequence[str] | None = None) -> list[str]:
    """A ``'left occipital'``-style region for each point.

    The hemisphere comes from an ``L``/``R`` vertex name (ico4), else from the sign of x
    (``'midline'`` within 2 mm of x = 0); the lobe from ``lobe``.

    Parameters
    ----------
    positions : np.ndarray
        ``[n_points, 3]`` mm.
    names : sequence of str | None
        Point names (``L123``, ``S1_D1 hbo``); None: hemisphere from x only.

    Returns
    -------
    list of str
        ``"<hemisphere> <lobe>"`` per point.
    """
    out = []
    for i, position in enumerate(np.asarray(positions, dtype=float)):
        name = names[i] if names is not None else ""
        if name[:1] in ("L", "R") and name[1:].isdigit():
            hemi = "left" if name[0] == "L" else "right"
        else:
            hemi = "left" if position[0] < -2 else "right" if position[0] > 2 else "midline"
        out.append(f"{hemi} {lobe(position)}")
    return out


# ----------------------------------------------------------------------------------------------
# Attributions


def ridge_attributions(design: np.ndarray, coef: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """Exact attributions of a linear path ``design @ coef + intercept``.

    ``a[i, j, n] = coef[j, n] (design[i, j] - baseline[j])``; per row they sum to the prediction
    minus the prediction at ``baseline``. Materialises ``n x D x N``: for small inputs (tests,
    single frames); the variance shares use ``explain_point_prediction``'s covariances instead.

    Parameters
    ----------
    design : np.ndarray
        ``[n, D]`` design rows.
    coef : np.ndarray
        ``[D, N]`` coefficients.
    baseline : np.ndarray
        ``[D]`` reference design (the training mean).

    Returns
    -------
    np.ndarray
        float64 ``[n, D, N]``.
    """
    centred = np.asarray(design, dtype=np.float64) - np.asarray(baseline, dtype=np.float64)
    return centred[:, :, None] * np.asarray(coef, dtype=np.float64)[None]


def integrated_gradients(
    fn, inputs: torch.Tensor, baseline: torch.Tensor, steps: int = 32, chunk: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integrated gradients of every output of ``fn`` for every row of ``inputs`` (Captum).

    ``captum.attr.IntegratedGradients`` once per output (its ``target``): ``(x - x0)`` times
    the mean of ``d fn / d x`` at ``x0 + alpha (x - x0)``, alpha at the ``steps`` midpoints of
    [0, 1] (``IG_METHOD``). Per row and output the attributions sum to ``fn(x) - fn(x0)`` plus
    Captum's convergence delta (the quadrature error), which is returned with them.

    Parameters
    ----------
    fn : callable
        Rows ``[n, D]`` -> ``[n, R]`` (e.g. an ``nn.Module``).
    inputs : torch.Tensor
        ``[n, D]`` rows to explain.
    baseline : torch.Tensor
        ``[D]`` reference row ``x0``.
    steps : int
        Quadrature points (at least 2).
    chunk : int
        Bounds memory: about ``chunk * steps`` scaled rows per forward pass (at least ``n``).

    Returns
    -------
    attributions : torch.Tensor
        ``[n, R, D]``.
    delta : torch.Tensor
        ``[n, R]`` Captum's convergence delta, ``sum_j attributions - (fn(x) - fn(x0))``.

    Raises
    ------
    ConfigError
        ``steps < 2``.
    """
    if steps < 2:  # Captum's quadrature rules need two points
        raise ConfigError(f"integrated gradients need at least 2 steps, got {steps}")
    baseline = baseline.to(inputs.dtype)[None]
    if not len(inputs):
        return torch.zeros((0, 0, inputs.shape[1])), torch.zeros((0, 0))
    with torch.no_grad():
        n_outputs = fn(baseline).shape[1]
    ig = IntegratedGradients(fn)
    batch = max(len(inputs), chunk * steps)
    kwargs = {"n_steps": steps, "method": IG_METHOD, "internal_batch_size": batch, "return_convergence_delta": True}
    attributions, deltas = zip(*(ig.attribute(inputs, baseline, target=r, **kwargs) for r in range(n_outputs)))
    return torch.stack(attributions, dim=1).detach(), torch.stack(deltas, dim=1).detach()


@dataclass
class Decomposition:
    """The point prediction at a set of frames, split into its paths (``decompose``).

    Holds what the variance shares need: the residual's integrated gradients are kept per
    latent dimension, before the linear readout.

    Attributes
    ----------
    design : np.ndarray
        ``[n, D]`` design rows (one per distinct run frame).
    ridge : np.ndarray
        ``[n, N]`` ridge path prediction.
    residual : np.ndarray
        ``[n, N]`` learned residual.
    coef : np.ndarray
        ``[D, N]`` ridge coefficients.
    intercept : np.ndarray
        ``[N]`` ridge intercepts.
    baseline : np.ndarray
        ``[D]`` the training mean design.
    readout : np.ndarray
        ``[N, R]`` the residual's per-point readout.
    ig : np.ndarray
        ``[n, R, D]`` integrated gradients of the residual's latent (before the readout).
    ig_delta : np.ndarray
        ``[n, R]`` Captum's convergence delta of ``ig``: its sum over features minus the
        latent's change from the baseline.
    residual_at_baseline : np.ndarray
        ``[N]`` the residual at the baseline design (same label).
    labels : np.ndarray
        Class name of every row.
    target : np.ndarray
        ``[n, N]`` the recorded target at the rows.
    steps : int
        Integrated-gradient steps used.
    """

    design: np.ndarray
    ridge: np.ndarray
    residual: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    baseline: np.ndarray
    readout: np.ndarray
    ig: np.ndarray
    ig_delta: np.ndarray  # [n, R] Captum's convergence delta of ig
    residual_at_baseline: np.ndarray  # [N] the residual at the baseline design (same label)
    labels: np.ndarray
    target: np.ndarray  # [n, N] the recorded target at the rows
    steps: int

    @property
    def prediction(self) -> np.ndarray:
        """``[n, N]`` the point prediction: ridge path + residual."""
        return self.ridge + self.residual

    def residual_attributions(self, groups: np.ndarray, n_groups: int) -> np.ndarray:
        """Residual attributions summed over each feature group (small inputs only).

        Parameters
        ----------
        groups : np.ndarray
            int ``[D]`` group of each feature.
        n_groups : int
            Number of groups ``G``.

        Returns
        -------
        np.ndarray
            ``[n, G, N]``.
        """
        grouped = self.ig @ one_hot(groups, n_groups)  # [n, R, G]
        return np.einsum("irg,nr->ign", grouped, self.readout)


def decompose(
    model, windows: PairedWindows, label_index: int | None = None, steps: int = 32, max_rows: int | None = None
) -> Decomposition:
    """Split the point prediction of ``model`` on ``windows`` into ridge path and residual.

    Evaluated at every distinct frame of ``windows`` (each run frame once), with the
    residual's integrated gradients. Puts the model in eval mode.

    Parameters
    ----------
    model : NeuroGenModel
        The model (its head for the windows' modality is explained).
    windows : PairedWindows
        Windows with a hemodynamic design.
    label_index : int | None
        The class the residual is conditioned on; None (or negative): the null label.
    steps : int
        Integrated-gradient steps.
    max_rows : int | None
        Use at most this many frames (evenly spaced); None: all.

    Returns
    -------
    Decomposition
        The paths, attributions and targets at the frames (float64).

    Raises
    ------
    ConfigError
        The windows carry no design, one of another width than the ridge path, or do not fit
        the model (``NeuroGenModel.layout``).
    """

    if windows.design is None:
        raise ConfigError(
            "the windows carry no hemodynamic design (load the site with fedneurogen.shared.data.load_site)"
        )
    rows_w, rows_f = unique_frames(windows)
    if max_rows is not None and len(rows_w) > max_rows:
        keep = np.unique(np.linspace(0, len(rows_w) - 1, max_rows).round().astype(int))
        rows_w, rows_f = rows_w[keep], rows_f[keep]
    model.eval()
    batch = Batch.from_windows(windows.subset(np.arange(min(1, len(windows)))), device=model.device)
    layout = model.layout(batch)  # checks the site against the model (rates, point counts)
    head = model.modality_heads[windows.target_modality].mean
    names = list(windows.target_names) if windows.target_modality == "fnirs" else None
    slots = head.ridge.slots(names, layout.n_points)
    pick = (lambda t: t) if slots is None else (lambda t: t[..., slots])  # noqa: E731
    # the scalp part of a scalp+source design: the local path has its own view (explain_sources.py)
    design_np = global_part(np.asarray(windows.design[rows_w, rows_f], dtype=np.float32))
    if design_np.shape[1] != head.ridge.coef.shape[0]:
        raise ConfigError(
            f"the site's design has {design_np.shape[1]} features; the model's ridge path expects {head.ridge.coef.shape[0]}"
        )
    design = torch.as_tensor(design_np, device=model.device)
    null = head.num_classes
    index = torch.full(
        (1,),
        null if label_index is None or label_index < 0 else int(label_index),
        dtype=torch.long,
        device=model.device,
    )
    with torch.no_grad():
        coef, intercept = pick(head.ridge.coef), pick(head.ridge.intercept)
        ridge = design @ coef + intercept
        standardised = head.ridge.standardise(design)
        embed = head.label_embed(index)
        residual = pick(head.readout(head.residual(standardised) + embed))
        zero = torch.zeros((1, design.shape[1]), device=model.device)
        at_baseline = pick(head.readout(head.residual(zero) + embed))[0]
        readout = head.readout.weight if slots is None else head.readout.weight[slots]
    ig, ig_delta = integrated_gradients(
        head.residual, standardised, torch.zeros(design.shape[1], device=model.device), steps=steps
    )
    cpu = lambda t: t.detach().double().cpu().numpy()  # noqa: E731
    return Decomposition(
        design=design_np.astype(np.float64), ridge=cpu(ridge), residual=cpu(residual), coef=cpu(coef), intercept=cpu(intercept),
        baseline=cpu(head.ridge.feature_mean), readout=cpu(readout), ig=cpu(ig), ig_delta=cpu(ig_delta), residual_at_baseline=cpu(at_baseline),
        labels=np.asarray(windows.labels)[rows_w].astype(str), target=np.asarray(windows.target[rows_w, :, rows_f], dtype=np.float64),
        steps=steps,
    )  # fmt: skip


@dataclass
class Contributions:
    """Covariances of group attributions with each path's prediction, over one set of frames.

    Shares are the ratio ``Cov(a_G, y) / Var(y)`` (``share``).

    Attributes
    ----------
    covariance : dict of str to np.ndarray
        ``Cov(a_G, y)`` ``[G, N]`` per path (``ridge_path``, ``residual``, ``prediction``).
    variance : dict of str to np.ndarray
        ``Var(y)`` ``[N]`` per path.
    """

    covariance: dict[str, np.ndarray]
    variance: dict[str, np.ndarray]

    def share(self, path: str, points: np.ndarray | None = None) -> np.ndarray:
        """Each group's share of a path's prediction variance.

        Parameters
        ----------
        path : str
            ``ridge_path``, ``residual`` or ``prediction``.
        points : np.ndarray | None
            Indices of points to summarise; None: per point.

        Returns
        -------
        np.ndarray
            Per-point shares ``[G, N]`` (0 where the variance is 0), or with ``points`` the
            variance-weighted share over them ``[G]``.
        """
        cov, var = self.covariance[path], self.variance[path]
        if points is None:
            return cov / np.where(var > 0, var, np.inf)
        total = float(var[points].sum())
        return cov[:, points].sum(axis=1) / total if total > 0 else np.zeros(cov.shape[0])


def contributions(
    dec: Decomposition, groups: np.ndarray, n_groups: int, rows: np.ndarray | None = None
) -> Contributions:
    """Each group's covariance with each path's prediction over a set of frames.

    Parameters
    ----------
    dec : Decomposition
        The decomposition.
    groups : np.ndarray
        int ``[D]`` group of each feature (``feature_groups``).
    n_groups : int
        Number of groups ``G``.
    rows : np.ndarray | None
        Frames (rows of ``dec``) to use; None: all.

    Returns
    -------
    Contributions
        Covariances ``[G, N]`` and variances ``[N]`` of ``ridge_path``, ``residual`` and
        ``prediction``.
    """
    rows = np.arange(len(dec.design)) if rows is None else np.asarray(rows)
    n = max(len(rows), 1)
    centre = lambda a: a[rows] - a[rows].mean(axis=0)  # noqa: E731
    x, y_ridge, y_res = centre(dec.design), centre(dec.ridge), centre(dec.residual)
    hot = one_hot(groups, n_groups)
    ig = centre(dec.ig @ hot)  # [n, R, G]

    def ridge_cov(y: np.ndarray) -> np.ndarray:  # Σ_{j in G} b_j Cov(x_j, y)
        return hot.T @ (dec.coef * (x.T @ y / n))

    def residual_cov(y: np.ndarray) -> np.ndarray:  # Σ_r W_nr Cov(IG_G,r, y_n), as matrix products
        cov = (ig.reshape(len(ig), -1).T @ y / n).reshape(ig.shape[1], ig.shape[2], -1)  # [R, G, N]
        return np.einsum("rgn,nr->gn", cov, dec.readout)

    r_r, r_s, s_r, s_s = ridge_cov(y_ridge), ridge_cov(y_res), residual_cov(y_ridge), residual_cov(y_res)
    total = y_ridge + y_res
    return Contributions(
        covariance={"ridge_path": r_r, "residual": s_s, "prediction": r_r + r_s + s_r + s_s},
        variance={"ridge_path": (y_ridge**2).mean(0), "residual": (y_res**2).mean(0), "prediction": (total**2).mean(0)},
    )


# ----------------------------------------------------------------------------------------------
# Effective hemodynamic response


def effective_hrf(coef: np.ndarray, n_electrodes: int, config) -> dict[str, Any]:
    """The ridge path's effective hemodynamic response for a set of points (see the module docstring).

    With a single basis function the response is that function.

    Parameters
    ----------
    coef : np.ndarray
        ``[D, n_points]`` ridge coefficients of the points.
    n_electrodes : int
        Virtual electrodes of the design (64).
    config : PreprocessConfig
        ``hrf_basis`` and ``history_seconds`` of the design.

    Returns
    -------
    dict of str to Any
        ``lags_s`` (``[L]`` s), ``kernel`` (``[L]``, unit peak, largest excursion positive),
        ``peak_s`` (lag of its maximum) and ``basis_weights`` (``[K]``).
    """

    lags, basis = _basis_table(config.hrf_basis, config.history_seconds)
    inside = lags <= config.history_seconds
    lags, basis = lags[inside], basis[:, inside]
    k = HRF_BASES[config.hrf_basis]
    coef = np.asarray(coef, dtype=np.float64)
    rows = coef.reshape(n_electrodes * len(BANDS), k, -1).transpose(0, 2, 1).reshape(-1, k)  # [(pair, point), K]
    if k == 1 or not np.any(rows):
        weights = np.ones(k) / np.sqrt(k)
    else:
        weights = np.linalg.svd(rows, full_matrices=False)[2][0]
    kernel = weights @ basis
    if abs(kernel.min()) > abs(kernel.max()):
        kernel, weights = -kernel, -weights
    peak = float(np.abs(kernel).max()) or 1.0
    return {
        "lags_s": lags,
        "kernel": kernel / peak,
        "peak_s": float(lags[int(np.argmax(kernel))]),
        "basis_weights": weights,
    }


# ----------------------------------------------------------------------------------------------
# The analysis


def point_pcc(prediction: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-point Pearson r between prediction and target over the rows.

    Parameters
    ----------
    prediction, target : np.ndarray
        ``[n, N]`` each.

    Returns
    -------
    np.ndarray
        ``[N]``; 0 where either is constant.
    """
    p = prediction - prediction.mean(0)
    t = target - target.mean(0)
    denominator = np.sqrt((p**2).sum(0) * (t**2).sum(0))
    return np.where(denominator > 0, (p * t).sum(0) / np.where(denominator > 0, denominator, 1.0), 0.0)


def select_points(selection: str, pcc: np.ndarray, regions: list[str]) -> tuple[np.ndarray, str]:
    """The points an explanation summarises.

    Parameters
    ----------
    selection : str
        ``top``: the best-predicted ``TOP_FRACTION`` of points (at least one); ``all``; or a
        region name (``occipital``, ``left occipital``: every point whose region ends with /
        equals it). Case-insensitive.
    pcc : np.ndarray
        ``[N]`` per-point PCC (``point_pcc``).
    regions : list of str
        Region of each point (``coarse_regions``).

    Returns
    -------
    points : np.ndarray
        Sorted point indices.
    rule : str
        The selection in words, for the report.

    Raises
    ------
    ConfigError
        An unknown region (the message lists the known ones).
    """
    key = selection.strip().lower()
    if key == "top":
        count = max(1, int(round(TOP_FRACTION * len(pcc))))
        return np.sort(
            np.argsort(-pcc)[:count]
        ), f"top {TOP_FRACTION:.0%} of points by in-sample PCC of the label-free point prediction on this site"
    if key == "all":
        return np.arange(len(pcc)), "all points"
    chosen = np.array([i for i, r in enumerate(regions) if r == key or r.split(" ", 1)[1] == key], dtype=int)
    if not len(chosen):
        known = sorted(set(regions) | {r.split(" ", 1)[1] for r in regions})
        raise ConfigError(f"--points {selection!r}: expected top, all or a region ({', '.join(known)})")
    return chosen, f"points of region '{key}'"


def _shares(values: np.ndarray) -> dict[str, float]:
    return {band: float(v) for band, v in zip(BANDS, values)}


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
    if label is not None:
        if label not in names:
            raise ConfigError(f"--label {label!r} is not one of the checkpoint's classes {names}")
        windows = windows.subset(np.asarray(windows.labels) == label)
        if not len(windows):
            raise ConfigError(f"--label {label!r}: the windows hold no window of that class")
    dec = decompose(model, windows, names.index(label) if label is not None else None, steps=steps, max_rows=max_rows)
    n_points = dec.ridge.shape[1]
    n_electrodes = len(VIRTUAL_MONTAGE)
    electrode, band, basis = feature_groups(dec.design.shape[1], n_electrodes)
    regions = coarse_regions(windows.target_positions, windows.target_names)
    pcc = point_pcc(dec.prediction, dec.target)
    chosen, rule = select_points(points, pcc, regions)

    by_band = contributions(dec, band, len(BANDS))
    by_electrode = contributions(dec, electrode, n_electrodes)
    by_basis = contributions(dec, basis, int(basis.max()) + 1)
    point_shares = by_band.share("prediction")  # [B, N]
    dominant = np.argmax(point_shares, axis=0)
    region_names = sorted(set(regions))
    region_index = np.array([region_names.index(r) for r in regions])

    def path_summary(contrib: Contributions, which: np.ndarray) -> dict[str, np.ndarray]:
        return {p: contrib.share(p, which) for p in PATHS}

    band_summary = {p: _shares(v) for p, v in path_summary(by_band, chosen).items()}
    electrode_summary = {p: v.tolist() for p, v in path_summary(by_electrode, chosen).items()}
    variance = {p: float(by_band.variance[p][chosen].sum()) for p in PATHS}

    # completeness: shares of a partition sum to 1 (ridge exactly; residual up to the IG gap)
    sums = {p: float(by_band.share(p, chosen).sum()) for p in PATHS}
    ridge_error = _ridge_completeness(dec)
    ig_gap = _ig_completeness(dec)
    ig_delta = float(np.abs(dec.ig_delta).max()) if dec.ig_delta.size else 0.0

    classes = {}
    for name in sorted(set(dec.labels.tolist())):
        rows = np.flatnonzero(dec.labels == name)
        if len(rows) < 3:
            continue
        within = contributions(dec, band, len(BANDS), rows)
        classes[name] = {"frames": int(len(rows)), "band_shares": {p: _shares(within.share(p, chosen)) for p in PATHS}}

    hrf_all = effective_hrf(dec.coef[:, chosen], n_electrodes, config)
    region_report = {}
    hrfs = {}
    for r, name in enumerate(region_names):
        mine = np.flatnonzero(region_index == r)
        hrf = effective_hrf(dec.coef[:, mine], n_electrodes, config)
        hrfs[name] = hrf
        shares = by_band.share("prediction", mine)
        region_report[name] = {
            "points": int(len(mine)),
            "selected_points": int(np.isin(mine, chosen).sum()),
            "mean_pcc": float(pcc[mine].mean()),
            "prediction_variance": float(by_band.variance["prediction"][mine].sum()),
            "band_shares": {p: _shares(by_band.share(p, mine)) for p in PATHS},
            "dominant_band": BANDS[int(np.argmax(shares))],
            "effective_hrf": {"peak_s": hrf["peak_s"], "basis_weights": hrf["basis_weights"].tolist()},
        }  # fmt: skip

    electrode_shares = np.asarray(electrode_summary["prediction"])
    order = np.argsort(-electrode_shares)
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
            "of": int(n_points),
            "mean_pcc": float(pcc[chosen].mean()),
            "indices": chosen.tolist(),
        },
        "methods": {**METHODS, "residual": METHODS["residual"].format(steps=steps)},
        "bands": {band_name: list(EEG_BANDS[band_name]) for band_name in BANDS},
        "band_shares": band_summary,
        "variance": {
            **variance,
            "residual_fraction_of_prediction": variance["residual"] / variance["prediction"]
            if variance["prediction"] > 0
            else None,
        },
        "completeness": {
            "share_sums": sums,
            "ridge_path_max_abs_error": ridge_error,
            "residual_ig_relative_gap": ig_gap,
            "residual_ig_max_abs_convergence_delta": ig_delta,
            "note": "ridge attributions sum to the prediction minus the prediction at the training mean design (exact); "
            "integrated gradients approach the residual's change from the baseline as steps grow (the relative gap is "
            "over frames and points; Captum's convergence delta is per frame and latent dimension, before the readout)",
        },
        "hrf_basis_shares": {p: by_basis.share(p, chosen).tolist() for p in PATHS},
        "classes": classes,
        "class_note": "within a class the label shifts the residual by a constant, so the shares are those of the EEG features",
        "electrodes": {
            "space": "the model's 64-electrode virtual montage (BioSemi-64, 10-05 names); a site's cap is mapped onto it by inverse-square distance weights",
            "names": list(VIRTUAL_MONTAGE),
            "positions_mm": np.round(virtual_positions(), 2).tolist(),
            "shares": electrode_summary,
            "ranking": [VIRTUAL_MONTAGE[i] for i in order],
        },
        "regions": {"source": REGION_SOURCE, "by_region": region_report},
        "effective_hrf": {
            "basis": config.hrf_basis,
            "history_s": config.history_seconds,
            "selected_points": {"peak_s": hrf_all["peak_s"], "basis_weights": hrf_all["basis_weights"].tolist()},
            "how": "dominant direction of the ridge coefficients over the HRF basis functions, as a time course over the lag",
        },
        "per_point": {
            "names": list(windows.target_names),
            "region": regions,
            "pcc": np.round(pcc, 4).tolist(),
            "dominant_band": [BANDS[i] for i in dominant],
            "band_shares_prediction": np.round(point_shares.T, 4).tolist(),
        },
    }
    arrays = {
        "dominant": dominant, "point_shares": point_shares, "chosen": chosen, "pcc": pcc, "regions": regions,
        "region_names": region_names, "hrfs": hrfs, "hrf_selected": hrf_all, "electrode_shares": electrode_shares,
        "band_summary": band_summary, "region_report": region_report,
    }  # fmt: skip
    return report, arrays


def _ridge_completeness(dec: Decomposition, rows: int = 16) -> float:
    """Largest |Σ_j a_j + prediction at the baseline - prediction| over a few frames."""
    take = np.linspace(0, len(dec.design) - 1, min(rows, len(dec.design))).round().astype(int)
    attributions = ridge_attributions(dec.design[take], dec.coef, dec.baseline).sum(axis=1)
    at_baseline = dec.baseline @ dec.coef + dec.intercept
    return float(np.abs(attributions + at_baseline - dec.ridge[take]).max()) if len(take) else 0.0


def _ig_completeness(dec: Decomposition) -> float | None:
    """``Σ |Σ_j a_j - (r(x) - r(x0))|`` over ``Σ |r(x) - r(x0)|`` (frames and points), the
    residual's integrated-gradient gap, from the residual itself (Captum's convergence delta
    ``dec.ig_delta`` through the readout gives the same numerator); None when the residual does
    not move (nothing to attribute, e.g. a zero readout)."""
    change = dec.residual - dec.residual_at_baseline
    scale = float(np.abs(change).sum())
    if scale == 0:
        return None
    summed = dec.ig.sum(axis=2) @ dec.readout.T  # [n, N]
    return float(np.abs(summed - change).sum() / scale)


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
    config = PreprocessConfig(**(meta.get("preprocess") or {}))
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
