"""Diffusion Transformer (Peebles & Xie, 2023) with cross-attention to EEG tokens.

Each block: self-attention over the target tokens, cross-attention to the EEG conditioning
tokens, MLP; each sublayer is modulated (shift, scale) and gated by adaLN from the conditioning
vector ``c`` (diffusion step + class/group label). adaLN-Zero: the modulation layers start at
zero, so every block starts as the identity and the final layer's output starts at zero.
"""

from __future__ import annotations

import torch
from torch import nn

from fedneurogen.shared.model.layers import Attention, CrossAttention, LabelEmbedder, Mlp, TimestepEmbedder, modulate


class DiTBlock(nn.Module):
    """One DiT block: adaLN-modulated, gated self-attention, cross-attention to the EEG tokens and MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.cross_attn = CrossAttention(dim, heads)
        self.norm3 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, mlp_ratio, approximate_gelu=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 9 * dim))

    def forward(
        self,
        x: torch.Tensor,
        c: torch.Tensor,
        context: torch.Tensor | None,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        (shift_sa, scale_sa, gate_sa, shift_ca, scale_ca, gate_ca, shift_mlp, scale_mlp, gate_mlp) = (
            self.adaLN_modulation(c).chunk(9, dim=1)
        )
        x = x + gate_sa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_sa, scale_sa))
        x = x + gate_ca.unsqueeze(1) * self.cross_attn(modulate(self.norm2(x), shift_ca, scale_ca), context, kv)
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm3(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    """adaLN + linear from the hidden width to the token values (the "modal unpatcher" head)."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """The shared backbone: conditioning vector and blocks. The token embedders and the final
    layers are per modality (``ModalityHead``)."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float, num_classes: int, label_dropout: float):
        super().__init__()
        self.t_embedder = TimestepEmbedder(dim)
        self.y_embedder = LabelEmbedder(num_classes, dim, label_dropout)
        self.context_norm = nn.LayerNorm(dim, eps=1e-6)
        self.blocks = nn.ModuleList(DiTBlock(dim, heads, mlp_ratio) for _ in range(depth))

    def initialize_weights(self) -> None:
        """DiT's initialisation, with adaLN-Zero: every block starts as the identity."""
        nn.init.normal_(self.y_embedder.embedding.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)

    def condition(self, t: torch.Tensor, labels: torch.Tensor | None, drop_labels: bool) -> torch.Tensor:
        """``c = embed(t) + embed(label)`` ``[B, D]``; ``labels=None`` means the null label."""
        return self.t_embedder(t) + self.y_embedder(labels, t.shape[0], t.device, drop=drop_labels)

    def context_kv(self, context: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every block's cross-attention keys and values of the (normalised) EEG tokens. The EEG
        condition is the same at every sampling step, so DDIM computes them once per batch
        (``forward(..., context_kv=...)``) instead of once per step."""
        context = self.context_norm(context)
        return [block.cross_attn.context_kv(context) for block in self.blocks]

    def forward(
        self,
        x: torch.Tensor,
        c: torch.Tensor,
        context: torch.Tensor | None,
        context_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        if context_kv is None:
            context = self.context_norm(context)
            for block in self.blocks:
                x = block(x, c, context)
            return x
        for block, kv in zip(self.blocks, context_kv):
            x = block(x, c, None, kv)
        return x
