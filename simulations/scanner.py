"""In-scanner EEG: the gradient artefact, the ballistocardiogram (BCG) and an ECG channel.

``simulate --scanner-artifacts`` adds them to the clean simulated EEG (``eeg.simulate_eeg``), as
an MR-compatible amplifier records them during EPI (Allen et al. 2000; Niazy et al. 2005):

- **gradient artefact**: every volume (``TR``) acquires ``n_slices`` slices in a slice window of
  ``TR - gap``; each slice switches the three gradient axes, whose ramps induce derivative-shaped
  pulses (a Gaussian derivative, as wide as the amplifier's anti-alias filter allows) in the lead
  loops. A channel sees its own mix of the three axes (it depends on where its lead runs), with a
  peak of hundreds to thousands of uV. The spectrum is the comb of the slice frequency and of the
  volume frequency. Each volume starts with a small timing jitter (a scanner and an EEG clock that
  are synchronised, to about 10 us) and a small amplitude change (0.1 %).
- **volume triggers**: one marker per volume at its (rounded) start sample, named ``R128`` as
  BrainVision Recorder writes the scanner's TTL pulse (``Response/R128`` once read by MNE; an EDF
  annotation ``R128``).
- **heartbeats**: RR intervals around the subject's rate with beat-to-beat variability (AR(1));
  an ECG channel with P-QRS-T waves (and its own share of the gradient artefact); a BCG per beat
  ~200 ms after the R-peak: three damped oscillations mixed per channel (a channel-dependent
  shape, tens to a couple of hundred uV), with a beat-to-beat amplitude, shape and latency change.

Every random draw comes from the generator the simulator passes, a stream of its own, so the
clean EEG and every other file are the same as without artefacts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from fedneurogen.shared.io import write_json_atomic

#: Marker name of a volume trigger (BrainVision ``Response`` 128).
TRIGGER_NAME = "R128"
N_SLICES = 30
SLICE_GAP_S = 0.1  # quiet time at the end of each TR (slices are acquired in TR - gap)
JITTER_S = 10e-6  # timing jitter of a volume's start (clocks synchronised, as with a SyncBox)
AMPLITUDE_JITTER = 0.001
RAMPS_PER_SLICE = 8  # gradient ramps per slice and axis
BCG_LAG_S = 0.2  # R-peak -> BCG onset
BCG_SCALE_V = 40e-6  # BCG size at the midline (x3 over the temporal leads)
BCG_LATENCY_JITTER_S = 0.005  # beat-to-beat changes of the BCG: latency (s), shape and amplitude (relative)
BCG_SHAPE_JITTER = 0.1
BCG_AMPLITUDE_JITTER = 0.1


@dataclass(frozen=True)
class ScannerSetup:
    """How the scanner and the amplifier were set up (``simulate --scanner-artifacts``).

    Attributes
    ----------
    lead_in_s : float
        Seconds of EEG recorded before the first volume (the scanner not yet running).
    lead_out_s : float
        Seconds of EEG recorded after the last volume.
    unsynced_clock : bool
        No SyncBox: each volume lasts half an EEG sample more than the TR, so the triggers
        alternate N and N + 1 samples apart.
    """

    lead_in_s: float = 0.0
    lead_out_s: float = 0.0
    unsynced_clock: bool = False

    def to_dict(self) -> dict:
        """The setup as ``simulation.json`` records it."""
        return {"lead_in_s": self.lead_in_s, "lead_out_s": self.lead_out_s, "unsynced_clock": self.unsynced_clock}


@dataclass(frozen=True)
class ScannerArtifacts:
    """The artefacts of one run and their ground truth.

    Attributes
    ----------
    gradient : numpy.ndarray
        ``[n_channels, n_times]`` gradient artefact (V) of the EEG channels.
    bcg : numpy.ndarray
        ``[n_channels, n_times]`` ballistocardiogram (V).
    ecg : numpy.ndarray
        ``[n_times]`` ECG channel (V), its gradient artefact included.
    volume_onsets : numpy.ndarray
        Volume start times (s), jitter included; the triggers are at their rounded samples.
    r_peaks : numpy.ndarray
        True R-peak times (s).
    n_slices : int
        Slices per volume.
    """

    gradient: np.ndarray
    bcg: np.ndarray
    ecg: np.ndarray
    volume_onsets: np.ndarray
    r_peaks: np.ndarray
    n_slices: int

    def raw(self, clean: np.ndarray) -> np.ndarray:
        """The EEG as the amplifier records it: ``clean`` plus both artefacts (V, float64).

        Parameters
        ----------
        clean : numpy.ndarray
            ``[n_channels, n_times]`` clean EEG (V).

        Returns
        -------
        numpy.ndarray
        """
        return clean.astype(np.float64) + self.gradient + self.bcg

    def trigger_onsets(self, sfreq: float) -> np.ndarray:
        """Volume-trigger times (s) on the sample grid, as the amplifier marks them.

        Parameters
        ----------
        sfreq : float
            Sampling rate, Hz.

        Returns
        -------
        numpy.ndarray
        """
        return np.round(self.volume_onsets * sfreq) / sfreq


def _pulses(times: np.ndarray, signs: np.ndarray, sfreq: float, n_times: int, width: float) -> np.ndarray:
    """Sum of Gaussian-derivative pulses (peak 1) at ``times`` with ``signs``, on the sample grid."""
    out = np.zeros(n_times)
    half = int(np.ceil(5 * width * sfreq)) + 1
    offsets = np.arange(-half, half + 1)
    centre = np.round(times * sfreq).astype(np.int64)
    idx = centre[:, None] + offsets[None, :]  # [n_pulses, window]
    tau = idx / sfreq - times[:, None]
    shape = -(tau / width) * np.exp(0.5 - 0.5 * (tau / width) ** 2)  # derivative of a Gaussian, peak 1
    ok = (idx >= 0) & (idx < n_times)
    np.add.at(out, idx[ok], (signs[:, None] * shape)[ok])
    return out


def gradient_axes(
    rng: np.random.Generator, volume_onsets: np.ndarray, tr: float, sfreq: float, n_times: int, n_slices: int
) -> np.ndarray:
    """The induced waveform of each gradient axis, ``[3, n_times]`` (peak ~1).

    Parameters
    ----------
    rng : numpy.random.Generator
        Draws the ramp pattern of a slice and each volume's amplitude change.
    volume_onsets : numpy.ndarray
        Start time of each volume (s).
    tr : float
        Repetition time (s).
    sfreq : float
        Sampling rate (Hz).
    n_times : int
        Samples of the run.
    n_slices : int
        Slices per volume.

    Returns
    -------
    numpy.ndarray
    """
    slice_s = (tr - SLICE_GAP_S) / n_slices
    width = max(0.4e-3, 3.0 / (np.pi * sfreq))  # the amplifier's anti-alias filter: ~-40 dB at Nyquist
    axes = np.zeros((3, n_times))
    for axis in range(3):
        ramps = np.sort(rng.uniform(0.02, 0.95, RAMPS_PER_SLICE)) * slice_s  # the same in every slice
        signs = np.where(np.arange(RAMPS_PER_SLICE) % 2 == 0, 1.0, -1.0) * rng.uniform(0.5, 1.0, RAMPS_PER_SLICE)
        in_volume = (np.arange(n_slices)[:, None] * slice_s + ramps[None, :]).ravel()
        gain = 1.0 + AMPLITUDE_JITTER * rng.standard_normal(len(volume_onsets))
        times = (volume_onsets[:, None] + in_volume[None, :]).ravel()
        amplitude = np.repeat(gain, in_volume.size) * np.tile(signs, n_slices * len(gain))
        axes[axis] = _pulses(times, amplitude, sfreq, n_times, width)
    return axes


def heartbeats(rng: np.random.Generator, duration: float) -> np.ndarray:
    """R-peak times (s) over ``duration``: 55-80 bpm with AR(1) beat-to-beat variability.

    Parameters
    ----------
    rng : numpy.random.Generator
        Draws the rate and the RR intervals.
    duration : float
        Length of the run (s).

    Returns
    -------
    numpy.ndarray
    """
    mean_rr = 60.0 / rng.uniform(55.0, 80.0)
    n = int(duration / (0.5 * mean_rr)) + 2
    dev = np.zeros(n)
    noise = rng.normal(0.0, 0.03, n)
    for i in range(1, n):
        dev[i] = 0.7 * dev[i - 1] + noise[i]
    rr = np.clip(mean_rr * (1.0 + dev), 0.45, 1.6)
    beats = rng.uniform(0.1, 0.6) + np.cumsum(rr)
    return beats[beats < duration - 0.05]


def _ecg(beats: np.ndarray, sfreq: float, n_times: int) -> np.ndarray:
    """P-QRS-T waves (V) at the R-peaks."""
    t = np.arange(n_times) / sfreq
    ecg = np.zeros(n_times)
    # (delay from the R-peak s, width s, amplitude V) of the P, Q, R, S and T waves
    waves = ((-0.16, 0.025, 0.15e-3), (-0.025, 0.008, -0.1e-3), (0.0, 0.010, 1.0e-3), (0.03, 0.010, -0.25e-3),
             (0.25, 0.045, 0.3e-3))  # fmt: skip
    for beat in beats:
        lo, hi = np.searchsorted(t, [beat - 0.3, beat + 0.5])
        tau = t[lo:hi] - beat
        for shift, width, amp in waves:
            ecg[lo:hi] += amp * np.exp(-0.5 * ((tau - shift) / width) ** 2)
    return ecg


def _bcg(
    rng: np.random.Generator, beats: np.ndarray, positions_mm: np.ndarray, sfreq: float, n_times: int
) -> np.ndarray:
    """Pulse-locked BCG (V): three damped oscillations, mixed per channel and varied per beat."""
    n_ch = len(positions_mm)
    lateral = np.abs(positions_mm[:, 0]) / max(np.abs(positions_mm[:, 0]).max(), 1e-9)
    scale = BCG_SCALE_V * (1.0 + 2.0 * lateral) * rng.uniform(0.7, 1.3, n_ch)  # larger over the temporal leads
    mixing = rng.normal(0.0, 1.0, (n_ch, 3)) * scale[:, None] / np.sqrt(3)
    tau = np.arange(int(0.6 * sfreq)) / sfreq
    basis = np.stack([np.sin(2 * np.pi * f * tau + ph) * np.exp(-tau / d) * (1 - np.exp(-tau / 0.02))
                      for f, ph, d in ((4.0, 0.0, 0.15), (6.5, 1.0, 0.10), (9.0, 2.0, 0.07))])  # fmt: skip
    out = np.zeros((n_ch, n_times))
    for beat in beats:
        start = int(round((beat + BCG_LAG_S + rng.normal(0.0, BCG_LATENCY_JITTER_S)) * sfreq))
        coef = mixing * (1.0 + BCG_SHAPE_JITTER * rng.standard_normal((1, 3))) * rng.normal(1.0, BCG_AMPLITUDE_JITTER)
        stop = min(start + basis.shape[1], n_times)
        if start < stop:
            out[:, start:stop] += (coef @ basis)[:, : stop - start]
    return out


def simulate_scanner_artifacts(
    rng: np.random.Generator,
    positions_mm: np.ndarray,
    sfreq: float,
    n_times: int,
    tr: float,
    n_volumes: int,
    start_s: float = 0.0,
    unsynced_clock: bool = False,
) -> ScannerArtifacts:
    """Draw the gradient artefact, heartbeats, BCG and ECG of one in-scanner run.

    Parameters
    ----------
    rng : numpy.random.Generator
        The run's artefact stream (nothing else draws from it).
    positions_mm : numpy.ndarray
        ``[n_channels, 3]`` electrode positions (mm): set each lead's gradient mix and BCG size.
    sfreq : float
        EEG sampling rate (Hz).
    n_times : int
        Samples of the run.
    tr : float
        Repetition time (s): one volume trigger per TR from t = 0.
    n_volumes : int
        Volumes acquired (the fMRI run's length).
    start_s : float
        Time of the first volume in the recording (s): the EEG recorded before the scanner
        started has the BCG and ECG but no gradient artefact. The defaults draw what they drew
        before the option existed.
    unsynced_clock : bool
        No SyncBox: the scanner's volumes come every ``tr`` plus half an EEG sample, from a
        quarter of a sample after ``start_s``, so the triggers (on the nearest sample) fall
        alternately N and N + 1 samples apart and every other volume is sampled half a sample
        later.

    Returns
    -------
    ScannerArtifacts
    """
    period, phase = (tr + 0.5 / sfreq, 0.25 / sfreq) if unsynced_clock else (tr, 0.0)
    onsets = np.arange(n_volumes) * period + rng.normal(0.0, JITTER_S, n_volumes)
    if start_s or phase:
        onsets = onsets + (start_s + phase)
    onsets = np.clip(onsets, 0.0, None)
    axes = gradient_axes(rng, onsets, period, sfreq, n_times, N_SLICES)
    n_ch = len(positions_mm)
    direction = positions_mm / np.maximum(np.linalg.norm(positions_mm, axis=1, keepdims=True), 1e-9)
    peak = rng.uniform(0.3e-3, 3.0e-3, n_ch)  # volts: hundreds to thousands of uV
    mix = (direction + rng.normal(0.0, 0.3, (n_ch, 3))) * peak[:, None]
    beats = heartbeats(rng, n_times / sfreq)
    ecg_mix = rng.normal(0.0, 1.0, 3) * 1.5e-3
    return ScannerArtifacts(
        gradient=mix @ axes,
        bcg=_bcg(rng, beats, positions_mm, sfreq, n_times),
        ecg=_ecg(beats, sfreq, n_times) + ecg_mix @ axes,
        volume_onsets=onsets,
        r_peaks=beats,
        n_slices=N_SLICES,
    )


def _mirrored(clean: np.ndarray, before: int, after: int) -> np.ndarray:
    """``clean`` with ``before`` / ``after`` samples of itself mirrored at each end: EEG-like
    signal continuous with the run, for the time the amplifier records outside the volumes."""
    if not before and not after:
        return clean
    if max(before, after) >= clean.shape[1]:
        raise ValueError(f"{max(before, after)} samples outside the volumes: more than the run's {clean.shape[1]}")
    head = clean[:, before:0:-1]
    tail = clean[:, -2 : -2 - after : -1] if after else clean[:, :0]
    return np.concatenate([head, clean, tail], axis=1)


def write_in_scanner_eeg(
    job, eeg: np.ndarray, events, duration: float, base: str, lead_in_s: float = 0.0, lead_out_s: float = 0.0,
    unsynced_clock: bool = False,
) -> ScannerArtifacts:  # fmt: skip
    """Write one run's raw in-scanner EEG under ``sub-*/eeg`` and its truth under the ground truth.

    The raw EEG: the clean EEG plus a gradient artefact per volume, a BCG per heartbeat, an
    ``ECG`` channel and ``R128`` volume triggers. The ground truth: the clean EEG, written
    exactly as without artefacts (the same bytes), and ``<base>_desc-scanner_events.tsv`` (the
    true volume onsets and R-peaks, by onset, in seconds of the raw recording; described in its
    ``.json``). The artefacts draw from a stream of their own (the seed, site, subject and 5):
    everything else is unchanged.

    Parameters
    ----------
    job : simulations.simulator.SubjectJob
        The subject: ``spec`` (channels, rate, format, TR, task, cap), ``site_dir``,
        ``participant``, ``seed``, ``site_index``, ``subject_index`` and ``positions_mm``.
    eeg : numpy.ndarray
        ``[n_channels, n_times]`` clean EEG (V): the run, t = 0 at the first volume.
    events : sequence of simulations.latent.Event
        The task's events (s from the first volume).
    duration : float
        The run's length (s): ``floor(duration / TR)`` volumes.
    base : str
        File name stem, ``sub-XX_task-YY_run-1``.
    lead_in_s : float
        Seconds the amplifier records before the first volume (EEG-like signal, the BCG and the
        ECG, no gradient artefact): the EEG file, its markers and its ``_events.tsv`` start that
        much earlier (BIDS: EEG events count from the EEG file's first sample). 0: as before.
    lead_out_s : float
        Seconds it records after the run's end.
    unsynced_clock : bool
        No SyncBox (``simulate_scanner_artifacts``); the recording then goes on until the last
        volume, which ends up to half a sample per volume later, is over.

    Returns
    -------
    ScannerArtifacts
        As drawn, over the whole recording (lead-in and lead-out included).
    """
    from dataclasses import replace

    from fedneurogen.simulations import bids_writer as bw

    spec, sub = job.spec, job.participant.participant_id
    sfreq = spec.eeg_sfreq
    rng = np.random.default_rng(np.random.SeedSequence(job.seed, spawn_key=(job.site_index, job.subject_index, 5)))
    n_volumes = int(np.floor(duration / spec.tr + 1e-9))
    before = int(round(lead_in_s * sfreq))
    after = int(round(lead_out_s * sfreq)) + (int(np.ceil(0.5 * n_volumes)) + 1 if unsynced_clock else 0)
    recorded = _mirrored(eeg, before, after)
    art = simulate_scanner_artifacts(
        rng, job.positions_mm, sfreq, recorded.shape[1], spec.tr, n_volumes, before / sfreq, unsynced_clock
    )
    shifted = [replace(e, onset=e.onset + before / sfreq) for e in events] if before else events
    common = (spec.eeg_channels, sfreq, spec.eeg_format)
    bw.write_eeg(
        job.site_dir / sub / "eeg", base, art.raw(recorded), *common, shifted, spec.task, spec.cap, ecg_v=art.ecg,
        triggers=art.trigger_onsets(sfreq),
        sidecar={"ScannerArtifactsRemoved": False, "VolumeTrigger": TRIGGER_NAME, "RepetitionTime": spec.tr},
    )  # fmt: skip
    truth = job.site_dir / "derivatives" / "ground_truth" / sub / "eeg"
    bw.write_eeg(truth, base, eeg, *common, events, spec.task, spec.cap)
    rows = sorted(
        [(t, "volume") for t in art.volume_onsets] + [(t, "R-peak") for t in art.r_peaks], key=lambda r: r[0]
    )  # by onset, as BIDS wants events (stable: a volume before a beat at the same time)
    bw.write_tsv(
        truth / f"{base}_desc-scanner_events.tsv", ("onset", "duration", "trial_type"),
        [(f"{t:.6f}", "0", kind) for t, kind in rows],
    )  # fmt: skip
    write_json_atomic(
        truth / f"{base}_desc-scanner_events.json",
        {
            "Description": "The simulator's truth about the raw in-scanner EEG: the start of each fMRI volume "
            "(timing jitter included; the R128 trigger is at its nearest sample) and each heartbeat's R-peak",
            "onset": {"Description": f"Seconds from the first sample of the raw EEG recording {sub}/eeg/{base}_eeg.*",
                      "Units": "s"},
            "trial_type": {"Description": "What happened", "Levels": {"volume": "an fMRI volume starts",
                                                                      "R-peak": "the R-peak of a heartbeat"}},
        },
    )  # fmt: skip
    return art
