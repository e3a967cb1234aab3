"""Physiology: haemodynamic response, subject/group physiology and the noise processes.

Groups and demographics shift physiology the way the literature reports it: a slower,
smaller haemodynamic response and a slower alpha rhythm (group ``B``, older age), a slightly
faster alpha rhythm in women. These shifts are what a fairness analysis later has to cope with.

The population's own constants (the HRF's latency and undershoot, how strongly each EEG rhythm
follows the activity that drives BOLD, the BOLD and EEG noise) are one ``Physiology``, chosen per
dataset by name (``PHYSIOLOGIES``): ``DEFAULT``, the physiology the simulator has always had, or
``SHIFTED``, another plausible one, so that a prior fitted on default data can be tested on data
its simulator did not make. The instruments (``eeg``, ``hemodynamics``) receive it as an argument.

The neurovascular coupling is a separate choice, one ``Coupling`` (``COUPLINGS``: ``LINEAR``, the
default, or ``NONLINEAR``: a saturating drive gated by the local alpha state, equations in ``hemodynamics``).
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import numpy as np
from scipy import fft as sp_fft
from scipy import signal, stats

from fedneurogen.shared.errors import ConfigError

# Group effects: HRF time-scale factor, HRF amplitude factor, alpha peak shift (Hz).
GROUP_EFFECTS = {
    "A": {"hrf_latency": 1.00, "hrf_amplitude": 1.00, "alpha_shift": 0.0},
    "B": {"hrf_latency": 1.12, "hrf_amplitude": 0.80, "alpha_shift": -1.0},
}


#: Depth of the canonical (Glover, nilearn) HRF's undershoot: the weight of its undershoot gamma.
GLOVER_UNDERSHOOT_RATIO = 0.48


@dataclass(frozen=True)
class Physiology:
    """The population constants of one simulated physiology (the same for every subject of a dataset).

    Attributes
    ----------
    name : str
        The key in ``PHYSIOLOGIES`` (``fedneurogen simulate --physiology``).
    hrf_latency : float
        Time-stretch of everyone's HRF, on top of the group, age and subject factors of
        ``draw_physiology`` (1: the canonical HRF, peak ~5 s).
    hrf_undershoot_ratio : float
        Weight of the HRF's undershoot gamma relative to its peak gamma (Glover: 0.48), in [0, 1).
    alpha_coupling, beta_coupling, gamma_coupling : float
        Neurovascular coupling of each EEG rhythm: its envelope is ``exp(k * activity)`` of the
        same parcel activity that drives BOLD (``k < 0``: the rhythm desynchronises where BOLD
        rises). Together they set the map from scalp band power to BOLD.
    bold_thermal : float
        White (thermal) BOLD noise, % signal change at noise level 1.
    bold_physio, bold_physio_ar : float
        Physiological BOLD noise (aliased cardiac/respiratory, vasomotion): AR(1) std and coefficient.
    bold_global, bold_global_ar : float
        The global signal shared across the brain: std (times a per-vertex gain 0.5-1.5) and AR(1) coefficient.
    bold_drift : float
        Scanner drift slower than 1/128 Hz, % signal change.
    eeg_background_nam, eeg_background_exponent : float
        Aperiodic EEG background: parcel source amplitude (nAm rms) and spectral exponent (power ~ 1/f^x).
    """

    name: str
    hrf_latency: float
    hrf_undershoot_ratio: float
    alpha_coupling: float
    beta_coupling: float
    gamma_coupling: float
    bold_thermal: float
    bold_physio: float
    bold_physio_ar: float
    bold_global: float
    bold_global_ar: float
    bold_drift: float
    eeg_background_nam: float
    eeg_background_exponent: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.hrf_undershoot_ratio < 1.0:  # at 1 the unit-sum HRF would divide by ~0
            raise ValueError(f"hrf_undershoot_ratio must be in [0, 1), got {self.hrf_undershoot_ratio}")

    def coupling(self, rhythm: str) -> float:
        """Return the coupling ``k`` of ``rhythm`` (``alpha``, ``beta`` or ``gamma``).

        Parameters
        ----------
        rhythm : str
            The rhythm's name.

        Returns
        -------
        float
            Its envelope is ``exp(k * activity)``.
        """
        return {"alpha": self.alpha_coupling, "beta": self.beta_coupling, "gamma": self.gamma_coupling}[rhythm]

    def to_dict(self) -> dict:
        """Return the parameters as a JSON-ready dict (``simulation.json``'s ``physiology_parameters``).

        Returns
        -------
        dict
            Every field, and the resulting HRF peak time (s) of a group-A subject at 40.
        """
        return {**asdict(self), "hrf_peak_s": round(hrf_peak_time(self.hrf_latency, self.hrf_undershoot_ratio), 3)}


#: The physiology the simulator has always had: alpha and beta desynchronise with activity (ERD),
#: gamma rises; ~0.9 % BOLD noise in all, a tSNR of ~110 (unsmoothed surface data at 3 T).
DEFAULT = Physiology(
    name="default",
    hrf_latency=1.0,
    hrf_undershoot_ratio=GLOVER_UNDERSHOOT_RATIO,
    alpha_coupling=-1.5,
    beta_coupling=-0.5,
    gamma_coupling=0.9,
    bold_thermal=0.6,
    bold_physio=0.45,
    bold_physio_ar=0.5,
    bold_global=0.3,
    bold_global_ar=0.8,
    bold_drift=0.4,
    eeg_background_nam=30.0,
    eeg_background_exponent=1.6,
)

#: Another population, for testing what was fitted on ``DEFAULT`` on data its simulator did not
#: make: a 20 % slower HRF with a shallower undershoot; alpha nearly decoupled from the activity
#: behind BOLD, beta synchronising with it instead of desynchronising, gamma twice as coupled, so
#: the band-power -> BOLD map changes in weight and sign (a ridge fitted on default data scores
#: ~25 % lower on shifted subjects than one fitted on shifted data); noisier, more autocorrelated
#: BOLD (a tSNR of ~85) and a stronger, steeper EEG background.
SHIFTED = Physiology(
    name="shifted",
    hrf_latency=1.2,
    hrf_undershoot_ratio=0.3,
    alpha_coupling=-0.2,
    beta_coupling=1.0,
    gamma_coupling=1.8,
    bold_thermal=0.75,
    bold_physio=0.6,
    bold_physio_ar=0.75,
    bold_global=0.4,
    bold_global_ar=0.9,
    bold_drift=0.5,
    eeg_background_nam=40.0,
    eeg_background_exponent=1.9,
)

PHYSIOLOGIES = {p.name: p for p in (DEFAULT, SHIFTED)}


@dataclass(frozen=True)
class Coupling:
    """The neurovascular coupling from latent activity to the haemodynamic drive (``simulate --coupling``).

    ``linear``: the HRF sees the activity itself (the simulator's original coupling). ``nonlinear``:
    it sees a saturated drive gated by the alpha state of its parcel (equations in ``hemodynamics``,
    module docstring), so a linear map from EEG band power to BOLD is no longer enough.

    Attributes
    ----------
    name : str
        The key in ``COUPLINGS``.
    nonlinear : bool
        Whether the saturation and the alpha gate apply.
    saturation : float
        ``s`` of ``tanh(u / s) / tanh(1 / s)``: activity well above ``s`` saturates (a task response is ~1).
    gate_threshold, gate_width : float
        Alpha desynchronisation (``-z``: the run's standardised alpha state, ``hemodynamics.alpha_state``,
        in standard deviations) at which the gate is half open, and how fast it opens (sigmoid scale).
    gate_floor : float
        The gate's value when fully closed (in [0, 1)): a synchronised alpha state lets this share through.
    alpha_tone_sd, alpha_tone_hz : float
        A slow alpha state independent of the activity (vigilance; ``latent.alpha_tone``): its
        standard deviation in natural-log units of the alpha envelope and its highest frequency
        (Hz). The gate reads it with the activity, so a linear map of band power cannot follow
        the drive: the same activity drives BOLD or not depending on it (0: no such state).
    """

    name: str
    nonlinear: bool
    saturation: float = 0.3
    gate_threshold: float = 1.0
    gate_width: float = 0.25
    gate_floor: float = 0.05
    alpha_tone_sd: float = 0.0
    alpha_tone_hz: float = 0.05

    def to_dict(self) -> dict:
        """Return the parameters as a JSON-ready dict (``simulation.json``'s ``coupling_parameters``).

        Returns
        -------
        dict
            Every field (the linear coupling: its name only, no parameter applies).
        """
        return asdict(self) if self.nonlinear else {"name": self.name, "nonlinear": False}


LINEAR = Coupling(name="linear", nonlinear=False)
NONLINEAR = Coupling(name="nonlinear", nonlinear=True, alpha_tone_sd=1.0)
COUPLINGS = {c.name: c for c in (LINEAR, NONLINEAR)}


def get_coupling(name: str) -> Coupling:
    """Return the neurovascular coupling called ``name``.

    Parameters
    ----------
    name : str
        A key of ``COUPLINGS`` (``linear`` or ``nonlinear``).

    Returns
    -------
    Coupling
        Its parameters.

    Raises
    ------
    ConfigError
        When ``name`` is not a known coupling.
    """
    if name not in COUPLINGS:
        raise ConfigError(f"coupling must be one of {', '.join(COUPLINGS)}, got {name!r}")
    return COUPLINGS[name]


def get_physiology(name: str) -> Physiology:
    """Return the physiology called ``name``.

    Parameters
    ----------
    name : str
        A key of ``PHYSIOLOGIES``.

    Returns
    -------
    Physiology
        Its constants.

    Raises
    ------
    ConfigError
        When ``name`` is not a known physiology.
    """
    if name not in PHYSIOLOGIES:
        raise ConfigError(f"physiology must be one of {', '.join(PHYSIOLOGIES)}, got {name!r}")
    return PHYSIOLOGIES[name]


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
    hrf_undershoot_ratio: float = GLOVER_UNDERSHOOT_RATIO  # the population's (Physiology.hrf_undershoot_ratio)

    @property
    def hrf_peak_s(self) -> float:
        return hrf_peak_time(self.hrf_latency_scale, self.hrf_undershoot_ratio)

    def to_dict(self) -> dict:
        return {**asdict(self), "hrf_peak_s": round(self.hrf_peak_s, 3)}


def draw_physiology(
    rng: np.random.Generator, group: str, sex: str, age: int, physiology: Physiology = DEFAULT
) -> SubjectPhysiology:
    """Draw one subject's physiology from its group, sex and age.

    Parameters
    ----------
    rng : numpy.random.Generator
        The subject's physiology stream.
    group : str
        ``A`` or ``B`` (``GROUP_EFFECTS``).
    sex : str
        ``F`` or ``M``.
    age : int
        Years.
    physiology : Physiology
        The population; its ``hrf_latency`` stretches the subject's HRF latency (and its bounds).

    Returns
    -------
    SubjectPhysiology
        The subject's parameters (the same draws for every physiology).
    """
    eff = GROUP_EFFECTS[group]
    older = (age - 40.0) / 20.0  # ~[-1, 1.5] over the simulated age range
    latency = eff["hrf_latency"] * (1.0 + 0.03 * older) * np.exp(rng.normal(0.0, 0.04))
    amplitude = eff["hrf_amplitude"] * (1.0 - 0.05 * older) * np.exp(rng.normal(0.0, 0.15))
    alpha = 10.2 + eff["alpha_shift"] + (0.3 if sex == "F" else 0.0) - 0.3 * older + rng.normal(0.0, 0.35)
    return SubjectPhysiology(
        hrf_latency_scale=float(physiology.hrf_latency * np.clip(latency, 0.85, 1.3)),
        bold_amplitude=float(2.2 * amplitude),
        hbo_amplitude=float(1.4 * amplitude),
        alpha_peak_hz=float(np.clip(alpha, 8.0, 12.0)),
        beta_peak_hz=float(rng.uniform(18.0, 22.0)),
        gamma_peak_hz=float(rng.uniform(38.0, 42.0)),
        alpha_strength=float(np.exp(rng.normal(0.0, 0.25))),
        hrf_undershoot_ratio=physiology.hrf_undershoot_ratio,
    )


# ----------------------------------------------------------------------------------------------
# Haemodynamic response


@functools.lru_cache(maxsize=4)
def _glover_fine(undershoot_ratio: float = GLOVER_UNDERSHOOT_RATIO) -> tuple[np.ndarray, float]:
    dt = 0.01
    if undershoot_ratio == GLOVER_UNDERSHOOT_RATIO:  # nilearn's own kernel, as the simulator always used
        from nilearn.glm.first_level import glover_hrf

        return glover_hrf(t_r=1.0, oversampling=int(round(1.0 / dt)), time_length=40.0), dt
    # Glover's difference of gammas (nilearn's grid and parameters) with another undershoot weight.
    t = np.linspace(0.0, 40.0, int(round(40.0 / dt)))
    kernel = stats.gamma.pdf(t, 6.0 / 0.9, loc=dt, scale=0.9) - undershoot_ratio * stats.gamma.pdf(
        t, 12.0 / 0.9, loc=dt, scale=0.9
    )
    return kernel / kernel.sum(), dt


def hrf(
    sfreq: float,
    latency_scale: float = 1.0,
    length_s: float = 32.0,
    undershoot_ratio: float = GLOVER_UNDERSHOOT_RATIO,
) -> np.ndarray:
    """Canonical (Glover, nilearn) HRF sampled at ``sfreq``, stretched in time by ``latency_scale``.

    Normalised to unit sum, so a sustained activity of 1 convolves to a plateau of 1 and
    amplitudes keep their meaning. ``undershoot_ratio`` (``Physiology.hrf_undershoot_ratio``)
    sets the depth of the post-stimulus undershoot.
    """
    fine, dt = _glover_fine(undershoot_ratio)
    t = np.arange(int(round(length_s * sfreq))) / sfreq
    kernel = np.interp(t / latency_scale, np.arange(len(fine)) * dt, fine, right=0.0)
    return kernel / kernel.sum()


def hrf_peak_time(latency_scale: float = 1.0, undershoot_ratio: float = GLOVER_UNDERSHOOT_RATIO) -> float:
    """Time (s) of the HRF maximum for a given latency scale and undershoot."""
    k = hrf(100.0, latency_scale, undershoot_ratio=undershoot_ratio)
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
