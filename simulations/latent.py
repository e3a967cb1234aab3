"""Latent cortical activity: task designs, task networks and spontaneous fluctuations.

Activity lives on the fsaverage5 cortex and is stored in factored form,
``activity[vertex, t] = spatial[vertex, r] @ temporal[r, t]``, with one component per task
network plus a few dozen spontaneous modes. The factored form is what makes the simulator fast:
every instrument (EEG parcels, BOLD vertices, fNIRS channels) first projects the spatial maps,
then touches only ``n_components`` time courses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedneurogen.shared.surface import FSAVERAGE5_PER_HEMI
from fedneurogen.simulations.geometry import N_ICO2, load_cortex
from fedneurogen.simulations.physiology import colored_noise

LATENT_SFREQ = 20.0  # Hz; fast enough for the complex envelopes of the EEG rhythms

VISUAL_CLASSES = ("faces", "scenes", "tools", "motion")
MOTOR_CLASSES = ("left", "right")


@dataclass(frozen=True)
class Patch:
    """A smooth cortical patch around the vertex nearest to an MNI305 coordinate (mm)."""

    center_mm: tuple[float, float, float]
    amplitude: float
    sigma_mm: float = 10.0

    @property
    def hemi(self) -> int:
        return 0 if self.center_mm[0] < 0 else 1


def _bilateral(
    x: float, y: float, z: float, amplitude: float, sigma: float = 10.0, right_gain: float = 1.0
) -> tuple[Patch, ...]:
    return (Patch((-x, y, z), amplitude, sigma), Patch((x, y, z), amplitude * right_gain, sigma))


# Category-selective visual areas (coordinates from the fMRI localiser literature, MNI).
VISUAL_NETWORKS: dict[str, tuple[Patch, ...]] = {
    "faces": (Patch((40, -52, -18), 1.0), Patch((-40, -54, -18), 0.7), Patch((40, -78, -10), 0.6)),  # FFA, OFA
    "scenes": _bilateral(26, -44, -10, 1.0)
    + _bilateral(14, -54, 10, 0.8)
    + _bilateral(34, -80, 22, 0.6),  # PPA, RSC, OPA
    "tools": (Patch((-50, -60, -2), 1.0), Patch((-36, -42, 46), 0.8), Patch((-50, 6, 26), 0.5)),  # pMTG, aIPS, PMv
    "motion": _bilateral(44, -68, 2, 1.0, 12.0) + _bilateral(20, -86, 20, 0.5),  # hMT+, V3A
}
# Active in every visual block: early visual cortex and the dorsal attention network.
VISUAL_SHARED = _bilateral(10, -90, 2, 0.8, 25.0) + _bilateral(26, -62, 50, 0.5, 15.0)

# Motor imagery: the contralateral hand knob, weaker ipsilateral, SMA in both.
MOTOR_NETWORKS: dict[str, tuple[Patch, ...]] = {
    "left": (Patch((38, -22, 56), 1.0, 12.0), Patch((-38, -22, 56), 0.25, 12.0)),
    "right": (Patch((-38, -22, 56), 1.0, 12.0), Patch((38, -22, 56), 0.25, 12.0)),
}
MOTOR_SHARED = _bilateral(6, -6, 62, 0.4, 10.0)

N_SPONTANEOUS = 24  # resting-state-like modes
SPONTANEOUS_STD = 0.35  # relative to a task response of 1


def task_networks(task: str) -> tuple[dict[str, tuple[Patch, ...]], tuple[Patch, ...]]:
    """Class networks and the network shared by all classes of ``task``."""
    if task == "visual":
        return VISUAL_NETWORKS, VISUAL_SHARED
    if task == "motor":
        return MOTOR_NETWORKS, MOTOR_SHARED
    raise ValueError(f"unknown task {task!r}")


# ----------------------------------------------------------------------------------------------
# Block designs


@dataclass(frozen=True)
class Event:
    onset: float
    duration: float
    trial_type: str


@dataclass(frozen=True)
class BlockTiming:
    block_s: tuple[float, float]
    rest_s: tuple[float, float]
    blocks_per_class: int  # when the run length is not given
    lead_in_s: float = 8.0
    tail_s: float = 14.0  # lets the last response return to baseline


TIMINGS = {
    "visual": BlockTiming(block_s=(16.0, 20.0), rest_s=(8.0, 12.0), blocks_per_class=4),
    "motor": BlockTiming(block_s=(12.0, 16.0), rest_s=(14.0, 18.0), blocks_per_class=8),
}


def block_design(
    rng: np.random.Generator, task: str, classes: tuple[str, ...], run_seconds: float | None
) -> tuple[list[Event], float]:
    """Balanced, randomised block design -> (events, run duration in whole seconds).

    Blocks come in cycles, each a random permutation of the classes, so the counts per class
    differ by at most one. With ``run_seconds`` the design fills the run with as many blocks as
    fit; otherwise it runs ``blocks_per_class`` cycles.
    """
    timing = TIMINGS[task]
    events: list[Event] = []
    t = timing.lead_in_s
    max_blocks = len(classes) * timing.blocks_per_class if run_seconds is None else 10**6
    limit = np.inf if run_seconds is None else run_seconds - timing.tail_s
    order: list[str] = []
    while len(events) < max_blocks:
        if not order:
            order = list(rng.permutation(classes))
        dur = round(float(rng.uniform(*timing.block_s)), 1)
        if t + dur > limit:
            break
        events.append(Event(round(t, 1), dur, str(order.pop(0))))
        t += dur + round(float(rng.uniform(*timing.rest_s)), 1)
    if not events:
        raise ValueError(f"run of {run_seconds} s is too short for one {task} block")
    end = events[-1].onset + events[-1].duration + timing.tail_s
    duration = float(np.ceil(end if run_seconds is None else max(run_seconds, end)))
    return events, duration


def neural_timecourse(
    events: list[Event], trial_type: str | None, n_times: int, sfreq: float, rng: np.random.Generator
) -> np.ndarray:
    """Neural drive of a network: blocks of ``trial_type`` (all blocks if None).

    Each block ramps up over ~0.3 s, adapts by ~15% over its first seconds and has its own
    amplitude (attention varies from block to block).
    """
    t = np.arange(n_times) / sfreq
    x = np.zeros(n_times)
    for ev in events:
        if trial_type is not None and ev.trial_type != trial_type:
            continue
        inside = (t >= ev.onset) & (t < ev.onset + ev.duration)
        tau = t[inside] - ev.onset
        shape = (1.0 - np.exp(-tau / 0.3)) * (0.85 + 0.15 * np.exp(-tau / 4.0))
        x[inside] += rng.uniform(0.8, 1.2) * shape
    return x


# ----------------------------------------------------------------------------------------------
# Latent activity


@dataclass
class LatentActivity:
    """Cortical activity in factored form (see module docstring).

    spatial:  float32 ``[20484, n_components]`` loading of each component on each vertex
    temporal: float64 ``[n_components, n_times]`` at ``sfreq``
    active_vertices: vertices at the core of the task networks (for noise ceilings)
    alpha_tone: float64 ``[n_times]``, a slow alpha state independent of the activity (natural log
        of the alpha envelope's factor; the ``nonlinear`` coupling's vigilance, ``alpha_tone``), or None
    """

    spatial: np.ndarray
    temporal: np.ndarray
    sfreq: float
    names: list[str]
    active_vertices: np.ndarray
    alpha_tone: np.ndarray | None = None

    @property
    def n_times(self) -> int:
        return self.temporal.shape[1]


def _subject_patch(rng: np.random.Generator, patch: Patch) -> np.ndarray:
    """The patch as it sits in this subject: centre moved by a few mm, width and gain varied."""
    cortex = load_cortex()
    nominal = cortex.nearest_vertex(patch.center_mm, patch.hemi)
    near = np.flatnonzero(
        (cortex.hemi == patch.hemi) & (np.linalg.norm(cortex.inflated - cortex.inflated[nominal], axis=1) < 6.0)
    )
    center = int(rng.choice(near))
    sigma = patch.sigma_mm * rng.uniform(0.85, 1.15)
    return patch.amplitude * np.exp(rng.normal(0.0, 0.15)) * cortex.gaussian_patch(center, sigma)


def simulate_latent(rng: np.random.Generator, task: str, events: list[Event], duration: float) -> LatentActivity:
    """Latent activity of one subject for one run.

    Components: one per class network, one shared task network, and ``N_SPONTANEOUS`` broad
    modes with 1/f time courses (the spontaneous fluctuations that EEG and BOLD share at rest).
    """
    cortex = load_cortex()
    networks, shared = task_networks(task)
    n_times = int(round(duration * LATENT_SFREQ))
    maps, courses, names = [], [], []
    for cls, patches in networks.items():
        maps.append(sum(_subject_patch(rng, p) for p in patches))
        courses.append(neural_timecourse(events, cls, n_times, LATENT_SFREQ, rng))
        names.append(cls)
    maps.append(sum(_subject_patch(rng, p) for p in shared))
    courses.append(neural_timecourse(events, None, n_times, LATENT_SFREQ, rng))
    names.append("shared")
    task_maps = np.array(maps)
    active = np.flatnonzero(task_maps.max(axis=0) >= 0.5)

    # Spontaneous modes: broad patches around random ico2 vertices of either hemisphere.
    ico2 = np.concatenate([np.arange(N_ICO2), FSAVERAGE5_PER_HEMI + np.arange(N_ICO2)])
    centers = rng.choice(ico2, size=N_SPONTANEOUS, replace=False)
    for k, c in enumerate(centers):
        maps.append(cortex.gaussian_patch(int(c), rng.uniform(15.0, 30.0)))
        names.append(f"spontaneous{k:02d}")
    spont = SPONTANEOUS_STD * colored_noise(
        rng, N_SPONTANEOUS, n_times, LATENT_SFREQ, exponent=1.0, f_min=0.005, f_max=1.0
    )
    courses.extend(spont)
    return LatentActivity(
        spatial=np.array(maps, dtype=np.float32).T,
        temporal=np.array(courses),
        sfreq=LATENT_SFREQ,
        names=names,
        active_vertices=active,
    )


def alpha_tone(rng: np.random.Generator, n_times: int, sfreq: float, sd: float, f_max: float) -> np.ndarray:
    """A slow state of the alpha rhythm that the activity does not set (vigilance, arousal).

    Brownian (1/f^2) below ``f_max`` Hz, zero-mean, standard deviation ``sd`` in natural-log units of
    the alpha envelope: ``exp(tone)`` multiplies every parcel's alpha (``eeg.rhythm_moment``). The
    ``nonlinear`` coupling's gate reads it with the activity (``hemodynamics.alpha_state``), so the
    BOLD response to the same activity depends on a state only the alpha band shows.

    Returns
    -------
    numpy.ndarray
        ``[n_times]`` float64.
    """
    tone = colored_noise(rng, 1, n_times, sfreq, exponent=2.0, f_max=f_max)[0].astype(np.float64)
    tone -= tone.mean()
    return sd * tone / max(float(tone.std()), 1e-12)
