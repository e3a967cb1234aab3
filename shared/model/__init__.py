"""The generative model: LaBraM-style EEG encoder, hyperdimensional integration, DiT, diffusion.

Entry points:
- ``ModelConfig``, ``get_preset(name)``, ``count_parameters(model)``, ``parameter_count(preset)``:
  presets ``tiny``/``small``/``base``;
- ``NeuroGenModel(config)`` (``generator.py``: the network), ``Batch.from_windows(...)`` (``batch.py``):
  ``model.loss(batch)`` (``losses.py``), ``model.sample(batch)`` (``sampling.py``);
- ``EMA``: weight averaging for sampling;
- ``save_checkpoint`` / ``load_checkpoint`` / ``load_checkpoint_into`` / ``load_ema``;
- ``load_labram_checkpoint(model, path)``: LaBraM weights into the EEG encoder;
- ``parameter_modality(name)``: which modality a parameter belongs to (None = shared backbone).
"""

from fedneurogen.shared.model.checkpoint import (
    load_checkpoint,
    load_checkpoint_into,
    load_ema,
    read_checkpoint_config,
    save_checkpoint,
)
from fedneurogen.shared.model.config import PRESETS, FmriConfig, FnirsConfig, ModelConfig, count_parameters, get_preset
from fedneurogen.shared.model.diffusion import GaussianDiffusion
from fedneurogen.shared.model.eeg_encoder import EEGEncoder, LabramLoadReport, load_labram_checkpoint
from fedneurogen.shared.model.ema import EMA, unwrap_model
from fedneurogen.shared.model.batch import MODALITIES, Batch, default_device
from fedneurogen.shared.model.generator import NeuroGenModel, parameter_count, parameter_modality

__all__ = [
    "EMA",
    "MODALITIES",
    "PRESETS",
    "Batch",
    "EEGEncoder",
    "FmriConfig",
    "FnirsConfig",
    "GaussianDiffusion",
    "LabramLoadReport",
    "ModelConfig",
    "NeuroGenModel",
    "count_parameters",
    "default_device",
    "get_preset",
    "load_checkpoint",
    "load_checkpoint_into",
    "load_ema",
    "load_labram_checkpoint",
    "parameter_count",
    "parameter_modality",
    "read_checkpoint_config",
    "save_checkpoint",
    "unwrap_model",
]
