"""EEG: cortical rhythms whose power follows the latent activity, through the lead field.

Each of the 324 cortical parcels carries three rhythms (alpha, beta, gamma). A rhythm is a
narrow-band carrier ``Re(a(t) exp(2j pi f0 t))`` with a slow complex amplitude ``a(t)``; its
envelope follows the parcel's activity ``u``: ``|a| ~ exp(k u)``. The couplings ``k`` belong to the
population's ``physiology.Physiology`` (``rhythms``): by default ``k < 0`` for alpha and beta
(event-related desynchronisation) and ``k > 0`` for gamma; the same activity drives BOLD, so the
couplings set the map from scalp band power to BOLD.

Two facts make this cheap. The lead field is linear and all parcels share the subject's peak
frequency, so the sum over parcels is taken on the slow amplitudes at the latent rate
(``gain @ a``, per electrode rather than per source). And a carrier at ``f0`` only shifts the
amplitude's spectrum by ``f0``: the shifted spectra of all rhythms, the aperiodic background and
the electrode drift are placed into one spectrum at the recording rate and inverted with a single
FFT per electrode.

The aperiodic 1/f background (amplitude and exponent from the ``Physiology``) comes from
independent parcel sources, drawn with the exact sensor covariance ``G diag(q^2) G^T``. On top:
electrode drift, eye blinks, 50 Hz mains and amplifier noise. Output is average-referenced, in
volts.

``expected_band_power`` gives, for the same run, the power each rhythm is expected to have at
each electrode (the lead field applied to the latent activity, without estimation noise): the
simulator writes it to ``derivatives/ground_truth`` for the EEG-informed ceiling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import fft as sp_fft

from fedneurogen.simulations.geometry import load_cortex
from fedneurogen.simulations.latent import LatentActivity
from fedneurogen.simulations.physiology import DEFAULT, Physiology, SubjectPhysiology, complex_baseband

LINE_FREQ = 50.0


@dataclass(frozen=True)
class Rhythm:
    name: str
    bandwidth_hz: float  # std of the spectral peak
    coupling: float  # envelope = exp(coupling * activity)
    moment_nam: float  # parcel dipole moment amplitude (nAm) at rest, before the spatial profile


# (name, bandwidth_hz, moment_nam) of each rhythm; its coupling is the physiology's.
RHYTHM_SHAPES = (("alpha", 1.0, 40.0), ("beta", 3.0, 18.0), ("gamma", 3.5, 6.0))


def rhythms(physiology: Physiology = DEFAULT) -> tuple[Rhythm, ...]:
    """Return the rhythms with the couplings of ``physiology``.

    Parameters
    ----------
    physiology : Physiology
        The population (``alpha_coupling``, ``beta_coupling``, ``gamma_coupling``).

    Returns
    -------
    tuple of Rhythm
        Alpha, beta and gamma, in that order.
    """
    return tuple(Rhythm(name, bw, physiology.coupling(name), nam) for name, bw, nam in RHYTHM_SHAPES)


# The default physiology's rhythms: alpha and beta desynchronise with activity (classic ERD), gamma rises.
RHYTHMS = rhythms(DEFAULT)
DRIFT_UV = 4.0  # electrode (skin-potential) drift, below 0.5 Hz
AMPLIFIER_UV = 1.5


def rhythm_profiles() -> dict[str, np.ndarray]:
    """Relative rest amplitude of each rhythm per parcel (where a rhythm is generated).

    Alpha is strongest over occipito-parietal cortex (plus the central mu rhythm), beta over
    sensorimotor cortex, gamma is everywhere.
    """
    cortex = load_cortex()
    centre = cortex.parcel_mean(cortex.mid)
    y, z = centre[:, 1], centre[:, 2]
    posterior = 1.0 / (1.0 + np.exp((y + 55.0) / 8.0))
    central = np.exp(-0.5 * ((y + 18.0) / 15.0) ** 2) * (z > 30.0)
    return {
        "alpha": 0.1 + posterior + 0.5 * central,
        "beta": 0.3 + central,
        "gamma": np.ones_like(y),
    }


def parcel_activity(latent: LatentActivity) -> np.ndarray:
    """Latent activity averaged within each cortical parcel, ``[324, n_times]`` at the latent rate."""
    return load_cortex().parcel_mean(latent.spatial.astype(np.float64)) @ latent.temporal


def rhythm_moment(
    rhythm: Rhythm,
    phys: SubjectPhysiology,
    activity: np.ndarray,
    profiles: dict[str, np.ndarray],
    alpha_tone: np.ndarray | None = None,
) -> np.ndarray:
    """Envelope of ``rhythm`` per parcel, ``[324, n_times]`` dipole moment in A m:
    ``moment * strength * profile_p * exp(coupling * activity_p(t) [+ tone(t), alpha only])``
    (``alpha_tone``: ``LatentActivity.alpha_tone``, at least as long as ``activity``)."""
    strength = phys.alpha_strength if rhythm.name == "alpha" else 1.0
    moment = 1e-9 * rhythm.moment_nam * strength * profiles[rhythm.name][:, None]
    exponent = rhythm.coupling * activity
    if rhythm.name == "alpha" and alpha_tone is not None:
        exponent = exponent + alpha_tone[: activity.shape[-1]]
    return moment * np.exp(exponent)


def _peak(phys: SubjectPhysiology, rhythm: Rhythm) -> float:
    return {"alpha": phys.alpha_peak_hz, "beta": phys.beta_peak_hz, "gamma": phys.gamma_peak_hz}[rhythm.name]


def _random_spectrum(rng: np.random.Generator, n_series: int, shape: np.ndarray, n_out: int) -> np.ndarray:
    """Random rfft coefficients whose inverse has power spectrum ``shape**2`` and unit variance."""
    scale = n_out / (2.0 * np.sqrt(np.sum(shape**2)))
    spec = np.empty((n_series, len(shape)), dtype=np.complex64)
    spec.real = rng.standard_normal(spec.shape, dtype=np.float32)
    spec.imag = rng.standard_normal(spec.shape, dtype=np.float32)
    return spec * (scale * shape).astype(np.float32)


def simulate_eeg(
    rng: np.random.Generator,
    latent: LatentActivity,
    phys: SubjectPhysiology,
    parcel_gain: np.ndarray,
    positions_mm: np.ndarray,
    sfreq: float,
    duration: float,
    noise_level: float = 1.0,
    physiology: Physiology = DEFAULT,
) -> np.ndarray:
    """One run of EEG, ``[n_channels, duration * sfreq]`` in volts (average reference).

    ``parcel_gain`` is the ``[n_channels, 324]`` lead field of the parcels (V per A m);
    ``duration`` must be a whole number of latent samples (the simulator uses whole seconds).
    ``physiology`` gives the rhythms' couplings and the aperiodic background.
    """
    n_ch = parcel_gain.shape[0]
    n_out = int(round(duration * sfreq))
    n_lat = latent.n_times
    spectrum = np.zeros((n_ch, n_out // 2 + 1), dtype=np.complex64)  # rfft bins, df = 1/duration

    # Rhythms: y(t) = Re(X(t) exp(2j pi f0 t)) with X = gain @ (envelope * a). Bin m of X's DFT
    # lands on output bin m + f0 * duration, scaled by n_out / (2 n_lat).
    activity = parcel_activity(latent)  # [324, T]
    profiles = rhythm_profiles()
    m = np.rint(sp_fft.fftfreq(n_lat) * n_lat).astype(int)
    for rhythm in rhythms(physiology):
        envelope = rhythm_moment(rhythm, phys, activity, profiles, latent.alpha_tone).astype(np.float32)
        amp = complex_baseband(rng, len(envelope), n_lat, latent.sfreq, rhythm.bandwidth_hz)
        sensor_amp = parcel_gain.astype(np.float32) @ (envelope * amp)  # [n_ch, T], summed over parcels
        q = m + int(round(_peak(phys, rhythm) * duration))
        keep = (q > 0) & (q < spectrum.shape[1])
        spectrum[:, q[keep]] += (n_out / (2.0 * n_lat)) * sp_fft.fft(sensor_amp, axis=1)[:, keep]

    # Aperiodic background: independent parcel sources through the lead field. Drawing sensor
    # series with the same covariance G diag(q^2) G^T is exact and cheap; its spectrum is
    # dominated by a few spatial components, so components beyond 99.9% of the power are dropped.
    freqs = sp_fft.rfftfreq(n_out, 1.0 / sfreq)
    cov = (1e-9 * physiology.eeg_background_nam) ** 2 * (parcel_gain @ parcel_gain.T)
    w, v = np.linalg.eigh(cov)
    w, v = np.clip(w[::-1], 0.0, None), v[:, ::-1]
    rank = int(np.searchsorted(np.cumsum(w) / w.sum(), 0.999)) + 1
    mixing = (v[:, :rank] * np.sqrt(w[:rank])).astype(np.complex64)
    shape = np.where(freqs > 0, np.maximum(freqs, 0.5), np.inf) ** (-physiology.eeg_background_exponent / 2.0)
    spectrum += mixing @ _random_spectrum(rng, rank, shape, n_out)
    # Electrode drift: independent per electrode, 1/f^2 below 0.5 Hz (only those bins are drawn).
    slow = (freqs > 0) & (freqs <= 0.5)
    drift_shape = np.where(slow, 1.0 / np.maximum(freqs, 1e-3), 0.0)
    spectrum[:, slow] += (noise_level * DRIFT_UV * 1e-6) * _random_spectrum(rng, n_ch, drift_shape[slow], n_out)
    # Mains: one line per electrode at 50 Hz, with its own amplitude and phase.
    line_bin = int(round(LINE_FREQ * duration))
    if line_bin < spectrum.shape[1]:
        line = rng.uniform(0.2e-6, 2.0e-6, size=n_ch) * np.exp(1j * rng.uniform(0, 2 * np.pi, size=n_ch))
        spectrum[:, line_bin] += noise_level * (n_out / 2.0) * line

    eeg = sp_fft.irfft(spectrum, n=n_out, axis=1)
    eeg += noise_level * blinks(rng, positions_mm, sfreq, n_out)
    eeg += noise_level * amplifier_noise(rng, n_ch, sfreq, n_out)
    eeg -= eeg.mean(axis=0, keepdims=True)  # average reference
    return eeg.astype(np.float32)


def expected_band_power(
    latent: LatentActivity,
    phys: SubjectPhysiology,
    parcel_gain: np.ndarray,
    sfreq_out: float = 1.0,
    physiology: Physiology = DEFAULT,
) -> tuple[np.ndarray, list[str]]:
    """Natural log of the expected power (V^2) of each rhythm at each electrode, in time bins.

    Returns ``values [n_channels, n_rhythms, n_bins]`` (float64) and the rhythm names
    (``alpha``, ``beta``, ``gamma``, the order of ``RHYTHMS``). ``physiology`` must be the one
    the EEG was simulated with (its couplings shape the envelopes ``m_p``).

    In ``simulate_eeg`` electrode ``c`` carries rhythm ``r`` as ``Re(X_c(t) exp(2j pi f0 t))`` with
    ``X_c = sum_p g_cp m_p(t) a_p(t)``: ``g`` the lead field, ``m_p`` the parcel's envelope
    (``rhythm_moment``) and ``a_p`` independent circular complex amplitudes of unit mean power.
    Cross-parcel terms vanish in expectation, so ``E|X_c|^2 = sum_p g_cp^2 m_p(t)^2``, and the real
    signal carries half of it::

        P_c(t) = 0.5 * sum_p g_cp^2 m_p(t)^2

    The recorded EEG is average-referenced, a linear map of the channels, so ``g`` here is the
    average-referenced lead field ``G - mean_c G``. ``P`` is the rhythm's own power: no
    spectral-estimation noise (the finite-sample fluctuation of ``a_p``), no aperiodic background,
    artifacts or sensor noise, and no other rhythm leaking into a frequency band.

    Bin ``k`` averages ``P`` over the latent samples in ``[k, k + 1) / sfreq_out`` s, so it is
    centred at ``(k + 0.5) / sfreq_out`` s (0.5 s, 1.5 s, ... on the default 1 Hz grid); a
    trailing partial bin is dropped. ``latent.sfreq / sfreq_out`` must be a whole number.
    """
    per_bin = latent.sfreq / sfreq_out
    if per_bin < 1 or not np.isclose(per_bin, round(per_bin)):
        raise ValueError(f"sfreq_out={sfreq_out} must divide the latent rate {latent.sfreq} Hz")
    per_bin = int(round(per_bin))
    n_bins = latent.n_times // per_bin
    gain_sq = (parcel_gain - parcel_gain.mean(axis=0, keepdims=True)) ** 2  # average reference, then square
    activity = parcel_activity(latent)[:, : n_bins * per_bin]
    profiles = rhythm_profiles()
    values = np.empty((parcel_gain.shape[0], len(RHYTHMS), n_bins))
    for i, rhythm in enumerate(rhythms(physiology)):
        # The lead field is linear in m_p^2, so bin-average at the parcels first (324 rows, not
        # n_channels): the matrix product then runs on n_bins columns instead of n_times.
        moment_sq = rhythm_moment(rhythm, phys, activity, profiles, latent.alpha_tone) ** 2
        binned = moment_sq.reshape(len(moment_sq), n_bins, per_bin).mean(axis=2)
        values[:, i] = np.log(0.5 * (gain_sq @ binned))
    return values, [r.name for r in RHYTHMS]


def expected_source_power(
    latent: LatentActivity, phys: SubjectPhysiology, sfreq_out: float = 1.0, physiology: Physiology = DEFAULT
) -> np.ndarray:
    """Natural log of the power each rhythm has at each cortical parcel, in time bins.

    The same bins as ``expected_band_power`` but before the lead field: ``0.5 m_p(t)^2`` of every
    parcel ``p`` (its dipole moment's envelope, ``rhythm_moment``), bin-averaged. What a perfect
    inverse would recover of the rhythms: the features of the source-space EEG-informed ceiling.

    Returns
    -------
    np.ndarray
        ``[324, n_rhythms, n_bins]`` float64, rhythms in the order of ``RHYTHMS``.
    """
    per_bin = int(round(latent.sfreq / sfreq_out))
    n_bins = latent.n_times // per_bin
    activity = parcel_activity(latent)[:, : n_bins * per_bin]
    profiles = rhythm_profiles()
    values = np.empty((activity.shape[0], len(RHYTHMS), n_bins))
    for i, rhythm in enumerate(rhythms(physiology)):
        moment_sq = rhythm_moment(rhythm, phys, activity, profiles, latent.alpha_tone) ** 2
        values[:, i] = np.log(0.5 * moment_sq.reshape(len(moment_sq), n_bins, per_bin).mean(axis=2))
    return values


def blinks(rng: np.random.Generator, positions_mm: np.ndarray, sfreq: float, n_times: int) -> np.ndarray:
    """Eye blinks (volts): ~300 ms bumps every ~4 s, falling off with distance from the eyes."""
    eyes = np.array([[-32.0, 62.0, -38.0], [32.0, 62.0, -38.0]])
    dist = np.min(np.linalg.norm(positions_mm[:, None, :] - eyes[None], axis=2), axis=1)
    topography = np.exp(-(dist - dist.min()) / 30.0).astype(np.float32)
    train = np.zeros(n_times, dtype=np.float32)
    width = int(0.3 * sfreq)
    bump = np.hanning(width)
    onsets = np.cumsum(rng.exponential(4.0, size=int(n_times / sfreq / 2) + 2))
    for onset in onsets[onsets < n_times / sfreq - 0.5]:
        i = int(onset * sfreq)
        train[i : i + width] += rng.uniform(60e-6, 120e-6) * bump
    return np.outer(topography, train)


def amplifier_noise(rng: np.random.Generator, n_ch: int, sfreq: float, n_times: int) -> np.ndarray:
    """White amplifier noise (volts), at the recording rate."""
    return (AMPLIFIER_UV * 1e-6) * rng.standard_normal((n_ch, n_times), dtype=np.float32)
