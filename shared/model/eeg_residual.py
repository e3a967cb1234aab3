"""The learned residual's EEG branch: what an EEG encoder finds beyond the hemodynamic design.

The design (``shared/design.py``) is what a physiologist would write down: HRF-convolved band
power, and the alpha-gated block. The branch gives the residual what a network can learn from the
raw EEG instead (``ModelConfig.mean_eeg_features``):

    eeg [B, C, T] --its own EEGEncoder--> [B, C, P, De]
        --HyperdimensionalIntegration (fixed HRF delay kernel)--> [B, M, F, De] per target token and frame
        --MLP--> K values per token and frame
        --each point's gains on its token's K values (zero at init)--> [B, N, F]

It has an encoder of its own rather than reading the DiT's: the residual is chosen on validation
subjects (``BestMean``; federated: ``server/early_stopping.py``) and kept at its best epoch or
round while the rest trains on, which only holds if everything it reads is chosen with it. Its
parameters live under the modality head's ``mean.`` like the rest of the residual, so they are
snapshotted, restored, aggregated per modality and reset with it. The integration's delay and
width are fixed (the HRF prior): a learned delay would take the time grids as extra inputs,
which DP-SGD's per-layer hooks cannot pass on.

The per-point gains are an embedding looked up with each batch point's slot, one lookup per
window, so Opacus computes their per-sample gradients like any other layer's.
"""

from __future__ import annotations

import torch
from torch import nn

from fedneurogen.shared.model.conditioning import HyperdimensionalIntegration
from fedneurogen.shared.model.config import ModelConfig
from fedneurogen.shared.model.eeg_encoder import EEGEncoder

#: Values per token and frame that each point weighs with its own gains.
TOKEN_VALUES = 4


class EEGResidual(nn.Module):
    """``eeg [B, C, T]`` -> a residual ``[B, N, F]`` at the batch's target points.

    Parameters
    ----------
    config : ModelConfig
        Its ``eeg_*`` fields shape the encoder; ``hrf_delay`` and ``hrf_width`` the kernel.
    n_points : int
        Point slots of the modality head (its ridge path's).
    hidden : int
        Width of the MLP on each token's integrated features.
    """

    def __init__(self, config: ModelConfig, n_points: int, hidden: int):
        super().__init__()
        self.encoder = EEGEncoder(config)
        self.integration = HyperdimensionalIntegration(config.hrf_delay, config.hrf_width, learnable=False)
        self.net = nn.Sequential(nn.Linear(config.eeg_dim, hidden), nn.GELU(), nn.Linear(hidden, TOKEN_VALUES))
        self.gains = nn.Embedding(n_points, TOKEN_VALUES)  # each point slot's weights on its token's values
        self.reset()

    @torch.no_grad()
    def reset(self) -> None:
        """Zero gains: the branch adds nothing."""
        nn.init.zeros_(self.gains.weight)

    def forward(
        self,
        eeg: torch.Tensor,
        channel_index: torch.Tensor,
        eeg_positions: torch.Tensor,
        token_positions: torch.Tensor,
        point_token: torch.Tensor,
        point_slots: torch.Tensor,
        patch_times: torch.Tensor,
        frame_times: torch.Tensor,
    ) -> torch.Tensor:
        """The branch's residual.

        Parameters
        ----------
        eeg, channel_index : torch.Tensor
            ``[B, C, T]`` and its channels' electrode indices (``channel_index_tensor``).
        eeg_positions, token_positions : torch.Tensor
            ``[C, 3]`` and ``[M, 3]`` in mm.
        point_token, point_slots : torch.Tensor
            long ``[N]``: each batch point's token and its slot in the head (its gains' row).
        patch_times, frame_times : torch.Tensor
            ``[P]`` and ``[F]`` seconds (``eeg_patch_times``, ``target_frame_times``).

        Returns
        -------
        torch.Tensor
            ``[B, N, F]``.
        """
        features = self.encoder(eeg, channel_index)
        integrated = self.integration(features, eeg_positions, token_positions, patch_times, frame_times)
        values = self.net(integrated)  # [B, M, F, K]
        gains = self.gains(point_slots.expand(eeg.shape[0], -1))  # [B, N, K], per window for Opacus
        return torch.einsum("bnfk,bnk->bnf", values[:, point_token], gains)
