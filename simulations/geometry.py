"""Head and cortex geometry from shipped assets.

Everything here is built from files that ship with nilearn and MNE, so nothing is downloaded:
the fsaverage5 cortex (nilearn), 10-05 electrode positions and the fsaverage head<->MRI
transform (MNE). All positions are millimetres in fsaverage surface-RAS (MNI305), the frame of
nilearn's fsaverage5 meshes and of MNE's standard 10-05 montage.

Three geometric objects feed the simulator:

- ``Cortex``: 2 x 10242 vertices (left then right) with mid-thickness positions, outward normals,
  inflated positions (for geodesic-like distances) and two nested subsamplings: the 642 ico3
  vertices per hemisphere that carry EEG dipoles and the 162 ico2 vertices per hemisphere whose
  Voronoi cells are the EEG source parcels.
- ``eeg_lead_field``: gain of every ico3 dipole at every electrode from MNE's three-shell sphere
  model fitted to the electrodes (a real volume conductor, never random weights).
- ``MotorProbe``: a fNIRS probe over both motor cortices built on 10-10 positions around C3/C4,
  with a Gaussian cortical sensitivity footprint per channel, and one short-separation channel
  (8 mm) beside every source that sees the scalp only.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from fedneurogen.shared.surface import (
    FSAVERAGE5_PER_HEMI,
    FSAVERAGE5_POINTS,
    HEMISPHERES,
    load_fsaverage5,
    vertex_normals,
)

N_ICO3 = 642  # fsaverage meshes are nested: the first 642 ico5 vertices form the ico3 mesh
N_ICO2 = 162
MONTAGE_NAME = "colin27_1005"  # MNE's "standard_1005" (same positions, name used since MNE 1.13)


@dataclass(frozen=True)
class Cortex:
    """fsaverage5 cortex, both hemispheres stacked (left first), positions in mm."""

    pial: np.ndarray  # [20484, 3]
    mid: np.ndarray  # [20484, 3] mid-thickness: where the current dipoles sit
    inflated: np.ndarray  # [20484, 3] distances here follow the sheet, not across sulci
    normals: np.ndarray  # [20484, 3] outward unit normals (white surface)
    hemi: np.ndarray  # [20484] 0 = left, 1 = right
    source_vertices: np.ndarray  # [1284] ico3 vertices that carry EEG dipoles
    parcel: np.ndarray  # [20484] ico2 parcel (0..323) of every vertex
    source_parcel: np.ndarray  # [1284] parcel of every EEG dipole

    @property
    def n_parcels(self) -> int:
        return 2 * N_ICO2

    def parcel_mean(self, values: np.ndarray) -> np.ndarray:
        """Average ``values[20484, ...]`` within each ico2 parcel -> ``[324, ...]``."""
        counts = np.bincount(self.parcel, minlength=self.n_parcels).astype(np.float64)
        out = np.zeros((self.n_parcels,) + values.shape[1:], dtype=np.float64)
        np.add.at(out, self.parcel, values)
        return out / counts.reshape((-1,) + (1,) * (values.ndim - 1))

    def nearest_vertex(self, point_mm, hemi: int, surface: str = "pial") -> int:
        """Index of the vertex of ``hemi`` closest to ``point_mm`` on ``surface``."""
        coords = getattr(self, surface)
        idx = np.flatnonzero(self.hemi == hemi)
        return int(idx[np.argmin(np.linalg.norm(coords[idx] - np.asarray(point_mm), axis=1))])

    def gaussian_patch(self, center: int, sigma_mm: float) -> np.ndarray:
        """Smooth cortical patch ``exp(-d^2 / 2 sigma^2)`` around vertex ``center``.

        ``d`` is measured on the inflated surface of the same hemisphere, a cheap stand-in for
        geodesic distance that does not jump between the banks of a sulcus.
        """
        same = self.hemi == self.hemi[center]
        d2 = np.sum((self.inflated - self.inflated[center]) ** 2, axis=1)
        w = np.exp(-d2 / (2.0 * sigma_mm**2))
        w[~same | (w < 1e-3)] = 0.0
        return w


@functools.lru_cache(maxsize=1)
def load_cortex() -> Cortex:
    """Load the fsaverage5 cortex shipped with nilearn (cached; no download)."""
    fs = load_fsaverage5()
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("pial", "mid", "inflated", "normals", "sphere")}
    for h in HEMISPHERES:
        pial = np.asarray(fs["pial"].parts[h].coordinates, dtype=np.float64)
        white = np.asarray(fs["white_matter"].parts[h].coordinates, dtype=np.float64)
        parts["pial"].append(pial)
        parts["mid"].append(0.5 * (pial + white))
        parts["inflated"].append(np.asarray(fs["inflated"].parts[h].coordinates, dtype=np.float64))
        parts["normals"].append(vertex_normals(white, np.asarray(fs["white_matter"].parts[h].faces)))
        parts["sphere"].append(np.asarray(fs["sphere"].parts[h].coordinates, dtype=np.float64))
    hemi = np.repeat([0, 1], FSAVERAGE5_PER_HEMI)

    # Each vertex belongs to the parcel of its nearest ico2 vertex on the registration sphere.
    parcel = np.empty(FSAVERAGE5_POINTS, dtype=np.int64)
    for h in (0, 1):
        sphere = parts["sphere"][h]
        _, nearest = cKDTree(sphere[:N_ICO2]).query(sphere)
        parcel[h * FSAVERAGE5_PER_HEMI : (h + 1) * FSAVERAGE5_PER_HEMI] = nearest + h * N_ICO2
    source_vertices = np.concatenate([np.arange(N_ICO3), FSAVERAGE5_PER_HEMI + np.arange(N_ICO3)])
    return Cortex(
        pial=np.concatenate(parts["pial"]),
        mid=np.concatenate(parts["mid"]),
        inflated=np.concatenate(parts["inflated"]),
        normals=np.concatenate(parts["normals"]),
        hemi=hemi,
        source_vertices=source_vertices,
        parcel=parcel,
        source_parcel=parcel[source_vertices],
    )


# ----------------------------------------------------------------------------------------------
# Electrodes


@functools.lru_cache(maxsize=1)
def _montage_positions() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    import mne

    pos = mne.channels.make_standard_montage(MONTAGE_NAME).get_positions()
    ch_pos = {name: np.asarray(p) * 1000.0 for name, p in pos["ch_pos"].items()}
    fiducials = {k: np.asarray(pos[k]) * 1000.0 for k in ("nasion", "lpa", "rpa")}
    return ch_pos, fiducials


def standard_positions(names) -> np.ndarray:
    """``[n, 3]`` mm positions of 10-05 electrode names (MNE's standard 10-05 montage)."""
    ch_pos, _ = _montage_positions()
    missing = [n for n in names if n not in ch_pos]
    if missing:
        raise KeyError(f"not 10-05 electrode names: {missing}")
    return np.array([ch_pos[n] for n in names])


def fiducials_mm() -> dict[str, np.ndarray]:
    """Nasion and preauricular points of the standard montage (mm, same frame)."""
    return dict(_montage_positions()[1])


def between_electrodes(a: str, b: str) -> np.ndarray:
    """A scalp point halfway between two 10-05 electrodes (for non-standard cap positions).

    The midpoint of two scalp points lies inside the head; it is pushed back out to the mean
    distance of the two electrodes from the head centre.
    """
    pa, pb = standard_positions([a, b])
    centre = _head_centre()
    mid = 0.5 * (pa + pb) - centre
    radius = 0.5 * (np.linalg.norm(pa - centre) + np.linalg.norm(pb - centre))
    return centre + mid / np.linalg.norm(mid) * radius


@functools.lru_cache(maxsize=1)
def _head_centre() -> np.ndarray:
    """Centre of the sphere that best fits all 10-05 positions (algebraic least squares)."""
    pos = np.array(list(_montage_positions()[0].values()))
    a = np.c_[2 * pos, np.ones(len(pos))]
    sol, *_ = np.linalg.lstsq(a, np.sum(pos**2, axis=1), rcond=None)
    return sol[:3]


_LEAD_FIELD_CACHE: dict[tuple, np.ndarray] = {}

#: Head models the simulator can write EEG through. ``default``: MNE's sphere model fitted to the
#: electrodes, MNE's conductivities, the declared electrode positions. ``mismatched``: a head that
#: differs from the one any inverse would assume (no inverse crime, docs/architecture.md §7):
#: sphere centre and radius off the fit, thinner brain and thicker skull shells, a 1:25 skull
#: conductivity ratio instead of 1:80, and electrodes sitting a few mm from their declared places.
HEAD_MODELS = ("default", "mismatched")
MISMATCH_JITTER_MM = 4.0  # rms tangential displacement of each electrode from its declared position
MISMATCH_CENTRE_SHIFT_M = np.array([0.0, 0.004, 0.005])  # sphere centre moved 4 mm forward, 5 mm up
MISMATCH_RADIUS_SCALE = 1.03
MISMATCH_RELATIVE_RADII = (0.87, 0.89, 0.96, 1.0)
MISMATCH_SIGMAS = (0.33, 1.0, 0.0132, 0.33)


def eeg_lead_field(names: tuple[str, ...], positions_mm: np.ndarray, head_model: str = "default") -> np.ndarray:
    """EEG gain ``[n_channels, 1284]`` in V/(A m) of the ico3 cortical dipoles.

    The volume conductor is MNE's three-shell sphere model (brain, skull, scalp) fitted to the
    electrode positions; each dipole points along the outward cortical normal (pyramidal cells
    are perpendicular to the sheet). Potentials are against infinity (no reference). Cached per
    montage, since all subjects of a site share one cap. ``head_model`` (one of ``HEAD_MODELS``)
    ``mismatched`` writes the EEG through another head: only the gain changes.
    """
    if head_model not in HEAD_MODELS:
        raise ValueError(f"head_model must be one of {', '.join(HEAD_MODELS)}, got {head_model!r}")
    key = (tuple(names), np.round(np.asarray(positions_mm), 3).tobytes(), head_model)
    if key not in _LEAD_FIELD_CACHE:
        _LEAD_FIELD_CACHE[key] = _compute_lead_field(
            list(names), np.asarray(positions_mm, dtype=np.float64), head_model
        )
    return _LEAD_FIELD_CACHE[key]


def jittered_positions(names, positions_mm: np.ndarray, rms_mm: float = MISMATCH_JITTER_MM) -> np.ndarray:
    """Electrode positions moved tangentially by about ``rms_mm`` each, as a real cap sits.

    The displacement of an electrode depends on its name only (CRC-32 seed), so the same cap
    is displaced the same way at every site and in every run; the distance from the head
    centre is kept.
    """
    import zlib

    centre = _head_centre()
    out = np.array(positions_mm, dtype=np.float64, copy=True)
    for i, name in enumerate(names):
        radial = out[i] - centre
        radius = np.linalg.norm(radial)
        step = np.random.default_rng(zlib.crc32(str(name).encode())).normal(scale=rms_mm / np.sqrt(2.0), size=3)
        step -= np.dot(step, radial) / radius**2 * radial  # tangential only
        moved = radial + step
        out[i] = centre + moved / np.linalg.norm(moved) * radius
    return out


def _compute_lead_field(names: list[str], positions_mm: np.ndarray, head_model: str = "default") -> np.ndarray:
    import mne

    if head_model == "mismatched":
        positions_mm = jittered_positions(names, positions_mm)

    cortex = load_cortex()
    fid = fiducials_mm()
    montage = mne.channels.make_dig_montage(
        ch_pos={n: p / 1000.0 for n, p in zip(names, positions_mm)},
        nasion=fid["nasion"] / 1000.0,
        lpa=fid["lpa"] / 1000.0,
        rpa=fid["rpa"] / 1000.0,
        coord_frame="mri",
    )
    info = mne.create_info(names, 1000.0, "eeg")
    info.set_montage(montage, verbose=False)
    sphere = mne.make_sphere_model("auto", "auto", info, verbose=False)
    if head_model == "mismatched":
        sphere = mne.make_sphere_model(
            sphere["r0"] + MISMATCH_CENTRE_SHIFT_M,
            MISMATCH_RADIUS_SCALE * sphere["layers"][-1]["rad"],
            relative_radii=MISMATCH_RELATIVE_RADII,
            sigmas=MISMATCH_SIGMAS,
            verbose=False,
        )
    head_to_mri = mne.read_trans(Path(mne.__file__).parent / "data" / "fsaverage" / "fsaverage-trans.fif")

    # Work in head coordinates throughout (identity head<->MRI for the forward), so the sphere
    # centre, the sources and MNE's inside-the-brain check all share one frame.
    mri_to_head = np.linalg.inv(head_to_mri["trans"])
    rr = mne.transforms.apply_trans(mri_to_head, cortex.mid[cortex.source_vertices] / 1000.0)
    nn = cortex.normals[cortex.source_vertices] @ mri_to_head[:3, :3].T
    # The sphere is fitted to the scalp; some occipital and temporal-pole vertices poke out of
    # its brain shell. Pull those radially inside so that every dipole keeps a gain.
    r0 = sphere["r0"]
    r_brain = 0.98 * sphere["layers"][0]["rad"]
    d = np.linalg.norm(rr - r0, axis=1)
    outside = d > r_brain
    rr[outside] = r0 + (rr[outside] - r0) * (r_brain / d[outside])[:, None]

    src = mne.setup_volume_source_space(pos=dict(rr=rr, nn=nn), sphere=(0.0, 0.0, 0.0, 0.5), verbose=False)
    fwd = mne.make_forward_solution(info, None, src, sphere, meg=False, eeg=True, mindist=0.0, verbose=False)
    if fwd["nsource"] != len(rr):
        raise RuntimeError(f"forward model kept {fwd['nsource']} of {len(rr)} cortical sources")
    gain = fwd["sol"]["data"].reshape(len(names), -1, 3)
    return np.einsum("csk,sk->cs", gain, nn)


def parcel_lead_field(gain: np.ndarray) -> np.ndarray:
    """Gain ``[n_channels, 324]`` of each ico2 parcel as one synchronous patch.

    A parcel's field is the mean of its ico3 dipoles' fields, so folded parcels (sulcal walls
    facing each other) partly cancel, as real extended sources do.
    """
    cortex = load_cortex()
    out = np.zeros((gain.shape[0], cortex.n_parcels))
    np.add.at(out.T, cortex.source_parcel, gain.T)
    counts = np.bincount(cortex.source_parcel, minlength=cortex.n_parcels)
    return out / np.maximum(counts, 1)


# ----------------------------------------------------------------------------------------------
# fNIRS probe


# 10-10 positions around C3 (left) and C4 (right): sources on the edges of the 3x3 grid,
# detectors at its centre and corners, 8 neighbouring pairs (~35 mm apart) per hemisphere.
_PROBE_SOURCES = {"L": ("FC3", "CP3", "C5", "C1"), "R": ("FC4", "CP4", "C6", "C2")}
_PROBE_DETECTORS = {"L": ("C3", "FC5", "FC1", "CP5", "CP1"), "R": ("C4", "FC6", "FC2", "CP6", "CP2")}
_PROBE_PAIRS = {
    "L": (
        ("FC3", "C3"),
        ("CP3", "C3"),
        ("C5", "C3"),
        ("C1", "C3"),
        ("FC3", "FC5"),
        ("FC3", "FC1"),
        ("CP3", "CP5"),
        ("CP3", "CP1"),
    ),
    "R": (
        ("FC4", "C4"),
        ("CP4", "C4"),
        ("C6", "C4"),
        ("C2", "C4"),
        ("FC4", "FC6"),
        ("FC4", "FC2"),
        ("CP4", "CP6"),
        ("CP4", "CP2"),
    ),
}
NIRS_FOOTPRINT_MM = 10.0  # width of a channel's cortical sensitivity (banana cross-section)
#: Source-detector distance of the short-separation channels: light this close to its source
#: stays in the scalp and skull, so these channels record systemic physiology, not the cortex.
SHORT_SEPARATION_MM = 8.0


@dataclass(frozen=True)
class MotorProbe:
    """fNIRS optodes and channels over both motor cortices (mm).

    ``pairs`` are the long (cortical) channels, the ones the model predicts; ``short_pairs`` are
    the short-separation channels, whose detectors follow the long channels' detectors in
    ``detector_pos`` (so a long channel's indices do not depend on the short ones).
    """

    source_labels: tuple[str, ...]
    source_pos: np.ndarray  # [n_sources, 3]
    detector_labels: tuple[str, ...]
    detector_pos: np.ndarray  # [n_detectors, 3], long-channel detectors first, then short ones
    pairs: np.ndarray  # [n_channels, 2] zero-based (source, detector) of the long channels
    sensitivity: np.ndarray  # [n_channels, 20484] rows sum to 1
    short_pairs: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))  # [n_short, 2]

    @property
    def n_channels(self) -> int:
        """Number of long channels."""
        return len(self.pairs)

    @property
    def n_short_channels(self) -> int:
        return len(self.short_pairs)

    @property
    def all_pairs(self) -> np.ndarray:
        """Long channels, then short channels: the order of the raw SNIRF file."""
        return np.concatenate([self.pairs, self.short_pairs]).astype(np.int64)

    @property
    def short_distances(self) -> np.ndarray:
        return np.linalg.norm(
            self.source_pos[self.short_pairs[:, 0]] - self.detector_pos[self.short_pairs[:, 1]], axis=1
        )

    @property
    def short_channel_names(self) -> list[str]:
        return [f"S{s + 1}_D{d + 1}" for s, d in self.short_pairs]

    @property
    def midpoints(self) -> np.ndarray:
        return 0.5 * (self.source_pos[self.pairs[:, 0]] + self.detector_pos[self.pairs[:, 1]])

    @property
    def distances(self) -> np.ndarray:
        return np.linalg.norm(self.source_pos[self.pairs[:, 0]] - self.detector_pos[self.pairs[:, 1]], axis=1)

    @property
    def channel_names(self) -> list[str]:
        return [f"S{s + 1}_D{d + 1}" for s, d in self.pairs]


@functools.lru_cache(maxsize=1)
def motor_probe() -> MotorProbe:
    """The fNIRS probe used by every fNIRS site.

    Each long channel sees the cortex under its source-detector midpoint: the midpoint is
    projected to the nearest pial vertex and the sensitivity is a Gaussian footprint around it.
    Every source also has a short-separation detector ``SHORT_SEPARATION_MM`` away on the scalp
    (``short_detector_position``), the usual layout of short channels.
    """
    cortex = load_cortex()
    sources = _PROBE_SOURCES["L"] + _PROBE_SOURCES["R"]
    detectors = _PROBE_DETECTORS["L"] + _PROBE_DETECTORS["R"]
    pairs = np.array([(sources.index(s), detectors.index(d)) for h in ("L", "R") for s, d in _PROBE_PAIRS[h]])
    src_pos = standard_positions(sources)
    det_pos = standard_positions(detectors)
    mid = 0.5 * (src_pos[pairs[:, 0]] + det_pos[pairs[:, 1]])
    sens = np.zeros((len(pairs), FSAVERAGE5_POINTS))
    for c, m in enumerate(mid):
        hemi = 0 if m[0] < 0 else 1
        idx = np.flatnonzero(cortex.hemi == hemi)
        centre = cortex.pial[idx[np.argmin(np.linalg.norm(cortex.pial[idx] - m, axis=1))]]
        d2 = np.sum((cortex.pial - centre) ** 2, axis=1)
        w = np.exp(-d2 / (2.0 * NIRS_FOOTPRINT_MM**2))
        w[(cortex.hemi != hemi) | (w < 1e-3)] = 0.0
        sens[c] = w / w.sum()
    short_pos = np.array(
        [short_detector_position(src_pos[i], det_pos[pairs[pairs[:, 0] == i, 1]]) for i in range(len(sources))]
    )
    short_pairs = np.array([(i, len(detectors) + i) for i in range(len(sources))], dtype=np.int64)
    return MotorProbe(
        source_labels=sources,
        source_pos=src_pos,
        detector_labels=detectors + tuple(f"{s}-short" for s in sources),
        detector_pos=np.concatenate([det_pos, short_pos]),
        pairs=pairs,
        sensitivity=sens,
        short_pairs=short_pairs,
    )


def short_detector_position(
    source_mm: np.ndarray, long_detectors_mm: np.ndarray, separation_mm: float = SHORT_SEPARATION_MM
) -> np.ndarray:
    """A scalp point ``separation_mm`` (straight-line distance) from ``source_mm``, on the side
    of the source away from its long-channel detectors, so it lies under no long channel.

    The point stays on the sphere through the source centred on the head (``_head_centre``).
    """
    centre = _head_centre()
    radial = source_mm - centre
    radius = float(np.linalg.norm(radial))
    radial /= radius
    away = source_mm - np.mean(long_detectors_mm, axis=0)
    tangent = away - np.dot(away, radial) * radial
    tangent /= np.linalg.norm(tangent)
    angle = 2.0 * np.arcsin(separation_mm / (2.0 * radius))  # chord of length separation_mm
    return centre + radius * (np.cos(angle) * radial + np.sin(angle) * tangent)
