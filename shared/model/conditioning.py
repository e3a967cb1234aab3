"""Hyperdimensional integration: EEG features placed in the target's space and time.

Equations (1)-(3) of docs/architecture.md §4.3 (``fedneurogen.shared.integration``), applied to the
EEG encoder's features instead of raw EEG: per-channel, per-patch features ``[B, C, P, D]`` are
interpolated onto the target token centroids (inverse squared distance) and carried from EEG
patch times to target frame times (Gaussian kernel, learned delay tau and width sigma). The
result is one feature vector per target token and frame, ``[B, M, F, D]``: the EEG evidence for
exactly the place and time each target token describes.

Times are absolute within the pair: the target window starts at 0, its frame ``k`` at
``t_k = k / target_sfreq``; the EEG window starts ``lag`` seconds earlier, its patch ``l``
centred at ``s_l = -lag + (l + 1/2) * patch_seconds``. With tau = lag = 6 s the kernel of frame
``k`` peaks on the EEG recorded one hemodynamic delay before it.
"""

from __future__ import annotations

import torch
from torch import nn

from fedneurogen.shared.integration import TemporalAlignment, inverse_square_weights


def eeg_patch_times(n_patches: int, lag: float, patch_seconds: float, device: torch.device | str) -> torch.Tensor:
    return -lag + (torch.arange(n_patches, dtype=torch.float32, device=device) + 0.5) * patch_seconds


def target_frame_times(n_frames: int, sfreq: float, device: torch.device | str) -> torch.Tensor:
    return torch.arange(n_frames, dtype=torch.float32, device=device) / sfreq


class HyperdimensionalIntegration(nn.Module):
    """``[B, C, P, D]`` EEG features -> ``[B, M, F, D]`` at the target tokens and frames."""

    def __init__(self, hrf_delay: float, hrf_width: float, learnable: bool):
        super().__init__()
        self.temporal = TemporalAlignment(tau=hrf_delay, sigma=hrf_width, learnable=learnable)

    def forward(
        self,
        features: torch.Tensor,
        eeg_positions: torch.Tensor,
        token_positions: torch.Tensor,
        patch_times: torch.Tensor,
        frame_times: torch.Tensor,
    ) -> torch.Tensor:
        # Equations (1)-(2). The token set changes with the modality and, for fNIRS, with the
        # site, so the weights are computed per call (an [M, C] matrix: cheap) rather than held
        # by a SpatialIntegration built for one fixed set of points.
        weights = inverse_square_weights(token_positions, eeg_positions).to(features.dtype)
        b, c, p, d = features.shape
        # Both maps are linear, so their order is free: time first ([F, P] @ [B, C, P, D], from
        # 16 patches to F frames: fewer values for the spatial map), then space as one matmul
        # [M, C] @ [B, C, F * D] that lands in the [B, M, F, D] layout with no permuted copy.
        a = self.temporal.matrix(patch_times.to(features.dtype), frame_times.to(features.dtype))  # equation (3)
        x = torch.matmul(a, features)  # [B, C, F, D]
        x = torch.matmul(weights, x.reshape(b, c, -1))  # equations (1)-(2): [B, M, F * D]
        return x.view(b, weights.shape[0], a.shape[0], d)
