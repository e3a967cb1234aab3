"""Typed configuration for data preprocessing and pairing.

Model presets (``tiny``/``small``/``base``) live with the model in ``fedneurogen.shared.model``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class PreprocessConfig(BaseModel):
    """How raw recordings become paired windows (docs/architecture.md §3).

    Changing any field changes ``cache_key`` and so invalidates the on-disk cache.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # EEG
    eeg_l_freq: float = Field(1.0, description="EEG high-pass edge (Hz)")
    eeg_h_freq: float = Field(100.0, description="EEG low-pass edge (Hz); capped below Nyquist")
    eeg_line_freq: float | None = Field(50.0, description="Line-noise notch (Hz); None disables")
    eeg_sfreq: float = Field(200.0, description="EEG rate after resampling (LaBraM: 200 Hz)")
    eeg_scale: float = Field(1e4, description="Volts -> model units: 1e4 gives units of 100 uV")
    eeg_ica: bool = Field(True, description="Remove ocular components with ICA where EOG channels exist")
    # fNIRS
    fnirs_l_freq: float = 0.01
    fnirs_h_freq: float = 0.1
    fnirs_filter_order: int = 6
    fnirs_ppf: float = Field(6.0, description="Partial pathlength factor for the Beer-Lambert law")
    fnirs_scale: float = Field(1e6, description="mol/L -> model units: 1e6 gives micromolar")
    fnirs_short_channel_regression: bool = Field(
        True,
        description=(
            "Regress the nearest short-separation channel (< 15 mm) out of each long fNIRS channel, per chromophore, "
            "to remove scalp/systemic physiology; short channels are never target points, and files without them are "
            "read unchanged"
        ),
    )
    # Target sampling and windows
    fmri_sfreq: float = Field(0.5, description="Common fMRI grid (Hz); sites with other TRs are resampled to it")
    fnirs_sfreq: float = Field(1.0, description="Common fNIRS grid (Hz) after the 0.1 Hz low-pass")
    window_seconds: float = Field(16.0, description="Length of one paired window (s)")
    hop_seconds: float = Field(8.0, description="Hop between consecutive windows (s)")
    lag_seconds: float = Field(6.0, description="Hemodynamic delay: target lags EEG by this much (s)")
    history_seconds: float = Field(
        30.0,
        gt=0,
        description="Hemodynamic history (s): each target frame is predicted from the EEG of this many seconds before it (the HRF lasts ~30 s)",
    )
    power_window_seconds: float = Field(2.0, gt=0, description="Welch segment for the EEG band-power design (s)")
    power_hop_seconds: float = Field(1.0, gt=0, description="Hop between band-power segments (s)")
    hrf_basis: Literal["canonical", "canonical+derivative"] = Field(
        "canonical+derivative",
        description="Hemodynamic basis of the design: Glover HRF, optionally with its time derivative",
    )
    label_min_fraction: float = Field(
        0.5, description="Keep a window only if its majority class covers at least this fraction of it"
    )
    fmri_zscore: bool = Field(True, description="z-score BOLD per vertex per run")
    target_space: Literal["ico4"] = "ico4"

    def target_sfreq(self, modality: str) -> float:
        return self.fmri_sfreq if modality == "fmri" else self.fnirs_sfreq

    def cache_key(self) -> str:
        blob = json.dumps(self.model_dump(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
