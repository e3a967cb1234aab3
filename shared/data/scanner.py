"""In-scanner EEG: the gradient artefact and the ballistocardiogram (BCG), found and removed.

Run by ``read_eeg`` on the raw recording, before the rest of the chain (notch, band-pass, ICA,
resampling: the band-pass is the low-pass that usually follows the subtraction):

1. **Volume triggers**: annotations named as scanners and amplifiers write them (``R128``,
   ``Response/R128``, ``T  1``, ``Volume``, ``TR``; case and spaces ignored), or the name the
   run's ``_eeg.json`` gives in ``VolumeTrigger``.
2. **Gradient artefact**: average artefact subtraction (Allen et al. 2000). The volumes are cut
   into epochs from each trigger to the next (``volume_epochs``: triggers alternating N and
   N + 1 samples apart, a TR not a whole number of samples without a SyncBox, are grouped by the
   phase they were sampled at); from each epoch the mean of the ``aas_window_volumes``
   surrounding epochs of its group (a moving template that follows slow changes) is subtracted,
   channel by channel (EEG, EOG and ECG), shifted to the epoch's own timing below a sample (one
   shift per volume, fitted on all channels). EEG before the first trigger and after the last
   volume (the scanner not running) carries no gradient artefact and is not touched.
3. **BCG** (``bcg``): R-peaks from the ECG channel, or from the EEG without one; then PCA-OBS
   (Niazy et al. 2005) on the EEG channels (over the whole recording: the BCG is the static
   field's, there before and after the volumes too).
4. **The volumes only** (``crop_to_volumes``): fMRI volume k is acquired at trigger k, so a run
   with volume triggers is cropped to them, from the first trigger (the run's t = 0) to the last
   volume's end; ``ScannerCleaning.time_zero`` says how much EEG came before.

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
import pandas as pd
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
#: Phases (samples) further apart than this are different phase groups of ``volume_epochs``.
PHASE_GAP = 0.1


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
    span : tuple of int or None
        The samples of the recording kept, ``[first, stop)``: from the first volume trigger to
        the last volume's end (None: not cropped, no volume triggers or ``gradient_artifact=off``).
        ``triggers`` and ``r_peaks`` count from the recording's start, before the crop.
    time_zero : float
        Seconds of EEG before the first volume trigger, cropped: the time in the EEG file of the
        run's t = 0 (the fMRI's first volume).
    """

    triggers: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    gradient: bool = False
    bcg: bool = False
    already_removed: list[str] = field(default_factory=list)
    r_peaks: np.ndarray | None = None
    r_peak_source: str | None = None
    seconds: float = 0.0
    measures: dict = field(default_factory=dict)
    span: tuple[int, int] | None = None
    time_zero: float = 0.0

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


@dataclass(frozen=True)
class VolumeEpochs:
    """How a run's volume triggers cut it into epochs for average artefact subtraction.

    Attributes
    ----------
    starts : numpy.ndarray
        Each epoch's first sample (its trigger; a doubled marker counts once).
    lengths : numpy.ndarray
        Samples each epoch cleans: up to the next trigger (at most ``window``); the last one as
        long as the other epochs of its group.
    window : int
        Samples of every epoch that go into the templates: the longest regular interval.
    groups : numpy.ndarray
        Each epoch's phase group: epochs sampled at the same phase of the scanner's clock,
        averaged only with each other (one group when the triggers are periodic to the sample).
    """

    starts: np.ndarray
    lengths: np.ndarray
    window: int
    groups: np.ndarray

    @property
    def span(self) -> tuple[int, int]:
        """First sample of the first volume and the sample after the last volume's end."""
        return int(self.starts[0]), int(self.starts[-1] + self.lengths[-1])


def volume_epochs(triggers: np.ndarray) -> VolumeEpochs:
    """Cut a run into volume epochs from its triggers, grouped by the phase they were sampled at.

    With a SyncBox the scanner's TR is a whole number of EEG samples and every interval is the
    same: one group, epochs one interval long. Without one, a TR that is not a whole number of
    samples puts the triggers alternately (or in another cycle) N and N + 1 samples apart, and
    the artefact of an epoch is the artefact of the volume sampled a fraction of a sample later
    or earlier: AAS with all epochs in one template would leave up to half a sample's change of
    the artefact. The phase of each trigger (its time on the line fitted through all of them,
    less its sample) sorts the epochs into groups sampled at the same phase (gaps over
    ``PHASE_GAP`` samples between groups); each epoch's template is then built from its own group
    only, and is exact for an exactly periodic artefact. Phases spread over the whole sample (a
    fractional part of the TR with a long cycle) make one group, left to the sub-sample
    alignment of ``average_artifact_subtraction``; so do irregular triggers (an interval more
    than a sample off the median: a missing or extra trigger), epochs one median interval long
    as before.

    Parameters
    ----------
    triggers : numpy.ndarray
        Volume-trigger samples, at least ``MIN_VOLUMES``.

    Returns
    -------
    VolumeEpochs

    Raises
    ------
    ValueError
        Fewer than ``MIN_VOLUMES`` triggers.
    """
    triggers = np.sort(np.asarray(triggers, dtype=np.int64))
    if len(triggers) < MIN_VOLUMES:
        raise ValueError(f"average artefact subtraction needs at least {MIN_VOLUMES} triggers, got {len(triggers)}")
    length = int(np.median(np.diff(triggers)))
    triggers = triggers[np.concatenate([[True], np.diff(triggers) > length // 2])]  # a doubled marker counts once
    steps = np.diff(triggers)
    one_group = np.zeros(len(triggers), dtype=np.int64)
    if len(steps) == 0 or steps.min() == steps.max() or np.abs(steps - np.median(steps)).max() > 1:
        return VolumeEpochs(triggers, np.full(len(triggers), length), length, one_group)
    k = np.arange(len(triggers), dtype=np.float64)
    period, zero = np.polyfit(k, triggers.astype(np.float64), 1)
    phase = zero + period * k - triggers
    order = np.argsort(phase)
    groups = np.empty(len(triggers), dtype=np.int64)
    groups[order] = np.concatenate([[0], np.cumsum(np.diff(phase[order]) > PHASE_GAP)])
    if np.bincount(groups).min() < MIN_VOLUMES:  # too few epochs to average per phase
        groups = one_group
    window = int(steps.max())
    own = np.append(steps, 0)
    last = groups[-1]
    same = own[:-1][groups[:-1] == last]
    own[-1] = int(np.median(same)) if len(same) else window  # the last volume lasts as its group's do
    return VolumeEpochs(triggers, own, window, groups)


def average_artifact_subtraction(
    data: np.ndarray, triggers: np.ndarray, n_template: int = 20, align: bool = True
) -> np.ndarray:
    """Remove a trigger-locked artefact by average artefact subtraction (Allen et al. 2000).

    The epochs and their phase groups are those of ``volume_epochs``: each epoch less the mean
    of the ``n_template`` epochs of its group around it (a moving template). With ``align``, each
    epoch's template is also shifted by a fraction of a sample, one shift per epoch for all
    channels (a volume starts when it starts, on every lead): the least-squares coefficient of
    the template's derivative in what subtraction leaves, i.e. the first-order Taylor term of a
    time shift (FASTR aligns the same way, by upsampling). The scanner's and the amplifier's
    clocks are never exactly locked; a shift of 10 us leaves ~-35 dB of a 100 Hz component
    unaligned.

    Parameters
    ----------
    data : numpy.ndarray
        ``[n_channels, n_times]`` or ``[n_times]``.
    triggers : numpy.ndarray
        Volume starts (samples). Only the volumes are cleaned: the EEG before the first trigger
        and after the last volume's end (the scanner not running) is left as it is, and so is an
        epoch whose template window would run past the end of the recording.
    n_template : int
        Epochs averaged into each epoch's template: the ones of its group around it, not itself
        (fewer when the group has fewer).
    align : bool
        Shift the templates to each epoch's timing (below a sample).

    Returns
    -------
    numpy.ndarray
        A cleaned copy, the shape and dtype of ``data``.

    Raises
    ------
    ValueError
        Fewer than ``MIN_VOLUMES`` triggers.
    """
    out = np.array(data, dtype=np.float64, copy=True)
    rows = out.reshape(-1, out.shape[-1])
    epochs_of = volume_epochs(triggers)
    length = epochs_of.window
    fits = epochs_of.starts + length <= rows.shape[1]
    starts, own, groups = epochs_of.starts[fits], epochs_of.lengths[fits], epochs_of.groups[fits]
    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    if any(len(m) < 2 for m in members):  # the recording ends before a group has two epochs
        members = [np.arange(len(starts))]
    windows = []  # per group: its epochs, and the window of n_avg + 1 epochs holding each
    for m in members:
        n_avg = min(n_template, len(m) - 1)
        lo = np.clip(np.arange(len(m)) - n_avg // 2, 0, len(m) - n_avg - 1)
        windows.append((m, lo, lo + n_avg + 1, n_avg))
    index = starts[:, None] + np.arange(length)[None, :]
    cleans = np.arange(length)[None, :] < own[:, None]  # each epoch cleans up to the next trigger
    freqs = np.fft.rfftfreq(length)

    def templates(row: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        epochs = row[index]  # [n_ep, length]
        template = np.empty_like(epochs)
        for m, lo, hi, n_avg in windows:
            csum = np.vstack([np.zeros(length), np.cumsum(epochs[m], axis=0)])
            template[m] = (csum[hi] - csum[lo] - epochs[m]) / n_avg
        # derivative per sample, spectrally: an epoch is one period of the artefact
        slope = np.fft.irfft(np.fft.rfft(template, axis=1) * (2j * np.pi * freqs), n=length, axis=1)
        return epochs, template, slope

    n_ep = len(starts)
    shift = np.zeros(n_ep)
    if align:  # pass 1: one shift per epoch, from every channel
        num, den = np.zeros(n_ep), np.zeros(n_ep)
        for row in rows:
            epochs, template, slope = templates(row)
            slope = slope * cleans  # fitted on the samples the epoch cleans
            num += np.einsum("et,et->e", epochs - template, slope)
            den += np.einsum("et,et->e", slope, slope)
        shift = np.divide(num, den, out=np.zeros(n_ep), where=den > 0)
    for row in rows:
        epochs, template, slope = templates(row)
        row[index[cleans]] = (epochs - template - shift[:, None] * slope)[cleans]
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
    if has_triggers and config.gradient_artifact != "off":
        crop_to_volumes(raw, result)
    result.seconds = time.perf_counter() - start
    return result


def events_from_first_volume(events: pd.DataFrame, result: ScannerCleaning, events_path: Path | None,
                             eeg_path: Path) -> pd.DataFrame:  # fmt: skip
    """A run's events on its clock once cropped to the volumes (t = 0 at the first trigger).

    BIDS counts an EEG ``_events.tsv`` from the EEG file's first sample, a ``func`` one from the
    first volume: the EEG's own (the file beside ``eeg_path``) move back by
    ``result.time_zero``, the target's stay as they are.

    Parameters
    ----------
    events : pandas.DataFrame
        ``onset``, ``duration``, ``trial_type`` as ``bids.read_events`` reads them.
    result : ScannerCleaning
        The run's cleaning (``time_zero``).
    events_path : Path or None
        The events file read (None: no file, the whole run is one event).
    eeg_path : Path
        The EEG file.

    Returns
    -------
    pandas.DataFrame
        ``events`` itself when nothing moves, else a shifted copy.
    """
    if not result.time_zero or events_path is None or Path(events_path).parent != Path(eeg_path).parent:
        return events
    return events.assign(onset=events["onset"] - result.time_zero)


def crop_to_volumes(raw: mne.io.BaseRaw, result: ScannerCleaning) -> None:
    """Keep the volumes of an in-scanner run: from the first trigger to the last volume's end.

    fMRI volume k is acquired at trigger k, so the run's t = 0 is the first trigger: EEG recorded
    before the scanner started (or after it stopped) has no fMRI to pair with, and the loader
    pairs EEG and target by time from the start of each. Sets ``result.span`` and
    ``result.time_zero``; the recording is cropped in place (its annotations with it).

    Parameters
    ----------
    raw : mne.io.BaseRaw
        The run, preloaded, at the sampling rate its triggers count in.
    result : ScannerCleaning
        The run's cleaning, its ``triggers`` found.
    """
    first, stop = volume_epochs(result.triggers).span
    stop = min(stop, raw.n_times)  # a recording stopped inside the last volume keeps what it has
    if first > 0 or stop < raw.n_times:
        sfreq = raw.info["sfreq"]
        raw.crop(tmin=first / sfreq, tmax=(stop - 1) / sfreq, include_tmax=True)
        if raw.n_times != stop - first:  # crop converts times to samples by rounding: it must land on them
            raise RuntimeError(f"cropping to the volumes kept {raw.n_times} samples, not {stop - first}")
    result.span, result.time_zero = (first, stop), first / raw.info["sfreq"]


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
