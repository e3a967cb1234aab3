"""In-scanner EEG: the gradient artefact and the ballistocardiogram (BCG), found and removed.

Run by ``read_eeg`` on the raw recording, before the rest of the chain (notch, band-pass, ICA,
resampling: the band-pass is the low-pass that usually follows the subtraction):

1. **Volume triggers**: annotations named as scanners and amplifiers write them (``R128``,
   ``Response/R128``, ``T  1``, ``Volume``, ``TR``; case and spaces ignored), or the name the
   run's ``_eeg.json`` gives in ``VolumeTrigger``.
2. **Gradient artefact**: average artefact subtraction (Allen et al. 2000). The recording is cut
   into volume epochs from each trigger, one TR long; from each epoch the mean of the
   ``aas_window_volumes`` surrounding epochs (a moving template that follows slow changes) is
   subtracted, channel by channel (EEG, EOG and ECG), shifted to the epoch's own timing below a
   sample (one shift per volume, fitted on all channels).
3. **BCG** (``bcg``): R-peaks from the ECG channel, or from the EEG without one; then PCA-OBS
   (Niazy et al. 2005) on the EEG channels.

``PreprocessConfig.gradient_artifact`` and ``bcg_artifact`` switch each step: ``auto`` (the
default) cleans runs that carry volume triggers, ``on`` always (a run without triggers is then
an error), ``off`` never. A run whose ``_eeg.json`` says ``"ScannerArtifactsRemoved": true`` (or
``GradientArtifactRemoved`` / ``BCGArtifactRemoved``) is not cleaned again. A run without triggers
whose spectrum is dominated by narrow lines (``line_power``), as raw in-scanner EEG is, is refused
by name unless the gradient step is ``off``: cleaned without its triggers, it would teach a model
the scanner.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import mne
import numpy as np
from threadpoolctl import threadpool_limits

from ..config import PreprocessConfig
from ..errors import DataError
from .bcg import find_r_peaks, remove_bcg
from .bids import RunFiles, read_json
from .scanner_metrics import RAW_LINE_FRACTION, line_power, pulse_locked_power

#: Volume-trigger names accepted without a ``VolumeTrigger`` sidecar key (compared lower-case,
#: without spaces, after the ``Response/`` / ``Stimulus/`` / ``Toggle/`` prefix MNE adds).
VOLUME_TRIGGERS = ("R128", "T1", "Volume", "TR", "Scanner")
#: Sidecar keys (``_eeg.json``) saying the artefacts were already removed: both, or one.
REMOVED_KEYS = {"gradient": ("ScannerArtifactsRemoved", "GradientArtifactRemoved"),
                "bcg": ("ScannerArtifactsRemoved", "BCGArtifactRemoved")}  # fmt: skip
MIN_VOLUMES = 3


@dataclass
class ScannerCleaning:
    """What was found in one run and what was removed.

    Attributes
    ----------
    triggers : numpy.ndarray
        Volume-trigger samples.
    gradient, bcg : bool
        Whether each artefact was removed here.
    already_removed : list of str
        The artefacts the run's sidecar says were removed before (``gradient``, ``bcg``).
    r_peaks : numpy.ndarray or None
        R-peak times (s) used for the BCG.
    r_peak_source : str or None
        ``ECG`` (the channel's name) or ``EEG``.
    seconds : float
        Time spent cleaning.
    measures : dict
        With ``measure=True``: ``line_before`` / ``line_after`` (``scanner_metrics.LinePower``
        of the EEG before and after the gradient step) and ``pulse_before`` / ``pulse_after``
        (``scanner_metrics.PulsePower`` around the BCG step), where measured.
    """

    triggers: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    gradient: bool = False
    bcg: bool = False
    already_removed: list[str] = field(default_factory=list)
    r_peaks: np.ndarray | None = None
    r_peak_source: str | None = None
    seconds: float = 0.0
    measures: dict = field(default_factory=dict)

    @property
    def period(self) -> float | None:
        """The median trigger interval in samples (None below two triggers)."""
        return float(np.median(np.diff(self.triggers))) if len(self.triggers) > 1 else None


def _key(name: str) -> str:
    return name.rsplit("/", 1)[-1].replace(" ", "").lower()


def volume_triggers(raw: mne.io.BaseRaw, names: tuple[str, ...] | list[str] = VOLUME_TRIGGERS) -> np.ndarray:
    """Samples of the volume triggers among the recording's annotations.

    Parameters
    ----------
    raw : mne.io.BaseRaw
        The recording, its annotations as read from the file.
    names : sequence of str
        Trigger names (case and spaces ignored, MNE's ``Response/`` prefix too).

    Returns
    -------
    numpy.ndarray
        Sorted sample indices (from the first sample), unique.
    """
    wanted = {_key(n) for n in names}
    ann = raw.annotations
    onsets = [o for o, d in zip(ann.onset, ann.description) if _key(str(d)) in wanted]
    samples = np.round((np.asarray(onsets, dtype=float) - raw.first_time) * raw.info["sfreq"]).astype(np.int64)
    return np.unique(samples[(samples >= 0) & (samples < raw.n_times)])


def average_artifact_subtraction(
    data: np.ndarray, triggers: np.ndarray, n_template: int = 20, align: bool = True
) -> np.ndarray:
    """Remove a trigger-locked artefact by average artefact subtraction (Allen et al. 2000).

    With ``align``, each epoch's template is also shifted by a fraction of a sample, one shift per
    epoch for all channels (a volume starts when it starts, on every lead): the least-squares
    coefficient of the template's derivative in what subtraction leaves, i.e. the first-order
    Taylor term of a time shift (FASTR aligns the same way, by upsampling). The scanner's and
    the amplifier's clocks are never exactly locked; a shift of 10 us leaves ~-35 dB of a
    100 Hz component unaligned.

    Parameters
    ----------
    data : numpy.ndarray
        ``[n_channels, n_times]`` or ``[n_times]``.
    triggers : numpy.ndarray
        Epoch starts (samples); an epoch lasts the median trigger interval. Epochs that would
        run past the end are left as they are, and so is everything before the first trigger.
    n_template : int
        Epochs averaged into each epoch's template: the ones around it, not itself (fewer when
        the run has fewer).
    align : bool
        Shift the templates to each epoch's timing (below a sample).

    Returns
    -------
    numpy.ndarray
        A cleaned copy, the shape and dtype of ``data``.
    """
    out = np.array(data, dtype=np.float64, copy=True)
    rows = out.reshape(-1, out.shape[-1])
    triggers = np.sort(np.asarray(triggers, dtype=np.int64))
    if len(triggers) < MIN_VOLUMES:
        raise ValueError(f"average artefact subtraction needs at least {MIN_VOLUMES} triggers, got {len(triggers)}")
    length = int(np.median(np.diff(triggers)))
    triggers = triggers[np.concatenate([[True], np.diff(triggers) > length // 2])]  # a doubled marker counts once
    starts = triggers[triggers + length <= rows.shape[1]]
    n_ep = len(starts)
    n_avg = min(n_template, n_ep - 1)
    k = np.arange(n_ep)
    lo = np.clip(k - n_avg // 2, 0, n_ep - n_avg - 1)  # a window of n_avg + 1 epochs holding k
    hi = lo + n_avg + 1
    index = starts[:, None] + np.arange(length)[None, :]

    def templates(row: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        epochs = row[index]  # [n_ep, length]
        csum = np.vstack([np.zeros(length), np.cumsum(epochs, axis=0)])
        template = (csum[hi] - csum[lo] - epochs) / n_avg
        # derivative per sample, spectrally: an epoch is one period of the artefact
        freqs = np.fft.rfftfreq(length)
        slope = np.fft.irfft(np.fft.rfft(template, axis=1) * (2j * np.pi * freqs), n=length, axis=1)
        return epochs, template, slope

    shift = np.zeros(n_ep)
    if align:  # pass 1: one shift per epoch, from every channel
        num, den = np.zeros(n_ep), np.zeros(n_ep)
        for row in rows:
            epochs, template, slope = templates(row)
            num += np.einsum("et,et->e", epochs - template, slope)
            den += np.einsum("et,et->e", slope, slope)
        shift = np.divide(num, den, out=np.zeros(n_ep), where=den > 0)
    for row in rows:
        epochs, template, slope = templates(row)
        row[index] = epochs - template - shift[:, None] * slope
    return out.astype(np.asarray(data).dtype, copy=False)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _sidecar(files: RunFiles | None) -> dict:
    return read_json(files.eeg_sidecar) if files is not None and files.eeg_sidecar is not None else {}


def already_removed(sidecar: dict) -> list[str]:
    """The artefacts a run's ``_eeg.json`` says were removed before (``gradient``, ``bcg``).

    Parameters
    ----------
    sidecar : dict
        The run's ``_eeg.json``.

    Returns
    -------
    list of str
    """
    return [a for a, keys in REMOVED_KEYS.items() if any(sidecar.get(k) is True for k in keys)]


def clean_scanner_artifacts(
    raw: mne.io.BaseRaw,
    config: PreprocessConfig,
    files: RunFiles | None = None,
    path: Path | None = None,
    measure: bool = False,
) -> ScannerCleaning:
    """Find and remove the gradient artefact and the BCG of one run, as configured (in place).

    Parameters
    ----------
    raw : mne.io.BaseRaw
        Preloaded, channels typed (EEG, EOG, ECG).
    config : PreprocessConfig
        ``gradient_artifact``, ``bcg_artifact``, ``aas_window_volumes``, ``bcg_components``.
    files : RunFiles, optional
        The run's sidecars (``_eeg.json``: ``ScannerArtifactsRemoved``, ``VolumeTrigger``).
    path : Path, optional
        The EEG file, named in errors.
    measure : bool
        Also measure the artefact power before and after each step (``ScannerCleaning.measures``;
        ``validate`` does, a load does not).

    Returns
    -------
    ScannerCleaning

    Raises
    ------
    DataError
        ``gradient_artifact=on`` and no volume trigger; or a run without volume triggers whose
        spectrum is that of raw in-scanner EEG (``gradient_artifact`` not ``off``).
    """
    # Small matrices, many of them: one BLAS thread is faster, and far faster once torch's OpenMP
    # runtime is loaded (OpenBLAS threads then contend with it: 10x slower here).
    with threadpool_limits(limits=1, user_api="blas"):
        return _clean(raw, config, files, path, measure)


def _clean(raw, config, files, path, measure) -> ScannerCleaning:
    start = time.perf_counter()
    path = Path(path or (files.eeg if files is not None else "EEG recording"))
    sidecar = _sidecar(files)
    done = already_removed(sidecar)
    names = list(VOLUME_TRIGGERS)
    if sidecar.get("VolumeTrigger"):
        extra = sidecar["VolumeTrigger"]
        names += [extra] if isinstance(extra, str) else [str(n) for n in extra]
    result = ScannerCleaning(triggers=volume_triggers(raw, names), already_removed=done)
    has_triggers = len(result.triggers) >= MIN_VOLUMES
    do_gradient = "gradient" not in done and (
        config.gradient_artifact == "on" or (config.gradient_artifact == "auto" and has_triggers)
    )
    if do_gradient and not has_triggers:
        raise DataError(path, f"gradient_artifact=on but {_missing(names, len(result.triggers))}; {_WHAT_TO_DO}")
    sfreq, m = raw.info["sfreq"], result.measures
    mains = (50.0, 60.0, sidecar.get("PowerLineFrequency") if _number(sidecar.get("PowerLineFrequency")) else None)
    check_raw = not do_gradient and not has_triggers and "gradient" not in done and config.gradient_artifact == "auto"
    if measure or check_raw:
        m["line_before"] = lines = line_power(raw.get_data(picks="eeg"), sfreq, mains)
        if check_raw and lines.fraction > RAW_LINE_FRACTION:
            raise DataError(path, raw_without_triggers(lines.fraction, lines.strongest_hz, names, len(result.triggers)))
    if do_gradient:
        picks = mne.pick_types(raw.info, eeg=True, eog=True, ecg=True, exclude=[])
        raw.apply_function(
            average_artifact_subtraction, picks=picks, channel_wise=False, verbose="error",
            triggers=result.triggers, n_template=config.aas_window_volumes,
        )  # fmt: skip
        result.gradient = True
        if measure:
            m["line_after"] = line_power(raw.get_data(picks="eeg"), sfreq, mains)
    do_bcg = "bcg" not in done and (config.bcg_artifact == "on" or (config.bcg_artifact == "auto" and has_triggers))
    if do_bcg:
        result.r_peaks, result.r_peak_source = find_r_peaks(raw)
        if len(result.r_peaks) < 10:
            raise DataError(path, f"BCG removal: only {len(result.r_peaks)} heartbeats found ({result.r_peak_source})")
        if measure:
            m["pulse_before"] = pulse_locked_power(raw.get_data(picks="eeg"), sfreq, result.r_peaks)
        remove_bcg(raw, result.r_peaks, config.bcg_components)
        result.bcg = True
        if measure:
            m["pulse_after"] = pulse_locked_power(raw.get_data(picks="eeg"), sfreq, result.r_peaks)
    result.seconds = time.perf_counter() - start
    return result


_WHAT_TO_DO = (
    "export the recording with the scanner's volume markers (BrainVision R128), name the marker in _eeg.json "
    '("VolumeTrigger": "<name>"), or clean it elsewhere and set "ScannerArtifactsRemoved": true in _eeg.json'
)


def _missing(names: list[str], found: int) -> str:
    return f"it has {found} volume trigger(s) (annotations named {', '.join(names)}; at least {MIN_VOLUMES} needed)"


def raw_without_triggers(fraction: float, strongest: float | None, names: list[str], found: int) -> str:
    """The message for a raw in-scanner run without volume triggers.

    Parameters
    ----------
    fraction : float
        Share of its power in narrow lines.
    strongest : float or None
        The strongest line, Hz.
    names : list of str
        Trigger names looked for.
    found : int
        Triggers found.

    Returns
    -------
    str
    """
    at = f", strongest at {strongest:.2f} Hz" if strongest else ""
    return (
        f"looks like raw in-scanner EEG ({100 * fraction:.0f}% of its power in narrow spectral lines{at}: the MR "
        f"gradient artefact) but {_missing(names, found)}, so the artefact cannot be removed; {_WHAT_TO_DO}; "
        "if it was not recorded in a scanner, load it with the preprocessing setting gradient_artifact=off"
    )
