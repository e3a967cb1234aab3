"""The point prediction (conditional mean): a closed-form ridge path plus a learned residual.

    design [B, F, D] --RidgePath (per-point coefficients, fitted in closed form)--> [B, N, F]
                     --standardise, MLP (+ label embedding)--> latent [B, F, R]
                     --per-point low-rank readout [R, N] (zero at init)--> + residual [B, N, F]
    (optional) eeg [B, C, T] --its own encoder, per token and frame (``eeg_residual.py``)--> + [B, N, F]

The ridge path is the linear physics: HRF-convolved EEG band power with a coefficient vector per
target point, solved from sufficient statistics (``fedneurogen.shared.ridge``) on the training
subjects with its penalty and rank chosen on validation subjects; its values are buffers, not
trained by gradient descent, so a federation can set them from summed statistics. The residual
starts at zero (so at step 0 the mean *is* the ridge path) and learns what is non-linear or
shared across points; the label, when given, enters the residual's latent.

Points: fMRI points are the fixed ico4 vertices, so index i is vertex i. fNIRS channel sets
differ between probes, so the ridge path remembers a key (CRC-32 of the name) per point it was
fitted on and maps each batch's points through it.

The one file of the ridge path (``RidgePath``, ``fit_ridge_paths``, ``solve_ridge_path``,
``solve_private_path``), its local path and the residual. It is named for what it computes, the
conditional mean (``MeanHead`` composes the three), not for its largest part: ``ridge_path.py``
would hide the residual and the mixing that live here too, and some twenty importers (the
server, the workflows, benchmarks, tests, docs/architecture.md §4.2) name it as it is.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from fedneurogen.shared.errors import ConfigError
from fedneurogen.shared.design import DESIGN_GROUPS, feature_bands, iter_subject_rows, two_fold_statistics
from fedneurogen.shared.local_path import (
    choose_mixing,
    fit_local_path_selected,
    fmri_layout,
    mixing_statistics,
    subject_local_statistics,
    windows_layout,
)
from fedneurogen.shared.private_path import fit_private, penalty_floor
from fedneurogen.shared.ridge import fit_ridge_selected, mean_only_mse, sum_statistics
from fedneurogen.shared.sources import N_PATCHES


def point_keys(names: Sequence[str]) -> torch.Tensor:
    """Stable integer key per point name (CRC-32), for matching points across sites."""
    return torch.tensor([zlib.crc32(n.encode("utf-8")) for n in names], dtype=torch.int64)


class RidgePath(nn.Module):
    """``design @ coef + intercept`` per point, set in closed form by ``set_solution``; with a
    label, plus that class's offset (``class_intercept``, set by ``set_class_offsets``).

    The class offsets are the classes' mean residuals, whole; the point prediction adds them
    times ``class_shrinkage`` (the factor that minimises validation error: a class mean of a few
    subjects is noisy), a sample's mean adds them whole, as the linear-Gaussian generator's does,
    so a class's samples carry the class mean the data estimate rather than a squared-error
    compromise (``offset``).

    The coefficients are frozen parameters (``requires_grad=False``): no optimiser step changes
    them, but they travel with the weights to and from a federation's server and are aggregated
    like the rest of the modality head."""

    def __init__(self, n_features: int, n_points: int, num_classes: int = 0, n_frames: int = 1):
        super().__init__()
        frozen = lambda t: nn.Parameter(t, requires_grad=False)  # noqa: E731
        self.coef = frozen(torch.zeros(n_features, n_points))
        self.intercept = frozen(torch.zeros(n_points))
        # each class's mean cross-fitted residual per frame and point; the last row (no label) is 0
        self.class_intercept = frozen(torch.zeros(num_classes + 1, n_frames, n_points))
        self.class_shrinkage = frozen(torch.ones(()))  # the point prediction's share of them
        # standardisation of the design for the residual network (training statistics)
        self.feature_mean = frozen(torch.zeros(n_features))
        self.feature_scale = frozen(torch.ones(n_features))
        self.register_buffer("keys", torch.full((n_points,), -1, dtype=torch.int64))  # -1: slot unused

    @property
    def fitted(self) -> bool:
        """Whether a solution is installed (coefficients are exactly zero until then)."""
        return bool(self.coef.detach().abs().amax() > 0)

    @torch.no_grad()
    def set_solution(
        self,
        coef: np.ndarray,
        intercept: np.ndarray,
        feature_mean: np.ndarray,
        feature_scale: np.ndarray,
        names: Sequence[str] | None = None,
    ) -> None:
        """Install a solution for ``coef.shape[1]`` points (named, for fNIRS) into the first slots."""
        n = coef.shape[1]
        if n > self.coef.shape[1] or coef.shape[0] != self.coef.shape[0]:
            raise ConfigError(
                f"ridge solution {list(coef.shape)} does not fit the model's ridge path {list(self.coef.shape)}"
            )
        as_buffer = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32, device=self.coef.device)  # noqa: E731
        self.coef.zero_()
        self.intercept.zero_()
        self.keys.fill_(-1)
        self.coef[:, :n] = as_buffer(coef)
        self.intercept[:n] = as_buffer(intercept)
        self.feature_mean.copy_(as_buffer(feature_mean))
        self.feature_scale.copy_(as_buffer(feature_scale))
        self.keys[:n] = (
            point_keys(names).to(self.keys.device) if names is not None else torch.arange(n, device=self.keys.device)
        )

    @torch.no_grad()
    def set_class_offsets(self, offsets: np.ndarray, shrinkage: float = 1.0) -> None:
        """Install ``[num_classes, F, n]`` class offsets (whole) into the first ``n`` slots (the
        points of ``set_solution``, in its order) and the point prediction's ``shrinkage`` in
        [0, 1]; the no-label row stays zero."""
        c, f, n = offsets.shape
        if c != self.class_intercept.shape[0] - 1 or f != self.class_intercept.shape[1] or n > self.coef.shape[1]:
            raise ConfigError(f"class offsets {list(offsets.shape)} do not fit {list(self.class_intercept.shape)}")
        self.class_intercept.zero_()
        self.class_intercept[:c, :, :n] = torch.as_tensor(offsets, dtype=torch.float32, device=self.coef.device)
        self.class_shrinkage.fill_(float(shrinkage))

    def offset(self, labels: torch.Tensor, slots: torch.Tensor | None, whole: bool = False) -> torch.Tensor:
        """``[B, F, N]`` each window's class offset (``labels``: class index, the no-label row for
        the rest): shrunk as the point prediction has it, or ``whole`` as a sample's mean has it."""
        out = self.class_intercept[labels]
        out = out if whole else self.class_shrinkage * out
        return out if slots is None else out[..., slots]

    def slots(self, names: Sequence[str] | None, n_points: int) -> torch.Tensor | None:
        """Index of each batch point in this path's slots (None: points are the slots, in order)."""
        if names is None:
            if n_points != self.coef.shape[1]:
                raise ConfigError(f"a batch of {n_points} unnamed points for a ridge path of {self.coef.shape[1]}")
            return None
        if not bool((self.keys >= 0).any()):
            return torch.arange(n_points, device=self.coef.device)  # no named points here (yet): in order
        wanted = point_keys(names).to(self.keys.device)
        match = wanted[:, None] == self.keys[None, :]
        missing = ~match.any(dim=1)
        if bool(missing.any()):
            lost = [names[i] for i in torch.flatnonzero(missing).tolist()[:5]]
            raise ConfigError(
                f"the model's point prediction was fitted on other points; not among them: {', '.join(lost)}"
            )
        return match.float().argmax(dim=1)

    def forward(self, design: torch.Tensor, slots: torch.Tensor | None) -> torch.Tensor:
        """``design [B, F, D]`` -> ``[B, F, N]``."""
        coef, intercept = (self.coef, self.intercept) if slots is None else (self.coef[:, slots], self.intercept[slots])
        return design @ coef + intercept

    def standardise(self, design: torch.Tensor) -> torch.Tensor:
        return (design - self.feature_mean) / self.feature_scale


class LocalPath(nn.Module):
    """Each point's ridge on the cortical sources beneath it (``shared.local_path``), set in
    closed form by ``set_solution``, and ``weight``: its share ``a`` of the linear prediction.

    fMRI points are the fixed ico4 vertices, so the layout (a patch's vertices share its and its
    neighbours' columns) is built identically everywhere and only ``[G, d, P]`` coefficients
    travel. fNIRS channels differ between probes: the coefficients are a dense ``[S, N]``
    matrix (small: at most a few hundred points), zero outside each point's columns. Like the
    ridge path's, every value is a frozen parameter: it travels with the weights, no optimiser
    step changes it, and it is zero (the local path off) until a solution is installed."""

    def __init__(self, n_source: int, n_points: int, fixed_layout: bool):
        super().__init__()
        frozen = lambda t: nn.Parameter(t, requires_grad=False)  # noqa: E731
        self.fixed_layout, self.n_source = fixed_layout, n_source
        if fixed_layout:
            layout = fmri_layout(n_source // N_PATCHES)
            columns = np.where(layout.columns >= 0, layout.columns, n_source)  # padding reads a zero column
            self.register_buffer("columns", torch.as_tensor(columns))  # saved: a checkpoint loads on "meta"
            self.register_buffer("point_slots", torch.as_tensor(layout.point_slots()))
            self.coef = frozen(torch.zeros(*layout.columns.shape, layout.points.shape[1]))
        else:
            self.coef = frozen(torch.zeros(n_source, n_points))
        self.intercept = frozen(torch.zeros(n_points))
        self.weight = frozen(torch.zeros(()))

    @torch.no_grad()
    def set_solution(self, solution, weight: float) -> None:
        """Install a ``LocalSolution`` (fNIRS: its points in the first slots, as the ridge path's)
        and the local path's share ``weight`` in [0, 1]."""
        layout, n = solution.layout, solution.layout.n_points
        as_tensor = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32, device=self.coef.device)  # noqa: E731
        if self.fixed_layout:
            if tuple(solution.coef.shape) != tuple(self.coef.shape):
                raise ConfigError(f"local solution {list(solution.coef.shape)} does not fit {list(self.coef.shape)}")
            self.coef.copy_(as_tensor(solution.coef))
        else:
            if n > self.coef.shape[1] or layout.columns.max() >= self.coef.shape[0]:
                raise ConfigError(
                    f"a local solution over {n} points does not fit the local path {list(self.coef.shape)}"
                )
            dense = np.zeros(tuple(self.coef.shape))
            for point, (cols, coef) in enumerate(zip(layout.columns, solution.coef[:, :, 0])):
                dense[cols[cols >= 0], point] = coef[cols >= 0]
            self.coef.copy_(as_tensor(dense))
        self.intercept.zero_()
        self.intercept[:n] = as_tensor(solution.intercept)
        self.weight.fill_(float(weight))

    def forward(self, source: torch.Tensor, slots: torch.Tensor | None) -> torch.Tensor:
        """``source [B, F, S]`` (the design's source columns) -> ``[B, F, N]``."""
        if not self.fixed_layout:
            out = source @ self.coef + self.intercept
            return out if slots is None else out[..., slots]
        padded = nn.functional.pad(source, (0, 1))
        grouped = torch.einsum("bfgd,gdp->bfgp", padded[..., self.columns], self.coef)
        out = grouped.flatten(2)[..., self.point_slots] + self.intercept
        return out if slots is None else out[..., slots]


class MeanHead(nn.Module):
    """Ridge path (+ local path) + zero-initialised residual with a per-point low-rank readout.

    With a local path the design is the scalp design followed by the source design; the linear
    prediction is ``(1 - a) ridge(scalp) + a local(source)`` and the residual reads the scalp part."""

    def __init__(
        self,
        n_features: int,
        n_points: int,
        hidden: int,
        rank: int,
        num_classes: int,
        dropout: float,
        n_source: int = 0,
        fixed_layout: bool = True,
        n_frames: int = 1,
        eeg: nn.Module | None = None,
    ):
        super().__init__()
        self.n_features = n_features
        self.ridge = RidgePath(n_features, n_points, num_classes, n_frames)
        self.local = LocalPath(n_source, n_points, fixed_layout) if n_source else None
        self.dropout = dropout  # on the design, in training only (see ``forward``)
        self.residual = nn.Sequential(nn.Linear(n_features, hidden), nn.GELU(), nn.Linear(hidden, rank), nn.GELU())
        self.label_embed = nn.Embedding(num_classes + 1, rank)  # the last row is the null label
        self.readout = nn.Linear(rank, n_points, bias=False)  # the per-point low-rank readout
        self.num_classes = num_classes
        self.eeg = eeg  # the residual's EEG branch (``EEGResidual``), or None: the design alone
        self.reset_residual()

    @torch.no_grad()
    def reset_residual(self) -> None:
        """Zero readout, label embedding and EEG branch gains: the mean equals the ridge path."""
        nn.init.zeros_(self.readout.weight)
        nn.init.zeros_(self.label_embed.weight)
        if self.eeg is not None:
            self.eeg.reset()

    def forward(
        self,
        design: torch.Tensor,
        labels: torch.Tensor | None,
        names: Sequence[str] | None,
        n_points: int,
        train: bool = False,
        residual: bool = True,
        whole_class_offset: bool = False,
        eeg_residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``design [B, F, D]`` (+ labels ``[B]``, -1 or None = no label) -> mean ``[B, N, F]``.
        ``train`` applies dropout to the residual's input; predictions never do, whatever the
        module's mode, so the point prediction is deterministic. ``residual=False``: the linear
        paths alone (what the learned residual is measured against). ``whole_class_offset``: the
        class offsets unshrunk (the mean a sample is drawn about; ``RidgePath``). ``eeg_residual``:
        the EEG branch's ``[B, N, F]`` (``self.eeg``'s output for the batch), added to the residual."""
        slots = self.ridge.slots(names, n_points)
        scalp = design[..., : self.n_features]
        linear = self.ridge(scalp, slots)
        if self.local is not None:
            a = self.local.weight
            linear = (1 - a) * linear + a * self.local(design[..., self.n_features :], slots)
        # no label (None or -1) is the null label's row, as label dropout trains it
        null = torch.full((design.shape[0],), self.num_classes, dtype=torch.long, device=design.device)
        index = null if labels is None else torch.where(labels < 0, null, labels)
        if labels is not None:  # the class offset is closed-form, beside the linear paths
            linear = linear + self.ridge.offset(index, slots, whole=whole_class_offset)
        if not residual:
            return linear.transpose(1, 2)
        latent = self.residual(nn.functional.dropout(self.ridge.standardise(scalp), self.dropout, training=train))
        latent = latent + self.label_embed(index)[:, None, :]
        residual = self.readout(latent)  # through the module, so Opacus sees per-sample gradients
        if slots is not None:
            residual = residual[..., slots]
        mean = (linear + residual).transpose(1, 2)
        return mean if eeg_residual is None else mean + eeg_residual


def is_residual_parameter(name: str) -> bool:
    """A trainable parameter of a point prediction's learned residual (by name: the ridge and
    local paths' own parameters, ``.mean.ridge.`` and ``.mean.local.``, are frozen)."""
    return ".mean." in name and ".mean.ridge." not in name and ".mean.local." not in name


#: Ranks tried for the reduced-rank ridge path (None: full rank), chosen on validation subjects.
RIDGE_RANKS: tuple[int | None, ...] = (2, 4, 8, 16, 32, None)


def fit_ridge_paths(model: nn.Module, train: Sequence, val: Sequence = ()) -> dict[str, dict]:
    """Solve each modality's ridge path (and local path, when the model has one) from the
    training windows' statistics, penalties, band weights, rank and mix chosen on the validation
    windows (``PairedWindows`` per site; sites of one modality are pooled). Returns
    ``{modality: choice}`` (see ``solve_ridge_path``, ``solve_local_path``)."""
    chosen = {}
    for modality in sorted({w.target_modality for w in train}):
        sites = [w for w in train if w.target_modality == modality]
        names = sites[0].target_names
        val_sites = [w for w in val if w.target_modality == modality]
        for site in sites[1:] + val_sites:
            if site.target_names != names:
                raise ConfigError(
                    f"{modality} sites with different target points cannot share one ridge path ({len(site.target_names)} vs {len(names)} points)"
                )
        parts = two_fold_statistics(sites)  # all the fit needs, in memory bounded by the model, not the subjects
        val_parts = two_fold_statistics(val_sites)
        chosen[modality] = solve_ridge_path(
            model, modality, parts, sum_statistics(val_parts) if val_parts else None, names
        )
        if model.modality_heads[modality].mean.local is not None:
            chosen[modality]["local_path"] = _fit_local_from_windows(
                model, modality, sites, val_sites, chosen[modality]
            )
    return chosen


def _fit_local_from_windows(model: nn.Module, modality: str, sites: Sequence, val_sites: Sequence, ridge: dict) -> dict:
    layout = windows_layout(sites[0])
    local = lambda w: subject_local_statistics(w, layout)  # noqa: E731
    folds = two_fold_statistics(sites, local)
    val = two_fold_statistics(val_sites, local)
    names = sites[0].target_names if modality == "fnirs" else None
    choice = solve_local_path(model, modality, folds, sum_statistics(val) if val else None, layout, ridge)
    if val_sites:
        choice["weight"] = set_mixing(
            model, modality, sum(validation_mixing(model, modality, w, names) for w in val_sites)
        )
    return choice


def solve_local_path(model: nn.Module, modality: str, train_parts: Sequence, val, layout, ridge: dict) -> dict:
    """Install in ``model`` the local path of ``modality`` solved from ``LocalStatistics``.

    ``train_parts`` (per subject, fold or site; summed), ``val`` (summed validation statistics;
    None: penalties by 2-fold), ``layout`` the groups they were made with, ``ridge`` the global
    path's choice. The local path's share starts at 1 or 0, whichever path has the smaller
    validation MSE; ``set_mixing`` refines it where validation predictions are available.
    Returns the choice: penalties, validation MSE, the share."""
    solution = fit_local_path_selected(list(train_parts), val, layout)
    theirs = ridge.get("validation_mse")
    weight = 1.0 if theirs is None or solution.validation_mse is None or solution.validation_mse < theirs else 0.0
    model.modality_heads[modality].mean.local.set_solution(solution, weight)
    return {
        "penalties": sorted({float(p) for p in solution.penalties}),
        "validation_mse": solution.validation_mse, "weight": weight, "groups": layout.n_groups,
    }  # fmt: skip


@torch.no_grad()
def validation_mixing(model: nn.Module, modality: str, windows, names: Sequence[str] | None = None) -> np.ndarray:
    """``mixing_statistics`` of the model's two linear paths on some (validation) windows.

    Parameters
    ----------
    model : NeuroGenModel
        With both paths installed.
    modality : str
        The target modality.
    windows : PairedWindows
        Held-out windows with a ``scalp+source`` design.
    names : sequence of str | None
        The target points (fNIRS).

    Returns
    -------
    np.ndarray
        ``[6, N]`` summed over every run frame once.
    """
    head = model.modality_heads[modality].mean
    device = head.ridge.coef.device
    slots = head.ridge.slots(names, windows.target.shape[1])
    total = 0.0
    for x, y in iter_subject_rows(windows):
        design = torch.as_tensor(np.asarray(x), dtype=torch.float32, device=device)[None]
        g = head.ridge(design[..., : head.n_features], slots)[0].cpu().numpy()
        loc = head.local(design[..., head.n_features :], slots)[0].cpu().numpy()
        total = total + mixing_statistics(g, loc, y)
    return np.asarray(total)


def set_mixing(model: nn.Module, modality: str, stats: np.ndarray) -> float:
    """Set the local path's share to the one with the smallest validation error; returns it.

    Parameters
    ----------
    model : NeuroGenModel
        With both paths installed.
    modality : str
        The target modality.
    stats : np.ndarray
        ``[6, N]`` summed ``validation_mixing`` (of every site).

    Returns
    -------
    float
        The share ``a`` of the local path.
    """
    weight = choose_mixing(stats)
    model.modality_heads[modality].mean.local.weight.fill_(weight)
    return weight


def solve_ridge_path(
    model: nn.Module, modality: str, train_parts: Sequence, val=None, names: Sequence[str] | None = None
) -> dict:
    """Install in ``model`` the ridge path of ``modality`` solved from ``RidgeStatistics``:
    ``train_parts`` (one per subject, or per site in a federation; they are summed), ``val``
    (summed validation statistics; None: chosen by 2-fold over the parts). ``names`` are the
    target points (needed for fNIRS). Returns the choice: penalty, rank, band weights,
    validation MSE and the number of frames."""
    bands = feature_bands(train_parts[0].n_features)
    solution = fit_ridge_selected(list(train_parts), val, ranks=RIDGE_RANKS, groups=bands)
    total = sum_statistics(list(train_parts))
    mean, std = total.feature_moments()
    # A path no better on validation than each point's training mean (noise-level EEG, or
    # statistics drowned by differential privacy's noise) is switched off: the mean alone.
    baseline = mean_only_mse(total, val) if val is not None else None
    switched_off = baseline is not None and not solution.validation_mse < baseline
    if switched_off:
        solution.coef, solution.intercept = np.zeros_like(solution.coef), total.sy / total.n
    head = model.modality_heads[modality].mean
    head.ridge.set_solution(solution.coef, solution.intercept, mean, std + 1e-8, names if modality == "fnirs" else None)
    weights = (
        None
        if solution.weights is None
        else {
            group: float(solution.weights[bands == i][0]) for i, group in enumerate(DESIGN_GROUPS) if (bands == i).any()
        }
    )
    return {
        "penalty": solution.lam, "rank": solution.rank, "band_weights": weights,
        "validation_mse": solution.validation_mse, "mean_only_mse": baseline, "switched_off": switched_off, "frames": float(total.n),
    }  # fmt: skip


def solve_private_path(
    model: nn.Module,
    modality: str,
    train_parts: Sequence,
    val,
    reduction,
    noise_std: float,
    n_points: int,
    names: Sequence[str] | None = None,
) -> dict:
    """Install in ``model`` the private ridge path of ``modality`` solved from released statistics.

    ``train_parts`` and ``val`` are ``RidgeStatistics`` of ``reduction``'s regression
    (``shared.private_path``), noisy releases summed; ``noise_std`` the noise on each entry of
    their summed ``XᵀX``, which sets the penalty floor. Where the fit is no better on ``val``
    than its zero solution, the zero solution is kept: the public prior unchanged (or, without
    a prior, each point's mean). ``names``: the target points (fNIRS). Returns the choice, like
    ``solve_ridge_path``."""
    total = sum_statistics(list(train_parts))
    solution = fit_private(total, val, noise_std)
    baseline = mean_only_mse(total, val) if val is not None else None
    switched_off = baseline is not None and not solution.validation_mse < baseline
    if switched_off:  # the zero correction: the prior as it is (or the mean)
        solution.coef, solution.intercept = np.zeros_like(solution.coef), total.sy / total.n
    coef, intercept = reduction.to_full(solution, n_points)
    head = model.modality_heads[modality].mean
    width = coef.shape[0]
    # no feature moments were released: the residual's input scale stays the identity
    head.ridge.set_solution(coef, intercept, np.zeros(width), np.ones(width), names if modality == "fnirs" else None)
    return {
        "private_path": "prior" if reduction.prior is not None else "reduced",
        "penalty": solution.lam, "penalty_floor": penalty_floor(total, noise_std),
        "gains": (1.0 + solution.coef[:, 0]).round(4).tolist() if reduction.prior is not None else None,
        "validation_mse": solution.validation_mse, "mean_only_mse": baseline, "switched_off": switched_off,
        "frames": float(total.n),
    }  # fmt: skip
