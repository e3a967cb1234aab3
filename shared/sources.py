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
4. **Local design and local path** (``local_columns``, ``fit_local_path``): an fMRI vertex
   is predicted from the bands of its own patch and its ``N_NEIGHBOURS - 1`` nearest patches of
   the same hemisphere only (6 x 5 bands x 2 bases = 60 features); an fNIRS channel from the
   patches under its sensitivity region (``channel_neighbourhoods``: the patches of the
   sources within ``NIRS_RADIUS_MM`` of its midpoint's projection on the cortex, same
   hemisphere). A ridge per group of points (fMRI: a patch of vertices; fNIRS: a channel's
   HbO and HbR) is fitted from the ``RidgeStatistics`` of the whole source design: each
   point's normal equations are a sub-block of ``XᵀX`` and a column of ``XᵀY``. Statistics add
   over subjects and sites, so the summed-statistics fit is the pooled fit and a federation's
   exact sum works unchanged. The penalty of each group is chosen on validation statistics.
5. **Stacking with the global path** (``mixing_statistics``, ``choose_mixing``): the final
   prediction is ``(1 - a) global + a local``, ``a`` chosen on validation subjects from additive
   per-point sums.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.signal import spectrogram
from scipy.spatial import cKDTree

from fedneurogen.shared.config import PreprocessConfig
from fedneurogen.shared.features import EEG_BANDS
from fedneurogen.shared.recording import Recording
from fedneurogen.shared.ridge import DEFAULT_PENALTIES, RidgeStatistics, fit_ridge, sum_statistics
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
    from fedneurogen.shared.design import HRF_BASES

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
    from fedneurogen.shared.design import hemodynamic_convolution

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


def restrict(stats: RidgeStatistics, columns: np.ndarray, points: np.ndarray) -> RidgeStatistics:
    """The statistics of some feature columns and target points (a sub-block: still additive).

    Parameters
    ----------
    stats : RidgeStatistics
        Statistics of the whole design and all points.
    columns : np.ndarray
        Feature columns to keep.
    points : np.ndarray
        Target points to keep.

    Returns
    -------
    RidgeStatistics
        ``D = len(columns)``, ``N = len(points)``.
    """
    return RidgeStatistics(
        stats.n,
        stats.sx[columns],
        stats.sy[points],
        stats.sxx[np.ix_(columns, columns)],
        stats.sxy[np.ix_(columns, points)],
        stats.syy[points],
    )


@dataclass
class LocalSolution:
    """A fitted local path: each point's ridge on its own columns of the source design.

    Attributes
    ----------
    groups : np.ndarray
        ``[N]`` the group of every point (fMRI: its patch; fNIRS: its channel).
    columns : dict of int to np.ndarray
        Local design columns per group.
    coef : dict of int to np.ndarray
        ``[d, n_points_of_group]`` coefficients per group, on the raw features.
    intercept : np.ndarray
        ``[N]`` intercepts.
    penalties : dict of int to float
        The chosen relative penalty per group.
    validation_mse : float | None
        Validation MSE (mean over points and rows) at the chosen penalties.
    """

    groups: np.ndarray
    columns: dict[int, np.ndarray]
    coef: dict[int, np.ndarray]
    intercept: np.ndarray
    penalties: dict[int, float]
    validation_mse: float | None = None

    def predict(self, design: np.ndarray) -> np.ndarray:
        """Predict targets from the source design.

        Parameters
        ----------
        design : np.ndarray
            ``[..., D]`` source design.

        Returns
        -------
        np.ndarray
            float32 ``[..., N]``.
        """
        design = np.asarray(design, dtype=np.float64)
        out = np.broadcast_to(self.intercept, design.shape[:-1] + self.intercept.shape).copy()
        for group, cols in self.columns.items():
            out[..., self.groups == group] += design[..., cols] @ self.coef[group]
        return out.astype(np.float32)


def fit_local_path(
    train: RidgeStatistics,
    val: RidgeStatistics | None,
    groups: np.ndarray,
    n_per_patch: int,
    penalties: tuple[float, ...] = DEFAULT_PENALTIES,
    neighbourhoods: list[np.ndarray] | None = None,
) -> LocalSolution:
    """The local ridge path from statistics of the source design (each group's penalty on ``val``).

    Parameters
    ----------
    train : RidgeStatistics
        Statistics of the source design -> targets over the training rows (summed over
        subjects and sites: the fit only needs their sum).
    val : RidgeStatistics | None
        The same over validation rows; None: the first penalty everywhere.
    groups : np.ndarray
        ``[N]`` group of every target point: its patch (fMRI, ``point_patches``) or its
        channel (fNIRS, ``channel_neighbourhoods``).
    n_per_patch : int
        Columns per patch in the source design (bands x basis functions).
    penalties : tuple of float
        Relative penalties to try.
    neighbourhoods : list of np.ndarray | None
        The patches of each group's local design, indexed by group. None (fMRI): groups are
        patches, and each takes its own and its nearest (``local_columns``).

    Returns
    -------
    LocalSolution
        The fit.

    Raises
    ------
    ValueError
        ``groups`` does not have one entry per target point, or the design is not
        ``N_PATCHES x n_per_patch`` wide.
    """
    groups = np.asarray(groups)
    if len(groups) != len(train.sy):
        raise ValueError(f"{len(groups)} point groups for {len(train.sy)} target points")
    if train.n_features != N_PATCHES * n_per_patch:
        raise ValueError(f"a source design has {N_PATCHES} x {n_per_patch} columns, not {train.n_features}")
    columns, coef, chosen = {}, {}, {}
    intercept = np.zeros(len(groups))
    sse, rows = 0.0, 0.0
    for group in np.unique(groups).tolist():
        points = np.flatnonzero(groups == group)
        if neighbourhoods is None:
            cols = local_columns(group, n_per_patch)
        else:
            cols = patch_columns(neighbourhoods[group], n_per_patch)
        sub_val = None if val is None else restrict(val, cols, points)
        solution = fit_ridge(restrict(train, cols, points), sub_val, penalties)
        columns[group], coef[group], chosen[group] = cols, solution.coef, solution.lam
        intercept[points] = solution.intercept
        if solution.validation_mse is not None:
            sse += solution.validation_mse * len(points)
            rows += len(points)
    mse = sse / rows if rows else None
    return LocalSolution(groups, columns, coef, intercept, chosen, mse)


def fit_local_path_selected(
    train_parts: list[RidgeStatistics],
    val: RidgeStatistics | None,
    groups: np.ndarray,
    n_per_patch: int,
    penalties: tuple[float, ...] = DEFAULT_PENALTIES,
    neighbourhoods: list[np.ndarray] | None = None,
) -> LocalSolution:
    """``fit_local_path`` on the sum of ``train_parts``; without ``val``, penalties by 2-fold.

    As ``ridge.fit_ridge_selected``: with no validation statistics the penalties are chosen by
    fitting on every other part and scoring the rest, then the path is refitted on all parts.

    Parameters
    ----------
    train_parts : list of RidgeStatistics
        Training statistics (per subject, per fold or per site).
    val : RidgeStatistics | None
        Validation statistics.
    groups : np.ndarray
        ``[N]`` group of every target point (as ``fit_local_path``).
    n_per_patch : int
        Columns per patch in the source design.
    penalties : tuple of float
        Relative penalties to try.
    neighbourhoods : list of np.ndarray | None
        Each group's patches (as ``fit_local_path``); None for fMRI vertices.

    Returns
    -------
    LocalSolution
        The fit on all training parts.
    """
    fit = functools.partial(fit_local_path, groups=groups, n_per_patch=n_per_patch, neighbourhoods=neighbourhoods)
    if val is not None or len(train_parts) < 2:
        return fit(sum_statistics(train_parts), val, penalties=penalties)
    trial = fit(sum_statistics(train_parts[0::2]), sum_statistics(train_parts[1::2]), penalties=penalties)
    total = sum_statistics(train_parts)
    final = fit(total, None, penalties=(penalties[0],))
    for group, lam in trial.penalties.items():  # refit each group at its chosen penalty
        points = np.flatnonzero(np.asarray(groups) == group)
        solution = fit_ridge(restrict(total, final.columns[group], points), None, (lam,))
        final.coef[group], final.intercept[points], final.penalties[group] = solution.coef, solution.intercept, lam
    final.validation_mse = trial.validation_mse
    return final


# ----------------------------------------------------------------------------------------------
# Stacking the local path with the global one


def mixing_statistics(global_pred: np.ndarray, local_pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-point sums that score any mix ``(1 - a) g + a l`` (additive over rows, subjects, sites).

    Parameters
    ----------
    global_pred, local_pred, target : np.ndarray
        ``[..., N]`` the two predictions and the target over the same rows.

    Returns
    -------
    np.ndarray
        ``[6, N]``: ``Σy², Σgy, Σly, Σg², Σgl, Σl²``.
    """
    n = np.shape(target)[-1]
    g, l, y = (np.asarray(a, dtype=np.float64).reshape(-1, n) for a in (global_pred, local_pred, target))
    return np.stack([(y * y).sum(0), (g * y).sum(0), (l * y).sum(0), (g * g).sum(0), (g * l).sum(0), (l * l).sum(0)])


def choose_mixing(stats: np.ndarray, grid: tuple[float, ...] = tuple(np.linspace(0.0, 1.0, 11))) -> float:
    """The weight ``a`` of the local path with the smallest summed squared error.

    Parameters
    ----------
    stats : np.ndarray
        ``[6, N]`` from ``mixing_statistics`` (summed over validation subjects).
    grid : tuple of float
        Weights to try.

    Returns
    -------
    float
        The chosen weight.
    """
    yy, gy, ly, gg, gl, ll = stats.sum(axis=1)
    sse = [yy - 2 * ((1 - a) * gy + a * ly) + (1 - a) ** 2 * gg + 2 * a * (1 - a) * gl + a**2 * ll for a in grid]
    return float(grid[int(np.argmin(sse))])
