"""The point prediction (conditional mean): a closed-form ridge path plus a learned residual.

    design [B, F, D] --RidgePath (per-point coefficients, fitted in closed form)--> [B, N, F]
                     --standardise, MLP (+ label embedding)--> latent [B, F, R]
                     --per-point low-rank readout [R, N] (zero at init)--> + residual [B, N, F]

The ridge path is the linear physics: HRF-convolved EEG band power with a coefficient vector per
target point, solved from sufficient statistics (``fedneurogen.shared.ridge``) on the training
subjects with its penalty and rank chosen on validation subjects; its values are buffers, not
trained by gradient descent, so a federation can set them from summed statistics. The residual
starts at zero (so at step 0 the mean *is* the ridge path) and learns what is non-linear or
shared across points; the label, when given, enters the residual's latent.

Points: fMRI points are the fixed ico4 vertices, so index i is vertex i. fNIRS channel sets
differ between probes, so the ridge path remembers a key (CRC-32 of the name) per point it was
fitted on and maps each batch's points through it.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from fedneurogen.shared.errors import ConfigError
from fedneurogen.shared.features import EEG_BANDS


def point_keys(names: Sequence[str]) -> torch.Tensor:
    """Stable integer key per point name (CRC-32), for matching points across sites."""
    return torch.tensor([zlib.crc32(n.encode("utf-8")) for n in names], dtype=torch.int64)


class RidgePath(nn.Module):
    """``design @ coef + intercept`` per point, set in closed form by ``set_solution``.

    The coefficients are frozen parameters (``requires_grad=False``): no optimiser step changes
    them, but they travel with the weights to and from a federation's server and are aggregated
    like the rest of the modality head."""

    def __init__(self, n_features: int, n_points: int):
        super().__init__()
        frozen = lambda t: nn.Parameter(t, requires_grad=False)  # noqa: E731
        self.coef = frozen(torch.zeros(n_features, n_points))
        self.intercept = frozen(torch.zeros(n_points))
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


class MeanHead(nn.Module):
    """Ridge path + zero-initialised residual with a per-point low-rank readout."""

    def __init__(self, n_features: int, n_points: int, hidden: int, rank: int, num_classes: int, dropout: float):
        super().__init__()
        self.ridge = RidgePath(n_features, n_points)
        self.dropout = dropout  # on the design, in training only (see ``forward``)
        self.residual = nn.Sequential(nn.Linear(n_features, hidden), nn.GELU(), nn.Linear(hidden, rank), nn.GELU())
        self.label_embed = nn.Embedding(num_classes + 1, rank)  # the last row is the null label
        self.readout = nn.Linear(rank, n_points, bias=False)  # the per-point low-rank readout
        self.num_classes = num_classes
        self.reset_residual()

    @torch.no_grad()
    def reset_residual(self) -> None:
        """Zero readout and label embedding: the mean equals the ridge path."""
        nn.init.zeros_(self.readout.weight)
        nn.init.zeros_(self.label_embed.weight)

    def forward(
        self,
        design: torch.Tensor,
        labels: torch.Tensor | None,
        names: Sequence[str] | None,
        n_points: int,
        train: bool = False,
    ) -> torch.Tensor:
        """``design [B, F, D]`` (+ labels ``[B]``, -1 or None = no label) -> mean ``[B, N, F]``.
        ``train`` applies dropout to the residual's input; predictions never do, whatever the
        module's mode, so the point prediction is deterministic."""
        slots = self.ridge.slots(names, n_points)
        linear = self.ridge(design, slots)
        latent = self.residual(nn.functional.dropout(self.ridge.standardise(design), self.dropout, training=train))
        # no label (None or -1) is the null label's row, as label dropout trains it
        null = torch.full((design.shape[0],), self.num_classes, dtype=torch.long, device=design.device)
        index = null if labels is None else torch.where(labels < 0, null, labels)
        latent = latent + self.label_embed(index)[:, None, :]
        residual = self.readout(latent)  # through the module, so Opacus sees per-sample gradients
        if slots is not None:
            residual = residual[..., slots]
        return (linear + residual).transpose(1, 2)


def is_residual_parameter(name: str) -> bool:
    """A trainable parameter of a point prediction's learned residual (by name: the ridge
    path's own parameters, ``.mean.ridge.``, are frozen)."""
    return ".mean." in name and ".mean.ridge." not in name


#: Ranks tried for the reduced-rank ridge path (None: full rank), chosen on validation subjects.
RIDGE_RANKS: tuple[int | None, ...] = (2, 4, 8, 16, 32, None)


def fit_ridge_paths(model: nn.Module, train: Sequence, val: Sequence = ()) -> dict[str, dict]:
    """Solve each modality's ridge path from the training windows' statistics, its penalty, band
    weights and rank chosen on the validation windows (``PairedWindows`` per site; sites of one
    modality are pooled). Returns ``{modality: choice}`` (see ``solve_ridge_path``)."""
    from fedneurogen.shared.design import two_fold_statistics
    from fedneurogen.shared.ridge import sum_statistics

    chosen = {}
    for modality in sorted({w.target_modality for w in train}):
        sites = [w for w in train if w.target_modality == modality]
        names = sites[0].target_names
        for site in sites[1:] + [w for w in val if w.target_modality == modality]:
            if site.target_names != names:
                raise ConfigError(
                    f"{modality} sites with different target points cannot share one ridge path ({len(site.target_names)} vs {len(names)} points)"
                )
        parts = two_fold_statistics(sites)  # all the fit needs, in memory bounded by the model, not the subjects
        val_parts = two_fold_statistics([site for site in val if site.target_modality == modality])
        chosen[modality] = solve_ridge_path(
            model, modality, parts, sum_statistics(val_parts) if val_parts else None, names
        )
    return chosen


def solve_ridge_path(
    model: nn.Module, modality: str, train_parts: Sequence, val=None, names: Sequence[str] | None = None
) -> dict:
    """Install in ``model`` the ridge path of ``modality`` solved from ``RidgeStatistics``:
    ``train_parts`` (one per subject, or per site in a federation; they are summed), ``val``
    (summed validation statistics; None: chosen by 2-fold over the parts). ``names`` are the
    target points (needed for fNIRS). Returns the choice: penalty, rank, band weights,
    validation MSE and the number of frames."""
    from fedneurogen.shared.design import feature_bands
    from fedneurogen.shared.ridge import fit_ridge_selected, mean_only_mse, sum_statistics

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
        else {band: float(solution.weights[bands == i][0]) for i, band in enumerate(EEG_BANDS)}
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
    from fedneurogen.shared.private_path import fit_private, penalty_floor
    from fedneurogen.shared.ridge import mean_only_mse, sum_statistics

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
