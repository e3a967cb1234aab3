"""Target tokens: how fMRI vertices and fNIRS channels become the tokens the DiT denoises.

A token gathers ``S`` target points over all ``F`` frames of the window, ``S * F`` values:
- fMRI: a patch of neighbouring ico4 vertices (fixed grouping, stored as a buffer, so it is in
  every checkpoint); patches never cross hemispheres;
- fNIRS: one channel, its HbO and HbR points (``S = 2``); channel sets differ between sites.

Both are described by a ``TokenLayout``: a gather index ``[M, S]`` into the points (padding
points at index ``n_points``) and the token centroids ``[M, 3]`` in mm.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Sequence

import numpy as np
import torch
from einops import rearrange
from torch import nn

from fedneurogen.shared.errors import ConfigError
from fedneurogen.shared.model.config import FmriConfig


@dataclass
class TokenLayout:
    """Which target points make up each token."""

    index: torch.Tensor  # [M, S] long; value n_points marks padding
    centroids: torch.Tensor  # [M, 3] mm
    n_points: int

    @property
    def n_tokens(self) -> int:
        return self.index.shape[0]

    @cached_property
    def scatter(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(slots in the flattened ``[M * S]`` token points that are real, their point index)."""
        flat = self.index.reshape(-1)
        slots = torch.nonzero(flat < self.n_points).squeeze(1)
        return slots, flat[slots]

    @cached_property
    def inverse(self) -> torch.Tensor | None:
        """Slot in the flattened ``[M * S]`` token points of every point ``[N]``, when each point
        is in exactly one token (fMRI patches, fNIRS channels); None otherwise."""
        slots, points = self.scatter
        if points.numel() != self.n_points:
            return None
        inverse = torch.full((self.n_points,), -1, dtype=torch.long, device=points.device)
        inverse[points] = slots
        return inverse if bool((inverse >= 0).all()) else None


def patchify(x: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """``[B, N, F]`` -> tokens ``[B, M, S * F]`` (padding points read as zeros)."""
    padded = torch.cat([x, x.new_zeros(x.shape[0], 1, x.shape[2])], dim=1)
    # index_select of the flat index: the same gather as padded[:, index], on a faster kernel
    return padded.index_select(1, layout.index.reshape(-1)).reshape(x.shape[0], layout.n_tokens, -1)


def unpatchify(tokens: torch.Tensor, layout: TokenLayout, n_frames: int) -> torch.Tensor:
    """Tokens ``[B, M, S * F]`` -> ``[B, N, F]``; values at padding slots are dropped."""
    flat = rearrange(tokens, "b m (s f) -> b (m s) f", f=n_frames)
    if layout.inverse is not None:  # every point in one token: one gather
        return flat.index_select(1, layout.inverse)
    slots, points = layout.scatter
    values = flat[:, slots]
    return values.new_zeros(tokens.shape[0], layout.n_points, n_frames).index_copy(1, points, values)


# ---------------------------------------------------------------------------------------------
# fMRI: fixed patches of neighbouring vertices


def split_sizes(n_points: int, n_parts: int) -> list[int]:
    """Sizes of the parts that ``balanced_patches`` cuts ``n_points`` into (left part first)."""
    if n_parts == 1:
        return [n_points]
    left_parts = n_parts // 2
    left_points = n_points * left_parts // n_parts
    return split_sizes(left_points, left_parts) + split_sizes(n_points - left_points, n_parts - left_parts)


def balanced_patches(positions: np.ndarray, n_patches: int) -> list[np.ndarray]:
    """Split points into ``n_patches`` compact groups of (almost) equal size.

    Recursive median bisection: cut the set across its widest axis in proportion to the number
    of patches on each side. Deterministic (stable sorts), no iterations, and the sizes depend
    only on the counts (``split_sizes``), so the tensor shapes follow from the config alone.
    """

    def split(indices: np.ndarray, parts: int) -> list[np.ndarray]:
        if parts == 1:
            return [indices]
        pts = positions[indices]
        axis = int(np.argmax(pts.max(axis=0) - pts.min(axis=0)))
        order = indices[np.argsort(pts[:, axis], kind="stable")]
        left_parts = parts // 2
        left_points = len(indices) * left_parts // parts
        return split(order[:left_points], left_parts) + split(order[left_points:], parts - left_parts)

    return split(np.arange(len(positions)), n_patches)


class FmriTokenizer(nn.Module):
    """The fixed grouping of ico4 vertices into patches (buffers only: no parameters)."""

    def __init__(self, config: FmriConfig, positions: np.ndarray | torch.Tensor | None):
        super().__init__()
        self.n_points = config.n_points
        per_hemisphere = config.n_patches // 2
        hemisphere_points = config.n_points // 2
        patch_size = max(split_sizes(hemisphere_points, per_hemisphere))
        index = torch.full((config.n_patches, patch_size), -1, dtype=torch.long)
        centroids = torch.zeros(config.n_patches, 3)
        if positions is not None:
            positions = np.asarray(positions, dtype=np.float64)
            if positions.shape != (config.n_points, 3):
                raise ConfigError(f"fMRI positions must be [{config.n_points}, 3] (ico4), got {list(positions.shape)}")
            patches = []
            for h in range(2):
                offset = h * hemisphere_points
                patches += [
                    p + offset for p in balanced_patches(positions[offset : offset + hemisphere_points], per_hemisphere)
                ]
            index.fill_(config.n_points)
            for i, patch in enumerate(patches):
                index[i, : len(patch)] = torch.from_numpy(patch)
                centroids[i] = torch.from_numpy(positions[patch].mean(axis=0))
        # -1 marks a layout still to be filled from a checkpoint (see NeuroGenModel)
        self.register_buffer("patch_index", index)
        self.register_buffer("patch_centroids", centroids)

    @property
    def token_size(self) -> int:
        return self.patch_index.shape[1]

    def layout(self) -> TokenLayout:
        if bool((self.patch_index < 0).any()):
            raise ConfigError(
                "the fMRI patch layout is not set: build the model with fmri_positions or load it from a checkpoint"
            )
        return TokenLayout(self.patch_index, self.patch_centroids, self.n_points)


# ---------------------------------------------------------------------------------------------
# fNIRS: one token per channel (HbO + HbR)


def _channel_key(name: str, point_type: str) -> str:
    """``'S1_D1 hbo'`` -> ``'S1_D1'``: the point name without its haemoglobin type."""
    words = [w for w in re.split(r"\s+", name.strip()) if w.lower() != point_type.lower()]
    return " ".join(words)


@lru_cache(maxsize=64)
def fnirs_channel_pairs(names: tuple[str, ...], point_types: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    """``(hbo index, hbr index)`` of each channel, in order of first appearance."""
    channels: dict[str, dict[str, int]] = {}
    for i, (name, kind) in enumerate(zip(names, point_types)):
        kind = kind.lower()
        if kind not in ("hbo", "hbr"):
            raise ConfigError(f"fNIRS point {name!r} has type {kind!r}; expected 'hbo' or 'hbr'")
        slot = channels.setdefault(_channel_key(name, kind), {})
        if kind in slot:
            raise ConfigError(f"fNIRS channel {_channel_key(name, kind)!r} has two {kind} points")
        slot[kind] = i
    unpaired = [key for key, slot in channels.items() if len(slot) != 2]
    if unpaired:
        raise ConfigError(f"fNIRS channels without both hbo and hbr points: {unpaired[:5]}")
    return tuple((slot["hbo"], slot["hbr"]) for slot in channels.values())


def fnirs_layout(names: Sequence[str], point_types: Sequence[str] | None, positions: torch.Tensor) -> TokenLayout:
    if point_types is None:
        raise ConfigError("fNIRS targets need target_point_types (hbo/hbr per point)")
    pairs = torch.tensor(
        fnirs_channel_pairs(tuple(names), tuple(point_types)), dtype=torch.long, device=positions.device
    )
    centroids = positions.float()[pairs].mean(dim=1)
    return TokenLayout(pairs, centroids, len(names))
