"""The hemodynamic design: what EEG predicts about BOLD/fNIRS at each target frame, linearly.

One feature builder for the model's ridge path and residual, the ridge-HRF baseline and the
EEG-informed ceiling, computed once per run in preprocessing (and cached with the windows):

1. log band power per EEG channel over the whole run (Welch: 2 s Hann segments, 1 s hop;
   delta to gamma), z-scored per channel and band over the run, so sites and subjects with
   other amplifier gains and impedances share one scale;
2. mapped onto a fixed virtual montage (the 64 electrodes of the 10-05 BioSemi-64 layout) with
   the inverse-square-distance weights of equations (1)-(2), so sites with different caps share
   one feature space;
3. convolved with a hemodynamic basis (canonical Glover HRF and its temporal derivative) over
   the full history ``history_seconds`` before each target frame, and sampled at the frames.

4. with ``alpha_gating`` (the default), the alpha-gated block after the scalp columns
   (``gated_power``): at each virtual electrode every band's power times the alpha gate there
   (how far alpha is below its run mean, ``max(0, -alpha)``), averaged over the electrodes of
   each of 8 scalp regions, multiplied before the HRF and convolved with the canonical HRF.
   Where alpha gates neurovascular coupling (the same activity drives BOLD when alpha is
   desynchronised and hardly at all when it is high; Scheeringa et al. 2011, Mayhew et al.
   2013) the response is a product of two EEG states that no linear map of band power
   represents; products of the HRF-convolved columns would not do (the HRF smears each factor
   before they meet).

The result for a run is ``[n_target_frames, n_features]`` with scalp features ordered
(virtual electrode, band, basis function), then the gated block (scalp region, band). The band
power of segment ``l`` is known at its centre; frame ``f`` at time ``t_f`` sees segments with
``0 <= t_f - centre_l <= history``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from fedneurogen.shared.config import PreprocessConfig
from fedneurogen.shared.features import EEG_BANDS
from fedneurogen.shared.hrf import HRF_BASES, hemodynamic_convolution
from fedneurogen.shared.integration import inverse_square_weights
from fedneurogen.shared.montage import standard_positions
from fedneurogen.shared.recording import PairedWindows, Recording
from fedneurogen.shared.ridge import RidgeStatistics
from fedneurogen.shared.sources import N_PATCHES, n_source_features, run_source_design

#: The virtual montage every site's EEG features are mapped onto (BioSemi-64, 10-05 names).
VIRTUAL_MONTAGE = tuple(
    "Fp1 AF7 AF3 F1 F3 F5 F7 FT7 FC5 FC3 FC1 C1 C3 C5 T7 TP7 CP5 CP3 CP1 P1 P3 P5 P7 P9 PO7 PO3 O1 Iz Oz POz "
    "Pz CPz Fpz Fp2 AF8 AF4 AFz Fz F2 F4 F6 F8 FT8 FC6 FC4 FC2 FCz Cz C2 C4 C6 T8 TP8 CP6 CP4 CP2 P2 P4 P6 P8 "
    "P10 PO8 PO4 O2".split()
)
_LOG_FLOOR = 1e-10  # (100 uV)^2 / Hz; far below any real EEG power density


#: Scalp regions the virtual electrodes are pooled into (the gated block; the DP private path).
N_REGIONS = 8
_REGION_SEED = 0
#: Width of the alpha-gated block: regions x bands (no multiple of 320 nor of 324, so every
#: design width stays distinct).
N_GATED = N_REGIONS * len(EEG_BANDS)
#: The groups of the global path's banded penalties: the bands, then the alpha-gated block.
DESIGN_GROUPS = (*EEG_BANDS, "alpha-gated")


def n_gated_features(config: PreprocessConfig) -> int:
    """Width of the design's alpha-gated block.

    Parameters
    ----------
    config : PreprocessConfig
        Its ``alpha_gating`` and ``design_space``.

    Returns
    -------
    int
        ``N_GATED`` with ``alpha_gating`` and scalp columns, else 0.
    """
    return N_GATED if config.alpha_gating and config.design_space != "source" else 0


def n_design_features(config: PreprocessConfig) -> int:
    """Width of the design: virtual electrodes x bands x basis functions (+ the gated block).

    Parameters
    ----------
    config : PreprocessConfig
        Its ``hrf_basis`` sets the number of basis functions (1 or 2), ``alpha_gating`` the block.

    Returns
    -------
    int
        64 x 5 x 1 or 64 x 5 x 2, + ``N_GATED`` with the alpha-gated block (``design_space="source"``:
        324 patches x 5 x 1 or 2; ``scalp+source``: both).
    """
    scalp = len(VIRTUAL_MONTAGE) * len(EEG_BANDS) * HRF_BASES[config.hrf_basis] + n_gated_features(config)
    return {"scalp": scalp, "source": n_source_features(config), "scalp+source": scalp + n_source_features(config)}[
        config.design_space
    ]


def part_widths(width: int) -> tuple[int, int, int]:
    """``(linear scalp, gated, source)`` widths of a design ``width`` wide.

    Parameters
    ----------
    width : int
        The design's width.

    Returns
    -------
    tuple of int
        The widths of its linear scalp columns, its alpha-gated block and its source columns.

    Raises
    ------
    ValueError
        A width no design space gives.
    """
    per_basis = len(EEG_BANDS)
    for bases in HRF_BASES.values():
        scalp, source = len(VIRTUAL_MONTAGE) * per_basis * bases, N_PATCHES * per_basis * bases
        for gated in (0, N_GATED):
            for parts in ((scalp, gated, 0), (0, 0, source), (scalp, gated, source)):
                if sum(parts) == width and (parts[0] or not gated):
                    return parts
    raise ValueError(f"a design {width} features wide is neither a scalp, a source nor a scalp+source design")


def split_design(design: np.ndarray | torch.Tensor) -> tuple:
    """The scalp and cortical-source parts of a design, told apart by its width.

    Every width in use is distinct (scalp 320 or 640, + 40 with the alpha-gated block; source
    1620 or 3240; both side by side), so the part a reader needs — the scalp design (with its
    gated block) for the global path, the source design for the local path — follows from the
    array alone.

    Parameters
    ----------
    design : np.ndarray or torch.Tensor
        ``[..., D]`` a design of any ``design_space``.

    Returns
    -------
    scalp, source : array or None
        ``[..., 64 x bands x bases (+ 40)]`` and ``[..., 324 x bands x bases]``; None where absent.

    Raises
    ------
    ValueError
        A width no design space gives.
    """
    linear, gated, source = part_widths(design.shape[-1])
    scalp = linear + gated
    if not source:
        return design, None
    if not scalp:
        return None, design
    return design[..., :scalp], design[..., scalp:]


@functools.lru_cache(maxsize=1)
def virtual_positions() -> np.ndarray:
    """Positions of the virtual montage (MNE's standard 10-05 montage).

    Returns
    -------
    np.ndarray
        ``[64, 3]`` mm, in the order of ``VIRTUAL_MONTAGE``.
    """
    table = standard_positions()
    return np.array([table[name.lower()][1] for name in VIRTUAL_MONTAGE])


def run_band_power(eeg: Recording, config: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per-run z-scored log band power of an EEG recording.

    Welch segments of ``power_window_seconds`` (Hann), hop ``power_hop_seconds``; each channel
    and band is z-scored over the run.

    Parameters
    ----------
    eeg : Recording
        The run's EEG.
    config : PreprocessConfig
        Segment length and hop.

    Returns
    -------
    power : np.ndarray
        ``[n_channels, n_bands, n_segments]``, bands in ``EEG_BANDS`` order.
    centres : np.ndarray
        ``[n_segments]`` segment centres, seconds from the start of the run.
    """
    from scipy.signal import spectrogram  # imported here: scipy.signal is ~1 s of every Flower process's start-up

    nperseg = int(round(config.power_window_seconds * eeg.sfreq))
    hop = int(round(config.power_hop_seconds * eeg.sfreq))
    freqs, centres, psd = spectrogram(
        eeg.data, fs=eeg.sfreq, window="hann", nperseg=nperseg, noverlap=nperseg - hop, detrend="constant"
    )
    power = []
    for low, high in EEG_BANDS.values():
        in_band = (freqs >= low) & (freqs < min(high, 0.45 * eeg.sfreq))
        power.append(np.log(psd[:, in_band, :].mean(axis=1) + _LOG_FLOOR))
    power = np.stack(power, axis=1)  # [C, B, L]
    power = (power - power.mean(-1, keepdims=True)) / (power.std(-1, keepdims=True) + 1e-6)
    return power, centres


def to_virtual_montage(values: np.ndarray, positions_mm: np.ndarray) -> np.ndarray:
    """Map values at a site's electrodes onto the virtual montage.

    Equations 1-2: row-normalised inverse squared distances.

    Parameters
    ----------
    values : np.ndarray
        ``[n_channels, ...]`` values at the electrodes.
    positions_mm : np.ndarray
        ``[n_channels, 3]`` electrode positions, mm.

    Returns
    -------
    np.ndarray
        ``[64, ...]`` values on the virtual montage.
    """
    weights = (
        inverse_square_weights(torch.as_tensor(virtual_positions()), torch.as_tensor(np.asarray(positions_mm)))
        .double()
        .numpy()
    )
    return np.tensordot(weights, values, axes=(1, 0))


def run_design(eeg: Recording, frame_times: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """The hemodynamic design of one run (see the module docstring).

    Parameters
    ----------
    eeg : Recording
        The run's EEG (positions in mm).
    frame_times : np.ndarray
        ``[n_frames]`` target frame times, s from the run start.
    config : PreprocessConfig
        Band power, basis and history settings.

    Returns
    -------
    np.ndarray
        float32 ``[n_frames, n_design_features(config)]``.
    """
    parts = []
    if config.design_space in ("scalp", "scalp+source"):
        power, centres = run_band_power(eeg, config)
        virtual = to_virtual_montage(power, eeg.positions)  # [64, B, L]
        parts.append(hemodynamic_convolution(virtual.reshape(-1, virtual.shape[-1]), centres, frame_times, config))
        if n_gated_features(config):
            canonical = config.model_copy(update={"hrf_basis": "canonical"})
            gated = gated_power(virtual, config.alpha_gate)
            parts.append(hemodynamic_convolution(gated, centres, frame_times, canonical))
    if config.design_space in ("source", "scalp+source"):  # band power on the cortex (shared.sources)
        parts.append(run_source_design(eeg, frame_times, config))
    return np.concatenate(parts, axis=1).astype(np.float32)


@functools.lru_cache(maxsize=1)
def scalp_regions() -> np.ndarray:
    """The scalp region of each virtual electrode: k-means of their positions, a fixed seed.

    Returns
    -------
    np.ndarray
        ``[64]`` int labels ``0..N_REGIONS-1``, ordered by the region's first electrode.
    """
    from scipy.cluster.vq import kmeans2

    _, labels = kmeans2(virtual_positions(), N_REGIONS, seed=_REGION_SEED, minit="++")
    order = {label: i for i, label in enumerate(dict.fromkeys(labels.tolist()))}  # stable numbering
    return np.array([order[label] for label in labels.tolist()])


def region_centres() -> np.ndarray:
    """The virtual electrode nearest each scalp region's centroid (where a region's column is shown).

    Returns
    -------
    np.ndarray
        ``[N_REGIONS]`` electrode indices.
    """
    regions, positions = scalp_regions(), virtual_positions()
    centres = []
    for region in range(N_REGIONS):
        mine = np.flatnonzero(regions == region)
        centroid = positions[mine].mean(axis=0)
        centres.append(int(mine[np.argmin(np.linalg.norm(positions[mine] - centroid, axis=1))]))
    return np.array(centres)


def gated_power(virtual: np.ndarray, gate: str = "desynchronisation") -> np.ndarray:
    """The alpha-gated products of band power on the virtual montage (before the HRF).

    Each band's power times the alpha gate at the same electrode, averaged over the electrodes
    of each scalp region (``scalp_regions``): the gate is a regional state, and the average of
    eight or so electrodes' products is far less noisy than any one (on the `nonlinear`
    scenario the regional block predicted held-out BOLD better than the per-electrode one).

    The ``desynchronisation`` gate is ``max(0, -alpha)``: how far alpha is below its run mean
    (alpha is z-scored over the run). Band power counts while alpha is desynchronised and not
    at all while it is high, the one-sided gate of inhibition (Scheeringa et al. 2011); the
    linear columns carry the rest. It is a varying coefficient with one knot at the run's mean
    alpha, placed without reference to any data set. On the `nonlinear` scenario's development
    seeds it predicted held-out BOLD 1.24-1.31x as well as the linear design, where ``product``
    (alpha itself, the block's first form: symmetric, so it also credits synchronised alpha)
    reached 1.15-1.23x.

    Parameters
    ----------
    virtual : np.ndarray
        ``[64, n_bands, L]`` z-scored log band power (``run_band_power`` on the virtual montage).
    gate : {"desynchronisation", "product"}
        ``PreprocessConfig.alpha_gate``.

    Returns
    -------
    np.ndarray
        ``[N_REGIONS x n_bands, L]`` (region, band).
    """
    alpha = virtual[:, list(EEG_BANDS).index("alpha")]  # [64, L]
    opening = np.maximum(0.0, -alpha) if gate == "desynchronisation" else alpha
    products = virtual * opening[:, None]  # [64, B, L]
    regions = scalp_regions()
    pooled = np.stack([products[regions == region].mean(axis=0) for region in range(N_REGIONS)])
    return pooled.reshape(-1, virtual.shape[-1])


def unique_frames(windows: PairedWindows) -> tuple[np.ndarray, np.ndarray]:
    """Every distinct (run, frame) of overlapping windows, once.

    So that statistics count each frame of a run once.

    Parameters
    ----------
    windows : PairedWindows
        The windows (their runs, onsets and target frame rate).

    Returns
    -------
    window_index, frame_index : np.ndarray
        int arrays of equal length: the first window (and its frame) holding each run frame.
    """
    n_frames = windows.target.shape[-1]
    seen: set[tuple[str, int]] = set()
    rows_w, rows_f = [], []
    starts = np.round(windows.onsets * windows.target_sfreq).astype(int)
    for i in range(len(windows)):
        for f in range(n_frames):
            key = (str(windows.runs[i]), int(starts[i] + f))
            if key not in seen:
                seen.add(key)
                rows_w.append(i)
                rows_f.append(f)
    return np.array(rows_w, dtype=int), np.array(rows_f, dtype=int)


def iter_subject_rows(
    windows: PairedWindows, target: np.ndarray | None = None, design: np.ndarray | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The design and target rows of every subject (each run frame once), one subject at a time.

    Parameters
    ----------
    windows : PairedWindows
        The windows.
    target : np.ndarray | None
        ``[W, N, F]``; None: ``windows.target``.
    design : np.ndarray | None
        ``[W, F, D]``; None: ``windows.design``.

    Yields
    ------
    x, y : np.ndarray
        ``[T, D]`` design rows and ``[T, N]`` target rows of one subject, in sorted subject order.

    Raises
    ------
    ValueError
        No design is given and the windows carry none.
    """
    target = windows.target if target is None else target
    design = windows.design if design is None else design
    if design is None:
        raise ValueError("the windows carry no hemodynamic design")
    rows_w, rows_f = unique_frames(windows)
    for subject in sorted(set(windows.subjects.tolist())):
        mine = windows.subjects[rows_w] == subject
        w, f = rows_w[mine], rows_f[mine]
        yield design[w, f], target[w, :, f]


def global_part(design: np.ndarray) -> np.ndarray:
    """The columns the global ridge path and its residual read: the scalp design with its
    alpha-gated block (of a ``scalp+source`` design, its first part); any other design (source
    only, the EEG-informed ceiling's) as it is.

    Parameters
    ----------
    design : np.ndarray
        ``[..., D]`` a design of any ``design_space``.

    Returns
    -------
    np.ndarray
        ``[..., D_global]`` a view.
    """
    try:
        scalp, source = split_design(design)
    except ValueError:  # not a model design (e.g. the ceiling's expected band power): all of it
        return design
    return scalp if scalp is not None else source


def linear_part(design: np.ndarray) -> np.ndarray:
    """The columns the linear baselines read (ridge-HRF, reduced-rank ridge): ``global_part``
    without the alpha-gated block, the textbook design of band power through the HRF.

    Parameters
    ----------
    design : np.ndarray
        ``[..., D]`` a design of any ``design_space``.

    Returns
    -------
    np.ndarray
        ``[..., D_linear]`` a view.
    """
    columns = global_part(design)
    try:
        linear, gated, _ = part_widths(columns.shape[-1])
    except ValueError:
        return columns
    return columns[..., :linear] if gated else columns


def iter_subject_statistics(
    windows: PairedWindows,
    target: np.ndarray | None = None,
    design: np.ndarray | None = None,
    part: Callable[[np.ndarray], np.ndarray] = global_part,
) -> Iterator[RidgeStatistics]:
    """Ridge statistics of ``design -> target`` per subject (each run frame once).

    One subject's frames are read at a time. Of the windows' own ``scalp+source`` design only
    the scalp part (``global_part``): the local path has statistics of its own
    (``shared.local_path``). A ``design`` passed in is used as it is.

    Parameters
    ----------
    windows : PairedWindows
        The windows.
    target : np.ndarray | None
        ``[W, N, F]``; None: ``windows.target``.
    design : np.ndarray | None
        ``[W, F, D]``; None: ``windows.design`` (its global part).

    part : callable
        The columns of the windows' own design to use: ``global_part`` (the model's global path)
        or ``linear_part`` (the linear baselines).

    Yields
    ------
    RidgeStatistics
        One per subject, in sorted subject order.

    Raises
    ------
    ValueError
        No design is given and the windows carry none.
    """
    own = design is None  # the windows' own design: of scalp+source, the scalp part
    for x, y in iter_subject_rows(windows, target, design):
        yield RidgeStatistics.from_rows(part(x) if own else x, y)


def subject_statistics(
    windows: PairedWindows, target: np.ndarray | None = None, design: np.ndarray | None = None
) -> list[RidgeStatistics]:
    """``iter_subject_statistics`` as a list (one entry per subject: for per-subject privacy).

    Parameters
    ----------
    windows : PairedWindows
        The windows.
    target : np.ndarray | None
        ``[W, N, F]``; None: ``windows.target``.
    design : np.ndarray | None
        ``[W, F, D]``; None: ``windows.design``.

    Returns
    -------
    list of RidgeStatistics
        One per subject, in sorted subject order.
    """
    return list(iter_subject_statistics(windows, target, design))


def two_fold_statistics(sites: Sequence[PairedWindows], per_subject=None) -> list:
    """The subjects' statistics of ``sites`` summed into two folds, alternate subjects in turn.

    ``fit_ridge_selected`` needs no more than these: it fits on their sum and, without
    validation data, chooses on one fold against the other. Held in memory: two sums, whatever
    the number of subjects.

    Parameters
    ----------
    sites : sequence of PairedWindows
        Windows with a design, one entry per site.
    per_subject : callable | None
        ``windows -> iterable of statistics``, one per subject (any additive kind, e.g. the
        local path's); None: ``iter_subject_statistics``.

    Returns
    -------
    list
        Two sums (one when there is one subject, none when there are no subjects).
    """
    per_subject = iter_subject_statistics if per_subject is None else per_subject
    folds: list = []
    count = 0
    for site in sites:
        for stats in per_subject(site):
            if len(folds) < 2:
                folds.append(stats)
            else:
                folds[count % 2] = folds[count % 2] + stats
            count += 1
    return folds


def feature_bands(n_features: int) -> np.ndarray:
    """The group of every column of a global design: the groups of the ridge path's banded
    penalties (``DESIGN_GROUPS``: the EEG bands, then the alpha-gated block).

    Parameters
    ----------
    n_features : int
        Width of the design.

    Returns
    -------
    np.ndarray
        ``[n_features]`` int index into ``DESIGN_GROUPS``.

    Raises
    ------
    ValueError
        ``n_features`` is not 64 electrodes (or 324 source patches) x 5 bands x 1 or 2 basis
        functions (+ the alpha-gated block).
    """
    n_basis, leftover = divmod(n_features, N_PATCHES * len(EEG_BANDS))
    if not leftover and n_basis in HRF_BASES.values():  # a source design: (patch, band, basis)
        return np.tile(np.repeat(np.arange(len(EEG_BANDS)), n_basis), N_PATCHES)
    try:
        linear, gated, source = part_widths(n_features)
    except ValueError:
        linear, gated, source = -1, 0, 0
    if linear <= 0 or source:
        raise ValueError(
            f"a design of {n_features} columns is not {len(VIRTUAL_MONTAGE)} electrodes x {len(EEG_BANDS)} bands x an HRF basis"
        )
    n_basis = linear // (len(VIRTUAL_MONTAGE) * len(EEG_BANDS))
    bands = np.tile(np.repeat(np.arange(len(EEG_BANDS)), n_basis), len(VIRTUAL_MONTAGE))
    return np.concatenate([bands, np.full(gated, len(EEG_BANDS))])
