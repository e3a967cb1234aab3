"""EEG encoder in the style of LaBraM-Base (Jiang et al., ICLR 2024), and a LaBraM checkpoint loader.

An EEG window ``[B, C, T]`` (200 Hz, units of 100 uV) is cut into 1 s patches per channel; a
temporal convolution embeds each patch; an electrode embedding (by 10-05 channel name) and a
time embedding (patch index) are added; transformer blocks mix all channels and patches. The
output keeps one feature vector per channel and patch, ``[B, C, P, D]``, so the hyperdimensional
integration can place it in the target's space and time.

Parameter names follow LaBraM's (``patch_embed.conv1``, ``blocks.3.attn.qkv``, ``blocks.3.mlp.fc1``,
...) so a LaBraM checkpoint maps onto the encoder with a handful of renames (``load_labram_checkpoint``).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch
from einops import rearrange
from torch import nn

from fedneurogen.shared.errors import ConfigError
from fedneurogen.shared.model.config import ModelConfig
from fedneurogen.shared.model.layers import TransformerBlock

log = logging.getLogger(__name__)

# Electrode vocabulary: MNE's ``standard_1005`` montage names, upper-cased, in MNE's order (frozen
# here so that embedding rows never move if MNE's list changes). The last index is "unknown".
# fmt: off
ELECTRODE_VOCABULARY: tuple[str, ...] = (
    'FP1', 'FPZ', 'FP2', 'AF9', 'AF7', 'AF5', 'AF3', 'AF1', 'AFZ', 'AF2', 'AF4', 'AF6', 'AF8',
    'AF10', 'F9', 'F7', 'F5', 'F3', 'F1', 'FZ', 'F2', 'F4', 'F6', 'F8', 'F10', 'FT9', 'FT7',
    'FC5', 'FC3', 'FC1', 'FCZ', 'FC2', 'FC4', 'FC6', 'FT8', 'FT10', 'T9', 'T7', 'C5', 'C3',
    'C1', 'CZ', 'C2', 'C4', 'C6', 'T8', 'T10', 'TP9', 'TP7', 'CP5', 'CP3', 'CP1', 'CPZ', 'CP2',
    'CP4', 'CP6', 'TP8', 'TP10', 'P9', 'P7', 'P5', 'P3', 'P1', 'PZ', 'P2', 'P4', 'P6', 'P8',
    'P10', 'PO9', 'PO7', 'PO5', 'PO3', 'PO1', 'POZ', 'PO2', 'PO4', 'PO6', 'PO8', 'PO10', 'O1',
    'OZ', 'O2', 'I1', 'IZ', 'I2', 'AFP9H', 'AFP7H', 'AFP5H', 'AFP3H', 'AFP1H', 'AFP2H', 'AFP4H',
    'AFP6H', 'AFP8H', 'AFP10H', 'AFF9H', 'AFF7H', 'AFF5H', 'AFF3H', 'AFF1H', 'AFF2H', 'AFF4H',
    'AFF6H', 'AFF8H', 'AFF10H', 'FFT9H', 'FFT7H', 'FFC5H', 'FFC3H', 'FFC1H', 'FFC2H', 'FFC4H',
    'FFC6H', 'FFT8H', 'FFT10H', 'FTT9H', 'FTT7H', 'FCC5H', 'FCC3H', 'FCC1H', 'FCC2H', 'FCC4H',
    'FCC6H', 'FTT8H', 'FTT10H', 'TTP9H', 'TTP7H', 'CCP5H', 'CCP3H', 'CCP1H', 'CCP2H', 'CCP4H',
    'CCP6H', 'TTP8H', 'TTP10H', 'TPP9H', 'TPP7H', 'CPP5H', 'CPP3H', 'CPP1H', 'CPP2H', 'CPP4H',
    'CPP6H', 'TPP8H', 'TPP10H', 'PPO9H', 'PPO7H', 'PPO5H', 'PPO3H', 'PPO1H', 'PPO2H', 'PPO4H',
    'PPO6H', 'PPO8H', 'PPO10H', 'POO9H', 'POO7H', 'POO5H', 'POO3H', 'POO1H', 'POO2H', 'POO4H',
    'POO6H', 'POO8H', 'POO10H', 'OI1H', 'OI2H', 'FP1H', 'FP2H', 'AF9H', 'AF7H', 'AF5H', 'AF3H',
    'AF1H', 'AF2H', 'AF4H', 'AF6H', 'AF8H', 'AF10H', 'F9H', 'F7H', 'F5H', 'F3H', 'F1H', 'F2H',
    'F4H', 'F6H', 'F8H', 'F10H', 'FT9H', 'FT7H', 'FC5H', 'FC3H', 'FC1H', 'FC2H', 'FC4H', 'FC6H',
    'FT8H', 'FT10H', 'T9H', 'T7H', 'C5H', 'C3H', 'C1H', 'C2H', 'C4H', 'C6H', 'T8H', 'T10H',
    'TP9H', 'TP7H', 'CP5H', 'CP3H', 'CP1H', 'CP2H', 'CP4H', 'CP6H', 'TP8H', 'TP10H', 'P9H',
    'P7H', 'P5H', 'P3H', 'P1H', 'P2H', 'P4H', 'P6H', 'P8H', 'P10H', 'PO9H', 'PO7H', 'PO5H',
    'PO3H', 'PO1H', 'PO2H', 'PO4H', 'PO6H', 'PO8H', 'PO10H', 'O1H', 'O2H', 'I1H', 'I2H', 'AFP9',
    'AFP7', 'AFP5', 'AFP3', 'AFP1', 'AFPZ', 'AFP2', 'AFP4', 'AFP6', 'AFP8', 'AFP10', 'AFF9',
    'AFF7', 'AFF5', 'AFF3', 'AFF1', 'AFFZ', 'AFF2', 'AFF4', 'AFF6', 'AFF8', 'AFF10', 'FFT9',
    'FFT7', 'FFC5', 'FFC3', 'FFC1', 'FFCZ', 'FFC2', 'FFC4', 'FFC6', 'FFT8', 'FFT10', 'FTT9',
    'FTT7', 'FCC5', 'FCC3', 'FCC1', 'FCCZ', 'FCC2', 'FCC4', 'FCC6', 'FTT8', 'FTT10', 'TTP9',
    'TTP7', 'CCP5', 'CCP3', 'CCP1', 'CCPZ', 'CCP2', 'CCP4', 'CCP6', 'TTP8', 'TTP10', 'TPP9',
    'TPP7', 'CPP5', 'CPP3', 'CPP1', 'CPPZ', 'CPP2', 'CPP4', 'CPP6', 'TPP8', 'TPP10', 'PPO9',
    'PPO7', 'PPO5', 'PPO3', 'PPO1', 'PPOZ', 'PPO2', 'PPO4', 'PPO6', 'PPO8', 'PPO10', 'POO9',
    'POO7', 'POO5', 'POO3', 'POO1', 'POOZ', 'POO2', 'POO4', 'POO6', 'POO8', 'POO10', 'OI1',
    'OIZ', 'OI2', 'T3', 'T5', 'T4', 'T6', 'M1', 'M2', 'A1', 'A2'
)
# fmt: on
UNKNOWN_ELECTRODE = len(ELECTRODE_VOCABULARY)
_ELECTRODE_INDEX = {name: i for i, name in enumerate(ELECTRODE_VOCABULARY)}

# LaBraM's electrode order: row ``i + 1`` of its ``pos_embed`` belongs to ``LABRAM_CHANNELS[i]``
# (row 0 is its CLS token). From ``utils.standard_1020`` of the LaBraM repository.
# fmt: off
LABRAM_CHANNELS: tuple[str, ...] = (
    'FP1', 'FPZ', 'FP2', 'AF9', 'AF7', 'AF5', 'AF3', 'AF1', 'AFZ', 'AF2', 'AF4', 'AF6', 'AF8',
    'AF10', 'F9', 'F7', 'F5', 'F3', 'F1', 'FZ', 'F2', 'F4', 'F6', 'F8', 'F10', 'FT9', 'FT7',
    'FC5', 'FC3', 'FC1', 'FCZ', 'FC2', 'FC4', 'FC6', 'FT8', 'FT10', 'T9', 'T7', 'C5', 'C3',
    'C1', 'CZ', 'C2', 'C4', 'C6', 'T8', 'T10', 'TP9', 'TP7', 'CP5', 'CP3', 'CP1', 'CPZ', 'CP2',
    'CP4', 'CP6', 'TP8', 'TP10', 'P9', 'P7', 'P5', 'P3', 'P1', 'PZ', 'P2', 'P4', 'P6', 'P8',
    'P10', 'PO9', 'PO7', 'PO5', 'PO3', 'PO1', 'POZ', 'PO2', 'PO4', 'PO6', 'PO8', 'PO10', 'O1',
    'OZ', 'O2', 'O9', 'CB1', 'CB2', 'IZ', 'O10', 'T3', 'T5', 'T4', 'T6', 'M1', 'M2', 'A1', 'A2',
    'CFC1', 'CFC2', 'CFC3', 'CFC4', 'CFC5', 'CFC6', 'CFC7', 'CFC8', 'CCP1', 'CCP2', 'CCP3',
    'CCP4', 'CCP5', 'CCP6', 'CCP7', 'CCP8', 'T1', 'T2', 'FTT9H', 'TTP7H', 'TPP9H', 'FTT10H',
    'TPP8H', 'TPP10H',
)
# fmt: on


def normalize_channel_name(name: str) -> str:
    """Normalise an EEG channel name: ``'EEG Fp1-REF'`` -> ``'FP1'``.

    Parameters
    ----------
    name : str
        A channel name as a file gives it.

    Returns
    -------
    str
        Upper case, without an ``EEG`` prefix or a ``-REF``/``-LE``/``-AR``/``-AVG`` suffix.
    """
    name = re.sub(r"^EEG[\s_-]+", "", name.strip().upper())
    return re.sub(r"-(REF|LE|AR|AVG)$", "", name)


@lru_cache(maxsize=256)
def electrode_indices(channel_names: tuple[str, ...]) -> tuple[int, ...]:
    """Vocabulary index of each channel (cached).

    Parameters
    ----------
    channel_names : tuple of str
        Channel names (normalised with ``normalize_channel_name``).

    Returns
    -------
    tuple of int
        Index into ``ELECTRODE_VOCABULARY``; ``UNKNOWN_ELECTRODE`` for names outside the 10-05 system.
    """
    return tuple(_ELECTRODE_INDEX.get(normalize_channel_name(n), UNKNOWN_ELECTRODE) for n in channel_names)


class TemporalConv(nn.Module):
    """LaBraM's patch encoder: three temporal convolutions with GroupNorm and GELU.

    ``[B, N, S]`` (N patches of S samples) -> ``[B, N, time x channels]``. The convolutions run on
    ``[B, 1, N, S]`` so the batch axis stays first (Opacus computes per-sample gradients).

    Parameters
    ----------
    out_chans : int
        Convolution channels (a multiple of 4: GroupNorm with 4 groups).
    """

    def __init__(self, out_chans: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(1, out_chans, kernel_size=(1, 15), stride=(1, 8), padding=(0, 7))
        self.norm1 = nn.GroupNorm(4, out_chans)
        self.conv2 = nn.Conv2d(out_chans, out_chans, kernel_size=(1, 3), padding=(0, 1))
        self.norm2 = nn.GroupNorm(4, out_chans)
        self.conv3 = nn.Conv2d(out_chans, out_chans, kernel_size=(1, 3), padding=(0, 1))
        self.norm3 = nn.GroupNorm(4, out_chans)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed patches.

        Parameters
        ----------
        x : torch.Tensor
            ``[B, N, S]`` patches of ``S`` samples.

        Returns
        -------
        torch.Tensor
            ``[B, N, ceil(S / 8) x out_chans]``.
        """
        # channels-last: oneDNN's (1, 3) convolutions run forward + backward about 2x faster on
        # CPU than in NCHW, and the final [b, n, t, c] memory order makes the rearrange a view
        x = x.unsqueeze(1).contiguous(memory_format=torch.channels_last)
        x = self.act(self.norm1(self.conv1(x)))
        x = self.act(self.norm2(self.conv2(x)))
        x = self.act(self.norm3(self.conv3(x)))
        return rearrange(x, "b c n t -> b n (t c)")


class SpectralEmbed(nn.Module):
    """Log amplitude spectrum of each patch -> one token vector.

    The hemodynamic response follows EEG band power (alpha down, gamma up with activity), which a
    temporal convolution must otherwise learn to square and smooth from raw samples. LaBraM
    learns the spectrum as a pre-training target; here it is handed to the encoder directly,
    which makes training from scratch far faster.

    Parameters
    ----------
    patch_size : int
        Samples per patch ``S``.
    dim : int
        Width of the token vector ``D``.
    """

    def __init__(self, patch_size: int, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(patch_size // 2 + 1, eps=1e-6)
        self.proj = nn.Linear(patch_size // 2 + 1, dim)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """``log1p`` of each patch's orthonormal FFT amplitude, normalised and projected.

        Parameters
        ----------
        patches : torch.Tensor
            ``[B, N, S]`` patches.

        Returns
        -------
        torch.Tensor
            ``[B, N, D]``.
        """
        amplitude = torch.fft.rfft(patches.float(), dim=-1, norm="ortho").abs()
        return self.proj(self.norm(torch.log1p(amplitude)))


class EEGEncoder(nn.Module):
    """LaBraM-style EEG transformer: ``eeg [B, C, T]`` -> features ``[B, C, P, D]``.

    Parameters
    ----------
    config : ModelConfig
        The ``eeg_*`` fields set its shapes.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.patch_size = config.eeg_patch_size
        self.attention = config.eeg_attention
        self.max_patches = config.eeg_max_patches
        self.patch_embed = TemporalConv(config.eeg_conv_channels)
        # LaBraM-Base: 25 steps x 8 channels = 200 = width, so no projection is needed.
        self.patch_proj = (
            nn.Identity() if config.eeg_conv_dim == config.eeg_dim else nn.Linear(config.eeg_conv_dim, config.eeg_dim)
        )
        self.spectral_embed = (
            SpectralEmbed(config.eeg_patch_size, config.eeg_dim) if config.eeg_spectral_embed else None
        )
        self.electrode_embed = nn.Embedding(len(ELECTRODE_VOCABULARY) + 1, config.eeg_dim)
        self.time_embed = nn.Embedding(config.eeg_max_patches, config.eeg_dim)
        self.blocks = nn.ModuleList(
            TransformerBlock(
                config.eeg_dim, config.eeg_heads, config.eeg_mlp_ratio, config.eeg_layer_scale, qk_norm=True
            )
            for _ in range(config.eeg_depth)
        )
        self.norm = nn.LayerNorm(config.eeg_dim, eps=1e-6)
        self._initialize_weights()

    def _initialize_weights(self) -> None:
        """LaBraM's: truncated normal (0.02), zero biases, residual outputs scaled by depth."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)
        for layer_id, block in enumerate(self.blocks, start=1):
            block.attn.proj.weight.data.div_(math.sqrt(2.0 * layer_id))
            block.mlp.fc2.weight.data.div_(math.sqrt(2.0 * layer_id))

    def n_patches(self, n_times: int) -> int:
        """Patches in a window of ``n_times`` samples.

        Parameters
        ----------
        n_times : int
            Samples per channel.

        Returns
        -------
        int
            ``n_times / patch_size``.

        Raises
        ------
        ConfigError
            ``n_times`` is not a whole number of patches, or more than the time embedding covers.
        """
        if n_times % self.patch_size:
            raise ConfigError(
                f"EEG window of {n_times} samples is not a whole number of {self.patch_size}-sample patches"
            )
        n = n_times // self.patch_size
        if n > self.max_patches:
            raise ConfigError(f"EEG window has {n} patches; the model's time embedding covers {self.max_patches}")
        return n

    def forward(self, eeg: torch.Tensor, channel_index: torch.Tensor) -> torch.Tensor:
        """Encode EEG windows.

        Parameters
        ----------
        eeg : torch.Tensor
            ``[B, C, T]`` at ``eeg_sfreq``, units of 100 uV.
        channel_index : torch.Tensor
            long ``[C]`` vocabulary index of each channel (``channel_index_tensor``).

        Returns
        -------
        torch.Tensor
            ``[B, C, P, D]`` features, one per channel and patch.
        """
        b, c, t = eeg.shape
        p = self.n_patches(t)
        patches = rearrange(eeg, "b c (p s) -> b (c p) s", s=self.patch_size)
        x = self.patch_proj(self.patch_embed(patches))
        if self.spectral_embed is not None:
            x = x + self.spectral_embed(patches)
        # Index tensors carry the batch axis so the embeddings get per-sample gradients under DP.
        electrode = channel_index.view(1, c, 1).expand(b, c, p).reshape(b, c * p)
        time = torch.arange(p, device=eeg.device).view(1, 1, p).expand(b, c, p).reshape(b, c * p)
        x = x + self.electrode_embed(electrode) + self.time_embed(time)
        for i, block in enumerate(self.blocks):
            axis = None if self.attention == "full" else ("time", "channel")[i % 2]
            x = block(x, (c, p), axis)
        return rearrange(self.norm(x), "b (c p) d -> b c p d", c=c)


# ---------------------------------------------------------------------------------------------
# LaBraM checkpoints


@dataclass
class LabramLoadReport:
    """What ``load_labram_checkpoint`` did with each tensor of the file.

    Attributes
    ----------
    loaded : list of str
        Encoder tensors taken from the file.
    skipped_shape : list of str
        ``"name: file [..] vs model [..]"`` for tensors whose shape does not fit.
    unexpected : list of str
        In the file, not in the encoder.
    missing : list of str
        In the encoder, not loaded from the file (left at initialisation).
    """

    loaded: list[str] = field(default_factory=list)
    skipped_shape: list[str] = field(default_factory=list)  # "name: file [..] vs model [..]"
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the encoder
    missing: list[str] = field(default_factory=list)  # in the encoder, not in the file


def _replace_rows(current: torch.Tensor, rows: dict[int, torch.Tensor], source: torch.Tensor) -> torch.Tensor:
    """``current`` with some rows replaced; ``source`` itself when the widths differ, so that the
    caller reports it as a shape mismatch."""
    if source.shape[-1] != current.shape[-1]:
        return source
    out = current.clone()
    for i, row in rows.items():
        if i < out.shape[0]:
            out[i] = row
    return out


def _labram_to_encoder_names(state: dict[str, torch.Tensor], encoder: EEGEncoder) -> dict[str, torch.Tensor]:
    """Rename a LaBraM state dict into this encoder's layout."""
    out: dict[str, torch.Tensor] = {}
    own = encoder.state_dict()
    for name, tensor in state.items():
        if name.endswith((".attn.q_bias", ".attn.v_bias")):
            continue  # folded into qkv.bias below
        if re.fullmatch(r"blocks\.\d+\.gamma_[12]", name):
            out[name + ".scale"] = tensor
        elif name.startswith("fc_norm.") and name.replace("fc_", "", 1) not in state:
            out[name.replace("fc_", "", 1)] = tensor  # mean-pooling checkpoints keep their final norm here
        elif name == "time_embed" and tensor.dim() == 3:  # LaBraM: [1, 16, D]; here [max_patches, D]
            rows = dict(enumerate(tensor[0]))
            out["time_embed.weight"] = _replace_rows(own["time_embed.weight"], rows, tensor[0])
        elif name == "pos_embed" and tensor.dim() == 3:  # LaBraM: [1, 1 + 128, D] in its channel order
            rows = {
                _ELECTRODE_INDEX[channel]: tensor[0, i + 1]
                for i, channel in enumerate(LABRAM_CHANNELS[: tensor.shape[1] - 1])
                if channel in _ELECTRODE_INDEX
            }
            out["electrode_embed.weight"] = _replace_rows(own["electrode_embed.weight"], rows, tensor[0])
        else:
            out[name] = tensor
    # LaBraM's qkv has separate q and v biases and no k bias (or no biases at all).
    for prefix in {n.rsplit(".", 1)[0] for n in state if n.endswith(".attn.qkv.weight")}:
        if prefix + ".bias" in state:
            continue  # already in this encoder's layout
        q_bias, v_bias = state.get(prefix.replace(".qkv", ".q_bias")), state.get(prefix.replace(".qkv", ".v_bias"))
        if q_bias is None or v_bias is None:
            q_bias = v_bias = torch.zeros(state[prefix + ".weight"].shape[0] // 3)
        out[prefix + ".bias"] = torch.cat([q_bias, torch.zeros_like(q_bias), v_bias])
    return out


def load_labram_checkpoint(model: nn.Module, path: str | Path, trusted: bool = False) -> LabramLoadReport:
    """Load LaBraM weights (``labram-base.pth`` or a fine-tuned file) into an EEG encoder.

    ``model`` is an ``EEGEncoder`` or anything with an ``eeg_encoder`` attribute. The tensors are
    taken from the ``model``/``module``/``state_dict`` entry when present, ``student.`` (VQ-NSP
    pre-training) and ``module.`` prefixes are stripped, LaBraM's names are mapped onto this
    encoder (q/v biases, LayerScale, electrode rows by channel name, time rows), and tensors whose
    shape does not fit (classification heads, other widths) are skipped and logged. Nothing is
    downloaded.

    Parameters
    ----------
    model : nn.Module
        An ``EEGEncoder`` or anything with an ``eeg_encoder`` attribute; loaded in place.
    path : str | Path
        The checkpoint file (``torch.save`` format).
    trusted : bool
        Allow pickled non-tensor objects in the file (only for files you trust: unpickling can
        run code).

    Returns
    -------
    LabramLoadReport
        Which tensors were loaded, skipped, unexpected or missing.

    Raises
    ------
    TypeError
        ``model`` holds no ``EEGEncoder``.
    ConfigError
        The file does not exist, cannot be read, or holds no state dict.
    """
    encoder = getattr(model, "eeg_encoder", model)
    if not isinstance(encoder, EEGEncoder):
        raise TypeError(f"expected an EEGEncoder or a model with .eeg_encoder, got {type(model).__name__}")
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"LaBraM checkpoint {path} does not exist")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=not trusted)
    except Exception as err:  # pickle errors come in many types
        hint = "" if trusted else " (if the file holds other pickled objects and you trust it, pass trusted=True)"
        raise ConfigError(f"cannot read LaBraM checkpoint {path}: {err}{hint}") from err
    for key in ("model", "module", "state_dict"):
        if isinstance(blob, dict) and isinstance(blob.get(key), dict):
            blob = blob[key]
            break
    if not isinstance(blob, dict):
        raise ConfigError(f"LaBraM checkpoint {path} holds a {type(blob).__name__}, not a state dict")
    state = {}
    for name, tensor in blob.items():
        if not torch.is_tensor(tensor):
            continue
        for prefix in ("module.", "student."):
            name = name.removeprefix(prefix)
        state[name] = tensor
    state = _labram_to_encoder_names(state, encoder)

    report = LabramLoadReport()
    own = encoder.state_dict()
    accepted = {}
    for name, tensor in state.items():
        if name not in own:
            report.unexpected.append(name)
        elif tuple(tensor.shape) != tuple(own[name].shape):
            report.skipped_shape.append(f"{name}: file {list(tensor.shape)} vs model {list(own[name].shape)}")
        else:
            accepted[name] = tensor
            report.loaded.append(name)
    encoder.load_state_dict(accepted, strict=False)
    report.missing = [name for name in own if name not in accepted]
    if report.skipped_shape:
        log.warning(
            "LaBraM checkpoint %s: skipped %d tensors whose shapes do not fit: %s",
            path,
            len(report.skipped_shape),
            "; ".join(report.skipped_shape),
        )
    log.info(
        "LaBraM checkpoint %s: loaded %d tensors, %d unexpected, %d left at initialisation",
        path,
        len(report.loaded),
        len(report.unexpected),
        len(report.missing),
    )
    return report


def channel_index_tensor(channel_names: Sequence[str], device: torch.device | str) -> torch.Tensor:
    """``electrode_indices`` as a tensor, the ``channel_index`` of ``EEGEncoder.forward``.

    Parameters
    ----------
    channel_names : sequence of str
        Channel names.
    device : torch.device | str
        Where the tensor is created.

    Returns
    -------
    torch.Tensor
        long ``[C]``.
    """
    return torch.tensor(electrode_indices(tuple(channel_names)), dtype=torch.long, device=device)
