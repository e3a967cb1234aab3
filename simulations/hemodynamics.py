"""Haemodynamics: BOLD on fsaverage5 and fNIRS HbO/HbR, with and without noise.

Both follow the same neural activity through the subject's HRF. BOLD is sampled every TR on
every vertex; fNIRS integrates the cortex under each channel's sensitivity footprint at 10 Hz
and is turned into raw light intensity with the inverse modified Beer-Lambert law. The probe's
short-separation channels record the systemic (scalp) physiology that the long channels also
carry, without the cortical response, so a reader can regress it out.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import signal

from fedneurogen.shared.metrics import pearson_rows
from fedneurogen.simulations.geometry import MotorProbe, load_cortex
from fedneurogen.simulations.latent import LatentActivity
from fedneurogen.simulations.physiology import (
    SubjectPhysiology,
    ar1,
    colored_noise,
    convolve_causal,
    drift_basis,
    hrf,
    quasi_periodic,
)

# BOLD noise in % signal change at noise_level 1: ~0.9% in all, a tSNR of ~110 (unsmoothed
# surface data at 3 T).
BOLD_THERMAL = 0.6
BOLD_PHYSIO = 0.45  # AR(1), aliased cardiac/respiratory and vasomotion
BOLD_PHYSIO_AR = 0.5
BOLD_GLOBAL = 0.3  # shared across the brain (the "global signal")
BOLD_DRIFT = 0.4  # scanner drift, slower than 1/128 Hz


def _sample_at(x: np.ndarray, sfreq: float, times: np.ndarray) -> np.ndarray:
    """Values of the rows of ``x`` (sampled at ``sfreq``) at ``times`` (linear interpolation)."""
    grid = np.arange(x.shape[-1]) / sfreq
    return np.array([np.interp(times, grid, row) for row in x])


@dataclass
class BoldRun:
    noisy: np.ndarray  # float32 [20484, n_tr], scanner units (baseline ~ 600-1000)
    clean: np.ndarray  # float32 [20484, n_tr], same baseline, no noise
    active_r: np.ndarray  # Pearson r(noisy, clean) over time at the task-active vertices


def simulate_bold(
    rng: np.random.Generator,
    latent: LatentActivity,
    phys: SubjectPhysiology,
    tr: float,
    n_tr: int,
    noise_level: float = 1.0,
) -> BoldRun:
    """BOLD of one run on all 20484 fsaverage5 vertices, acquired at ``t = k * TR``."""
    kernel = hrf(latent.sfreq, phys.hrf_latency_scale)
    responses = _sample_at(convolve_causal(latent.temporal, kernel), latent.sfreq, np.arange(n_tr) * tr)
    signal_pct = phys.bold_amplitude * (latent.spatial @ responses.astype(np.float32))

    n_v = signal_pct.shape[0]
    noise = BOLD_THERMAL * rng.standard_normal((n_v, n_tr), dtype=np.float32)
    noise += BOLD_PHYSIO * ar1(rng, n_v, n_tr, BOLD_PHYSIO_AR)
    noise += BOLD_GLOBAL * rng.uniform(0.5, 1.5, size=(n_v, 1)) * ar1(rng, 1, n_tr, 0.8)
    drift = drift_basis(n_tr, 1.0 / tr)
    noise += BOLD_DRIFT * (rng.standard_normal((n_v, len(drift))) / np.sqrt(len(drift))) @ drift
    noise *= noise_level

    baseline = _baseline_map(rng)[:, None]
    clean = baseline * (1.0 + signal_pct / 100.0)
    noisy = baseline * (1.0 + (signal_pct + noise) / 100.0)
    active = latent.active_vertices
    return BoldRun(
        noisy=noisy.astype(np.float32),
        clean=clean.astype(np.float32),
        active_r=pearson_rows(noisy[active], clean[active]),
    )


def _baseline_map(rng: np.random.Generator) -> np.ndarray:
    """Mean image intensity per vertex: smooth coil-sensitivity-like variation around 800."""
    cortex = load_cortex()
    centres = rng.choice(len(cortex.mid), size=6, replace=False)
    field = sum(
        rng.uniform(-1, 1) * np.exp(-np.sum((cortex.mid - cortex.mid[c]) ** 2, axis=1) / (2 * 50.0**2)) for c in centres
    )
    return 800.0 + 150.0 * field


# ----------------------------------------------------------------------------------------------
# fNIRS

WAVELENGTHS = (760, 850)  # nm
PPF = 6.0  # partial pathlength factor (the loader's and MNE's default)
HBR_RATIO = -0.3  # HbR moves opposite to HbO, about a third as much
HBR_LATENCY = 1.15  # ... and slightly later


@functools.lru_cache(maxsize=1)
def extinction_coefficients() -> np.ndarray:
    """Molar absorption ``[n_wavelengths, 2]`` (HbO, HbR) at ``WAVELENGTHS``, as MNE uses it.

    Read from the table MNE ships (Prahl, omlc.org) and interpolated as MNE does, so the
    inverse law here and ``mne.preprocessing.nirs.beer_lambert_law`` are exact inverses.
    """
    import mne
    from scipy.io import loadmat

    table = loadmat(Path(mne.__file__).parent / "data" / "extinction_coef.mat")["extinct_coef"]
    ext = np.array(
        [[np.interp(w, table[:, 0], table[:, 1]), np.interp(w, table[:, 0], table[:, 2])] for w in WAVELENGTHS]
    )
    # Decadic molar extinction per cm -> natural-log absorption per mm: ln(10) / 10 = 0.2303.
    return ext * 0.2303


def hb_to_optical_density(hbo_um: np.ndarray, hbr_um: np.ndarray, distances_mm: np.ndarray) -> np.ndarray:
    """Modified Beer-Lambert law: ``dOD[channel, wavelength, t]`` from HbO/HbR changes (uM).

    ``dOD = E * d * PPF * dc`` with the same units as MNE (distance in m, concentration in M,
    and MNE's factor 1e3), so MNE's ``beer_lambert_law`` recovers the input exactly.
    """
    ext = extinction_coefficients()  # [wl, 2]
    conc = np.stack([hbo_um, hbr_um], axis=1) * 1e-6  # [ch, 2, t] in M
    path = (distances_mm / 1000.0 * PPF)[:, None, None]  # [ch, 1, 1]
    return np.einsum("wk,ckt->cwt", ext, conc) * path * 1e3


def optical_density_to_hb(od: np.ndarray, distances_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of ``hb_to_optical_density`` (what MNE's ``beer_lambert_law`` computes), in uM."""
    ext_inv = np.linalg.pinv(extinction_coefficients())  # [2, wl]
    path = (distances_mm / 1000.0 * PPF)[:, None, None]
    conc = np.einsum("kw,cwt->ckt", ext_inv, od / path) * 1e-3 * 1e6
    return conc[:, 0], conc[:, 1]


def nirs_bandpass(x: np.ndarray, sfreq: float) -> np.ndarray:
    """The loader's haemodynamic band-pass: 6th-order zero-phase Butterworth, 0.01-0.1 Hz."""
    sos = signal.butter(6, [0.01, 0.1], btype="bandpass", fs=sfreq, output="sos")
    return signal.sosfiltfilt(sos, x, axis=-1)


#: Short channels: the systemic signal reaches them with a gain like the long channels' (the
#: scalp carries most of it), plus a little physiology of their own and the same kind of drift.
SHORT_LOCAL_NOISE = 0.1
SHORT_SHOT_NOISE = 1e-3  # OD; more light comes back over 8 mm than over 35 mm


@dataclass
class NirsRun:
    intensity: np.ndarray  # [n_channels, 2, n_times] raw light intensity (a.u.) of the long channels
    hbo: np.ndarray  # [n_channels, n_times] noise-free HbO (uM)
    hbr: np.ndarray  # noise-free HbR (uM)
    active_r: np.ndarray  # r(measured HbO, true HbO) after band-pass, at task-active channels
    short_intensity: np.ndarray | None = None  # [n_short, 2, n_times] raw intensity of the short channels


def simulate_nirs(
    rng: np.random.Generator,
    latent: LatentActivity,
    phys: SubjectPhysiology,
    probe: MotorProbe,
    sfreq: float,
    n_times: int,
    noise_level: float = 1.0,
) -> NirsRun:
    """fNIRS of one run at ``sfreq``: true HbO/HbR under each channel, and the raw intensity a
    device would record (systemic physiology, drift, motion and shot noise included).

    The probe's short channels get the same systemic waveform (cardiac, breathing, Mayer waves)
    with their own gain, no cortical response, and the same motion artefacts as the long
    channels of their source. Their random draws come after all the long channels' draws, so
    the long channels of a seed do not depend on the short ones.

    ``active_r`` is measured on the long channels as the loader sees them by default: HbO from
    the intensity, band-passed, with the nearest short channel regressed out where the probe
    has short channels (``fedneurogen.shared.data.fnirs.regress_short_channels``).
    """
    times = np.arange(n_times) / sfreq
    channel_maps = probe.sensitivity @ latent.spatial.astype(np.float64)  # [ch, components]
    hbo_resp = _sample_at(
        convolve_causal(latent.temporal, hrf(latent.sfreq, phys.hrf_latency_scale)), latent.sfreq, times
    )
    hbr_resp = _sample_at(
        convolve_causal(latent.temporal, hrf(latent.sfreq, phys.hrf_latency_scale * HBR_LATENCY)), latent.sfreq, times
    )
    hbo = phys.hbo_amplitude * channel_maps @ hbo_resp
    hbr = HBR_RATIO * phys.hbo_amplitude * channel_maps @ hbr_resp

    # Systemic physiology reaches every channel through the scalp and cortex (uM).
    n_ch = probe.n_channels
    gain = rng.uniform(0.6, 1.4, size=(n_ch, 1))
    cardiac = quasi_periodic(rng, n_times, sfreq, rng.uniform(1.0, 1.3), 0.05)
    breathing = quasi_periodic(rng, n_times, sfreq, rng.uniform(0.2, 0.3), 0.1)
    mayer = quasi_periodic(rng, n_times, sfreq, rng.uniform(0.08, 0.12), 0.15)
    systemic_wave = 0.6 * cardiac + 0.3 * breathing + 0.6 * mayer
    systemic = gain * systemic_wave
    local = 0.45 * colored_noise(rng, n_ch, n_times, sfreq, exponent=1.0, f_min=0.005, f_max=0.5)
    drift = 0.75 * colored_noise(rng, n_ch, n_times, sfreq, exponent=2.0, f_max=0.01)
    hbo_meas = hbo + noise_level * (systemic + local + drift)
    hbr_meas = hbr + noise_level * (0.35 * systemic + 0.4 * local + 0.4 * drift)

    # Light: intensity = coupling * exp(-dOD), with shot noise and a few motion artefacts.
    od = hb_to_optical_density(hbo_meas, hbr_meas, probe.distances)
    coupling = rng.uniform(0.2, 2.0, size=(n_ch, 1, 1)) * np.array([0.8, 1.2])[None, :, None]
    od += noise_level * 2e-3 * rng.standard_normal(od.shape)
    motion = []  # (source, start, width, jump): motion moves the optode, so it hits short channels too
    for _ in range(rng.poisson(max(n_times / sfreq / 120.0, 0.0))):
        source = rng.integers(len(probe.source_labels))
        start, width = int(rng.integers(n_times)), int(rng.uniform(0.5, 2.0) * sfreq)
        hit = probe.pairs[:, 0] == source
        jump = rng.uniform(0.02, 0.08)
        od[hit, :, start : start + width] += jump
        motion.append((source, start, width, jump))
    intensity = coupling * np.exp(-od)

    short_intensity = None
    if probe.n_short_channels:
        n_short = probe.n_short_channels
        short_gain = rng.uniform(0.6, 1.4, size=(n_short, 1))
        short_local = SHORT_LOCAL_NOISE * colored_noise(
            rng, n_short, n_times, sfreq, exponent=1.0, f_min=0.005, f_max=0.5
        )
        short_drift = 0.75 * colored_noise(rng, n_short, n_times, sfreq, exponent=2.0, f_max=0.01)
        short_hbo = noise_level * (short_gain * systemic_wave + short_local + short_drift)
        short_hbr = noise_level * (0.35 * short_gain * systemic_wave + 0.4 * short_local + 0.4 * short_drift)
        short_od = hb_to_optical_density(short_hbo, short_hbr, probe.short_distances)
        short_coupling = rng.uniform(0.5, 3.0, size=(n_short, 1, 1)) * np.array([0.8, 1.2])[None, :, None]
        short_od += noise_level * SHORT_SHOT_NOISE * rng.standard_normal(short_od.shape)
        for source, start, width, jump in motion:
            short_od[probe.short_pairs[:, 0] == source, :, start : start + width] += jump
        short_intensity = short_coupling * np.exp(-short_od)

    # Measured HbO the way the loader gets it by default: intensity -> OD -> HbO, band-passed,
    # the nearest short channel regressed out.
    hbo_back = nirs_bandpass(_intensity_to_hbo(intensity, probe.distances), sfreq)
    if short_intensity is not None:
        from fedneurogen.shared.data.fnirs import regress_short_channels

        short_back = nirs_bandpass(_intensity_to_hbo(short_intensity, probe.short_distances), sfreq)
        short_midpoints = 0.5 * (
            probe.source_pos[probe.short_pairs[:, 0]] + probe.detector_pos[probe.short_pairs[:, 1]]
        )
        hbo_back = regress_short_channels(hbo_back, short_back, probe.midpoints, short_midpoints)
    task = [i for i, name in enumerate(latent.names) if not name.startswith("spontaneous")]
    true_task = channel_maps[:, task] @ hbo_resp[task]
    evoked = np.std(true_task, axis=1)
    active = np.flatnonzero(evoked >= 0.5 * evoked.max())
    active_r = pearson_rows(hbo_back[active], nirs_bandpass(hbo[active], sfreq))
    return NirsRun(intensity=intensity, hbo=hbo, hbr=hbr, active_r=active_r, short_intensity=short_intensity)


def _intensity_to_hbo(intensity: np.ndarray, distances_mm: np.ndarray) -> np.ndarray:
    """HbO (uM) from raw intensity ``[channels, wavelengths, times]``, as the loader computes it."""
    od = -np.log(intensity / intensity.mean(axis=-1, keepdims=True))
    return optical_density_to_hb(od, distances_mm)[0]
