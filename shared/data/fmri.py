"""Reading fMRI BOLD onto the fsaverage ico4 target space (docs/architecture.md §3).

Input is fMRIPrep output: surface GIFTI (``hemi-L``/``hemi-R``, fsaverage5: 10242 vertices per
hemisphere) or volume NIfTI in MNI152NLin2009cAsym, which is sampled between the fsaverage5
white and pial surfaces with ``nilearn.surface.vol_to_surf``. fsaverage meshes are nested
icosahedra, so the first 2562 vertices of each hemisphere are ico4; points are left then right
(5124), positioned on the fsaverage5 pial surface (mm).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from ..config import PreprocessConfig
from ..errors import DataError
from ..recording import Recording
from ..surface import (
    FSAVERAGE5_PER_HEMI,
    FSAVERAGE_VERTICES,
    HEMISPHERES,
    ICO4_PER_HEMI,
    ico4_names,
    load_fsaverage5,
    load_ico4_positions,
)
from .bids import parse_bids_name, read_json, tr_sidecar_candidates
from .eeg import check_finite

# --- repetition time ----------------------------------------------------------------------------


def repetition_time(bold_path: str | Path, sidecars: Sequence[Path] | None = None) -> float:
    """``RepetitionTime`` (s) from the first sidecar that has it.

    ``sidecars`` defaults to ``tr_sidecar_candidates(bold_path)``: the derivative's own JSON,
    the per-hemisphere JSON, the raw ``sub-X/func/..._bold.json``, inherited raw sidecars.
    """
    return repetition_time_and_source(bold_path, sidecars)[0]


def repetition_time_and_source(bold_path: str | Path, sidecars: Sequence[Path] | None = None) -> tuple[float, Path]:
    """``repetition_time`` and the sidecar it came from."""
    bold_path = Path(bold_path)
    if sidecars is None:
        sidecars = tr_sidecar_candidates(bold_path)
    for sidecar in sidecars:
        value = read_json(sidecar).get("RepetitionTime")
        if value is None:
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= 30:
            raise DataError(sidecar, f"RepetitionTime must be a number of seconds in (0, 30], got {value!r}")
        return float(value), Path(sidecar)
    searched = ", ".join(p.name for p in sidecars) or "no sidecar JSON found"
    raise DataError(
        bold_path,
        f'missing RepetitionTime: no sidecar gives the TR (searched: {searched}); add "RepetitionTime" '
        "to the derivative's _bold.json or the raw func/_bold.json",
    )


_GIFTI_TIME_STEP = re.compile(
    rb"<Name>\s*(?:<!\[CDATA\[)?TimeStep(?:\]\]>)?\s*</Name>\s*<Value>\s*(?:<!\[CDATA\[)?([0-9.eE+-]+)"
)


def file_time_step(path: Path) -> float | None:
    """The volume spacing (s) a BOLD file itself records, if any: a GIFTI's ``TimeStep``
    metadata (ms; read from the file's first 256 KB, where the first data array's metadata is)
    or a NIfTI's fourth voxel size (``pixdim[4]``) when the header names its time unit (many
    writers leave an unset 1 there)."""
    path = Path(path)
    if path.name.endswith(".gii"):
        with open(path, "rb") as f:
            found = _GIFTI_TIME_STEP.search(f.read(1 << 18))
        return float(found.group(1)) / 1000.0 if found else None
    if path.name.endswith((".nii", ".nii.gz")):
        header = nib.load(path).header
        zooms = header.get_zooms()
        if len(zooms) < 4 or not zooms[3] > 0:
            return None
        scale = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}.get(header.get_xyzt_units()[1])
        return float(zooms[3]) * scale if scale is not None else None
    return None


def check_repetition_time(tr: float, sidecar: Path, bold: Path, n_volumes: int) -> None:
    """Refuse a sidecar TR that disagrees with the BOLD file's own volume spacing by enough to
    shift the run's end by more than a second (or half a TR): the EEG-BOLD pairing would slide
    by more than the hemodynamic lag's precision."""
    recorded = file_time_step(bold)
    if recorded is None:
        return
    drift = abs(tr - recorded) * max(n_volumes - 1, 1)
    if drift > min(1.0, tr / 2):
        raise DataError(
            sidecar,
            f"RepetitionTime {tr:g} s disagrees with the {recorded * 1000:g} ms volume spacing recorded in {bold.name} "
            f"({drift:.1f} s drift over its {n_volumes} volumes); correct whichever is wrong",
        )


# --- loading ------------------------------------------------------------------------------------


def _hemi_of(path: Path) -> str | None:
    return parse_bids_name(path.name).entities.get("hemi")


def _load_gifti(path: Path) -> np.ndarray:
    """One hemisphere's BOLD as ``[2562, n_vols]`` (ico4 part), checked."""
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        img = nib.load(path)
        arrays = [np.asarray(d.data) for d in img.darrays]
    except Exception as err:  # noqa: BLE001 - nibabel raises many kinds for broken XML/base64
        raise DataError(path, f"cannot be read as GIFTI ({type(err).__name__}: {err})") from None
    if not arrays:
        raise DataError(path, "GIFTI file holds no data arrays")
    if len(arrays) == 1 and arrays[0].ndim == 2:
        data = arrays[0]  # one [n_vertices, n_vols] array
    else:
        if any(a.ndim != 1 or a.shape != arrays[0].shape for a in arrays):
            shapes = sorted({a.shape for a in arrays})
            raise DataError(path, f"GIFTI data arrays have inconsistent shapes {shapes}; expected one per volume")
        data = np.stack(arrays, axis=1)
    n_vertices = data.shape[0]
    if n_vertices not in FSAVERAGE_VERTICES:
        raise DataError(
            path,
            f"has {n_vertices} vertices per volume; expected {FSAVERAGE5_PER_HEMI} (fsaverage5 hemisphere) "
            f"or another fsaverage mesh ({', '.join(str(n) for n in FSAVERAGE_VERTICES if n != FSAVERAGE5_PER_HEMI)})",
        )
    data = np.asarray(data[:ICO4_PER_HEMI], dtype=np.float32)
    check_finite(path, data, [f"vertex {i}" for i in range(ICO4_PER_HEMI)])
    return data


def load_surface_bold(paths: Sequence[Path]) -> np.ndarray:
    """Left and right GIFTI as ico4 BOLD ``[5124, n_vols]`` (raw values)."""
    by_hemi = {_hemi_of(p): p for p in paths}
    if set(by_hemi) != {"L", "R"}:
        missing = sorted({"L", "R"} - set(by_hemi))
        raise DataError(
            paths[0], f"surface BOLD needs both hemispheres (hemi-L and hemi-R); missing hemi-{', hemi-'.join(missing)}"
        )
    left, right = _load_gifti(by_hemi["L"]), _load_gifti(by_hemi["R"])
    if left.shape[1] != right.shape[1]:
        raise DataError(by_hemi["R"], f"has {right.shape[1]} volumes but {by_hemi['L'].name} has {left.shape[1]}")
    return np.vstack([left, right])


def load_volume(path: Path) -> nib.Nifti1Image:
    """A 4-D BOLD NIfTI as float32, checked for shape and finite values."""
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        img = nib.load(path)
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as err:  # noqa: BLE001 - truncated gzip, bad header, ...
        raise DataError(path, f"cannot be read as NIfTI ({type(err).__name__}: {err})") from None
    if data.ndim != 4 or data.shape[3] < 2:
        raise DataError(path, f"BOLD must be a 4-D image with at least 2 volumes, got shape {data.shape}")
    n_bad = int((~np.isfinite(data)).sum())
    if n_bad:
        raise DataError(path, f"contains {n_bad} NaN/inf voxel values")
    return nib.Nifti1Image(data, img.affine)


def project_volume(img: nib.Nifti1Image) -> np.ndarray:
    """Sample an MNI-space BOLD volume onto ico4 (``[5124, n_vols]``), pial-to-white ribbon."""
    from nilearn.surface import vol_to_surf

    fsavg = load_fsaverage5()
    parts = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nilearn notices about mesh/affine details
        for hemi in HEMISPHERES:
            texture = vol_to_surf(img, fsavg["pial"].parts[hemi], inner_mesh=fsavg["white_matter"].parts[hemi])
            parts.append(np.asarray(texture, dtype=np.float32)[:ICO4_PER_HEMI])
    data = np.vstack(parts)
    # Vertices whose ribbon falls outside the volume's field of view come back NaN.
    return np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)


def load_bold(paths: Sequence[Path]) -> np.ndarray:
    """ico4 BOLD ``[5124, n_vols]`` from GIFTI pair or NIfTI volume, before resampling/z-scoring."""
    paths = [Path(p) for p in paths]
    if len(paths) == 1 and paths[0].name.endswith((".nii", ".nii.gz")):
        img = load_volume(paths[0])
        try:
            return project_volume(img)
        except (ValueError, RuntimeError, MemoryError) as err:
            raise DataError(paths[0], f"cannot be projected onto fsaverage5 ({type(err).__name__}: {err})") from None
    if all(p.name.endswith(".gii") for p in paths):
        return load_surface_bold(paths)
    raise DataError(paths[0], "expected a hemi-L/hemi-R GIFTI pair (.func.gii) or one NIfTI volume (.nii.gz)")


# --- resampling and normalisation ---------------------------------------------------------------


def resample_to_grid(data: np.ndarray, tr: float, sfreq: float) -> np.ndarray:
    """Linearly interpolate volumes at ``k * tr`` onto the grid ``j / sfreq`` (same span).

    A 2.1 s TR site lands on the 2.0 s grid; the grid never extends past the last volume.
    """
    step = 1.0 / sfreq
    if math.isclose(tr, step, rel_tol=1e-6):
        return data
    t_in = np.arange(data.shape[1]) * tr
    n_out = int(math.floor(t_in[-1] / step + 1e-9)) + 1
    t_out = np.arange(n_out) * step
    # Interpolation weights shared by all vertices: out = data[:, i] * (1 - w) + data[:, i + 1] * w
    idx = np.clip(np.searchsorted(t_in, t_out, side="right") - 1, 0, len(t_in) - 2)
    w = ((t_out - t_in[idx]) / tr).astype(np.float32)
    return data[:, idx] * (1 - w) + data[:, idx + 1] * w


def zscore(data: np.ndarray) -> np.ndarray:
    """Per-row z-score (computed in float64: BOLD sits on a large offset); constant rows
    (e.g. the medial wall) become zeros."""
    data = np.asarray(data, dtype=np.float64)
    mean = data.mean(axis=1, keepdims=True)
    std = data.std(axis=1, keepdims=True)
    return np.where(std > 0, (data - mean) / np.where(std > 0, std, 1), 0).astype(np.float32)


def read_fmri(
    paths: str | Path | Sequence[str | Path],
    config: PreprocessConfig | None = None,
    *,
    tr: float | None = None,
    sidecars: Sequence[Path] | None = None,
) -> Recording:
    """Read one fMRI run as ico4 BOLD on the common time grid.

    Parameters
    ----------
    paths : path or sequence of paths
        ``[hemi-L, hemi-R]`` fsaverage5 GIFTI files, or one MNI152NLin2009cAsym NIfTI.
    config : PreprocessConfig, optional
        ``fmri_sfreq`` (the common grid) and ``fmri_zscore``.
    tr : float, optional
        Repetition time in seconds; read from the sidecar JSON (``RepetitionTime``) when omitted.
    sidecars : sequence of paths, optional
        JSON files to search for the TR, best first (default: found next to the BOLD files).

    Returns
    -------
    Recording
        ``[5124, n_times]`` at ``config.fmri_sfreq``, z-scored per vertex (after resampling, so
        the output itself has zero mean and unit variance per vertex).
    """
    config = config or PreprocessConfig()
    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    if not paths:
        raise ValueError("read_fmri needs at least one file")
    source = None
    if tr is None:
        tr, source = repetition_time_and_source(paths[0], sidecars)
    data = load_bold(paths)
    if data.shape[1] < 2:
        raise DataError(paths[0], f"holds {data.shape[1]} volume(s); need at least 2")
    if source is not None:
        check_repetition_time(tr, source, paths[0], data.shape[1])
    data = resample_to_grid(data, tr, config.fmri_sfreq)
    if config.fmri_zscore:
        data = zscore(data)
    return Recording(
        data=data, sfreq=config.fmri_sfreq, positions=load_ico4_positions(), names=list(ico4_names()), modality="fmri"
    )
