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
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from fedneurogen.shared.errors import ConfigError
from fedneurogen.shared.model.conditioning import HyperdimensionalIntegration, eeg_patch_times, target_frame_times
from fedneurogen.shared.model.config import ModelConfig, count_parameters, get_preset
from fedneurogen.shared.model.diffusion import GaussianDiffusion, random_normal
from fedneurogen.shared.model.dit import DiT, FinalLayer
from fedneurogen.shared.model.eeg_encoder import EEGEncoder, channel_index_tensor
from fedneurogen.shared.model.layers import PositionEmbedding
from fedneurogen.shared.model.mean import MeanHead
from fedneurogen.shared.model.target_encoder import ContrastiveAlignment, TargetEncoder
from fedneurogen.shared.model.tokens import FmriTokenizer, TokenLayout, fnirs_layout, patchify, unpatchify
from fedneurogen.shared.surface import load_ico4_positions
from fedneurogen.shared.recording import PairedWindows

MODALITIES = ("fmri", "fnirs")
MODALITY_PREFIX = "modality_heads."


def default_device() -> torch.device:
    """CUDA when available, else the CPU.

    Returns
    -------
    torch.device
        ``cuda`` or ``cpu``.
    """
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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


@dataclass
class Batch:
    """One batch of paired windows from one site (one montage, one target layout).

    Build one from ``PairedWindows`` with ``Batch.from_windows``.

    Attributes
    ----------
    modality : {"fmri", "fnirs"}
        The target modality.
    eeg : torch.Tensor
        ``[B, C, T]`` at ``eeg_sfreq``, units of 100 uV.
    eeg_channel_names : list of str
        One name per EEG channel.
    eeg_positions : torch.Tensor
        ``[C, 3]`` electrode positions, mm.
    target_sfreq : float
        Target frame rate, Hz.
    lag : float
        The EEG window starts this many seconds before the target window.
    target : torch.Tensor | None
        ``[B, N, F]``; None when only sampling.
    target_positions : torch.Tensor | None
        ``[N, 3]`` mm (fNIRS: needed; fMRI: ico4 is fixed).
    target_names : list of str | None
        One name per target point (fNIRS: needed).
    target_point_types : list of str | None
        fNIRS: ``'hbo'``/``'hbr'`` per point.
    labels : torch.Tensor | None
        long ``[B]`` class index, -1 = unlabelled (the null label); None = no labels.
    eeg_sfreq : float
        EEG sampling rate, Hz.
    design : torch.Tensor | None
        ``[B, F, D]`` hemodynamic design per target frame (needed by the point prediction).
    """

    modality: str
    eeg: torch.Tensor  # [B, C, T] at eeg_sfreq, units of 100 uV
    eeg_channel_names: list[str]
    eeg_positions: torch.Tensor  # [C, 3] mm
    target_sfreq: float
    lag: float  # the EEG window starts this many seconds before the target window
    target: torch.Tensor | None = None  # [B, N, F]; None when only sampling
    target_positions: torch.Tensor | None = None  # [N, 3] mm (fNIRS: needed; fMRI: ico4 is fixed)
    target_names: list[str] | None = None
    target_point_types: list[str] | None = None  # fNIRS: 'hbo'/'hbr' per point
    labels: torch.Tensor | None = None  # [B] class index, -1 = unlabelled; None = no labels
    eeg_sfreq: float = 200.0
    design: torch.Tensor | None = None  # [B, F, D] hemodynamic design per target frame

    @property
    def batch_size(self) -> int:
        """Number of windows ``B``."""
        return int(self.eeg.shape[0])

    def to(self, device: torch.device | str) -> "Batch":
        """The batch with every tensor on ``device``.

        Parameters
        ----------
        device : torch.device | str
            The target device.

        Returns
        -------
        Batch
            A new batch (names and scalars shared).
        """
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return replace(
            self,
            eeg=move(self.eeg),
            eeg_positions=move(self.eeg_positions),
            target=move(self.target),
            target_positions=move(self.target_positions),
            labels=move(self.labels),
            design=move(self.design),
        )

    def select(self, index: torch.Tensor | Sequence[int] | slice) -> "Batch":
        """The windows at ``index`` (layout, montage and positions are shared).

        Parameters
        ----------
        index : torch.Tensor | sequence of int | slice
            Windows to keep.

        Returns
        -------
        Batch
            A new batch with ``eeg``, ``target``, ``labels`` and ``design`` indexed.
        """
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return replace(
            self, eeg=pick(self.eeg), target=pick(self.target), labels=pick(self.labels), design=pick(self.design)
        )

    @classmethod
    def from_windows(
        cls,
        windows: PairedWindows,
        index: np.ndarray | Sequence[int] | slice | None = None,
        class_to_index: Mapping[str, int] | None = None,
        device: torch.device | str | None = None,
    ) -> "Batch":
        """Windows of ``PairedWindows`` as float32 tensors on a device.

        Parameters
        ----------
        windows : PairedWindows
            The site's windows.
        index : np.ndarray | sequence of int | slice | None
            Windows to take; None: all.
        class_to_index : mapping of str to int | None
            Label index of each class name; labels it does not list become -1, the null label.
            None: the batch is unlabelled.
        device : torch.device | str | None
            Where the tensors go; None: ``default_device()`` (CUDA when available).

        Returns
        -------
        Batch
            The batch.
        """
        device = torch.device(device) if device is not None else default_device()
        index = slice(None) if index is None else index
        labels = None
        if class_to_index is not None:
            names = np.asarray(windows.labels)[index]
            labels = torch.tensor([class_to_index.get(str(n), -1) for n in names], dtype=torch.long, device=device)
        as_tensor = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32, device=device)  # noqa: E731
        return cls(
            modality=windows.target_modality,
            eeg=as_tensor(windows.eeg[index]),
            eeg_channel_names=list(windows.eeg_channel_names),
            eeg_positions=as_tensor(windows.eeg_positions),
            target_sfreq=float(windows.target_sfreq),
            lag=float(windows.lag),
            target=as_tensor(windows.target[index]),
            target_positions=as_tensor(windows.target_positions),
            target_names=list(windows.target_names),
            target_point_types=None if windows.target_point_types is None else list(windows.target_point_types),
            labels=labels,
            eeg_sfreq=float(windows.eeg_sfreq),
            design=None if windows.design is None else as_tensor(windows.design[index]),
        )


class ModalityHead(nn.Module):
    """The parts of the model specific to one target modality.

    Patch and condition embedders, the final layer (the modal unpatcher), the point prediction
    (``MeanHead``: ridge path + learned residual) and the target encoder of the alignment stage.

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
            config.design_features,
            n_points,
            config.mean_hidden,
            config.mean_rank,
            config.num_classes,
            config.mean_dropout,
            n_source=config.source_features,
            fixed_layout=tokenizer is not None,
            n_frames=n_frames,
        )
        self.target_encoder = TargetEncoder(token_dim, config)  # for the alignment stage


class NeuroGenModel(nn.Module):
    """The generative model. ``loss(batch)`` trains it, ``sample(batch)`` generates targets.

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
        n_frames = self.config.modality(batch.modality).n_frames
        device = features.device
        patch_times = eeg_patch_times(features.shape[2], batch.lag, self.config.eeg_patch_seconds, device)
        frame_times = target_frame_times(n_frames, self.config.modality(batch.modality).sfreq, device)
        integrated = self.integration(features, batch.eeg_positions, layout.centroids, patch_times, frame_times)
        return head.condition_embed(integrated.flatten(2)) + self.position(layout.centroids, features.shape[0])

    def point_prediction(
        self,
        batch: Batch,
        *,
        use_labels: bool = True,
        labels: torch.Tensor | None = None,
        train: bool = False,
        residual: bool = True,
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
        return self.modality_heads[batch.modality].mean(
            batch.design.float(), labels, names, layout.n_points, train=train, residual=residual
        )

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

    def guided_denoise(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        condition: torch.Tensor,
        layout: TokenLayout,
        modality: str,
        labels: torch.Tensor | None,
        guidance_scale: float,
        context_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """Classifier-free guidance on the label: ``uncond + s * (cond - uncond)``.

        ``s = 1`` (or no labels) is the plain conditional prediction, ``s = 0`` the null label's.
        With guidance both predictions run as one doubled batch.

        Parameters
        ----------
        x_t : torch.Tensor
            ``[B, N, F]`` noisy targets.
        t : torch.Tensor
            long ``[B]`` diffusion steps.
        condition : torch.Tensor
            ``[B, M, D]`` EEG tokens.
        layout : TokenLayout
            The batch's layout.
        modality : str
            ``"fmri"`` or ``"fnirs"``.
        labels : torch.Tensor | None
            long ``[B]`` labels; None: no guidance.
        guidance_scale : float
            ``s``.
        context_kv : list of (torch.Tensor, torch.Tensor) | None
            Precomputed cross-attention keys and values: of the doubled condition when
            ``uses_guidance``, else of ``condition``.

        Returns
        -------
        torch.Tensor
            ``[B, N, F]`` guided v (or eps).
        """
        if not self.uses_guidance(labels, guidance_scale):
            return self.denoise(x_t, t, condition, layout, modality, labels, context_kv=context_kv)
        null = torch.full_like(labels, -1)
        both = self.denoise(
            torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([condition, condition]), layout, modality, torch.cat([labels, null]),
            context_kv=context_kv,
        )  # fmt: skip
        conditional, unconditional = both.chunk(2)
        return unconditional + guidance_scale * (conditional - unconditional)

    @staticmethod
    def uses_guidance(labels: torch.Tensor | None, guidance_scale: float) -> bool:
        """Whether ``guided_denoise`` evaluates the doubled (conditional + null label) batch.

        Parameters
        ----------
        labels : torch.Tensor | None
            The batch's labels.
        guidance_scale : float
            The guidance scale.

        Returns
        -------
        bool
            True when there are labels and the scale is not 1.
        """
        return labels is not None and guidance_scale != 1.0

    # -- training ------------------------------------------------------------------------------

    def alignment_loss(
        self, batch: Batch, features: torch.Tensor | None = None, layout: TokenLayout | None = None
    ) -> torch.Tensor:
        """CLIP-style InfoNCE between pooled EEG and target window embeddings (needs B >= 2).

        Parameters
        ----------
        batch : Batch
            A batch with targets.
        features : torch.Tensor | None
            ``[B, C, P, De]`` EEG features already computed; None: ``encode_eeg(batch)``.
        layout : TokenLayout | None
            The batch's layout; None: ``layout(batch)``.

        Returns
        -------
        torch.Tensor
            Scalar loss.
        """
        layout = layout if layout is not None else self.layout(batch)
        features = features if features is not None else self.encode_eeg(batch)
        target_embedding = self.modality_heads[batch.modality].target_encoder(
            patchify(batch.target, layout), layout.centroids
        )
        return self.alignment(features, target_embedding)

    def loss(
        self,
        batch: Batch,
        *,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        per_sample: bool = False,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss of a batch, and its parts.

        Total loss = diffusion loss (8) on the residual ``x0 - mean`` + ``mean_loss_weight`` x
        the point prediction's MSE + ``alignment_weight`` x InfoNCE (the mean is detached in the
        diffusion target, so each loss trains its own part). Labels are replaced by the null
        label with probability ``label_dropout`` in training mode.

        Parameters
        ----------
        batch : Batch
            A batch with targets and a design.
        t : torch.Tensor | None
            long ``[B]`` diffusion steps; None: uniformly random.
        noise : torch.Tensor | None
            ``[B, N, F]`` noise; None: standard normal.
        generator : torch.Generator | None
            Source of the random draws (steps, noise, label dropout).
        per_sample : bool
            Return each window's total loss ``[B]`` (their mean is the usual loss), for DP-SGD's
            fast/ghost clipping; it needs the InfoNCE term off (``prepare_for_dp``), which
            compares windows with each other.

        Returns
        -------
        loss : torch.Tensor
            Scalar total loss (``[B]`` with ``per_sample``).
        parts : dict of str to float
            ``diffusion``, ``mean``, ``alignment`` (when computed) and ``total``, batch means.

        Raises
        ------
        ConfigError
            The batch has no targets, or ``per_sample`` with the alignment loss on; and as
            ``layout`` and ``point_prediction``.
        """
        if batch.target is None:
            raise ConfigError("loss() needs a batch with targets")
        layout = self.layout(batch)
        target = batch.target.float()
        t = t if t is not None else self.diffusion.sample_timesteps(target.shape[0], target.device, generator)
        noise = noise if noise is not None else random_normal(tuple(target.shape), generator, target.device)
        mean_labels = batch.labels
        if (
            self.training and mean_labels is not None and self.config.label_dropout > 0
        ):  # so the label-free mean is trained too
            drop = torch.rand(
                mean_labels.shape, generator=generator, device=generator.device if generator is not None else None
            )
            mean_labels = torch.where(
                drop.to(mean_labels.device) < self.config.label_dropout, torch.full_like(mean_labels, -1), mean_labels
            )
        with self._autocast():
            features = self.encode_eeg(batch)
            condition = self.condition_tokens(batch, features, layout)
            mean = self.point_prediction(batch, labels=mean_labels, train=self.training).float()
            x0 = target - mean.detach()
            x_t = self.diffusion.q_sample(x0, t, noise)
            output = self.denoise(x_t, t, condition, layout, batch.modality, batch.labels, drop_labels=self.training)
            # per window first (DP clipping may want them), then their mean: the usual MSE
            diffusion_each = (output.float() - self.diffusion.training_target(x0, t, noise)).pow(2).mean(dim=(1, 2))
            mean_each = (mean - target).pow(2).mean(dim=(1, 2))
            total = diffusion_each + self.config.mean_loss_weight * mean_each
            parts = {"diffusion": float(diffusion_each.detach().mean()), "mean": float(mean_each.detach().mean())}
            if per_sample:
                if self.alignment_enabled and self.config.alignment_weight > 0:
                    raise ConfigError("per-sample losses need the alignment loss off (prepare_for_dp)")
                parts["total"] = float(total.detach().mean())
                return total, parts
            total = total.mean()
            if self.alignment_enabled and self.config.alignment_weight > 0 and x0.shape[0] > 1:
                alignment = self.alignment_loss(batch, features, layout)
                total = total + self.config.alignment_weight * alignment
                parts["alignment"] = float(alignment.detach())
        parts["total"] = float(total.detach())
        return total, parts

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

    def prepare_for_dp(self, modality: str) -> list[nn.Parameter]:
        """Make the model fit Opacus DP-SGD for batches of ``modality``.

        DP-SGD clips each window's own gradient, so only per-window losses may be trained:
        - the InfoNCE alignment compares the windows of a batch with each other: it is switched
          off and the target encoders and alignment projection are frozen;
        - the other modality's head gets no gradient from this site: frozen;
        - tau and sigma of the temporal alignment take the time grids as extra inputs, which
          Opacus' per-layer hooks cannot pass on: frozen at their current values;
        - the ridge path of the point prediction is solved in closed form: stays frozen.
        Everything else is made trainable (freeze more afterwards if wanted).

        Parameters
        ----------
        modality : {"fmri", "fnirs"}
            The site's target modality.

        Returns
        -------
        list of nn.Parameter
            The parameters left trainable.

        Raises
        ------
        ConfigError
            An unknown modality.
        """
        if modality not in MODALITIES:
            raise ConfigError(f"unknown target modality {modality!r}; expected one of {MODALITIES}")
        self.requires_grad_(True)
        for name, head in self.modality_heads.items():
            head.requires_grad_(name == modality)
            head.target_encoder.requires_grad_(False)
        self.alignment.requires_grad_(False)
        self.integration.temporal.requires_grad_(False)
        for head in self.modality_heads.values():
            head.mean.ridge.requires_grad_(False)  # closed-form, never trained by SGD
            if head.mean.local is not None:
                head.mean.local.requires_grad_(False)
        self.alignment_enabled = False
        return [p for p in self.parameters() if p.requires_grad]

    # -- generation ----------------------------------------------------------------------------

    @torch.no_grad()
    def sample(
        self,
        batch: Batch,
        *,
        steps: int | None = None,
        guidance_scale: float = 1.0,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Generate targets ``[B, N, F]`` from the batch's EEG (and labels) by DDIM.

        The sample is the point prediction plus a residual drawn by the diffusion. Runs without
        gradients. To sample with EMA weights use ``EMA.average_parameters(model)`` or a
        checkpoint loaded with ``use_ema=True``.

        Parameters
        ----------
        batch : Batch
            EEG, design and (optionally) labels; ``target`` is not read.
        steps : int | None
            DDIM steps; None: the config's ``sampling_steps``.
        guidance_scale : float
            Classifier-free guidance on the labels (1: none; see ``guided_denoise``).
        eta : float
            DDIM stochasticity; 0 is deterministic given ``generator``.
        generator : torch.Generator | None
            Source of the noise.

        Returns
        -------
        torch.Tensor
            float32 ``[B, N, F]`` generated targets.
        """
        layout = self.layout(batch)
        n_frames = self.config.modality(batch.modality).n_frames
        # The EEG encoding, the EEG tokens and every block's cross-attention keys and values
        # depend on the EEG only, not on the noisy target: computed once here, not every step.
        with self._autocast():
            condition = self.condition_tokens(batch, self.encode_eeg(batch), layout)
            mean = self.point_prediction(batch).float()
            guided = self.uses_guidance(batch.labels, guidance_scale)
            context_kv = self.dit.context_kv(torch.cat([condition, condition]) if guided else condition)

        def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            with self._autocast():
                return self.guided_denoise(
                    x_t, t, condition, layout, batch.modality, batch.labels, guidance_scale, context_kv
                ).float()

        sample = self.diffusion.ddim_sample(
            model_fn,
            (batch.batch_size, layout.n_points, n_frames),
            steps=steps or self.config.sampling_steps,
            eta=eta,
            generator=generator,
            device=self.device,
        )
        return sample + mean


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
        ``total``, ``eeg_encoder``, ``dit``, ``fmri``, ``fnirs``, ``other``, and ``ridge_path``
        (closed-form coefficients inside the heads) and ``trainable`` (the rest).
    """
    with torch.device("meta"):
        model = NeuroGenModel(config, fmri_positions=None, device="meta")
    parts = {
        "eeg_encoder": count_parameters(model.eeg_encoder),
        "dit": count_parameters(model.dit),
        **{name: count_parameters(head) for name, head in model.modality_heads.items()},
    }
    total = count_parameters(model)
    # the ridge paths (inside the heads) are solved in closed form, not trained
    ridge = sum(
        count_parameters(head.mean.ridge) + (count_parameters(head.mean.local) if head.mean.local is not None else 0)
        for head in model.modality_heads.values()
    )
    return {
        "total": total,
        **parts,
        "other": total - sum(parts.values()),
        "ridge_path": ridge,
        "trainable": total - ridge,
    }
