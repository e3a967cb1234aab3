"""NeuroGenModel: EEG -> fMRI BOLD / fNIRS HbO-HbR by a conditional Diffusion Transformer.

    eeg [B, C, T] --EEGEncoder--> features [B, C, P, De]                       (6) f = E(x)
      --HyperdimensionalIntegration (eqs 1-3)--> [B, M, F, De] at target tokens and frames
      --condition_embed + position--> EEG tokens [B, M, D]
    x_t [B, N, F] --patchify--> tokens --patch_embed--> + EEG tokens --DiT(c = step + label,
      cross-attention to EEG tokens)--> final_layer --unpatchify--> v or eps [B, N, F]   (7)-(9)

The backbone (EEG encoder, integration, DiT, position embedding, alignment projection) is shared
by all sites; everything specific to a target modality sits under ``modality_heads.<modality>.``
(tokenizer buffers, patch and condition embedders, final layer = modal unpatcher, target
encoder), so the federated server can aggregate those parameters over the sites that have that
modality only (``parameter_modality``). Equation numbers as in docs/architecture.md §4.

This module is the network. What it reads is ``batch.py`` (``Batch``); the training losses and
``prepare_for_dp`` are ``losses.py``, classifier-free guidance and DDIM sampling ``sampling.py``
(both mixed into ``NeuroGenModel``, so ``model.loss``/``model.sample`` stay its methods).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from fedneurogen.shared.errors import ConfigError
from fedneurogen.shared.model.batch import MODALITIES, Batch, default_device
from fedneurogen.shared.model.conditioning import HyperdimensionalIntegration, eeg_patch_times, target_frame_times
from fedneurogen.shared.model.config import ModelConfig, count_parameters, get_preset
from fedneurogen.shared.model.diffusion import GaussianDiffusion
from fedneurogen.shared.model.dit import DiT, FinalLayer
from fedneurogen.shared.model.eeg_encoder import EEGEncoder, channel_index_tensor
from fedneurogen.shared.model.eeg_residual import EEGResidual
from fedneurogen.shared.model.layers import PositionEmbedding
from fedneurogen.shared.model.losses import TrainingLosses
from fedneurogen.shared.model.mean import MeanHead
from fedneurogen.shared.model.noise import ResidualNoise
from fedneurogen.shared.model.sampling import Sampling
from fedneurogen.shared.model.target_encoder import ContrastiveAlignment, TargetEncoder
from fedneurogen.shared.model.tokens import FmriTokenizer, TokenLayout, fnirs_layout, patchify, unpatchify
from fedneurogen.shared.surface import load_ico4_positions

# MODALITIES, Batch and default_device live in shared/model/batch.py; they are imported here also
# for the modules that still import them from generator (e.g. shared/workflows/explain.py).
__all__ = [
    "MODALITIES",
    "Batch",
    "ModalityHead",
    "NeuroGenModel",
    "default_device",
    "parameter_count",
    "parameter_modality",
]

MODALITY_PREFIX = "modality_heads."


def parameter_modality(name: str) -> str | None:
    """Which target modality a parameter belongs to (what the server aggregates per modality).

    Parameters
    ----------
    name : str
        A parameter or buffer name of ``NeuroGenModel.state_dict()`` (an Opacus ``_module.``
        prefix is ignored).

    Returns
    -------
    str | None
        ``'fmri'``/``'fnirs'`` under ``modality_heads.<modality>.``, None for the shared backbone.
    """
    name = name.removeprefix("_module.")  # Opacus GradSampleModule
    return name.split(".")[1] if name.startswith(MODALITY_PREFIX) else None


class ModalityHead(nn.Module):
    """The parts of the model specific to one target modality.

    Patch and condition embedders, the final layer (the modal unpatcher), the point prediction
    (``MeanHead``: ridge path + learned residual), the residual's noise model (``ResidualNoise``)
    and the target encoder of the alignment stage.

    Parameters
    ----------
    config : ModelConfig
        The model config.
    n_frames : int
        Target frames per window ``F``.
    token_size : int
        Target points per token.
    n_points : int
        Target points ``N`` the point prediction covers.
    tokenizer : FmriTokenizer | None
        The fixed grouping of fMRI vertices into tokens; None for fNIRS (layout per batch).
    """

    def __init__(
        self, config: ModelConfig, n_frames: int, token_size: int, n_points: int, tokenizer: FmriTokenizer | None = None
    ):
        super().__init__()
        token_dim = token_size * n_frames
        self.tokenizer = tokenizer
        self.patch_embed = nn.Linear(token_dim, config.hidden_dim)  # target tokens -> hidden
        self.condition_embed = nn.Linear(n_frames * config.eeg_dim, config.hidden_dim)  # integrated EEG -> hidden
        self.final_layer = FinalLayer(config.hidden_dim, token_dim)  # the modal unpatcher (9)
        # the point prediction: ridge path + learned residual (the diffusion models the rest)
        self.mean = MeanHead(
            config.global_features,
            n_points,
            config.mean_hidden,
            config.mean_rank,
            config.num_classes,
            config.mean_dropout,
            n_source=config.source_features,
            fixed_layout=tokenizer is not None,
            n_frames=n_frames,
            eeg=EEGResidual(config, n_points, config.mean_hidden) if config.mean_eeg_features else None,
        )
        self.target_encoder = TargetEncoder(token_dim, config)  # for the alignment stage
        # the residual's linear-Gaussian covariance: the diffusion works in its whitened coordinates
        self.noise = ResidualNoise(n_points, config.noise_rank, n_frames)


class NeuroGenModel(TrainingLosses, Sampling, nn.Module):
    """The generative model. ``loss(batch)`` trains it, ``sample(batch)`` generates targets.

    This class is the network (what DiT's ``models.py`` holds): the batch geometry (``layout``),
    the EEG encoding and conditioning, the point prediction and one denoising pass. The training
    losses and ``prepare_for_dp`` come from ``TrainingLosses`` (``shared/model/losses.py``),
    guidance and DDIM sampling from ``Sampling`` (``shared/model/sampling.py``).

    ``fmri_positions`` fixes the grouping of ico4 vertices into fMRI tokens: ``"ico4"`` (default)
    reads the fsaverage5 pial surface shipped with nilearn, an array ``[5124, 3]`` gives the
    vertex positions directly, and ``None`` leaves the grouping to be loaded from a checkpoint.
    The model moves itself to ``device`` (CUDA when available); on CUDA the network runs under
    bf16 autocast, on CPU in fp32.

    Parameters
    ----------
    config : ModelConfig | str
        The config, or a preset name (``get_preset``).
    fmri_positions : np.ndarray | torch.Tensor | str | None
        ``"ico4"``, an array ``[5124, 3]`` of vertex positions in mm, or None.
    device : torch.device | str | None
        Where the model goes; None: ``default_device()``.

    Raises
    ------
    ConfigError
        ``fmri_positions`` is a string other than ``"ico4"``.
    """

    def __init__(
        self,
        config: ModelConfig | str,
        *,
        fmri_positions: np.ndarray | torch.Tensor | str | None = "ico4",
        device: torch.device | str | None = None,
    ):
        super().__init__()
        self.config = get_preset(config) if isinstance(config, str) else config
        cfg = self.config
        if isinstance(fmri_positions, str):
            if fmri_positions != "ico4":
                raise ConfigError(f"fmri_positions must be 'ico4', an array or None, got {fmri_positions!r}")
            fmri_positions = load_ico4_positions()
        if isinstance(fmri_positions, torch.Tensor):
            fmri_positions = fmri_positions.detach().cpu().numpy()
        self.diffusion = GaussianDiffusion(cfg.diffusion_steps, cfg.prediction)
        self.eeg_encoder = EEGEncoder(cfg)
        self.integration = HyperdimensionalIntegration(cfg.hrf_delay, cfg.hrf_width, cfg.learn_hrf)
        self.position = PositionEmbedding(cfg.hidden_dim, cfg.position_frequencies, cfg.position_wavelengths_mm)
        self.dit = DiT(cfg.hidden_dim, cfg.depth, cfg.heads, cfg.mlp_ratio, cfg.num_classes, cfg.label_dropout)
        fmri_tokens = FmriTokenizer(cfg.fmri, fmri_positions)
        self.modality_heads = nn.ModuleDict(
            {
                "fmri": ModalityHead(cfg, cfg.fmri.n_frames, fmri_tokens.token_size, cfg.fmri.n_points, fmri_tokens),
                "fnirs": ModalityHead(
                    cfg, cfg.fnirs.n_frames, token_size=2, n_points=2 * cfg.fnirs.max_channels
                ),  # HbO + HbR per channel
            }
        )
        self.alignment = ContrastiveAlignment(cfg.eeg_dim, cfg.align_dim)
        self.alignment_enabled = True
        self._initialize_weights()
        self.to(torch.device(device) if device is not None else default_device())

    def _initialize_weights(self) -> None:
        def xavier(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        for part in (self.position, self.dit, self.modality_heads, self.alignment):
            part.apply(xavier)
        self.dit.initialize_weights()
        for head in self.modality_heads.values():
            # adaLN-Zero: the unpatcher starts at zero output
            for layer in (head.final_layer.adaLN_modulation[-1], head.final_layer.linear):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
            if head.mean.eeg is not None:  # its encoder starts as the DiT's does, not at xavier
                head.mean.eeg.encoder._initialize_weights()
            head.mean.reset_residual()  # the mean starts as the ridge path

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters."""
        return next(self.parameters()).device

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # -- batch geometry ------------------------------------------------------------------------

    def layout(self, batch: Batch) -> TokenLayout:
        """Which target points form each token, checking the batch against the config.

        Parameters
        ----------
        batch : Batch
            A batch (its ``target`` may be None).

        Returns
        -------
        TokenLayout
            The fixed fMRI layout, or the fNIRS layout of the batch's channels.

        Raises
        ------
        ConfigError
            Unknown modality; EEG or target rate other than the config's; EEG not ``[B, C, T]``
            with ``C`` names and ``[C, 3]`` positions; fNIRS without names or positions, or with
            more channels than ``fnirs.max_channels``; a target not ``[B, N, F]`` of the layout.
        """
        cfg = self.config
        if batch.modality not in MODALITIES:
            raise ConfigError(f"unknown target modality {batch.modality!r}; expected one of {MODALITIES}")
        modality_cfg = cfg.modality(batch.modality)
        if abs(batch.eeg_sfreq - cfg.eeg_sfreq) > 1e-6:
            raise ConfigError(f"EEG at {batch.eeg_sfreq} Hz; the model expects {cfg.eeg_sfreq} Hz")
        if abs(batch.target_sfreq - modality_cfg.sfreq) > 1e-6:
            raise ConfigError(
                f"{batch.modality} target at {batch.target_sfreq} Hz; the model expects {modality_cfg.sfreq} Hz"
            )
        if (
            batch.eeg.dim() != 3
            or batch.eeg.shape[1] != len(batch.eeg_channel_names)
            or tuple(batch.eeg_positions.shape) != (batch.eeg.shape[1], 3)
        ):
            raise ConfigError(
                f"EEG batch must be [B, C, T] with C names and [C, 3] positions; got eeg {list(batch.eeg.shape)}, "
                f"{len(batch.eeg_channel_names)} names, positions {list(batch.eeg_positions.shape)}"
            )
        if batch.modality == "fmri":
            layout = self.modality_heads["fmri"].tokenizer.layout()
        else:
            if batch.target_names is None or batch.target_positions is None:
                raise ConfigError("fNIRS batches need target_names, target_point_types and target_positions")
            layout = fnirs_layout(batch.target_names, batch.target_point_types, batch.target_positions)
            if layout.n_tokens > cfg.fnirs.max_channels:
                raise ConfigError(
                    f"fNIRS batch has {layout.n_tokens} channels; the model allows {cfg.fnirs.max_channels}"
                )
        if batch.target is not None and tuple(batch.target.shape[1:]) != (layout.n_points, modality_cfg.n_frames):
            raise ConfigError(
                f"{batch.modality} target must be [B, {layout.n_points}, {modality_cfg.n_frames}], got {list(batch.target.shape)}"
            )
        return layout

    # -- network -------------------------------------------------------------------------------

    def encode_eeg(self, batch: Batch) -> torch.Tensor:
        """EEG features (equation 6).

        Parameters
        ----------
        batch : Batch
            The batch.

        Returns
        -------
        torch.Tensor
            ``[B, C, P, De]``: one feature vector per channel and 1 s patch.
        """
        return self.eeg_encoder(batch.eeg, channel_index_tensor(batch.eeg_channel_names, batch.eeg.device))

    def condition_tokens(self, batch: Batch, features: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        """EEG tokens: the integrated EEG evidence at each target token (equations 1-3).

        Parameters
        ----------
        batch : Batch
            The batch (electrode positions, lag, modality).
        features : torch.Tensor
            ``[B, C, P, De]`` from ``encode_eeg``.
        layout : TokenLayout
            The batch's layout (``layout``).

        Returns
        -------
        torch.Tensor
            ``[B, M, D]``, with the tokens' position embedding added.
        """
        head = self.modality_heads[batch.modality]
        patch_times, frame_times = self._times(batch, features.shape[2])
        integrated = self.integration(features, batch.eeg_positions, layout.centroids, patch_times, frame_times)
        return head.condition_embed(integrated.flatten(2)) + self.position(layout.centroids, features.shape[0])

    def _times(self, batch: Batch, n_patches: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The EEG patches' and the target frames' times in seconds (``shared/model/conditioning.py``)."""
        modality = self.config.modality(batch.modality)
        device = batch.eeg.device
        patch_times = eeg_patch_times(n_patches, batch.lag, self.config.eeg_patch_seconds, device)
        return patch_times, target_frame_times(modality.n_frames, modality.sfreq, device)

    def _eeg_residual(self, batch: Batch, layout: TokenLayout, slots: torch.Tensor | None) -> torch.Tensor:
        """The residual's EEG branch on the batch (``shared/model/eeg_residual.py``): ``[B, N, F]``."""
        branch = self.modality_heads[batch.modality].mean.eeg
        if layout.inverse is None:
            raise ConfigError("the residual's EEG branch needs every target point in exactly one token")
        token_size = layout.index.shape[1]
        n_patches = branch.encoder.n_patches(batch.eeg.shape[-1])
        patch_times, frame_times = self._times(batch, n_patches)
        point_slots = slots if slots is not None else torch.arange(layout.n_points, device=batch.eeg.device)
        return branch(
            batch.eeg.float(), channel_index_tensor(batch.eeg_channel_names, batch.eeg.device), batch.eeg_positions,
            layout.centroids, layout.inverse // token_size, point_slots, patch_times, frame_times,
        )  # fmt: skip

    def point_prediction(
        self,
        batch: Batch,
        *,
        use_labels: bool = True,
        labels: torch.Tensor | None = None,
        train: bool = False,
        residual: bool = True,
        whole_class_offset: bool = False,
    ) -> torch.Tensor:
        """The conditional mean: ridge path + learned residual on the batch's hemodynamic design.

        Parameters
        ----------
        batch : Batch
            The batch; needs ``design`` ``[B, F, design_width]``.
        use_labels : bool
            Condition on labels; False: label-free (the null label).
        labels : torch.Tensor | None
            long ``[B]`` labels to use instead of ``batch.labels``.
        train : bool
            Training mode of the residual network (dropout on the design).
        residual : bool
            Add the learned residual; False: the linear paths alone.
        whole_class_offset : bool
            The labels' class offsets whole, not shrunk as the point prediction has them: the
            mean a sample is drawn about (``shared/model/mean.RidgePath``).

        Returns
        -------
        torch.Tensor
            ``[B, N, F]``.

        Raises
        ------
        ConfigError
            The batch has no design, or one of another width (other preprocessing than the model's).
        """
        layout = self.layout(batch)
        n_frames = self.config.modality(batch.modality).n_frames
        if batch.design is None:
            raise ConfigError(
                "the batch has no hemodynamic design (windows from fedneurogen.shared.data.load_site carry one)"
            )
        expected = (batch.batch_size, n_frames, self.config.design_width)
        if tuple(batch.design.shape) != expected:
            raise ConfigError(
                f"hemodynamic design must be {list(expected)}, got {list(batch.design.shape)}: the data was preprocessed "
                "with another history / band / HRF-basis setting than this model's"
            )
        labels = (labels if labels is not None else batch.labels) if use_labels else None
        names = batch.target_names if batch.modality == "fnirs" else None
        head = self.modality_heads[batch.modality].mean
        eeg = None
        if residual and head.eeg is not None:
            eeg = self._eeg_residual(batch, layout, head.ridge.slots(names, layout.n_points))
        return head(
            batch.design.float(), labels, names, layout.n_points, train=train, residual=residual,
            whole_class_offset=whole_class_offset, eeg_residual=eeg,
        )  # fmt: skip

    def whiten(self, residual: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The batch's residuals in the noise model's whitened coordinates (the diffusion's).

        Parameters
        ----------
        residual : torch.Tensor
            ``[B, N, F]`` targets less the point prediction.
        batch : Batch
            The batch (its modality and, for fNIRS, its points' names).

        Returns
        -------
        torch.Tensor
            ``[B, N, F]``: ``Σ^{-1/2}`` of the residuals (themselves where no noise model is fitted).
        """
        head = self.modality_heads[batch.modality]
        return head.noise.whiten(residual, self._noise_slots(batch, residual.shape[1]))

    def colour(self, z: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Whitened residuals back in the targets' units: the inverse of ``whiten``.

        Parameters
        ----------
        z : torch.Tensor
            ``[B, N, F]`` whitened residuals (what the diffusion draws).
        batch : Batch
            The batch (its modality and, for fNIRS, its points' names).

        Returns
        -------
        torch.Tensor
            ``[B, N, F]``: ``Σ^{1/2} z``.
        """
        head = self.modality_heads[batch.modality]
        return head.noise.colour(z, self._noise_slots(batch, z.shape[1]))

    def _noise_slots(self, batch: Batch, n_points: int) -> torch.Tensor | None:
        names = batch.target_names if batch.modality == "fnirs" else None
        return self.modality_heads[batch.modality].mean.ridge.slots(names, n_points)

    def denoise(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        condition: torch.Tensor,
        layout: TokenLayout,
        modality: str,
        labels: torch.Tensor | None = None,
        drop_labels: bool = False,
        context_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """One network evaluation: noisy targets ``[B, N, F]`` -> v (or eps) ``[B, N, F]``.

        Parameters
        ----------
        x_t : torch.Tensor
            ``[B, N, F]`` noisy targets.
        t : torch.Tensor
            long ``[B]`` diffusion steps.
        condition : torch.Tensor
            ``[B, M, D]`` EEG tokens (``condition_tokens``).
        layout : TokenLayout
            The batch's layout.
        modality : str
            ``"fmri"`` or ``"fnirs"``: which head runs.
        labels : torch.Tensor | None
            long ``[B]`` labels (-1: null label); None: no labels.
        drop_labels : bool
            Replace labels by the null label with probability ``label_dropout`` (training).
        context_kv : list of (torch.Tensor, torch.Tensor) | None
            The cross-attention's keys and values of ``condition`` (``self.dit.context_kv``); a
            sampler passes them so they are not recomputed every step.

        Returns
        -------
        torch.Tensor
            ``[B, N, F]`` v or eps (``config.prediction``).
        """
        head = self.modality_heads[modality]
        # Each token also gets its own EEG token added (like SR3/Palette's concatenated
        # condition); cross-attention lets it read every other one.
        x = head.patch_embed(patchify(x_t, layout)) + condition
        c = self.dit.condition(t, labels, drop_labels)
        x = self.dit(x, c, context=condition, context_kv=context_kv)
        return unpatchify(head.final_layer(x, c), layout, x_t.shape[2])

    def forward(self, batch: Batch, **kwargs) -> tuple[torch.Tensor, dict[str, float]]:
        """``loss(batch, **kwargs)``, so ``model(batch)`` trains (and Opacus hooks see the call).

        Parameters
        ----------
        batch : Batch
            A batch with targets and a design.
        **kwargs
            Keyword arguments of ``loss``.

        Returns
        -------
        loss : torch.Tensor
            As ``loss``.
        parts : dict of str to float
            As ``loss``.
        """
        return self.loss(batch, **kwargs)


def parameter_count(config: ModelConfig | str) -> dict[str, int]:
    """Parameters of the model a config describes, per part, without allocating them.

    The model is built on the meta device.

    Parameters
    ----------
    config : ModelConfig | str
        A config or a preset name.

    Returns
    -------
    dict of str to int
        ``total``, ``eeg_encoder``, ``dit``, ``fmri``, ``fnirs``, ``other``, ``ridge_path``
        (closed-form coefficients inside the heads), ``noise_model`` (closed-form too) and
        ``trainable`` (the rest).
    """
    with torch.device("meta"):
        model = NeuroGenModel(config, fmri_positions=None, device="meta")
    parts = {
        "eeg_encoder": count_parameters(model.eeg_encoder),
        "dit": count_parameters(model.dit),
        **{name: count_parameters(head) for name, head in model.modality_heads.items()},
    }
    total = count_parameters(model)
    # the ridge paths and the noise models (inside the heads) are set in closed form, not trained
    ridge = sum(
        count_parameters(head.mean.ridge) + (count_parameters(head.mean.local) if head.mean.local is not None else 0)
        for head in model.modality_heads.values()
    )
    noise = sum(count_parameters(head.noise) for head in model.modality_heads.values())
    return {
        "total": total,
        **parts,
        "other": total - sum(parts.values()),
        "ridge_path": ridge,
        "noise_model": noise,
        "trainable": total - ridge - noise,
    }
