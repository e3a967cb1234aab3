"""Target encoders (fMRI, fNIRS) and the CLIP-style alignment with the EEG encoder.

The alignment stage (the Unimind idea) pulls the pooled EEG embedding of a window towards the
embedding of its own target window and away from the other windows of the batch: symmetric
InfoNCE with a learned temperature. It serves as pre-training and as an auxiliary loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fedneurogen.shared.model.config import ModelConfig
from fedneurogen.shared.model.layers import PositionEmbedding, TransformerBlock


class TargetEncoder(nn.Module):
    """A light transformer over target tokens -> one embedding per window ``[B, out_dim]``."""

    def __init__(self, token_dim: int, config: ModelConfig):
        super().__init__()
        dim = config.target_encoder_dim
        self.token_embed = nn.Linear(token_dim, dim)
        self.position = PositionEmbedding(dim, config.position_frequencies, config.position_wavelengths_mm)
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, config.target_encoder_heads, mlp_ratio=4.0, layer_scale=1.0)
            for _ in range(config.target_encoder_depth)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.proj = nn.Linear(dim, config.align_dim)

    def forward(self, tokens: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
        x = self.token_embed(tokens) + self.position(centroids, tokens.shape[0])
        for block in self.blocks:
            x = block(x)
        return self.proj(self.norm(x).mean(dim=1))


def info_nce(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP): row ``i`` of ``a`` should match row ``i`` of ``b`` only."""
    a = F.normalize(a.float(), dim=-1)
    b = F.normalize(b.float(), dim=-1)
    logits = logit_scale.exp() * a @ b.t()
    labels = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


class ContrastiveAlignment(nn.Module):
    """Projects pooled EEG features into the alignment space and holds the temperature."""

    def __init__(self, eeg_dim: int, align_dim: int, temperature: float = 0.07):
        super().__init__()
        self.eeg_proj = nn.Linear(eeg_dim, align_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))

    def forward(self, eeg_features: torch.Tensor, target_embedding: torch.Tensor) -> torch.Tensor:
        """``eeg_features [B, C, P, D]`` (all channels and patches are pooled) and
        ``target_embedding [B, align_dim]`` -> InfoNCE loss."""
        eeg_embedding = self.eeg_proj(eeg_features.mean(dim=(1, 2)))
        # CLIP clamps the scale at 100 so the logits cannot blow up.
        return info_nce(eeg_embedding, target_embedding, self.logit_scale.clamp(max=math.log(100.0)))
