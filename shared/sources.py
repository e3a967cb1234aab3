"""Cortical-source features: EEG band power on the cortex, and a local ridge path on it (issue 29).

The scalp design (``fedneurogen.shared.design``) gives every target point the same 640 features,
a mixture of the whole head. Here the EEG is first taken back to the cortex, so each point can be
predicted from the activity beneath it:

1. **Source space**: the 5124 ico4 vertices of fsaverage5 (nilearn's meshes, shipped), at
   mid-thickness with outward normals, grouped into 324 patches (the Voronoi cells of the ico2
   vertices on the registration sphere, so every patch is ~16 neighbouring ico4 vertices).
2. **Forward and inverse, per montage** (``inverse_kernel``): MNE's three-shell sphere model
   fitted to the montage's electrodes (as the simulator's default head), a free-orientation
   forward in surface orientation, and a fixed-orientation (normal) minimum-norm inverse from
   ``mne.minimum_norm`` (eLORETA by default; average reference; ad-hoc diagonal noise covariance,
   SNR 3). The linear kernel is read with MNE's own ``apply_inverse`` on an identity "evoked",
   and kept in memory per montage: every subject of a site shares one cap.
3. **Band power per patch** (``run_source_power``): for each Welch segment and band, the sensor
   cross-spectrum ``C``; the mean source power of patch ``p`` is ``trace(M_p C)`` with
   ``M_p`` the mean of ``k kᵀ`` over the patch's kernel rows (exact, and one matrix product for
   all patches). Log, z-scored per patch and band over the run, and convolved with the same
   hemodynamic basis over the same history as the scalp design (``run_source_design``).
   Features are ordered (patch, band, basis), as the scalp design's (electrode, band, basis).
4. **Where each target point looks** (``local_columns``, ``channel_neighbourhoods``): an fMRI
   vertex at the bands of its own patch and its ``N_NEIGHBOURS - 1`` nearest patches of the
   same hemisphere (6 x 5 bands x 2 bases = 60 features); an fNIRS channel at the patches under
   its sensitivity region (the sources within ``NIRS_RADIUS_MM`` of its midpoint's projection
   on the cortex, same hemisphere). The ridge on these local designs, its statistics and its
   stacking with the global path are ``fedneurogen.shared.local_path``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedneurogen.shared.config import PreprocessConfig
from fedneurogen.shared.features import EEG_BANDS
from fedneurogen.shared.hrf import HRF_BASES, hemodynamic_convolution
from fedneurogen.shared.recording import Recording
from fedneurogen.shared.surface import HEMISPHERES, ICO4_PER_HEMI, load_fsaverage5, vertex_normals

#: Linear inverses offered (``mne.minimum_norm.apply_inverse`` methods).
INVERSE_METHODS = ("MNE", "dSPM", "eLORETA")
DEFAULT_INVERSE = "eLORETA"  # exact localisation of single noise-free dipoles; dSPM and MNE are biased deep
INVERSE_SNR = 3.0  # MNE's usual choice for averaged data; lambda^2 = 1 / SNR^2
PATCH_SEEDS_PER_HEMI = 162  # ico2: the first 162 vertices of every fsaverage hemisphere
N_PATCHES = 2 * PATCH_SEEDS_PER_HEMI
#: Patches in an fMRI vertex's local design: its own and the nearest others of its hemisphere.
N_NEIGHBOURS = 6
#: Radius of an fNIRS channel's sensitivity region on the cortex, mm. Public knowledge, not the
#: simulator's footprint: a ~30 mm channel samples the cortex about half its separation either
#: side of its midpoint.
NIRS_RADIUS_MM = 15.0
_POWER_FLOOR = 1e-12  # relative to a run's largest patch power: log of silence stays finite


@dataclass(frozen=True)
class SourceSpace:
    """The ico4 cortical source space, both hemispheres stacked (left first), in mm.

    Attributes
    ----------
    positions : np.ndarray
        ``[5124, 3]`` mid-thickness positions (fsaverage surface RAS, mm): where the dipoles sit.
    pial : np.ndarray
        ``[5124, 3]`` pial positions: the fMRI target points' positions.
    normals : np.ndarray
        ``[5124, 3]`` outward unit normals of the white surface.
    hemi : np.ndarray
        ``[5124]`` 0 = left, 1 = right.
    patch : np.ndarray
        ``[5124]`` patch (0..323) of every vertex.
    patch_centres : np.ndarray
        ``[324, 3]`` mean mid-thickness position of every patch.
    neighbours : np.ndarray
        ``[324, N_NEIGHBOURS]`` each patch first, then its nearest patches of the same hemisphere.
    """

    positions: np.ndarray
    pial: np.ndarray
    normals: np.ndarray
    hemi: np.ndarray
    patch: np.ndarray
    patch_centres: np.ndarray
    neighbours: np.ndarray

    @property
    def n_sources(self) -> int:
        """Number of sources (5124)."""
        return len(self.positions)


@functools.lru_cache(maxsize=1)
def source_space() -> SourceSpace:
    """The ico4 source space and its patches, from nilearn's shipped fsaverage5 (cached).

    Returns
    -------
    SourceSpace
        Positions, normals, patches and each patch's neighbours.
    """
    from scipy.spatial import cKDTree  # imported here: scipy.spatial slows every process's start-up

    fs = load_fsaverage5()
    mid, pial, normals, patch = [], [], [], []
    for h, name in enumerate(HEMISPHERES):
        p = np.asarray(fs["pial"].parts[name].coordinates, dtype=np.float64)
        white = np.asarray(fs["white_matter"].parts[name].coordinates, dtype=np.float64)
        sphere = np.asarray(fs["sphere"].parts[name].coordinates, dtype=np.float64)[:ICO4_PER_HEMI]
        mid.append(0.5 * (p + white)[:ICO4_PER_HEMI])
        pial.append(p[:ICO4_PER_HEMI])
        normals.append(vertex_normals(white, np.asarray(fs["white_matter"].parts[name].faces))[:ICO4_PER_HEMI])
        _, nearest = cKDTree(sphere[:PATCH_SEEDS_PER_HEMI]).query(sphere)
        patch.append(nearest + h * PATCH_SEEDS_PER_HEMI)
    positions, patch = np.concatenate(mid), np.concatenate(patch)
    hemi = np.repeat([0, 1], ICO4_PER_HEMI)
    counts = np.bincount(patch, minlength=N_PATCHES)[:, None]
    centres = np.zeros((N_PATCHES, 3))
    np.add.at(centres, patch, positions)
    centres /= np.maximum(counts, 1)
    patch_hemi = np.repeat([0, 1], PATCH_SEEDS_PER_HEMI)
    neighbours = np.empty((N_PATCHES, N_NEIGHBOURS), dtype=np.int64)
    for h in (0, 1):
        mine = np.flatnonzero(patch_hemi == h)
        _, near = cKDTree(centres[mine]).query(centres[mine], k=N_NEIGHBOURS)  # itself first (distance 0)
        neighbours[mine] = mine[near]
    return SourceSpace(positions, np.concatenate(pial), np.concatenate(normals), hemi, patch, centres, neighbours)


# ----------------------------------------------------------------------------------------------
# Forward and inverse


_KERNEL_CACHE: dict[tuple, np.ndarray] = {}


def inverse_kernel(names, positions_mm: np.ndarray, method: str = DEFAULT_INVERSE) -> np.ndarray:
    """The linear inverse of a montage onto the source space, ``[5124, n_channels]`` (cached).

    Parameters
    ----------
    names : sequence of str
        Channel names (only used to name MNE's channels and key the cache).
    positions_mm : np.ndarray
        ``[n_channels, 3]`` electrode positions, mm, fsaverage surface RAS (the frame of MNE's
        standard 10-05 montage and of nilearn's fsaverage meshes).
    method : str
        One of ``INVERSE_METHODS``.

    Returns
    -------
    np.ndarray
        ``K``: source estimate ``= K @ eeg`` (average reference included).

    Raises
    ------
    ValueError
        Unknown method, fewer than 3 channels, or positions not finite.
    """
    if method not in INVERSE_METHODS:
        raise ValueError(f"inverse method must be one of {', '.join(INVERSE_METHODS)}, got {method!r}")
    positions_mm = np.asarray(positions_mm, dtype=np.float64)
    if positions_mm.shape != (len(names), 3) or len(names) < 3 or not np.isfinite(positions_mm).all():
        raise ValueError(
            f"source features need finite [n, 3] positions of at least 3 EEG channels, got {positions_mm.shape}"
        )
    key = (tuple(names), np.round(positions_mm, 3).tobytes(), method)
    if key not in _KERNEL_CACHE:
        _KERNEL_CACHE[key] = _compute_kernel([str(n) for n in names], positions_mm, method)
    return _KERNEL_CACHE[key]


def montage_info(names: list[str], positions_mm: np.ndarray):
    """An MNE ``Info`` of EEG channels at ``positions_mm`` with the standard fiducials.

    Parameters
    ----------
    names : list of str
        Channel names.
    positions_mm : np.ndarray
        ``[n, 3]`` positions, mm (fsaverage surface RAS).

    Returns
    -------
    mne.Info
        Sampling rate 200 Hz (irrelevant to the forward), montage set, average-reference projector.
    """
    import mne

    try:  # the fiducials of MNE's standard 10-05 montage (renamed colin27_1005 in MNE 1.13)
        pos = mne.channels.make_standard_montage("colin27_1005").get_positions()
    except ValueError:
        pos = mne.channels.make_standard_montage("standard_1005").get_positions()
    montage = mne.channels.make_dig_montage(
        ch_pos={n: p / 1000.0 for n, p in zip(names, positions_mm)},
        nasion=pos["nasion"],
        lpa=pos["lpa"],
        rpa=pos["rpa"],
        coord_frame="mri",
    )
    info = mne.create_info(names, 200.0, "eeg")
    info.set_montage(montage, verbose=False)
    raw = mne.io.RawArray(np.zeros((len(names), 1)), info, verbose=False)
    raw.set_eeg_reference(projection=True, verbose=False)
    return raw.info


def forward_gain(names, positions_mm: np.ndarray) -> np.ndarray:
    """The fixed-orientation forward of the source space, ``[n_channels, 5124]`` V/(A m).

    MNE's three-shell sphere model fitted to the electrodes, dipoles along the cortical normal,
    potentials against infinity.

    Parameters
    ----------
    names : sequence of str
        Channel names.
    positions_mm : np.ndarray
        ``[n_channels, 3]`` positions, mm.

    Returns
    -------
    np.ndarray
        The gain matrix.
    """
    fwd, _ = _forward([str(n) for n in names], np.asarray(positions_mm, dtype=np.float64))
    gain = fwd["sol"]["data"].reshape(len(names), -1, 3)
    return gain[:, :, 2]  # surface orientation: the third component is along the normal


def _forward(names: list[str], positions_mm: np.ndarray):
    import mne

    space = source_space()
    info = montage_info(names, positions_mm)
    sphere = mne.make_sphere_model("auto", "auto", info, verbose=False)
    head_to_mri = mne.read_trans(Path(mne.__file__).parent / "data" / "fsaverage" / "fsaverage-trans.fif")
    mri_to_head = np.linalg.inv(head_to_mri["trans"])  # head frame throughout: sphere and sources share it
    rr = mne.transforms.apply_trans(mri_to_head, space.positions / 1000.0)
    nn = space.normals @ mri_to_head[:3, :3].T
    # The sphere is fitted to the scalp; occipital and temporal-pole vertices can poke out of its
    # brain shell: pull them radially inside so every source keeps a gain.
    r0, r_brain = sphere["r0"], 0.98 * sphere["layers"][0]["rad"]
    d = np.linalg.norm(rr - r0, axis=1)
    outside = d > r_brain
    rr[outside] = r0 + (rr[outside] - r0) * (r_brain / d[outside])[:, None]
    src = mne.setup_volume_source_space(pos=dict(rr=rr, nn=nn), sphere=(0.0, 0.0, 0.0, 0.5), verbose=False)
    fwd = mne.make_forward_solution(info, None, src, sphere, meg=False, eeg=True, mindist=0.0, verbose=False)
    if fwd["nsource"] != len(rr):
        raise RuntimeError(f"forward model kept {fwd['nsource']} of {len(rr)} cortical sources")
    return mne.convert_forward_solution(fwd, surf_ori=True, verbose=False), info


def _compute_kernel(names: list[str], positions_mm: np.ndarray, method: str) -> np.ndarray:
    import mne

    fwd, info = _forward(names, positions_mm)
    cov = mne.make_ad_hoc_cov(info, verbose=False)
    inverse = mne.minimum_norm.make_inverse_operator(info, fwd, cov, fixed=True, loose=0.0, depth=0.8, verbose=False)
    # The inverse is linear: applied to the identity it returns its own kernel (projector included).
    identity = mne.EvokedArray(np.eye(len(names)), info, tmin=0.0, verbose=False)
    stc = mne.minimum_norm.apply_inverse(identity, inverse, 1.0 / INVERSE_SNR**2, method, verbose=False)
    return np.asarray(stc.data, dtype=np.float64)


@functools.lru_cache(maxsize=16)
def _patch_operator_cached(key: tuple) -> np.ndarray:
    kernel = _KERNEL_CACHE[key]
    patch = source_space().patch
    outer = np.einsum("sc,sd->scd", kernel, kernel)  # [S, C, C]
    out = np.zeros((N_PATCHES,) + outer.shape[1:])
    np.add.at(out, patch, outer)
    return out / np.bincount(patch, minlength=N_PATCHES)[:, None, None]


def patch_power_operator(names, positions_mm: np.ndarray, method: str = DEFAULT_INVERSE) -> np.ndarray:
    """``M [324, C, C]``: mean of ``k kᵀ`` over each patch's kernel rows (cached per montage).

    The mean source power of patch ``p`` under a sensor cross-spectrum ``S`` is ``trace(M_p S)``.

    Parameters
    ----------
    names : sequence of str
        Channel names.
    positions_mm : np.ndarray
        ``[n_channels, 3]`` positions, mm.
    method : str
        One of ``INVERSE_METHODS``.

    Returns
    -------
    np.ndarray
        The per-patch power operators.
    """
    inverse_kernel(names, positions_mm, method)
    key = (tuple(names), np.round(np.asarray(positions_mm, dtype=np.float64), 3).tobytes(), method)
    return _patch_operator_cached(key)


# ----------------------------------------------------------------------------------------------
# Band power on the cortex and the source design


def run_source_power(eeg: Recording, config: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per-run z-scored log band power of every source patch.

    The same Welch segments (Hann, ``power_window_seconds``, hop ``power_hop_seconds``) and
    bands as ``design.run_band_power``.

    Parameters
    ----------
    eeg : Recording
        The run's EEG (positions in mm).
    config : PreprocessConfig
        Segment length and hop.

    Returns
    -------
    power : np.ndarray
        ``[324, n_bands, n_segments]``, bands in ``EEG_BANDS`` order.
    centres : np.ndarray
        ``[n_segments]`` segment centres, seconds from the start of the run.
    """
    from scipy.signal import spectrogram  # imported here: scipy.signal is ~1 s of every Flower process's start-up

    operator = patch_power_operator(list(eeg.names), eeg.positions).reshape(N_PATCHES, -1)  # [P, C*C]
    nperseg = int(round(config.power_window_seconds * eeg.sfreq))
    hop = int(round(config.power_hop_seconds * eeg.sfreq))
    freqs, centres, stft = spectrogram(
        eeg.data,
        fs=eeg.sfreq,
        window="hann",
        nperseg=nperseg,
        noverlap=nperseg - hop,
        detrend="constant",
        mode="complex",
    )  # [C, F, L]
    power = []
    for low, high in EEG_BANDS.values():
        in_band = (freqs >= low) & (freqs < min(high, 0.45 * eeg.sfreq))
        x = np.transpose(stft[:, in_band, :], (2, 0, 1))  # [L, C, f]
        cross = (x.real @ np.swapaxes(x.real, 1, 2) + x.imag @ np.swapaxes(x.imag, 1, 2)) / max(int(in_band.sum()), 1)
        band = operator @ cross.reshape(len(cross), -1).T  # [P, L]: trace(M_p S_l)
        power.append(np.log(np.maximum(band, 0.0) + _POWER_FLOOR * max(float(band.max()), 1e-300)))
    power = np.stack(power, axis=1)  # [P, B, L]
    power = (power - power.mean(-1, keepdims=True)) / (power.std(-1, keepdims=True) + 1e-6)
    return power, centres


def n_source_features(config: PreprocessConfig) -> int:
    """Width of the source design: patches x bands x basis functions.

    Parameters
    ----------
    config : PreprocessConfig
        Its ``hrf_basis`` sets the number of basis functions.

    Returns
    -------
    int
        324 x 5 x 1 or 324 x 5 x 2.
    """
    return N_PATCHES * len(EEG_BANDS) * HRF_BASES[config.hrf_basis]


def run_source_design(eeg: Recording, frame_times: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """The hemodynamic design of one run on the cortex: patch band power through the HRF basis.

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
        float32 ``[n_frames, n_source_features(config)]``, columns (patch, band, basis).
    """
    power, centres = run_source_power(eeg, config)
    design = hemodynamic_convolution(power.reshape(-1, power.shape[-1]), centres, frame_times, config)
    return design.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# The local design and its ridge path


def point_patches(positions_mm: np.ndarray) -> np.ndarray:
    """The patch under every target point: that of the nearest source-space vertex.

    fMRI points are the ico4 vertices themselves (pial positions: exact), and a vertex's local
    design is its patch's (``local_columns``). fNIRS channels take the patches of a whole
    sensitivity region instead (``channel_neighbourhoods``).

    Parameters
    ----------
    positions_mm : np.ndarray
        ``[N, 3]`` target point positions, mm.

    Returns
    -------
    np.ndarray
        ``[N]`` patch indices.
    """
    from scipy.spatial import cKDTree  # imported here: scipy.spatial slows every process's start-up

    space = source_space()
    _, nearest = cKDTree(space.pial).query(np.asarray(positions_mm, dtype=np.float64))
    return space.patch[nearest]


def channel_neighbourhoods(
    positions_mm: np.ndarray, radius_mm: float = NIRS_RADIUS_MM
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The patches under every fNIRS channel's sensitivity region, one group per channel.

    The channel's source-detector midpoint (on the scalp) is projected onto the nearest pial
    vertex; its region is the sources of that vertex's hemisphere whose pial positions lie
    within ``radius_mm`` of the projection, and its local design takes their patches.

    Parameters
    ----------
    positions_mm : np.ndarray
        ``[N, 3]`` target point positions, mm: channel midpoints (a channel's HbO and HbR share
        one, and so one group).
    radius_mm : float
        Radius of the sensitivity region on the cortex.

    Returns
    -------
    groups : np.ndarray
        ``[N]`` the group (channel) of every target point, ``0..n_groups - 1``.
    neighbourhoods : list of np.ndarray
        Per group, its patches: the one under the projection first, then the others by the
        distance of their nearest source.
    """
    from scipy.spatial import cKDTree  # imported here: scipy.spatial slows every process's start-up

    space = source_space()
    unique, groups = np.unique(np.asarray(positions_mm, dtype=np.float64), axis=0, return_inverse=True)
    _, projected = cKDTree(space.pial).query(unique)
    neighbourhoods = []
    for vertex in projected:
        distance = np.linalg.norm(space.pial - space.pial[vertex], axis=1)
        distance[space.hemi != space.hemi[vertex]] = np.inf  # the other hemisphere is never beneath it
        inside = np.argsort(distance)[: int(np.sum(distance <= radius_mm))]  # the projection itself first
        patches, first = np.unique(space.patch[inside], return_index=True)
        neighbourhoods.append(patches[np.argsort(first)])
    return np.asarray(groups).reshape(-1), neighbourhoods


def patch_columns(patches: np.ndarray, n_per_patch: int) -> np.ndarray:
    """Columns of the source design that hold the bands of some patches.

    Parameters
    ----------
    patches : np.ndarray
        Patch indices, in the order their columns are wanted.
    n_per_patch : int
        Columns per patch in the source design (bands x basis functions).

    Returns
    -------
    np.ndarray
        ``[len(patches) * n_per_patch]`` column indices.
    """
    patches = np.asarray(patches, dtype=np.int64)
    return (patches[:, None] * n_per_patch + np.arange(n_per_patch)[None, :]).reshape(-1)


def local_columns(patch: int, n_per_patch: int) -> np.ndarray:
    """Columns of the source design in the local design of the fMRI vertices of ``patch``.

    Parameters
    ----------
    patch : int
        The points' patch.
    n_per_patch : int
        Columns per patch in the source design (bands x basis functions).

    Returns
    -------
    np.ndarray
        ``[N_NEIGHBOURS * n_per_patch]`` column indices: the patch's own, then its neighbours'.
    """
    return patch_columns(source_space().neighbours[patch], n_per_patch)
