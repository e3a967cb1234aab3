"""The preprocessing config (``PreprocessConfig``): how a site's recordings are cleaned, cut into
windows and paired, and how the hemodynamic design is built from them.

One of three configs, each in its own module: this one (the data); the run config
(``shared/run_config.py``, ``RunConfig``: a federated run's keys from ``[tool.flwr.app.config]``);
the model config and its presets ``tiny``/``small``/``base`` (``shared/model/config.py``,
``ModelConfig``).
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedneurogen.shared.errors import ConfigError


def setting_value(text: str) -> Any:
    """A ``KEY=VALUE`` setting's value as a user typed it: a TOML scalar (``false``, ``0.5``,
    ``"text"``), else the text itself (``fedprox``).

    Parameters
    ----------
    text : str

    Returns
    -------
    Any
    """
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


#: Fields added with in-scanner EEG; left out of ``cache_key`` at their defaults.
_IN_SCANNER_FIELDS = ("gradient_artifact", "bcg_artifact", "aas_window_volumes", "bcg_components")
MAX_SECONDS = 120.0  # window, hop, lag, history: longer than any HRF or paired window this model takes
MIN_HOP_SECONDS = 0.5  # a window per half second at most: below a target frame (1-2 s) windows only repeat


class PreprocessConfig(BaseModel):
    """How raw recordings become paired windows (docs/architecture.md §3).

    Frozen; unknown fields are refused. Changing any field changes ``cache_key`` and so
    invalidates the on-disk cache.

    Attributes
    ----------
    eeg_l_freq, eeg_h_freq : float
        EEG band-pass edges in Hz (the low-pass is capped below Nyquist).
    eeg_line_freq : float | None
        Line-noise notch in Hz; None disables it.
    eeg_sfreq : float
        EEG rate after resampling, Hz (LaBraM: 200).
    eeg_scale : float
        Volts -> model units; 1e4 gives units of 100 uV.
    eeg_ica : bool
        Remove ocular components with ICA where EOG channels exist.
    fnirs_l_freq, fnirs_h_freq : float
        fNIRS band-pass edges in Hz.
    fnirs_filter_order : int
        Order of the fNIRS band-pass filter.
    fnirs_ppf : float
        Partial pathlength factor of the modified Beer-Lambert law.
    fnirs_scale : float
        mol/L -> model units; 1e6 gives micromolar.
    fnirs_short_channel_regression : bool
        Regress the nearest short-separation channel (< 15 mm) out of each long channel, per
        chromophore; short channels are never target points.
    fmri_sfreq, fnirs_sfreq : float
        Common target grids in Hz; sites with other rates are resampled to them.
    window_seconds, hop_seconds : float
        Length of one paired window and hop between consecutive windows, s.
    lag_seconds : float
        Hemodynamic delay: the target window lags the EEG window by this much, s.
    history_seconds : float
        EEG history before each target frame that the hemodynamic design summarises, s (> 0).
    power_window_seconds, power_hop_seconds : float
        Welch segment length and hop of the EEG band-power design, s (> 0).
    hrf_basis : {"canonical", "canonical+derivative"}
        Hemodynamic basis of the design: the Glover HRF, optionally with its time derivative.
    label_min_fraction : float
        A window is kept only if its majority class covers at least this fraction of it.
    fmri_zscore : bool
        z-score BOLD per vertex per run.
    target_space : {"ico4"}
        Cortical target space of fMRI.
    design_space : {"scalp", "source", "scalp+source"}
        Where the design's band power is taken (``fedneurogen.shared.sources``); ``scalp+source``
        puts both side by side, scalp first (the model's local path). The default ``scalp`` leaves
        ``cache_key`` as it was before the field existed.
    alpha_gating : bool
        Append the alpha-gated block to a scalp design (``design.gated_power``): at each virtual
        electrode every band's power times the alpha gate there, multiplied before the HRF and
        averaged over each of 8 scalp regions. The term a linear design lacks where alpha gates
        neurovascular coupling; the model's ridge path weighs it as one more band (0 where
        validation finds no use for it). Off: the design (and ``cache_key``) as before the field
        existed. No effect on a ``source`` design.
    alpha_gate : {"desynchronisation", "product"}
        The gate of that block: ``desynchronisation`` (the default) multiplies by how far alpha
        is below its run mean, ``max(0, -alpha)``, so the block is band power while alpha is
        desynchronised and nothing while it is high; ``product`` by alpha itself (the block's
        first form; a checkpoint made with it records no ``alpha_gate`` and is remade as made).
    gradient_artifact, bcg_artifact : {"auto", "on", "off"}
        Removal of the MR gradient artefact (average artefact subtraction) and of the
        ballistocardiogram (PCA-OBS) from in-scanner EEG (``fedneurogen.shared.data.scanner``):
        ``auto`` where a run has volume triggers, ``on`` always, ``off`` never. A run whose
        ``_eeg.json`` says ``"ScannerArtifactsRemoved": true`` is never cleaned twice. Like
        ``design_space``, these and the two below leave ``cache_key`` as it was at their defaults.
    aas_window_volumes : int
        Volume epochs averaged into each epoch's gradient-artefact template.
    bcg_components : int
        Principal components of the PCA-OBS basis, besides the mean artefact.

    Every rate and length is bounded (``Field`` limits), so a value from the run config or
    ``train --preprocess`` is refused before any window is cut: ``hop_seconds=0`` would append
    windows without end, a negative hop would never reach the end of a run, and a hop far below
    a target frame multiplies the windows of a site (and its memory) for nothing.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # EEG
    eeg_l_freq: float = Field(1.0, ge=0, le=100, description="EEG high-pass edge (Hz)")
    eeg_h_freq: float = Field(100.0, gt=0, le=1000, description="EEG low-pass edge (Hz); capped below Nyquist")
    eeg_line_freq: float | None = Field(50.0, gt=0, le=1000, description="Line-noise notch (Hz); None disables")
    eeg_sfreq: float = Field(200.0, gt=0, le=2000, description="EEG rate after resampling (LaBraM: 200 Hz)")
    eeg_scale: float = Field(1e4, gt=0, description="Volts -> model units: 1e4 gives units of 100 uV")
    eeg_ica: bool = Field(True, description="Remove ocular components with ICA where EOG channels exist")
    # fNIRS
    fnirs_l_freq: float = Field(0.01, gt=0, le=10)
    fnirs_h_freq: float = Field(0.1, gt=0, le=10)
    fnirs_filter_order: int = Field(6, ge=1, le=16)
    fnirs_ppf: float = Field(6.0, gt=0, description="Partial pathlength factor for the Beer-Lambert law")
    fnirs_scale: float = Field(1e6, gt=0, description="mol/L -> model units: 1e6 gives micromolar")
    fnirs_short_channel_regression: bool = Field(
        True,
        description=(
            "Regress the nearest short-separation channel (< 15 mm) out of each long fNIRS channel, per chromophore, "
            "to remove scalp/systemic physiology; short channels are never target points, and files without them are "
            "read unchanged"
        ),
    )
    # Target sampling and windows
    fmri_sfreq: float = Field(
        0.5, gt=0, le=10, description="Common fMRI grid (Hz); sites with other TRs are resampled to it"
    )
    fnirs_sfreq: float = Field(1.0, gt=0, le=50, description="Common fNIRS grid (Hz) after the 0.1 Hz low-pass")
    window_seconds: float = Field(16.0, gt=0, le=MAX_SECONDS, description="Length of one paired window (s)")
    hop_seconds: float = Field(
        8.0, ge=MIN_HOP_SECONDS, le=MAX_SECONDS, description="Hop between consecutive windows (s)"
    )
    lag_seconds: float = Field(
        6.0, ge=0, le=MAX_SECONDS, description="Hemodynamic delay: target lags EEG by this much (s)"
    )
    history_seconds: float = Field(
        30.0,
        gt=0,
        le=MAX_SECONDS,
        description="Hemodynamic history (s): each target frame is predicted from the EEG of this many seconds before it (the HRF lasts ~30 s)",
    )
    power_window_seconds: float = Field(
        2.0, ge=0.1, le=MAX_SECONDS, description="Welch segment for the EEG band-power design (s)"
    )
    power_hop_seconds: float = Field(1.0, ge=0.05, le=MAX_SECONDS, description="Hop between band-power segments (s)")
    hrf_basis: Literal["canonical", "canonical+derivative"] = Field(
        "canonical+derivative",
        description="Hemodynamic basis of the design: Glover HRF, optionally with its time derivative",
    )
    label_min_fraction: float = Field(
        0.5, ge=0, le=1, description="Keep a window only if its majority class covers at least this fraction of it"
    )
    fmri_zscore: bool = Field(True, description="z-score BOLD per vertex per run")
    target_space: Literal["ico4"] = "ico4"
    design_space: Literal["scalp", "source", "scalp+source"] = Field(
        "scalp",
        description="Where the hemodynamic design's band power is taken: 64 virtual scalp electrodes, 324 cortical "
        "source patches through a minimum-norm inverse of each montage (fedneurogen.shared.sources), or both side by "
        "side (scalp columns first): what a model with a local path (local_path = true) takes",
    )
    alpha_gating: bool = Field(
        True,
        description="Append the alpha-gated block to the scalp design: each band's power times the alpha gate at the "
        "same virtual electrode (alpha_gate), before the HRF, averaged over 8 scalp regions (alpha gating of "
        "neurovascular coupling; the ridge path weighs it as one more band)",
    )
    alpha_gate: Literal["desynchronisation", "product"] = Field(
        "desynchronisation",
        description="The alpha-gated block's gate: desynchronisation = band power times max(0, -alpha), how far the "
        "electrode's alpha is below its run mean (the gate opens as alpha desynchronises); product = band power "
        "times alpha (the block's first form)",
    )

    # In-scanner EEG (fedneurogen.shared.data.scanner)
    gradient_artifact: Literal["auto", "on", "off"] = Field(
        "auto",
        description="MR gradient-artefact removal (average artefact subtraction on the volume triggers): auto = where "
        "the run has volume triggers (R128, ...), on = always (a run without triggers is an error), off = never",
    )
    bcg_artifact: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Ballistocardiogram removal (R-peaks from the ECG channel, else the EEG; PCA-OBS): auto = where the "
        "run has volume triggers, on = always, off = never",
    )
    aas_window_volumes: int = Field(
        20, ge=2, le=200, description="Volume epochs averaged into each gradient-artefact template (moving average)"
    )
    bcg_components: int = Field(
        1, ge=0, le=10, description="Principal components of the PCA-OBS basis besides the mean"
    )

    @classmethod
    def from_overrides(cls, overrides: str | Sequence[str]) -> "PreprocessConfig":
        """The default preprocessing with some fields changed.

        How a user sets it: ``fedneurogen train --preprocess eeg_ica=false``, or the run config's
        ``preprocess = "eeg_ica=false;fnirs_short_channel_regression=false"`` for a federation.

        Parameters
        ----------
        overrides : str or sequence of str
            ``KEY=VALUE`` items, as a list or one ``;``-separated string (``""``: the defaults).
            A key is a field name (``-`` may stand for ``_``); a value is read as a TOML scalar
            (``false``, ``0.5``, ``"text"``), else as text; ``none`` clears ``eeg_line_freq``.

        Returns
        -------
        PreprocessConfig

        Raises
        ------
        ConfigError
            An item is not ``KEY=VALUE``, a key is not a field, or a value is not allowed.
        """
        items = overrides.split(";") if isinstance(overrides, str) else list(overrides)
        values: dict[str, object] = {}
        for item in filter(None, (part.strip() for part in items)):
            key, eq, text = item.partition("=")
            key = key.strip().replace("-", "_")
            if not eq or not key:
                raise ConfigError(f"preprocessing: {item!r} is not KEY=VALUE")
            if key not in cls.model_fields:
                raise ConfigError(f"preprocessing: unknown key {key!r}; the keys are {', '.join(cls.model_fields)}")
            text = text.strip()
            values[key] = None if text.lower() == "none" else setting_value(text)
        try:
            return cls(**values)
        except ValidationError as err:
            problems = "; ".join(f"{e['loc'][0]} = {e['input']!r}: {e['msg']}" for e in err.errors(include_url=False))
            raise ConfigError(f"preprocessing: {problems}") from None

    @classmethod
    def from_stored(cls, stored: dict | None) -> "PreprocessConfig":
        """The preprocessing a checkpoint recorded (its ``config.json``'s ``preprocess``).

        A record is a full dump of the fields of its day; one from before a field existed gets
        the value that reproduces what it was made with (``alpha_gating`` off; ``alpha_gate``
        ``product`` for a record with the block but from before its gate was a choice), not
        today's default. An empty record is today's defaults.

        Parameters
        ----------
        stored : dict | None
            The recorded fields.

        Returns
        -------
        PreprocessConfig
        """
        values = dict(stored or {})
        if values and "alpha_gating" not in values:
            values["alpha_gating"] = False
        if values.get("alpha_gating") and "alpha_gate" not in values:  # the block, from before its gate was a choice
            values["alpha_gate"] = "product"
        return cls(**values)

    def changed_fields(self, other: "PreprocessConfig") -> list[str]:
        """The fields whose values differ from ``other``'s, sorted (a resumed run checks its own).

        Parameters
        ----------
        other : PreprocessConfig
            The preprocessing to compare with.

        Returns
        -------
        list of str
        """
        mine, theirs = self.model_dump(), other.model_dump()
        return sorted(k for k in mine if mine[k] != theirs[k])

    def target_sfreq(self, modality: str) -> float:
        """The target sampling rate of a modality.

        Parameters
        ----------
        modality : str
            ``"fmri"``; anything else is taken as fNIRS.

        Returns
        -------
        float
            ``fmri_sfreq`` or ``fnirs_sfreq``, Hz.
        """
        return self.fmri_sfreq if modality == "fmri" else self.fnirs_sfreq

    def cache_key(self) -> str:
        """A short content hash of every field, keying the preprocessed-window cache.

        Returns
        -------
        str
            The first 16 hex digits of the SHA-256 of the fields as sorted JSON.
        """
        fields = self.model_dump()
        if not self.alpha_gating or self.design_space == "source":  # no gated block: the design as before it
            del fields["alpha_gating"], fields["alpha_gate"]
        elif self.alpha_gate == "product":  # the block's first form keeps the keys (and caches) made with it
            del fields["alpha_gate"]
        if fields["design_space"] == "scalp":  # the default keeps the keys (and caches) made before it existed
            del fields["design_space"]
        for name in _IN_SCANNER_FIELDS:  # likewise: at their defaults, recordings without triggers load as before
            if fields[name] == type(self).model_fields[name].default:
                del fields[name]
        blob = json.dumps(fields, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
