"""The model config (``ModelConfig``) and its presets (``tiny`` for tests, ``small`` for CPU,
``base`` for GPU). Not the preprocessing config (``shared/config.py``) nor the run config
(``shared/run_config.py``).

A ``ModelConfig`` fixes every tensor shape of ``NeuroGenModel``; a checkpoint stores it, so the
same config always rebuilds the same architecture. The window geometry (16 s windows, fMRI at
0.5 Hz, fNIRS at 1 Hz, EEG at 200 Hz) follows ``PreprocessConfig`` and the data contract.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from fedneurogen.shared.errors import ConfigError
from fedneurogen.shared.surface import ICO4_POINTS
from fedneurogen.shared.design import N_GATED, n_design_features, n_gated_features
from fedneurogen.shared.sources import N_PATCHES

if TYPE_CHECKING:
    from fedneurogen.shared.config import PreprocessConfig


class FmriConfig(BaseModel):
    """fMRI target: BOLD on fsaverage ico4 (2562 vertices per hemisphere, left then right).

    Frozen; unknown fields are refused.

    Attributes
    ----------
    n_points : int
        Target vertices: ico4 = the first 2562 of each fsaverage5 hemisphere (even).
    n_frames : int
        Frames per window (16 s at 0.5 Hz).
    sfreq : float
        Frame rate, Hz.
    n_patches : int
        Target tokens: patches of neighbouring vertices, half per hemisphere (even, in
        ``[2, n_points]``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_points: int = Field(ICO4_POINTS, description="Target vertices: ico4 = first 2562 of each fsaverage5 hemisphere")
    n_frames: int = Field(8, description="Frames per window (16 s at 0.5 Hz)")
    sfreq: float = Field(0.5, description="Frame rate (Hz)")
    n_patches: int = Field(128, description="Target tokens: patches of neighbouring vertices, half per hemisphere")

    @model_validator(mode="after")
    def _check(self) -> "FmriConfig":
        if self.n_points % 2:
            raise ValueError(f"fmri.n_points must be even (two hemispheres), got {self.n_points}")
        if self.n_patches % 2 or not 2 <= self.n_patches <= self.n_points:
            raise ValueError(f"fmri.n_patches must be even and in [2, n_points], got {self.n_patches}")
        return self


class FnirsConfig(BaseModel):
    """fNIRS target: HbO and HbR of each channel; channel sets differ between sites.

    Frozen; unknown fields are refused.

    Attributes
    ----------
    n_frames : int
        Frames per window (16 s at 1 Hz).
    sfreq : float
        Frame rate, Hz.
    max_channels : int
        Largest channel count a batch may have.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_frames: int = Field(16, description="Frames per window (16 s at 1 Hz)")
    sfreq: float = Field(1.0, description="Frame rate (Hz)")
    max_channels: int = Field(128, description="Largest channel count a batch may have")


class ModelConfig(BaseModel):
    """Every architectural choice of ``NeuroGenModel`` (see docs/architecture.md §4).

    Frozen; unknown fields are refused; each width must be divisible by its number of heads
    (``ValueError`` on construction otherwise).

    Attributes
    ----------
    preset : str
        Preset this config came from (for messages and checkpoints); ``"custom"`` otherwise.
    eeg_sfreq : float
        EEG rate the encoder expects, Hz.
    eeg_patch_size, eeg_max_patches : int
        Samples per EEG patch (1 s at 200 Hz) and patches per window the time embedding covers.
    eeg_conv_channels : int
        Channels of the temporal convolution (a multiple of 4).
    eeg_dim, eeg_depth, eeg_heads : int
        Width, blocks and attention heads of the EEG encoder.
    eeg_mlp_ratio, eeg_layer_scale : float
        MLP width ratio and LayerScale initialisation of the encoder blocks.
    eeg_attention : {"full", "axial"}
        ``full``: every channel-patch token attends to all (LaBraM); ``axial``: blocks alternate
        the time and channel axes (CPU presets).
    eeg_spectral_embed : bool
        Add each patch's log amplitude spectrum to its token.
    hrf_delay, hrf_width : float
        Initial tau and sigma of equation (3), seconds.
    learn_hrf : bool
        Learn tau and sigma.
    position_frequencies : int
        Fourier frequencies per axis of the 3-D position embedding.
    position_wavelengths_mm : tuple of float
        Shortest and longest wavelength of the position embedding, mm.
    hidden_dim, depth, heads : int
        Width, blocks and attention heads of the DiT.
    mlp_ratio : float
        MLP width ratio of the DiT blocks.
    num_classes : int
        Class/group labels; one more embedding is the null label.
    label_dropout : float
        Probability of the null label in training (classifier-free guidance), in [0, 1].
    target_encoder_dim, target_encoder_depth, target_encoder_heads : int
        Width, blocks and heads of the target encoders (alignment stage).
    align_dim : int
        Width of the CLIP-style alignment space.
    alignment_weight : float
        Weight of the InfoNCE loss in the total loss.
    design_features : int
        Width of the hemodynamic design (64 virtual electrodes x 5 bands x 2 HRF bases).
    gated_features : int
        Width of the design's alpha-gated block (``design.N_GATED`` with preprocessing's
        ``alpha_gating``, 0 without), after the scalp columns; the ridge path reads both.
    local_path : bool
        A local ridge path on cortical-source features too (``fedneurogen.shared.local_path``):
        the design is then the scalp design followed by the source design (``design_width``).
    mean_hidden, mean_rank : int
        Hidden width of the point prediction's residual network and rank of its per-point readout.
    mean_dropout : float
        Dropout on the design into the residual network, in [0, 1).
    mean_eeg_features : bool
        The residual also reads EEG through an encoder of its own, placed at each target token and
        frame (``shared/model/eeg_residual.py``); off: the design alone.
    mean_loss_weight : float
        Weight of the point prediction's MSE in the total loss.
    noise_rank : int
        Principal directions of the residual's noise model (``shared/model/noise.py``), whose
        whitened coordinates the diffusion works in once it is fitted.
    diffusion_steps : int
        Steps of the diffusion process.
    prediction : {"v", "eps"}
        Network output: velocity (default) or noise.
    sampling_steps : int
        Sampling steps when ``sample()`` is not told otherwise, in ``[1, diffusion_steps]``.
    sampler : {"flow", "ddim"}
        The reverse process's solver (``shared/model/diffusion.py``): Euler steps of the
        probability-flow ODE in the noise angle (exact on white residuals), or DDIM.
    ema_decay : float
        Decay of the exponential moving average of the weights.
    fmri : FmriConfig
        The fMRI target.
    fnirs : FnirsConfig
        The fNIRS target.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    preset: str = Field("custom", description="Preset this config came from (for messages and checkpoints)")

    # EEG encoder (LaBraM style): 1 s patches at 200 Hz, temporal conv, electrode + time embeddings.
    eeg_sfreq: float = 200.0
    eeg_patch_size: int = Field(200, description="Samples per EEG patch (1 s at 200 Hz)")
    eeg_max_patches: int = Field(16, description="Patches per window the time embedding covers (LaBraM: 16)")
    eeg_conv_channels: int = Field(8, description="Temporal-conv channels (LaBraM: 8; multiple of 4)")
    eeg_dim: int = 200
    eeg_depth: int = 12
    eeg_heads: int = 10
    eeg_mlp_ratio: float = 4.0
    eeg_layer_scale: float = Field(0.1, description="LayerScale init of the encoder blocks (LaBraM: 0.1)")
    eeg_attention: Literal["full", "axial"] = Field(
        "full",
        description="full: every channel-patch token attends to all (LaBraM); axial: blocks alternate time and channel axes (CPU presets)",
    )
    eeg_spectral_embed: bool = Field(
        True, description="Add each patch's log amplitude spectrum to its token (band power is what drives BOLD)"
    )

    # Hyperdimensional integration (equations 1-3) and token positions.
    hrf_delay: float = Field(6.0, description="tau of equation (3), seconds; learned")
    hrf_width: float = Field(2.0, description="sigma of equation (3), seconds; learned")
    learn_hrf: bool = True
    position_frequencies: int = Field(8, description="Fourier frequencies per axis for 3-D positions")
    position_wavelengths_mm: tuple[float, float] = Field((8.0, 400.0), description="Shortest and longest wavelength")

    # Diffusion Transformer.
    hidden_dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    num_classes: int = Field(8, description="Class/group labels; one more embedding is the null label")
    label_dropout: float = Field(0.1, description="Probability of the null label in training (for CFG)")

    # Target encoders and CLIP-style alignment.
    target_encoder_dim: int = 256
    target_encoder_depth: int = 2
    target_encoder_heads: int = 4
    align_dim: int = 256
    alignment_weight: float = Field(0.1, description="Weight of the InfoNCE loss in the total loss")

    # Point prediction (conditional mean) = closed-form ridge path on the hemodynamic design +
    # zero-initialised learned residual (fedneurogen.shared.model.mean); the diffusion models
    # what the mean leaves over (as in CorrDiff), so samples = mean + sampled residual.
    design_features: int = Field(
        640, description="Width of the hemodynamic design (64 virtual electrodes x 5 bands x 2 HRF bases)"
    )
    gated_features: int = Field(
        N_GATED,
        ge=0,
        description="Width of the design's alpha-gated block after the scalp columns (preprocessing's alpha_gating; "
        "0 without it), read by the ridge path and the residual with the scalp columns",
    )
    local_path: bool = Field(
        False,
        description="Add a local ridge path on cortical-source features (takes design_space = 'scalp+source': the "
        "design's scalp columns, design_features of them, then the source patches')",
    )
    mean_hidden: int = Field(128, description="Hidden width of the residual network")
    mean_rank: int = Field(32, description="Rank of the residual's per-point readout")
    mean_dropout: float = Field(0.2, ge=0.0, lt=1.0, description="Dropout on the design into the residual network")
    mean_eeg_features: bool = Field(
        False, description="The residual also reads EEG through an encoder of its own (shared/model/eeg_residual.py)"
    )
    mean_loss_weight: float = Field(1.0, description="Weight of the point prediction's MSE in the total loss")
    noise_rank: int = Field(
        20, ge=0, description="Principal directions of the residual's noise model (the diffusion's coordinates)"
    )

    # Diffusion process and sampling.
    diffusion_steps: int = 1000
    prediction: Literal["v", "eps"] = Field("v", description="Network output: velocity (default) or noise")
    sampling_steps: int = Field(50, description="Sampling steps used when sample() is not told otherwise")
    sampler: Literal["flow", "ddim"] = Field("flow", description="Solver of the reverse process (flow ODE or DDIM)")
    ema_decay: float = 0.999

    fmri: FmriConfig = FmriConfig()
    fnirs: FnirsConfig = FnirsConfig()

    @model_validator(mode="after")
    def _check(self) -> "ModelConfig":
        for dim, heads, what in (
            (self.eeg_dim, self.eeg_heads, "eeg"),
            (self.hidden_dim, self.heads, "DiT"),
            (self.target_encoder_dim, self.target_encoder_heads, "target encoder"),
        ):
            if dim % heads:
                raise ValueError(f"{what} width {dim} is not divisible by its {heads} heads")
        if self.eeg_conv_channels % 4:
            raise ValueError(f"eeg_conv_channels must be a multiple of 4 (GroupNorm(4)), got {self.eeg_conv_channels}")
        if not 1 <= self.sampling_steps <= self.diffusion_steps:
            raise ValueError(f"sampling_steps must be in [1, {self.diffusion_steps}], got {self.sampling_steps}")
        if not 0.0 <= self.label_dropout <= 1.0:
            raise ValueError(f"label_dropout must be a probability, got {self.label_dropout}")
        return self

    @property
    def source_features(self) -> int:
        """Width of the design's cortical-source part: 324 patches x bands x bases (0 without a local path)."""
        return N_PATCHES * self.design_features // 64 if self.local_path else 0

    @property
    def global_features(self) -> int:
        """Width of what the global ridge path reads: the scalp columns and the alpha-gated block."""
        return self.design_features + self.gated_features

    @property
    def design_width(self) -> int:
        """Width of the whole design the model takes: scalp columns, the gated block, source columns."""
        return self.global_features + self.source_features

    def for_preprocess(self, preprocess: "PreprocessConfig") -> "ModelConfig":
        """This config with the local path on exactly when the preprocessing makes source features.

        Parameters
        ----------
        preprocess : PreprocessConfig
            The run's preprocessing (``design_space = 'scalp+source'`` turns the local path on,
            ``alpha_gating`` sets the gated block's width).

        Returns
        -------
        ModelConfig
            A copy (or this config when nothing changes).
        """
        wanted = {
            "local_path": preprocess.design_space == "scalp+source",
            "gated_features": n_gated_features(preprocess),
        }
        changed = {k: v for k, v in wanted.items() if getattr(self, k) != v}
        return self.model_copy(update=changed) if changed else self

    @property
    def eeg_conv_dim(self) -> int:
        """Features per patch out of the temporal conv (stride 8): LaBraM-Base gives 25 x 8 = 200."""
        return self.eeg_conv_channels * ((self.eeg_patch_size - 1) // 8 + 1)

    @property
    def eeg_patch_seconds(self) -> float:
        """Length of one EEG patch, seconds."""
        return self.eeg_patch_size / self.eeg_sfreq

    def modality(self, name: str) -> FmriConfig | FnirsConfig:
        """The config of a target modality.

        Parameters
        ----------
        name : {"fmri", "fnirs"}
            The modality.

        Returns
        -------
        FmriConfig | FnirsConfig
            ``fmri`` or ``fnirs``.

        Raises
        ------
        ConfigError
            Another name.
        """
        if name == "fmri":
            return self.fmri
        if name == "fnirs":
            return self.fnirs
        raise ConfigError(f"unknown target modality {name!r}; expected 'fmri' or 'fnirs'")

    def check_preprocess(self, preprocess: "PreprocessConfig") -> None:
        """Refuse preprocessing whose windows this model cannot take, before any data is read.

        The EEG rate, the target rates, the window length (frames per window) and the
        hemodynamic design's width fix the model's input shapes; the other fields (filters,
        ICA, short-channel regression, lag, history) can change freely.

        Parameters
        ----------
        preprocess : PreprocessConfig
            The preprocessing the windows will be made with.

        Raises
        ------
        ConfigError
            Naming each field that does not fit the model and what it would have to be.
        """
        problems = []
        if abs(preprocess.eeg_sfreq - self.eeg_sfreq) > 1e-9:
            problems.append(f"eeg_sfreq = {preprocess.eeg_sfreq:g} (the model takes EEG at {self.eeg_sfreq:g} Hz)")
        for name, rate in (("fmri", preprocess.fmri_sfreq), ("fnirs", preprocess.fnirs_sfreq)):
            target = self.modality(name)
            if abs(rate - target.sfreq) > 1e-9:
                problems.append(f"{name}_sfreq = {rate:g} (the model takes {name} at {target.sfreq:g} Hz)")
            elif round(preprocess.window_seconds * rate) != target.n_frames:
                problems.append(
                    f"window_seconds = {preprocess.window_seconds:g} gives {round(preprocess.window_seconds * rate)} "
                    f"{name} frames per window (the model takes {target.n_frames}: {target.n_frames / rate:g} s)"
                )
        width = n_design_features(preprocess)
        if width != self.design_width:
            problems.append(
                f"hrf_basis = {preprocess.hrf_basis!r}"
                + (f" with design_space = {preprocess.design_space!r}" if preprocess.design_space != "scalp" else "")
                + (
                    " without alpha_gating"
                    if not n_gated_features(preprocess) and preprocess.design_space != "source"
                    else ""
                )
                + f" gives {width} design features (the model takes {self.design_width}"
                + (": set local_path" if preprocess.design_space == "scalp+source" else "")
                + ")"
            )
        if problems:
            unique = list(dict.fromkeys(problems))
            raise ConfigError(f"preprocessing does not fit the {self.preset} model: " + "; ".join(unique))


PRESETS: dict[str, ModelConfig] = {
    # Seconds per step on a laptop CPU, < 1M parameters: for tests.
    "tiny": ModelConfig(
        preset="tiny",
        eeg_conv_channels=4,
        eeg_dim=32,
        eeg_depth=2,
        eeg_heads=2,
        eeg_attention="axial",
        hidden_dim=64,
        depth=2,
        heads=4,
        target_encoder_dim=32,
        target_encoder_depth=1,
        target_encoder_heads=2,
        align_dim=32,
        position_frequencies=4,
        sampling_steps=20,
        fmri=FmriConfig(n_patches=32),
        fnirs=FnirsConfig(max_channels=64),
    ),
    # A few million parameters: trains in minutes on a CPU.
    "small": ModelConfig(
        preset="small",
        eeg_conv_channels=8,
        eeg_dim=64,
        eeg_depth=4,
        eeg_heads=4,
        eeg_attention="axial",
        hidden_dim=128,
        depth=4,
        heads=4,
        target_encoder_dim=64,
        target_encoder_depth=2,
        target_encoder_heads=4,
        align_dim=64,
        sampling_steps=25,
        fmri=FmriConfig(n_patches=128),
    ),
    # GPU: LaBraM-Base EEG encoder (12 x 200, 10 heads) and a DiT-B sized backbone.
    "base": ModelConfig(
        preset="base",
        eeg_conv_channels=8,
        eeg_dim=200,
        eeg_depth=12,
        eeg_heads=10,
        hidden_dim=768,
        depth=12,
        heads=12,
        target_encoder_dim=256,
        target_encoder_depth=2,
        target_encoder_heads=4,
        align_dim=256,
        sampling_steps=50,
        fmri=FmriConfig(n_patches=512),
    ),
}


def get_preset(name: str) -> ModelConfig:
    """A named preset: ``tiny`` (tests), ``small`` (CPU) or ``base`` (GPU).

    Parameters
    ----------
    name : str
        A key of ``PRESETS``.

    Returns
    -------
    ModelConfig
        The preset.

    Raises
    ------
    ConfigError
        An unknown name.
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}") from None


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of a module (each shared tensor counted once).

    Parameters
    ----------
    model : nn.Module
        The module.
    trainable_only : bool
        Count only parameters with ``requires_grad``.

    Returns
    -------
    int
        The number of scalar parameters.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
