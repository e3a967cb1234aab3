"""Hyperdimensional integration: put EEG into the target modality's space and time.

Equations (1)-(3) of docs/architecture.md §4.3 (UnifiedNeuroGen):

(1)  x_i(t) = sum_j w_ij y_j(t) / sum_j w_ij          spatial: EEG electrodes j -> target points i
(2)  w_ij   = 1 / (||p_i - q_j||^2 + eps)              inverse squared distance
(3)  A_kl   = exp(-(t_k - s_l - tau)^2 / (2 sigma^2))  temporal: EEG time s_l -> target time t_k,
                                                       rows normalised; tau ~ 6 s, sigma ~ 2 s

Positions are given in millimetres (the project's frame) and converted to metres here, so the
default ``eps = 1e-6`` m^2 (1 mm^2) matches the paper's "small epsilon in consistent units".
"""

from __future__ import annotations

import math

import torch
from torch import nn


def inverse_square_weights(
    target_positions: torch.Tensor, source_positions: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """Row-normalised weights ``[n_target, n_source]`` of equations (1)-(2); positions in mm."""
    p = target_positions.to(torch.float64) / 1000.0
    q = source_positions.to(torch.float64) / 1000.0
    squared_distance = torch.cdist(p, q).pow(2)
    w = 1.0 / (squared_distance + eps)
    return (w / w.sum(dim=1, keepdim=True)).to(torch.float32)


class SpatialIntegration(nn.Module):
    """Equations (1)-(2): interpolate EEG channels onto fixed target points.

    The target points (cortical vertices or fNIRS channels) are fixed by the model; the EEG
    montage comes with each batch, so sites with different montages share one model.
    """

    def __init__(self, target_positions: torch.Tensor, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.register_buffer(
            "target_positions", torch.as_tensor(target_positions, dtype=torch.float32), persistent=False
        )
        self._cache_key: tuple[bytes, str] | None = None
        self._cache_weights: torch.Tensor | None = None

    def weights(self, eeg_positions: torch.Tensor) -> torch.Tensor:
        """``[n_target, n_channels]`` weights for one montage (memoised: montages repeat)."""
        # keyed on the values, not the tensor object: a montage is a few hundred numbers
        key = (eeg_positions.detach().cpu().numpy().tobytes(), str(self.target_positions.device))
        if self._cache_key != key or self._cache_weights is None:
            self._cache_weights = inverse_square_weights(
                self.target_positions, eeg_positions.to(self.target_positions.device), self.eps
            )
            self._cache_key = key
        return self._cache_weights

    def forward(self, eeg: torch.Tensor, eeg_positions: torch.Tensor) -> torch.Tensor:
        """``eeg [B, n_channels, T]`` with ``eeg_positions [n_channels, 3]`` -> ``[B, n_target, T]``."""
        w = self.weights(eeg_positions).to(eeg.dtype)
        return torch.einsum("ic,bct->bit", w, eeg)


class TemporalAlignment(nn.Module):
    """Equation (3): Gaussian alignment of EEG time onto target time with a hemodynamic delay.

    With ``learnable=True`` tau and sigma are parameters ("the matrix is optimized"); sigma is
    kept positive through a softplus.
    """

    def __init__(self, tau: float = 6.0, sigma: float = 2.0, learnable: bool = False):
        super().__init__()
        tau_t = torch.tensor(float(tau))
        # inverse softplus so that softplus(raw) == sigma at initialisation
        raw_sigma = torch.tensor(float(sigma) + math.log(-math.expm1(-float(sigma))))
        if learnable:
            self.tau = nn.Parameter(tau_t)
            self.raw_sigma = nn.Parameter(raw_sigma)
        else:
            self.register_buffer("tau", tau_t)
            self.register_buffer("raw_sigma", raw_sigma)

    @property
    def sigma(self) -> torch.Tensor:
        return nn.functional.softplus(self.raw_sigma)

    def matrix(self, source_times: torch.Tensor, target_times: torch.Tensor) -> torch.Tensor:
        """Row-normalised ``A [n_target_times, n_source_times]`` (times in seconds)."""
        diff = target_times[:, None] - source_times[None, :] - self.tau
        logits = -diff.pow(2) / (2 * self.sigma.pow(2))
        # softmax == exp(logits) / row sum, computed stably
        return torch.softmax(logits, dim=1)

    def forward(self, x: torch.Tensor, source_times: torch.Tensor, target_times: torch.Tensor) -> torch.Tensor:
        """``x [..., n_source_times]`` -> ``[..., n_target_times]``."""
        a = self.matrix(source_times.to(x.dtype), target_times.to(x.dtype))
        return torch.einsum("...s,ks->...k", x, a)
