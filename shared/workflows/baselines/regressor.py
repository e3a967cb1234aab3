"""A deterministic regression transformer: the baseline the generator must beat (docs/architecture.md §7).

In the spirit of NeuroBOLT: the generator's own EEG pathway (LaBraM-style encoder, then the
hyperdimensional integration onto the target tokens), a plain transformer over the target tokens,
and a linear head that regresses each token's values directly, trained with mean squared error.
No diffusion, no noise, no labels: the same input always gives the same output. Built from the
generator's building blocks and sized by the same ``ModelConfig``, so the two differ only in
how the target is produced.

``RegressorBaseline`` wraps training and prediction with the ``fit(windows)`` /
``predict(windows)`` interface of ``RidgeHRFBaseline``.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedneurogen.shared.errors import ConfigError
from fedneurogen.shared.model import Batch, ModelConfig, get_preset
from fedneurogen.shared.model.conditioning import HyperdimensionalIntegration, eeg_patch_times, target_frame_times
from fedneurogen.shared.model.eeg_encoder import EEGEncoder, channel_index_tensor
from fedneurogen.shared.model.batch import MODALITIES, default_device
from fedneurogen.shared.model.layers import PositionEmbedding, TransformerBlock
from fedneurogen.shared.model.tokens import FmriTokenizer, TokenLayout, fnirs_layout, unpatchify
from fedneurogen.shared.recording import PairedWindows
from fedneurogen.shared.surface import load_ico4_positions
from fedneurogen.shared.workflows.training import TrainConfig, iterate_batches, make_optimizer, set_learning_rate


class RegressionTransformer(nn.Module):
    """EEG window ``[B, C, T]`` -> target window ``[B, N, F]`` of one modality, by regression.

    Parameters
    ----------
    config : ModelConfig
        Sizes, as for the generator.
    modality : {"fmri", "fnirs"}
        The target modality.

    Raises
    ------
    ConfigError
        An unknown modality.
    """

    def __init__(self, config: ModelConfig, modality: str):
        super().__init__()
        if modality not in MODALITIES:
            raise ConfigError(f"unknown target modality {modality!r}; expected one of {MODALITIES}")
        self.config, self.modality = config, modality
        target = config.modality(modality)
        self.tokenizer = FmriTokenizer(config.fmri, load_ico4_positions()) if modality == "fmri" else None
        token_size = self.tokenizer.token_size if self.tokenizer is not None else 2  # fNIRS: HbO + HbR
        self.eeg_encoder = EEGEncoder(config)
        self.integration = HyperdimensionalIntegration(config.hrf_delay, config.hrf_width, config.learn_hrf)
        self.condition_embed = nn.Linear(target.n_frames * config.eeg_dim, config.hidden_dim)
        self.position = PositionEmbedding(
            config.hidden_dim, config.position_frequencies, config.position_wavelengths_mm
        )
        self.blocks = nn.ModuleList(
            TransformerBlock(config.hidden_dim, config.heads, config.mlp_ratio, layer_scale=1.0)
            for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(config.hidden_dim, eps=1e-6)
        self.head = nn.Linear(config.hidden_dim, token_size * target.n_frames)
        # Start at the data mean (targets are centred): the first steps fit signal, not offsets.
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def layout(self, batch: Batch) -> TokenLayout:
        """Which target points form each token.

        Parameters
        ----------
        batch : Batch
            A batch of this regressor's modality.

        Returns
        -------
        TokenLayout
            The fixed fMRI layout, or the fNIRS layout of the batch's channels.

        Raises
        ------
        ConfigError
            The batch holds another modality.
        """
        if batch.modality != self.modality:
            raise ConfigError(f"this regressor predicts {self.modality}, the batch holds {batch.modality}")
        if self.tokenizer is not None:
            return self.tokenizer.layout()
        return fnirs_layout(batch.target_names, batch.target_point_types, batch.target_positions)

    def forward(self, batch: Batch) -> torch.Tensor:
        """Regress the batch's targets from its EEG.

        Parameters
        ----------
        batch : Batch
            EEG, positions and (fNIRS) target names.

        Returns
        -------
        torch.Tensor
            ``[B, N, F]``.
        """
        layout = self.layout(batch)
        n_frames = self.config.modality(self.modality).n_frames
        device = batch.eeg.device
        features = self.eeg_encoder(batch.eeg, channel_index_tensor(batch.eeg_channel_names, device))  # [B, C, P, De]
        patch_times = eeg_patch_times(features.shape[2], batch.lag, self.config.eeg_patch_seconds, device)
        frame_times = target_frame_times(n_frames, self.config.modality(self.modality).sfreq, device)
        integrated = self.integration(
            features, batch.eeg_positions, layout.centroids, patch_times, frame_times
        )  # [B, M, F, De]
        x = self.condition_embed(integrated.flatten(2)) + self.position(layout.centroids, features.shape[0])
        for block in self.blocks:
            x = block(x)
        return unpatchify(self.head(self.norm(x)), layout, n_frames)


class RegressorBaseline:
    """Fit a ``RegressionTransformer`` on training windows (MSE, AdamW) and predict others.

    The mean loss of every epoch is kept in ``history``.

    Parameters
    ----------
    config : ModelConfig | str
        The sizes, or a preset name.
    epochs : int
        Passes over the training windows.
    batch_size : int
        Windows per step.
    lr : float
        Learning rate after the warm-up (constant).
    warmup_steps : int
        Steps of linear learning-rate warm-up.
    seed : int
        Seed of the initialisation and batch order.
    max_minutes : float | None
        Stop training after this long; None: no limit.
    device : torch.device | str | None
        Where the model trains; None: CUDA when available.
    """

    def __init__(
        self,
        config: ModelConfig | str = "small",
        *,
        epochs: int = 5,
        batch_size: int = 16,
        lr: float = 5e-4,
        warmup_steps: int = 20,
        seed: int = 0,
        max_minutes: float | None = None,
        device: torch.device | str | None = None,
    ):
        self.config = get_preset(config) if isinstance(config, str) else config
        self.train_config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps)
        self.seed = seed
        self.max_minutes = max_minutes
        self.device = torch.device(device) if device is not None else default_device()
        self.history: list[float] = []

    def fit(self, windows: PairedWindows, val: PairedWindows | None = None) -> "RegressorBaseline":
        """Train a new regressor on ``windows`` for the configured epochs.

        Parameters
        ----------
        windows : PairedWindows
            Training windows (their modality sets the regressor's).
        val : PairedWindows | None
            Accepted like the other baselines' and not used: no early stopping.

        Returns
        -------
        RegressorBaseline
            ``self``.
        """
        with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the caller's RNG
            torch.manual_seed(self.seed)
            self.model = RegressionTransformer(self.config, windows.target_modality).to(self.device)
        config = self.train_config
        optimizer = make_optimizer(self.model.parameters(), config)
        rng = np.random.default_rng(self.seed)
        deadline = time.time() + 60 * self.max_minutes if self.max_minutes else None
        self.model.train()
        step = 0
        for _ in range(config.epochs):
            losses = []
            for _, index in iterate_batches([len(windows)], config.batch_size, rng):
                if deadline is not None and time.time() > deadline:
                    break
                batch = Batch.from_windows(windows, np.sort(index), device=self.device)
                set_learning_rate(optimizer, config, step)
                optimizer.zero_grad(set_to_none=True)
                loss = F.mse_loss(self.model(batch), batch.target)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
                optimizer.step()
                losses.append(float(loss.detach()))
                step += 1
            if losses:
                self.history.append(float(np.mean(losses)))
            if deadline is not None and time.time() > deadline:
                break
        return self

    @torch.no_grad()
    def predict(self, windows: PairedWindows, batch_size: int = 32) -> np.ndarray:
        """Predict the windows' targets (without gradients).

        Parameters
        ----------
        windows : PairedWindows
            The windows.
        batch_size : int
            Windows per model call.

        Returns
        -------
        np.ndarray
            float32 ``[n_windows, n_points, n_frames]``.
        """
        self.model.eval()
        out = np.zeros(windows.target.shape, dtype=np.float32)
        for start in range(0, len(windows), batch_size):
            index = np.arange(start, min(start + batch_size, len(windows)))
            out[index] = self.model(Batch.from_windows(windows, index, device=self.device)).float().cpu().numpy()
        return out
