"""Physiology: haemodynamic response, subject/group physiology and the noise processes.

Groups and demographics shift physiology the way the literature reports it: a slower,
smaller haemodynamic response and a slower alpha rhythm (group ``B``, older age), a slightly
faster alpha rhythm in women. These shifts are what a fairness analysis later has to cope with.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import numpy as np
from scipy import fft as sp_fft
from scipy import signal

# Group effects: HRF time-scale factor, HRF amplitude factor, alpha peak shift (Hz).
GROUP_EFFECTS = {
    "A": {"hrf_latency": 1.00, "hrf_amplitude": 1.00, "alpha_shift": 0.0},
    "B": {"hrf_latency": 1.12, "hrf_amplitude": 0.80, "alpha_shift": -1.0},
}


@dataclass(frozen=True)
class SubjectPhysiology:
    """Per-subject physiological parameters (drawn once per subject)."""

    hrf_latency_scale: float  # time-stretch of the canonical HRF (1 = Glover, peak ~5 s)
    bold_amplitude: float  # BOLD % signal change per unit neural activity
    hbo_amplitude: float  # HbO change (uM) per unit neural activity
    alpha_peak_hz: float
    beta_peak_hz: float
    gamma_peak_hz: float
    alpha_strength: float  # relative alpha source amplitude (alpha is a strong individual trait)

    @property
    def hrf_peak_s(self) -> float:
        return hrf_peak_time(self.hrf_latency_scale)

    def to_dict(self) -> dict:
        return {**asdict(self), "hrf_peak_s": round(self.hrf_peak_s, 3)}


def draw_physiology(rng: np.random.Generator, group: str, sex: str, age: int) -> SubjectPhysiology:
    """Draw one subject's physiology from its group, sex and age."""
    eff = GROUP_EFFECTS[group]
    older = (age - 40.0) / 20.0  # ~[-1, 1.5] over the simulated age range
    latency = eff["hrf_latency"] * (1.0 + 0.03 * older) * np.exp(rng.normal(0.0, 0.04))
    amplitude = eff["hrf_amplitude"] * (1.0 - 0.05 * older) * np.exp(rng.normal(0.0, 0.15))
    alpha = 10.2 + eff["alpha_shift"] + (0.3 if sex == "F" else 0.0) - 0.3 * older + rng.normal(0.0, 0.35)
    return SubjectPhysiology(
        hrf_latency_scale=float(np.clip(latency, 0.85, 1.3)),
        bold_amplitude=float(2.2 * amplitude),
        hbo_amplitude=float(1.4 * amplitude),
        alpha_peak_hz=float(np.clip(alpha, 8.0, 12.0)),
        beta_peak_hz=float(rng.uniform(18.0, 22.0)),
        gamma_peak_hz=float(rng.uniform(38.0, 42.0)),
        alpha_strength=float(np.exp(rng.normal(0.0, 0.25))),
    )


# ----------------------------------------------------------------------------------------------
# Haemodynamic response


@functools.lru_cache(maxsize=1)
def _glover_fine() -> tuple[np.ndarray, float]:
    from nilearn.glm.first_level import glover_hrf

    dt = 0.01
    return glover_hrf(t_r=1.0, oversampling=int(round(1.0 / dt)), time_length=40.0), dt


def hrf(sfreq: float, latency_scale: float = 1.0, length_s: float = 32.0) -> np.ndarray:
    """Canonical (Glover, nilearn) HRF sampled at ``sfreq``, stretched in time by ``latency_scale``.

    Normalised to unit sum, so a sustained activity of 1 convolves to a plateau of 1 and
    amplitudes keep their meaning.
    """
    fine, dt = _glover_fine()
    t = np.arange(int(round(length_s * sfreq))) / sfreq
    kernel = np.interp(t / latency_scale, np.arange(len(fine)) * dt, fine, right=0.0)
    return kernel / kernel.sum()


def hrf_peak_time(latency_scale: float = 1.0) -> float:
    """Time (s) of the HRF maximum for a given latency scale."""
    k = hrf(100.0, latency_scale)
    return float(np.argmax(k) / 100.0)


def convolve_causal(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Causal convolution along the last axis, output as long as ``x``."""
    return signal.fftconvolve(x, kernel[None, :] if x.ndim == 2 else kernel, mode="full", axes=-1)[..., : x.shape[-1]]


# ----------------------------------------------------------------------------------------------
# Noise processes (all return zero-mean, unit-variance series unless stated)


def colored_noise(
    rng: np.random.Generator,
    n_series: int,
    n_times: int,
    sfreq: float,
    exponent: float = 1.0,
    f_min: float | None = None,
    f_max: float | None = None,
) -> np.ndarray:
    """Gaussian noise with power spectrum ``1/f**exponent`` between ``f_min`` and ``f_max``."""
    n_fft = sp_fft.next_fast_len(n_times, real=True)  # run lengths often have large prime factors
    freqs = sp_fft.rfftfreq(n_fft, 1.0 / sfreq)
    f_min = f_min if f_min is not None else sfreq / n_fft
    shape = np.zeros_like(freqs)
    band = freqs >= f_min
    if f_max is not None:
        band &= freqs <= f_max
    shape[band] = freqs[band] ** (-exponent / 2.0)
    spec = (rng.standard_normal((n_series, len(freqs))) + 1j * rng.standard_normal((n_series, len(freqs)))) * shape
    x = sp_fft.irfft(spec, n=n_fft, axis=1)[:, :n_times]
    x -= x.mean(axis=1, keepdims=True)
    return x / np.maximum(x.std(axis=1, keepdims=True), 1e-12)


def complex_baseband(
    rng: np.random.Generator, n_series: int, n_times: int, sfreq: float, bandwidth_hz: float
) -> np.ndarray:
    """Complex Gaussian noise with a Gaussian spectrum of std ``bandwidth_hz`` around 0 Hz.

    Multiplied by ``exp(2j pi f0 t)`` it becomes a narrow-band rhythm at ``f0`` whose spectral
    peak has that width; its modulus is the rhythm's amplitude envelope (mean power 1).
    """
    n_fft = sp_fft.next_fast_len(n_times)
    freqs = sp_fft.fftfreq(n_fft, 1.0 / sfreq)
    shape = np.exp(-0.25 * (freqs / bandwidth_hz) ** 2)  # amplitude -> power std = bandwidth
    spec = np.empty((n_series, n_fft), dtype=np.complex64)
    spec.real = rng.standard_normal(spec.shape, dtype=np.float32)
    spec.imag = rng.standard_normal(spec.shape, dtype=np.float32)
    z = sp_fft.ifft(spec * shape.astype(np.float32), axis=1)[:, :n_times]
    return z / np.sqrt(np.mean(z.real**2 + z.imag**2, axis=1, keepdims=True))


def ar1(rng: np.random.Generator, n_series: int, n_times: int, phi: float) -> np.ndarray:
    """Stationary unit-variance AR(1) series ``x_t = phi x_{t-1} + e_t``."""
    e = rng.standard_normal((n_series, n_times), dtype=np.float32) * np.float32(np.sqrt(1.0 - phi**2))
    e[:, 0] = rng.standard_normal(n_series, dtype=np.float32)  # start in the stationary distribution
    return signal.lfilter([1.0], [1.0, -phi], e, axis=1)


def drift_basis(n_times: int, sfreq: float, period_cutoff_s: float = 128.0) -> np.ndarray:
    """Discrete cosine regressors slower than ``period_cutoff_s`` (SPM's drift model), unit RMS."""
    duration = n_times / sfreq
    n_basis = max(1, int(np.floor(2.0 * duration / period_cutoff_s)))
    t = (np.arange(n_times) + 0.5) / n_times
    return np.array([np.sqrt(2.0) * np.cos(np.pi * k * t) for k in range(1, n_basis + 1)])


def quasi_periodic(rng: np.random.Generator, n_times: int, sfreq: float, f0: float, jitter: float) -> np.ndarray:
    """A physiological rhythm (heart beat, breathing, Mayer wave) with wandering frequency.

    The instantaneous frequency random-walks slowly around ``f0`` by ``jitter`` (relative), so
    the rhythm is not a pure line in the spectrum. Unit amplitude.
    """
    wander = colored_noise(rng, 1, n_times, sfreq, exponent=2.0, f_max=0.05)[0]
    freq = f0 * (1.0 + jitter * wander)
    phase = 2.0 * np.pi * np.cumsum(freq) / sfreq + rng.uniform(0, 2 * np.pi)
    return np.sin(phase)
