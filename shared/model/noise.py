"""The residual's noise model: the coordinates the diffusion works in.

A sample is the point prediction plus a residual. The linear-Gaussian generator draws that
residual from ``N(0, Σ)`` with a separable covariance (``baselines/linear_gaussian.py``)::

    Σ = C ⊗ S,    S = U Uᵀ + diag(ψ) = diag(s) (I + G Gᵀ) diag(s)

``U`` the leading principal components of the residual maps, ``ψ`` each point's variance left
over (``s = √ψ``, ``G = U / s``: the components in units of each point's own noise) and ``C`` the
frames' correlation within a window: the linear-Gaussian generator's covariance, exactly. ``ResidualNoise`` holds these and the diffusion
learns the residual in their whitened coordinates ``z = Σ^{-1/2} r``; a sample is
``mean + Σ^{1/2} z`` (a data-dependent prior, as in PriorGrad, Lee et al. 2022).

Why: with v-prediction the exact denoiser of ``z ~ N(0, I)`` outputs zero (``E[v | z_t] = 0``),
and the DiT's final layer starts at zero. Before any training the model's samples are its point
prediction plus linear-Gaussian noise; training learns only where the data depart from that
Gaussian (class structure, non-Gaussian tails, what the covariance misses). Unfitted, the noise
model is the identity and the diffusion works on the raw residual, as a model without one.

Its values are frozen parameters (like the ridge path): set in closed form from training
residuals (``fit_noise``), sent to sites once with the other frozen records, saved in checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fedneurogen.shared.model.crossfit import class_indices, closed_form_prediction
from fedneurogen.shared.recording import PairedWindows

#: Windows the covariance is estimated from, at most (drawn with a seed; overlapping windows
#: share frames, so a few thousand cover a site's runs).
MAX_FIT_WINDOWS = 2048
#: A point's leftover variance is at least this share of the median point's (constant or dead points).
MIN_SCALE_SHARE = 1e-3


class ResidualNoise(nn.Module):
    """``Σ = C ⊗ diag(s) (I + G Gᵀ) diag(s)`` over a modality's point slots (module docstring).

    Parameters
    ----------
    n_slots : int
        Point slots of the modality (as the ridge path's: fMRI vertices, fNIRS named channels).
    rank : int
        Columns of ``G`` (0: a diagonal spatial covariance).
    n_frames : int
        Frames per window (``C`` is ``[F, F]``).
    """

    def __init__(self, n_slots: int, rank: int, n_frames: int):
        super().__init__()
        frozen = lambda t: nn.Parameter(t, requires_grad=False)  # noqa: E731
        self.scale = frozen(torch.ones(n_slots))  # s
        self.basis = frozen(torch.zeros(n_slots, rank))  # G
        self.temporal = frozen(torch.eye(n_frames))  # C
        # the share of the DiT's learned departure from this Gaussian that samples take (1: all
        # of it; chosen on validation subjects where the trainer can, ``workflows/departure.py``)
        self.departure = frozen(torch.ones(1))
        # the samples' noise scale relative to the fitted covariance (calibrated on validation
        # subjects where the trainer can, ``workflows/departure.py``); not in ``whiten``/``colour``
        self.spread = frozen(torch.ones(1))

    @property
    def fitted(self) -> bool:
        """Whether a covariance is installed (the identity until ``set_covariance``)."""
        return bool(
            (self.scale != 1).any()
            or (self.basis != 0).any()
            or (self.temporal != torch.eye(self.temporal.shape[0], device=self.temporal.device)).any()
        )

    @torch.no_grad()
    def set_covariance(
        self, scale: np.ndarray, basis: np.ndarray, temporal: np.ndarray, slots: np.ndarray | None = None
    ) -> None:
        """Install a fitted covariance at ``slots`` (None: the first ``len(scale)`` slots, in order);
        the other slots keep scale 1 and no principal direction."""
        n = len(scale)
        slots = np.arange(n) if slots is None else np.asarray(slots)
        if basis.shape != (n, self.basis.shape[1]) or temporal.shape != tuple(self.temporal.shape):
            raise ValueError(
                f"noise model: basis {list(basis.shape)} and temporal {list(temporal.shape)} do not fit "
                f"{n} points, rank {self.basis.shape[1]}, {self.temporal.shape[0]} frames"
            )
        as_tensor = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32, device=self.scale.device)  # noqa: E731
        index = torch.as_tensor(slots, device=self.scale.device)
        self.scale.fill_(1.0)
        self.basis.zero_()
        self.scale[index] = as_tensor(scale)
        self.basis[index] = as_tensor(basis)
        self.temporal.copy_(as_tensor(temporal))

    def _factors(self, slots: torch.Tensor | None):
        """The batch's spatial eigen-structure: scales ``[N]``, an orthonormal ``V [N, k]`` of the
        principal span and the eigenvalues ``[k]`` of ``I + G Gᵀ`` on it (1 off it)."""
        scale = self.scale if slots is None else self.scale[slots]
        basis = (self.basis if slots is None else self.basis[slots]).double()
        # G = Q R: I + G Gᵀ has eigenvalues 1 + eig(R Rᵀ) on span(Q) and 1 off it (exact for a
        # subset of the slots too, where G's rows are no longer orthogonal)
        q, r = torch.linalg.qr(basis)
        m, p = torch.linalg.eigh(r @ r.T)
        return scale, (q @ p).float(), (1.0 + m.clamp_min(0)).float()

    def _temporal_root(self, power: float) -> torch.Tensor:
        mu, q = torch.linalg.eigh(self.temporal.double())
        return ((q * mu.clamp_min(1e-6).pow(power)) @ q.T).float()

    def whiten(self, residual: torch.Tensor, slots: torch.Tensor | None = None) -> torch.Tensor:
        """``Σ^{-1/2} r`` of residuals ``[B, N, F]`` (``slots``: the batch's point slots, None: all)."""
        if not self.fitted:
            return residual
        scale, v, eigenvalues = self._factors(slots)
        x = residual.float() / scale[:, None]
        along = torch.einsum("nk,bnf->bkf", v, x)  # (I + G Gᵀ)^{-1/2} rescales the span only
        x = x + torch.einsum("nk,bkf->bnf", v, along * (eigenvalues.rsqrt() - 1.0)[:, None])
        return x @ self._temporal_root(-0.5)

    def colour(self, z: torch.Tensor, slots: torch.Tensor | None = None) -> torch.Tensor:
        """``Σ^{1/2} z``: the inverse of ``whiten`` (white noise in, linear-Gaussian residuals out)."""
        if not self.fitted:
            return z
        scale, v, eigenvalues = self._factors(slots)
        x = z.float() @ self._temporal_root(0.5)
        along = torch.einsum("nk,bnf->bkf", v, x)
        x = x + torch.einsum("nk,bkf->bnf", v, along * (eigenvalues.sqrt() - 1.0)[:, None])
        return x * scale[:, None]


#: Query kind: a site's sketch of its training residuals' covariance (``NoiseSketch``).
NOISE_REQUEST = "noise-statistics"
#: The arrays of a sketch, as a site sends them.
SKETCH_ARRAYS = ("rows", "squares", "components", "temporal", "temporal_count")


@dataclass
class NoiseSketch:
    """What the covariance needs of one site's residuals, additive over sites.

    ``rows`` frames (windows x frames), ``squares [N]`` each point's summed squared residual,
    ``components [N, k]`` the leading part of the summed second moment (``C Cᵀ`` approximates
    ``Σ r rᵀ`` over every frame), ``temporal [F, F]`` the frames' summed products of the
    residual in units of each point's root mean square, over ``temporal_count`` (windows x
    points) of them. Second moments around zero: the residual's mean is the point prediction's
    business, not the noise's.
    """

    rows: float
    squares: np.ndarray
    components: np.ndarray
    temporal: np.ndarray
    temporal_count: float

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The sketch as a reply's arrays (float64)."""
        return {
            "rows": np.array([self.rows], np.float64),
            "squares": np.asarray(self.squares, np.float64),
            "components": np.asarray(self.components, np.float64),
            "temporal": np.asarray(self.temporal, np.float64),
            "temporal_count": np.array([self.temporal_count], np.float64),
        }

    def scaled(self, factor: float) -> "NoiseSketch":
        """The sketch of ``factor`` times as many frames (a site's weight capped)."""
        return NoiseSketch(
            self.rows * factor,
            self.squares * factor,
            self.components * np.sqrt(factor),
            self.temporal * factor,
            self.temporal_count * factor,
        )


def sketch_residual(residual: np.ndarray, rank: int, seed: int = 0) -> NoiseSketch:
    """One site's ``NoiseSketch`` of its residuals ``[W, N, F]``, with ``2 * rank`` components
    (more than the model keeps, so that sites' sketches combine accurately)."""
    from sklearn.utils.extmath import randomized_svd

    n_windows, n_points, n_frames = residual.shape
    r = np.asarray(residual, dtype=np.float32)
    frames = np.moveaxis(r, 2, 1).reshape(-1, n_points)  # every frame of every window a row
    squares = np.square(frames, dtype=np.float64).sum(axis=0)
    keep = int(min(2 * rank, max(0, min(frames.shape) - 1)))
    components = np.zeros((n_points, keep))
    if keep > 0:
        _, singular, vt = randomized_svd(frames, keep, random_state=seed)
        components = vt.T * singular
    rms = np.sqrt(np.maximum(squares / max(len(frames), 1), 1e-24)).astype(np.float32)
    z = r / rms[None, :, None]
    temporal = np.einsum("wnf,wng->fg", z, z, optimize=True).astype(np.float64)
    return NoiseSketch(float(len(frames)), squares, components, temporal, float(n_windows * n_points))


def combine_sketches(sketches: Sequence[NoiseSketch], rank: int) -> dict[str, np.ndarray]:
    """The noise model's covariance from sites' sketches (one sketch: that site's own fit).

    The principal components are those of the sites' stacked components (distributed PCA:
    exact where each site's sketch holds its whole second moment), the diagonal what each
    point's summed squares leave over, the frames' correlation the normalised sum.

    Parameters
    ----------
    sketches : sequence of NoiseSketch
        One per site, over the same points and frames.
    rank : int
        Principal components kept.

    Returns
    -------
    dict
        ``scale [N]`` (``√ψ``), ``basis [N, rank]`` (``G = U / √ψ``) and ``temporal [F, F]``
        (``C``), for ``ResidualNoise.set_covariance``.
    """
    rows = sum(s.rows for s in sketches)
    n_points = len(sketches[0].squares)
    variance = sum(s.squares for s in sketches) / max(rows, 1.0)
    stacked = np.concatenate([s.components for s in sketches], axis=1)
    components = np.zeros((n_points, rank))
    if stacked.shape[1]:
        u, singular, _ = np.linalg.svd(stacked, full_matrices=False)
        keep = min(rank, len(singular))
        components[:, :keep] = u[:, :keep] * (singular[:keep] / np.sqrt(max(rows, 1.0)))
    floor = MIN_SCALE_SHARE * max(float(np.median(variance)), 1e-12)
    psi = np.maximum(variance - (components**2).sum(axis=1), floor)
    cov = sum(s.temporal for s in sketches)
    d = np.sqrt(np.maximum(np.diag(cov), 1e-24))
    return {"scale": np.sqrt(psi), "basis": components / np.sqrt(psi)[:, None], "temporal": cov / np.outer(d, d)}


def fit_covariance(residual: np.ndarray, rank: int, seed: int = 0) -> dict[str, np.ndarray]:
    """The noise model's covariance from residuals, as the linear-Gaussian generator estimates it
    (second moments around zero; ``combine_sketches`` of this one set's sketch).

    Parameters
    ----------
    residual : np.ndarray
        ``[W, N, F]`` residuals of training windows (cross-fitted: the error on new subjects; class
        offsets removed where the model has them).
    rank : int
        Principal components kept (at most ``min(W * F, N) - 1`` are fitted; the rest stay zero).
    seed : int
        Seed of the randomised SVD.

    Returns
    -------
    dict
        As ``combine_sketches``.
    """
    return combine_sketches([sketch_residual(residual, rank, seed)], rank)


def install_covariance(head: nn.Module, fitted: dict[str, np.ndarray], names: Sequence[str] | None = None) -> dict:
    """Install a fitted covariance (``combine_sketches``) over the points ``names`` of a
    ``ModalityHead``, at its ridge path's slots (None: its first slots, in order, as the ridge
    path's solution was installed); returns what was fitted."""
    n_points = len(fitted["scale"])
    slots = None if names is None else head.mean.ridge.slots(names, n_points).cpu().numpy()
    head.noise.set_covariance(fitted["scale"], fitted["basis"], fitted["temporal"], slots)
    principal = float(((fitted["basis"] * fitted["scale"][:, None]) ** 2).sum())
    return {
        "points": int(n_points),
        "rank": int(fitted["basis"].shape[1]),
        "principal_share": principal / max(principal + float((fitted["scale"] ** 2).sum()), 1e-12),
    }


def site_sketch(
    head: nn.Module, windows: PairedWindows, class_to_index: dict[str, int], seed: int = 0
) -> NoiseSketch:  # fmt: skip
    """The sketch of one site's residuals against a ``ModalityHead``'s closed-form labelled mean
    (linear paths + the whole class offset: a sample's mean), as the linear-Gaussian generator's
    residual is; at most ``MAX_FIT_WINDOWS`` windows are read (a seeded draw).

    Parameters
    ----------
    head : nn.Module
        The ``ModalityHead`` (paths and class offsets set).
    windows : PairedWindows
        The site's training windows of that modality (cross-fitted where the trainer can).
    class_to_index : dict of str to int
        The model's label index of each class.
    seed : int
        Seed of the window draw and the randomised SVD.

    Returns
    -------
    NoiseSketch
        With ``2 * noise rank`` components.
    """
    if len(windows) > MAX_FIT_WINDOWS:
        keep = np.sort(np.random.default_rng(seed).choice(len(windows), size=MAX_FIT_WINDOWS, replace=False))
        windows = windows.subset(np.isin(np.arange(len(windows)), keep))
    labels = torch.as_tensor(class_indices(windows, class_to_index))
    mean = closed_form_prediction(head.mean, windows, labels, whole_class_offset=True)
    residual = np.asarray(windows.target, np.float32) - mean
    return sketch_residual(residual, head.noise.basis.shape[1], seed)


def fit_noise(
    model: nn.Module, modality: str, sites: Sequence[PairedWindows], class_to_index: dict[str, int], seed: int = 0
) -> dict[str, Any]:
    """Fit a modality's noise model on its training windows' residuals and install it.

    Each site's residuals are sketched (``site_sketch``) and the sketches combined, as a
    federation's server combines the sites' (``combine_sketches``). Give cross-fitted training
    windows (``cross_fitted_training``) so that the residual is the error on new subjects. Sites
    with other points than the first (fNIRS probes) are left out; their other points keep an
    identity noise model.

    Parameters
    ----------
    model : nn.Module
        A ``NeuroGenModel`` whose linear paths and class offsets of ``modality`` are set.
    modality : str
        ``"fmri"`` or ``"fnirs"``.
    sites : sequence of PairedWindows
        The training windows of ``modality``, one entry per site.
    class_to_index : dict of str to int
        The model's label index of each class.
    seed : int
        Seed of the window draws and the randomised SVDs.

    Returns
    -------
    dict
        ``install_covariance``'s record, with the frames and sites read.
    """
    head = model.modality_heads[modality]
    names = [tuple(w.target_names) if w.target_modality == "fnirs" else None for w in sites]
    used = [w for w, n in zip(sites, names) if n == names[0] and len(w)]
    if not used:
        return {"frames": 0, "sites": 0}
    sketches = [site_sketch(head, w, class_to_index, seed) for w in used]
    fitted = combine_sketches(sketches, head.noise.basis.shape[1])
    record = install_covariance(head, fitted, None if names[0] is None else list(names[0]))
    return {**record, "frames": int(sum(s.rows for s in sketches)), "sites": len(used)}
