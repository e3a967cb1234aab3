"""Haemodynamics: BOLD on fsaverage5 and fNIRS HbO/HbR, with and without noise.

Both follow the same neural activity through the subject's HRF (its latency and undershoot come
from the population's ``physiology.Physiology``, as do the BOLD noise levels). BOLD is sampled
every TR on every vertex; fNIRS integrates the cortex under each channel's sensitivity footprint at 10 Hz
and is turned into raw light intensity with the inverse modified Beer-Lambert law. The probe's
short-separation channels record the systemic (scalp) physiology that the long channels also
carry, without the cortical response, so a reader can regress it out.

Neurovascular coupling (``physiology.Coupling``, ``simulate --coupling``). ``linear`` (the
default): the HRF ``h`` convolves the latent activity ``u(v, t) = sum_r S[v, r] x_r(t)`` itself::

    BOLD%(v, t) = a * (h * u(v, .))(t)

``nonlinear``: the HRF convolves a drive ``d`` that saturates and is gated by its parcel's alpha state::

    A_p(t)  = k_alpha * u_p(t) + tau(t)                       parcel p's alpha state (log alpha envelope vs rest)
    z_p(t)  = (A_p(t) - mean_t A_p) / std_t A_p               ... standardised over the run
    G_p(t)  = g0 + (1 - g0) * sigmoid((-z_p(t) - theta) / w)  gate: opens as the local alpha desynchronises
    d(v, t) = tanh(u(v, t) / s) / tanh(1 / s) * G_p(v)(t)     saturated drive, gated by its parcel's alpha
    BOLD%(v, t) = a * (h * d(v, .))(t)

with ``u_p`` the activity of parcel ``p`` that its EEG rhythms follow (``eeg.parcel_activity``),
``p(v)`` the parcel of vertex ``v``, ``k_alpha`` the population's alpha coupling
(``Physiology.alpha_coupling``), ``tau`` a slow alpha tone independent of the activity (vigilance:
Brownian below ``alpha_tone_hz``, standard deviation ``alpha_tone_sd``, ``latent.alpha_tone``; it
multiplies every parcel's alpha envelope by ``exp(tau)``, so the EEG shows it) and ``s``, ``theta``,
``w``, ``g0`` the coupling's ``saturation``,
``gate_threshold``, ``gate_width``, ``gate_floor`` (``theta`` and ``w`` in standard deviations of
the alpha state, so the gate works for any task and alpha coupling). The drive is scaled so that
``u = 1`` (a task response) through an open gate drives BOLD as under ``linear``: stronger
activity saturates, and activity while the local alpha is not desynchronised by more than about
``theta`` standard deviations barely reaches BOLD (alpha as gating by inhibition), a soft
threshold no linear map of band power can follow. The gamma band follows ``u`` (``k_gamma > 0``), so the gamma-linked drive is scaled by a sigmoid
of the negative alpha state: one band gates another. Because the tone ``tau`` moves the gate
independently of ``u``, the same activity drives BOLD in a low-alpha stretch and hardly at all in a
high-alpha one: a product of two EEG-visible states, which no linear map of band power represents
(the activity alone sets the gate of the coupling without ``tau``, a monotone map a linear one
follows closely). HbO/HbR follow the same drive. The EEG is made as under ``linear`` except for
the tone on alpha, so every quantity of the map is EEG-derivable: the simulator
writes the map's output at the parcels as a ``drive`` rhythm of the expected power
(``expected_drive_power``), the true map's features for the EEG-informed ceiling. The HRF's
shape and amplitude do not depend on the baseline state.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import signal

from fedneurogen.shared.metrics import pearson_rows
from fedneurogen.simulations.eeg import RHYTHMS, parcel_activity, rhythm_moment, rhythm_profiles, rhythms
from fedneurogen.simulations.geometry import MotorProbe, load_cortex
from fedneurogen.simulations.latent import LatentActivity
from fedneurogen.simulations.physiology import (
    DEFAULT,
    LINEAR,
    Coupling,
    Physiology,
    SubjectPhysiology,
    ar1,
    colored_noise,
    convolve_causal,
    drift_basis,
    hrf,
    quasi_periodic,
)


def _sample_at(x: np.ndarray, sfreq: float, times: np.ndarray) -> np.ndarray:
    """Values of the rows of ``x`` (sampled at ``sfreq``) at ``times`` (linear interpolation)."""
    grid = np.arange(x.shape[-1]) / sfreq
    return np.array([np.interp(times, grid, row) for row in x])


# ----------------------------------------------------------------------------------------------
# Neurovascular coupling (equations in the module docstring)

VERTEX_CHUNK = 2048  # vertices per block of the nonlinear drive (bounds memory on long runs)


def alpha_state(latent: LatentActivity, physiology: Physiology = DEFAULT) -> np.ndarray:
    """Return every parcel's alpha state ``A_p(t) = k_alpha * u_p(t) + tone(t)`` at the latent rate.

    Parameters
    ----------
    latent : LatentActivity
        The run's activity.
    physiology : Physiology
        Gives ``k_alpha`` (``alpha_coupling``).

    Returns
    -------
    numpy.ndarray
        ``[324, n_times]``: each parcel's log alpha envelope relative to rest (negative: desynchronised).
    """
    state = physiology.alpha_coupling * parcel_activity(latent)
    return state if latent.alpha_tone is None else state + latent.alpha_tone


def drive_gate(state: np.ndarray, coupling: Coupling) -> np.ndarray:
    """Return the gate ``G = g0 + (1 - g0) * sigmoid((-z - theta) / w)`` of an alpha state ``A`` (z: standardised).

    Parameters
    ----------
    state : numpy.ndarray
        The alpha states (``alpha_state``), ``[..., n_times]``, each standardised over time.
    coupling : Coupling
        Gives ``theta``, ``w`` and ``g0``.

    Returns
    -------
    numpy.ndarray
        The gate, in ``[g0, 1]``, shaped like ``state``.
    """
    z = (state - state.mean(axis=-1, keepdims=True)) / np.maximum(state.std(axis=-1, keepdims=True), 1e-12)
    opening = 1.0 / (1.0 + np.exp((z + coupling.gate_threshold) / coupling.gate_width))
    return coupling.gate_floor + (1.0 - coupling.gate_floor) * opening


def neurovascular_drive(activity: np.ndarray, gate: np.ndarray, coupling: Coupling) -> np.ndarray:
    """Return the drive ``d = tanh(u / s) / tanh(1 / s) * G`` the HRF sees (``activity`` itself under ``linear``).

    Parameters
    ----------
    activity : numpy.ndarray
        ``u``, ``[..., n_times]`` (vertices or parcels).
    gate : numpy.ndarray
        ``G`` (``drive_gate``) of each row's parcel, shaped like ``activity``.
    coupling : Coupling
        Gives ``s``.

    Returns
    -------
    numpy.ndarray
        The drive, shaped like ``activity``.
    """
    if not coupling.nonlinear:
        return activity
    s = coupling.saturation
    return np.tanh(activity / s) / np.tanh(1.0 / s) * gate


def _vertex_drive(latent: LatentActivity, coupling: Coupling, physiology: Physiology):
    """Yield ``(vertex slice, drive [n, n_times])`` block by block, the drive at every vertex."""
    gate = drive_gate(alpha_state(latent, physiology), coupling)  # [324, n_times]
    parcel = load_cortex().parcel
    n_v = latent.spatial.shape[0]
    for start in range(0, n_v, VERTEX_CHUNK):
        rows = slice(start, min(start + VERTEX_CHUNK, n_v))
        activity = latent.spatial[rows].astype(np.float64) @ latent.temporal
        yield rows, neurovascular_drive(activity, gate[parcel[rows]], coupling)


def _sampling_matrix(n_times: int, sfreq: float, times: np.ndarray) -> np.ndarray:
    """``[n_times, len(times)]`` linear-interpolation weights: ``x @ W`` is ``_sample_at(x, sfreq, times)``."""
    weights = np.zeros((n_times, len(times)))
    pos = np.clip(times * sfreq, 0.0, n_times - 1)
    low = np.floor(pos).astype(int)
    high = np.minimum(low + 1, n_times - 1)
    frac = pos - low
    cols = np.arange(len(times))
    np.add.at(weights, (low, cols), 1.0 - frac)
    np.add.at(weights, (high, cols), frac)
    return weights


def expected_drive_power(
    latent: LatentActivity,
    phys: SubjectPhysiology,
    parcel_gain: np.ndarray,
    coupling: Coupling,
    sfreq_out: float = 1.0,
    physiology: Physiology = DEFAULT,
) -> np.ndarray:
    """Natural log of the expected power of a ``drive`` rhythm: the true coupling's output as EEG features.

    The gamma rhythm's expected scalp power (``eeg.expected_band_power``) with the parcel activity
    ``u_p`` replaced by the parcel drive ``d_p = neurovascular_drive(u_p, G)``: the true map applied
    to the EEG-derivable quantities, in the feature space of the EEG-informed ceiling (with the
    parcel's own activity for ``u``: within-parcel detail is beyond EEG). Under ``linear`` it equals
    the gamma column.

    Parameters
    ----------
    latent : LatentActivity
        The run's activity.
    phys : SubjectPhysiology
        The subject's physiology.
    parcel_gain : numpy.ndarray
        ``[n_channels, 324]`` lead field the EEG was written through.
    coupling : Coupling
        The coupling the target was made with.
    sfreq_out : float
        Bins per second (must divide the latent rate).
    physiology : Physiology
        The population (gamma and alpha couplings).

    Returns
    -------
    numpy.ndarray
        ``[n_channels, 1, n_bins]`` in ln V^2, binned like ``eeg.expected_band_power``.
    """
    per_bin = int(round(latent.sfreq / sfreq_out))
    n_bins = latent.n_times // per_bin
    gate = drive_gate(alpha_state(latent, physiology), coupling)
    drive = neurovascular_drive(parcel_activity(latent), gate, coupling)[:, : n_bins * per_bin]
    gamma = rhythms(physiology)[[r.name for r in RHYTHMS].index("gamma")]
    moment_sq = rhythm_moment(gamma, phys, drive, rhythm_profiles()) ** 2
    binned = moment_sq.reshape(len(moment_sq), n_bins, per_bin).mean(axis=2)
    gain_sq = (parcel_gain - parcel_gain.mean(axis=0, keepdims=True)) ** 2
    return np.log(0.5 * (gain_sq @ binned))[:, None, :]


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
    physiology: Physiology = DEFAULT,
    coupling: Coupling = LINEAR,
) -> BoldRun:
    """BOLD of one run on all 20484 fsaverage5 vertices, acquired at ``t = k * TR``.

    The noise (thermal, physiological AR(1), global signal, drift) has the levels and AR
    coefficients of ``physiology`` (``Physiology.bold_*``, % signal change at ``noise_level`` 1);
    ``clean`` is the same run without it, so the noise ceiling follows the physiology.
    ``coupling`` is the neurovascular coupling (module docstring); ``linear`` convolves the
    factored components (fast), ``nonlinear`` the drive of every vertex, block by block. The
    random draws are the same under both.
    """
    kernel = hrf(latent.sfreq, phys.hrf_latency_scale, undershoot_ratio=phys.hrf_undershoot_ratio)
    if coupling.nonlinear:
        sampling = _sampling_matrix(latent.n_times, latent.sfreq, np.arange(n_tr) * tr)
        signal_pct = np.empty((latent.spatial.shape[0], n_tr), dtype=np.float32)
        for rows, drive in _vertex_drive(latent, coupling, physiology):
            signal_pct[rows] = phys.bold_amplitude * (convolve_causal(drive, kernel) @ sampling)
    else:
        responses = _sample_at(convolve_causal(latent.temporal, kernel), latent.sfreq, np.arange(n_tr) * tr)
        signal_pct = phys.bold_amplitude * (latent.spatial @ responses.astype(np.float32))

    n_v = signal_pct.shape[0]
    p = physiology
    noise = p.bold_thermal * rng.standard_normal((n_v, n_tr), dtype=np.float32)
    noise += p.bold_physio * ar1(rng, n_v, n_tr, p.bold_physio_ar)
    noise += p.bold_global * rng.uniform(0.5, 1.5, size=(n_v, 1)) * ar1(rng, 1, n_tr, p.bold_global_ar)
    drift = drift_basis(n_tr, 1.0 / tr)
    noise += p.bold_drift * (rng.standard_normal((n_v, len(drift))) / np.sqrt(len(drift))) @ drift
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
    coupling: Coupling = LINEAR,
    physiology: Physiology = DEFAULT,
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

    ``coupling`` is the neurovascular coupling (module docstring): under ``nonlinear`` HbO and HbR
    follow the drive under each channel's footprint; ``physiology`` gives its alpha coupling.
    """
    times = np.arange(n_times) / sfreq
    channel_maps = probe.sensitivity @ latent.spatial.astype(np.float64)  # [ch, components]
    undershoot = phys.hrf_undershoot_ratio
    hbo_kernel = hrf(latent.sfreq, phys.hrf_latency_scale, undershoot_ratio=undershoot)
    hbr_kernel = hrf(latent.sfreq, phys.hrf_latency_scale * HBR_LATENCY, undershoot_ratio=undershoot)
    hbo_resp = _sample_at(convolve_causal(latent.temporal, hbo_kernel), latent.sfreq, times)
    hbr_resp = _sample_at(convolve_causal(latent.temporal, hbr_kernel), latent.sfreq, times)
    if coupling.nonlinear:
        drive = sum(probe.sensitivity[:, rows] @ d for rows, d in _vertex_drive(latent, coupling, physiology))
        hbo = phys.hbo_amplitude * _sample_at(convolve_causal(drive, hbo_kernel), latent.sfreq, times)
        hbr = HBR_RATIO * phys.hbo_amplitude * _sample_at(convolve_causal(drive, hbr_kernel), latent.sfreq, times)
    else:
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
