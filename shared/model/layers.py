"""Building blocks shared by the encoders and the DiT.

Everything is made of ``nn.Linear``, ``nn.LayerNorm``, ``nn.Embedding`` and parameter-free
functions, so Opacus can compute per-sample gradients (it has no grad sampler for
``nn.MultiheadAttention``). Every module with parameters receives batch-first input.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: per-sample shift and scale ``[B, D]`` applied to tokens ``[B, N, D]``."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class Attention(nn.Module):
    """Multi-head self-attention with optional query/key LayerNorm (LaBraM uses it)."""

    def __init__(self, dim: int, heads: int, qk_norm: bool = False):
        super().__init__()
        self.heads = heads
        head_dim = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.LayerNorm(head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None, axis: str | None = None) -> torch.Tensor:
        """Full attention over the ``n`` tokens, or with ``grid=(C, P)`` (tokens ordered channel-
        major) and ``axis`` ``"time"``/``"channel"``: axial attention along one axis of the grid.
        Axial attention costs ``C*P*(P or C)`` instead of ``(C*P)^2``; stacking both axes still
        lets every token reach every other in two blocks."""
        if axis is not None:
            return self.proj(self._axial(x, grid, axis))
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        q, k = self.q_norm(q), self.k_norm(k)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))

    def _axial(self, x: torch.Tensor, grid: tuple[int, int], axis: str) -> torch.Tensor:
        """Axial attention ``[B, C*P, D]`` -> ``[B, C*P, D]`` (before the output projection).

        SDPA gets 4-D contiguous ``[B*C, H, P, d]`` (time) or ``[B*P, H, C, d]`` (channel)
        inputs: they keep it on its fused (flash) CPU kernel, where 3-D ones fall back to the
        unfused math path (about 2x slower forward + backward). The q/k LayerNorms run before the
        reshape, batch axis first, so Opacus' per-sample gradients stay per window."""
        b, n, _ = x.shape
        c, p = grid
        h = self.heads
        q, k, v = self.qkv(x).view(b, c, p, 3, h, -1).unbind(3)  # [b, c, p, h, d] views
        q, k = self.q_norm(q), self.k_norm(k)
        if axis == "time":  # sequences along p, batched over (b, c)
            q, k, v = (t.permute(0, 1, 3, 2, 4).reshape(b * c, h, p, -1) for t in (q, k, v))
            out = F.scaled_dot_product_attention(q, k, v).view(b, c, h, p, -1).permute(0, 1, 3, 2, 4)
        elif axis == "channel":  # sequences along c, batched over (b, p)
            q, k, v = (t.permute(0, 2, 3, 1, 4).reshape(b * p, h, c, -1) for t in (q, k, v))
            out = F.scaled_dot_product_attention(q, k, v).view(b, p, h, c, -1).permute(0, 3, 1, 2, 4)
        else:
            raise ValueError(f"axis must be 'time' or 'channel', got {axis!r}")
        return out.reshape(b, n, -1)  # [b, c, p, h, d] -> [b, (c p), (h d)]: one copy


class CrossAttention(nn.Module):
    """Target tokens (queries) read the EEG conditioning tokens (keys and values)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def context_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``[B, H, M, d]`` of the context. They do not depend on the queries, so
        a sampler whose context is fixed across denoising steps computes them once."""
        k, v = rearrange(self.kv(context), "b m (two h d) -> two b h m d", two=2, h=self.heads)
        return k, v

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None, kv: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """``kv`` (from ``context_kv``) replaces ``context`` when given."""
        q = rearrange(self.q(x), "b n (h d) -> b h n d", h=self.heads)
        k, v = kv if kv is not None else self.context_kv(context)
        # The values are the projected context: the authors' copy attended with keys only.
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))


class Mlp(nn.Module):
    """Transformer MLP: linear, GELU (tanh approximation with ``approximate_gelu``), linear."""

    def __init__(self, dim: int, mlp_ratio: float, approximate_gelu: bool = False):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh" if approximate_gelu else "none")  # DiT: tanh; LaBraM: exact
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    """Learned per-channel residual scale (LaBraM's ``gamma_1``/``gamma_2``), as a module so
    Opacus handles it like any single-input layer."""

    def __init__(self, dim: int, init: float):
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class TransformerBlock(nn.Module):
    """Pre-norm transformer block (ViT/LaBraM): attention and MLP, each with LayerScale."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, layer_scale: float, qk_norm: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, qk_norm=qk_norm)
        self.gamma_1 = LayerScale(dim, layer_scale)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_ratio)
        self.gamma_2 = LayerScale(dim, layer_scale)

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None, axis: str | None = None) -> torch.Tensor:
        x = x + self.gamma_1(self.attn(self.norm1(x), grid, axis))
        return x + self.gamma_2(self.mlp(self.norm2(x)))


class TimestepEmbedder(nn.Module):
    """Diffusion step -> vector: sinusoidal features then an MLP (DiT)."""

    def __init__(self, dim: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    @staticmethod
    def sinusoid(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.sinusoid(t, self.frequency_dim))


class LabelEmbedder(nn.Module):
    """Class/group label -> vector. Row ``num_classes`` is the learned null label: it stands for
    "no label" at sampling time and replaces labels at random in training (classifier-free
    guidance). Label ``-1`` means unlabelled."""

    def __init__(self, num_classes: int, dim: int, dropout: float):
        super().__init__()
        self.num_classes = num_classes
        self.dropout = dropout
        self.embedding = nn.Embedding(num_classes + 1, dim)

    def null_labels(self, batch_size: int, device: torch.device) -> torch.Tensor:
        return torch.full((batch_size,), self.num_classes, dtype=torch.long, device=device)

    def forward(
        self, labels: torch.Tensor | None, batch_size: int, device: torch.device, drop: bool = False
    ) -> torch.Tensor:
        if labels is None:
            labels = self.null_labels(batch_size, device)
        else:
            labels = torch.where(labels < 0, self.num_classes, labels)
            if drop and self.dropout > 0:
                dropped = torch.rand(labels.shape, device=labels.device) < self.dropout
                labels = torch.where(dropped, self.num_classes, labels)
        return self.embedding(labels)


class PositionEmbedding(nn.Module):
    """3-D position (mm) -> vector: sin/cos at geometric wavelengths per axis, then a linear map.

    Works for any set of points (vertex patches, fNIRS channels of any site)."""

    def __init__(self, dim: int, frequencies: int, wavelengths_mm: tuple[float, float]):
        super().__init__()
        shortest, longest = wavelengths_mm
        ratio = (shortest / longest) ** (1 / max(frequencies - 1, 1))
        self.wavelengths = [longest * ratio**i for i in range(frequencies)]  # geometric, longest first
        self.proj = nn.Linear(6 * frequencies, dim)

    def features(self, positions: torch.Tensor) -> torch.Tensor:
        w = 2 * math.pi / torch.tensor(self.wavelengths, dtype=torch.float32, device=positions.device)
        angles = (positions.float()[..., None] * w).flatten(-2)  # [..., 3 * frequencies]
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)

    def forward(self, positions: torch.Tensor, batch_size: int) -> torch.Tensor:
        """``positions [M, 3]`` -> ``[batch_size, M, dim]`` (expanded first: Opacus needs a batch axis)."""
        feats = self.features(positions)
        return self.proj(feats.unsqueeze(0).expand(batch_size, *feats.shape))
