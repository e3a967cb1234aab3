"""The attribution maths of ``fedneurogen explain`` (the workflow is ``explain.py``).

The point prediction is ``ridge path + learned residual``, both functions of the hemodynamic
design (features ordered virtual electrode x band x basis function). Each is attributed to the
design's features, then summed over a feature group (a band, an electrode, a basis function):

- ridge path, exact: feature ``j`` contributes ``a_j(x) = b_j (x_j - m_j)`` (``m``: the training
  mean the path stores), so the attributions of a frame sum to its prediction minus the
  prediction at ``m`` (completeness, to rounding: ``ridge_completeness``);
- learned residual, integrated gradients (Captum's ``IntegratedGradients``, midpoint rule; the
  baseline is the same training mean, which the residual sees as the zero input): for each latent
  dimension of the residual network, then through its linear per-point readout, which is exact
  because integrated gradients are linear in the output. Their sum approaches the residual minus
  its value at the baseline as the number of steps grows (``ig_completeness``, and Captum's
  convergence delta).

A group's share of a point's prediction variance over a set of frames is
``Cov(a_G, y) / Var(y)`` (``contributions``, ``Contributions.share``); for the ridge path
``Cov(a_G, y_ridge)`` is its coefficients times the design covariance, ``b_Gᵀ (Σ b)_G``.

The effective hemodynamic response (``effective_hrf``) is the ridge path's HRF-basis weights as a
time course: the dominant direction (first right singular vector) of its points' coefficients
over the basis functions, ``Σ_k v_k h_k(lag)``, signed so that its largest excursion is positive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from captum.attr import IntegratedGradients

from fedneurogen.shared.design import global_part, part_widths, region_centres, unique_frames
from fedneurogen.shared.errors import ConfigError
from fedneurogen.shared.features import EEG_BANDS
from fedneurogen.shared.hrf import HRF_BASES, basis_table
from fedneurogen.shared.model import Batch
from fedneurogen.shared.recording import PairedWindows

BANDS = tuple(EEG_BANDS)
#: Captum's quadrature rule for the integrated gradients: the midpoints of ``steps`` equal intervals.
IG_METHOD = "riemann_middle"


# ----------------------------------------------------------------------------------------------
# Feature layout


def feature_groups(
    n_features: int, n_electrodes: int, n_bands: int = len(BANDS)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``(electrode, band, basis)`` index of every design column (electrode x band x basis order).

    The alpha-gated block's columns (``design.gated_power``, after the scalp columns: scalp
    region x band) count for the electrode at their region's centre (``design.region_centres``)
    and for the band the product gates, basis 0: the explanation says where and in which band
    the EEG drives the prediction, through the linear or the gated columns.

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
    try:
        linear, gated, _ = part_widths(n_features)
    except ValueError:
        linear, gated = n_features, 0
    n_basis, leftover = divmod(linear, n_electrodes * n_bands)
    if leftover or n_basis < 1:
        raise ConfigError(
            f"a design of {n_features} columns is not {n_electrodes} electrodes x {n_bands} bands x an HRF basis"
        )
    column = np.arange(linear)
    electrode, band, basis = column // (n_bands * n_basis), (column // n_basis) % n_bands, column % n_basis
    region = np.arange(gated) // n_bands
    return (
        np.concatenate([electrode, region_centres()[region] if gated else region]),
        np.concatenate([band, np.arange(gated) % n_bands]),
        np.concatenate([basis, np.zeros(gated, dtype=int)]),
    )


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
        the model (``NeuroGenModel.layout``); the model's residual reads EEG (``--residual-eeg``)
        and kept what it learned.
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
    if head.eeg is not None and bool(head.eeg.gains.weight.detach().abs().amax() > 0):
        raise ConfigError(
            "this model's learned residual reads EEG through its own encoder (--residual-eeg), which explain "
            "does not attribute to design features; explain a model trained without it"
        )
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
# Completeness


def ridge_completeness(dec: Decomposition, rows: int = 16) -> float:
    """How far the ridge attributions are from complete: the largest ``|Σ_j a_j + prediction at
    the baseline - prediction|`` over a few frames (rounding only: the attribution is exact).

    Parameters
    ----------
    dec : Decomposition
        The decomposition.
    rows : int
        Frames checked, evenly spaced.

    Returns
    -------
    float
        The largest absolute error (0 without frames).
    """
    take = np.linspace(0, len(dec.design) - 1, min(rows, len(dec.design))).round().astype(int)
    attributions = ridge_attributions(dec.design[take], dec.coef, dec.baseline).sum(axis=1)
    at_baseline = dec.baseline @ dec.coef + dec.intercept
    return float(np.abs(attributions + at_baseline - dec.ridge[take]).max()) if len(take) else 0.0


def ig_completeness(dec: Decomposition) -> float | None:
    """The residual's integrated-gradient gap: ``Σ |Σ_j a_j - (r(x) - r(x0))|`` over
    ``Σ |r(x) - r(x0)|`` (frames and points), from the residual itself (Captum's convergence
    delta ``dec.ig_delta`` through the readout gives the same numerator).

    Parameters
    ----------
    dec : Decomposition
        The decomposition.

    Returns
    -------
    float or None
        The relative gap; None when the residual does not move (nothing to attribute, e.g. a
        zero readout).
    """
    change = dec.residual - dec.residual_at_baseline
    scale = float(np.abs(change).sum())
    if scale == 0:
        return None
    summed = dec.ig.sum(axis=2) @ dec.readout.T  # [n, N]
    return float(np.abs(summed - change).sum() / scale)


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

    lags, basis = basis_table(config.hrf_basis, config.history_seconds)
    inside = lags <= config.history_seconds
    lags, basis = lags[inside], basis[:, inside]
    k = HRF_BASES[config.hrf_basis]
    coef = np.asarray(coef, dtype=np.float64)
    linear = coef[: n_electrodes * len(BANDS) * k]  # the linear columns (not the alpha-gated block's)
    rows = linear.reshape(n_electrodes * len(BANDS), k, -1).transpose(0, 2, 1).reshape(-1, k)  # [(pair, point), K]
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
