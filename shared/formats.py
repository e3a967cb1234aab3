"""Writers for the BIDS file formats the program outputs (docs/architecture.md §3: BIDS in, BIDS out).

Shared by the simulator (``fedneurogen.simulations.bids_writer``) and by synthesis
(``fedneurogen.shared.workflows.synthesis``):

- ``bids_name``: a file name from BIDS entities in the specification's order;
- ``write_tsv``, ``write_dataset_description``, ``write_bidsignore``: tabular files, the dataset's
  description, and the files the BIDS schema has no rule for;
- ``write_gifti_timeseries``: one hemisphere's surface time series as fMRIPrep writes it;
- ``write_snirf``: SNIRF 1.1 (https://github.com/fNIRS/snirf), raw continuous-wave intensity
  (``intensity_measurements``) or processed HbO/HbR (``haemoglobin_measurements``);
  ``read_snirf_probe`` reads a file's optode geometry back, to write new data on the same probe.

Every file is written atomically (a temporary file in the target directory, then a rename), so a
reader never sees half a file. Nothing here stamps the current time: the same inputs give the
same bytes.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fedneurogen.shared.io import atomic_path, write_json_atomic, write_text_atomic

BIDS_VERSION = "1.9.0"
#: Measurement date written into SNIRF metadata (fixed, so identical content gives identical bytes).
MEAS_DATE = datetime.datetime(2024, 1, 1, 9, 0, 0, tzinfo=datetime.UTC)
#: BIDS entities in the order the specification puts them in a file name (raw, then derivative).
ENTITY_ORDER = ("sub", "ses", "task", "acq", "ce", "rec", "dir", "run", "echo", "hemi", "space", "res", "den", "desc")


class TimedEvent(Protocol):
    """Anything with an onset, a duration (s) and a class: a row of ``_events.tsv``."""

    onset: float
    duration: float
    trial_type: str


# ----------------------------------------------------------------------------------------------
# Names, tables, descriptions


def bids_name(entities: Mapping[str, str | None], suffix: str, extension: str) -> str:
    """``{'sub': '01', 'task': 'visual', 'desc': 'generated'}, 'bold', '.json'`` ->
    ``sub-01_task-visual_desc-generated_bold.json``; None values are left out."""
    unknown = set(entities) - set(ENTITY_ORDER)
    if unknown:
        raise ValueError(f"unknown BIDS entities {sorted(unknown)}; known: {ENTITY_ORDER}")
    parts = [f"{key}-{entities[key]}" for key in ENTITY_ORDER if entities.get(key) is not None]
    return "_".join(parts + [suffix]) + extension


def write_tsv(path: Path, header: Sequence[str], rows: Sequence[Sequence]) -> Path:
    lines = ["\t".join(header)] + ["\t".join(_cell(v) for v in row) for row in rows]
    return write_text_atomic(path, "\n".join(lines) + "\n")


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def write_dataset_description(
    root: Path,
    name: str,
    derivative: bool = False,
    generated_by: Sequence[Mapping[str, Any]] | None = None,
    **fields: Any,
) -> Path:
    """``root/dataset_description.json``; a derivative dataset must say what generated it."""
    if derivative and not generated_by:
        raise ValueError("a derivative dataset_description.json needs GeneratedBy")
    desc: dict[str, Any] = {
        "Name": name,
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative" if derivative else "raw",
    }
    if generated_by:
        desc["GeneratedBy"] = [dict(g) for g in generated_by]
    desc.update(fields)
    return write_json_atomic(Path(root) / "dataset_description.json", desc)


def write_bidsignore(root: Path, lines: Sequence[str]) -> Path:
    """Write ``root/.bidsignore``: the files of a dataset that the BIDS schema has no rule for,
    which the BIDS validator then leaves out.

    Parameters
    ----------
    root : Path
        The dataset's folder.
    lines : sequence of str
        gitignore-style patterns, and ``#`` comments saying why.

    Returns
    -------
    Path
        The file written.
    """
    return write_text_atomic(Path(root) / ".bidsignore", "\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------------
# fMRI: surface time series

#: ``SpatialReference`` of a surface BOLD sidecar on fsaverage5 (BIDS: an object for several
#: references; one sidecar serves both hemispheres): the template's spheres in TemplateFlow.
FSAVERAGE5_SPATIAL_REFERENCE = {
    f"CIFTI_STRUCTURE_CORTEX_{side}": (
        f"https://templateflow.s3.amazonaws.com/tpl-fsaverage/tpl-fsaverage_hemi-{hemi}_den-10k_sphere.surf.gii"
    )
    for side, hemi in (("LEFT", "L"), ("RIGHT", "R"))
}
#: ``.bidsignore`` lines for surface BOLD as fMRIPrep writes it: the BIDS schema (1.2, BIDS 1.11)
#: has no rule for GIFTI time series (``.func.gii``), so the validator would call every such file
#: an error, and its sidecar one without a data file. (One pattern for both: the validator's
#: matcher misses ``*_space-fsaverage5_*bold.func.gii``, tried with bids-validator-deno 3.0.2.)
SURFACE_BOLD_BIDSIGNORE = (
    "# Surface BOLD on fsaverage5 as fMRIPrep writes it (GIFTI .func.gii and the JSON sidecar):",
    "# no rule in the BIDS schema yet for GIFTI time series.",
    "*_space-fsaverage5_*",
)


def write_gifti_timeseries(path: Path, data: np.ndarray, hemi: str, tr: float) -> Path:
    """Surface time series ``[n_vertices, n_tr]`` as fMRIPrep writes it: one float32 data array
    per volume (nilearn's ``load_surf_data`` reads it back as ``[n_vertices, n_tr]``)."""
    import nibabel as nib

    structure = {"L": "CortexLeft", "R": "CortexRight"}[hemi]
    darrays = [
        nib.gifti.GiftiDataArray(
            np.ascontiguousarray(data[:, k], dtype=np.float32),
            intent="NIFTI_INTENT_TIME_SERIES",
            datatype="NIFTI_TYPE_FLOAT32",
            encoding="GIFTI_ENCODING_B64BIN",  # noisy floats barely compress; zlib would triple the time
            meta=nib.gifti.GiftiMetaData({"TimeStep": f"{tr * 1000:g}"}) if k == 0 else None,
        )
        for k in range(data.shape[1])
    ]
    img = nib.gifti.GiftiImage(darrays=darrays, meta=nib.gifti.GiftiMetaData({"AnatomicalStructurePrimary": structure}))
    with atomic_path(path) as tmp:
        nib.save(img, tmp)
    return path


# ----------------------------------------------------------------------------------------------
# fNIRS: SNIRF 1.1


def intensity_measurements(pairs: Sequence[tuple[int, int]], n_wavelengths: int) -> list[dict]:
    """Raw CW intensity: one measurement per channel and wavelength, channel by channel,
    wavelengths ascending (the order MNE expects). ``pairs`` are 1-based (source, detector)."""
    return [dict(source=s, detector=d, wavelength=w + 1) for s, d in pairs for w in range(n_wavelengths)]


def haemoglobin_measurements(pairs: Sequence[tuple[int, int]]) -> list[dict]:
    """Processed concentration: HbO then HbR per channel. ``pairs`` are 1-based (source, detector)."""
    return [dict(source=s, detector=d, label=label) for s, d in pairs for label in ("HbO", "HbR")]


def _h5_str(group, name: str, value: str | Sequence[str]) -> None:
    """A string (or a 1-D array of strings) as SNIRF wants it: variable-length UTF-8 (a
    fixed-length string is what the format's validator, ``snirf.validateSnirf``, warns about)."""
    import h5py

    data = value if isinstance(value, str) else np.array(list(value), dtype=object)
    group.create_dataset(name, data=data, dtype=h5py.string_dtype("utf-8"))


def write_snirf(
    path: Path,
    data: np.ndarray,
    sfreq: float,
    measurements: Sequence[dict],
    wavelengths: Sequence[float],
    source_pos_mm: np.ndarray,
    detector_pos_mm: np.ndarray,
    source_labels: Sequence[str],
    detector_labels: Sequence[str],
    events: Sequence[TimedEvent],
    subject_id: str,
) -> Path:
    """Write a SNIRF file. ``data`` is ``[n_times, n_measurements]``.

    Each measurement dict has ``source``, ``detector`` (1-based), and either ``wavelength``
    (1-based index; raw continuous-wave intensity, dataType 1) or ``label`` ``"HbO"``/``"HbR"``
    (processed concentration in uM, dataType 99999); see ``intensity_measurements`` and
    ``haemoglobin_measurements``.
    """
    import h5py

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w", track_order=False) as f:
            _h5_str(f, "formatVersion", "1.1")
            nirs = _group(f, "nirs")
            meta = _group(nirs, "metaDataTags")
            tags = {
                "SubjectID": subject_id,
                "MeasurementDate": MEAS_DATE.strftime("%Y-%m-%d"),
                "MeasurementTime": MEAS_DATE.strftime("%H:%M:%SZ"),
                "LengthUnit": "mm",
                "TimeUnit": "s",
                "FrequencyUnit": "Hz",
            }
            for key, value in tags.items():
                _h5_str(meta, key, value)
            d1 = _group(nirs, "data1")
            d1.create_dataset("dataTimeSeries", data=np.asarray(data, dtype=np.float64))
            d1.create_dataset("time", data=np.arange(data.shape[0], dtype=np.float64) / sfreq)
            for k, m in enumerate(measurements, start=1):
                ml = _group(d1, f"measurementList{k}")
                ml.create_dataset("sourceIndex", data=np.int32(m["source"]))
                ml.create_dataset("detectorIndex", data=np.int32(m["detector"]))
                ml.create_dataset("wavelengthIndex", data=np.int32(m.get("wavelength", 1)))
                ml.create_dataset("dataTypeIndex", data=np.int32(1))
                if "label" in m:
                    ml.create_dataset("dataType", data=np.int32(99999))
                    _h5_str(ml, "dataTypeLabel", m["label"])
                    _h5_str(ml, "dataUnit", "umol/L")
                else:
                    ml.create_dataset("dataType", data=np.int32(1))
            probe = _group(nirs, "probe")
            probe.create_dataset("wavelengths", data=np.asarray(wavelengths, dtype=np.float64))
            probe.create_dataset("sourcePos3D", data=np.asarray(source_pos_mm, dtype=np.float64))
            probe.create_dataset("detectorPos3D", data=np.asarray(detector_pos_mm, dtype=np.float64))
            _h5_str(probe, "sourceLabels", source_labels)
            _h5_str(probe, "detectorLabels", detector_labels)
            for j, cls in enumerate(sorted({e.trial_type for e in events}), start=1):
                stim = _group(nirs, f"stim{j}")
                _h5_str(stim, "name", cls)
                rows = [(e.onset, e.duration, 1.0) for e in events if e.trial_type == cls]
                stim.create_dataset("data", data=np.array(rows, dtype=np.float64))
    return path


def _group(parent, name: str):
    """A group without modification timestamps, so identical content gives identical bytes."""
    import h5py

    gcpl = h5py.h5p.create(h5py.h5p.GROUP_CREATE)
    gcpl.set_obj_track_times(False)
    return h5py.Group(h5py.h5g.create(parent.id, name.encode(), gcpl=gcpl))


@dataclass(frozen=True)
class SnirfProbe:
    """The optode geometry of a SNIRF file (positions in mm)."""

    source_pos_mm: np.ndarray  # [n_sources, 3]
    detector_pos_mm: np.ndarray  # [n_detectors, 3]
    source_labels: list[str]
    detector_labels: list[str]
    wavelengths: list[float]


_LENGTH_TO_MM = {"mm": 1.0, "cm": 10.0, "m": 1000.0}


def read_snirf_probe(path: str | Path) -> SnirfProbe:
    """Optodes and wavelengths of a SNIRF file, for writing new data on the same probe.

    Raises ``ValueError`` when the file has no 3-D optode positions or an unknown length unit."""
    import h5py

    def text(value) -> str:
        value = np.asarray(value).ravel()[0]
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    with h5py.File(path, "r") as f:
        probe, tags = f["nirs/probe"], f["nirs/metaDataTags"]
        if "sourcePos3D" not in probe or "detectorPos3D" not in probe:
            raise ValueError(f"{path}: no sourcePos3D/detectorPos3D in nirs/probe")
        unit = text(tags["LengthUnit"][()]) if "LengthUnit" in tags else "mm"
        if unit not in _LENGTH_TO_MM:
            raise ValueError(f"{path}: unknown LengthUnit {unit!r}")
        scale = _LENGTH_TO_MM[unit]
        sources = np.asarray(probe["sourcePos3D"][()], dtype=np.float64) * scale
        detectors = np.asarray(probe["detectorPos3D"][()], dtype=np.float64) * scale

        def labels(key: str, prefix: str, n: int) -> list[str]:
            if key not in probe:
                return [f"{prefix}{i + 1}" for i in range(n)]
            return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in np.asarray(probe[key][()]).ravel()]

        return SnirfProbe(
            source_pos_mm=sources,
            detector_pos_mm=detectors,
            source_labels=labels("sourceLabels", "S", len(sources)),
            detector_labels=labels("detectorLabels", "D", len(detectors)),
            wavelengths=[float(w) for w in np.asarray(probe["wavelengths"][()]).ravel()]
            if "wavelengths" in probe
            else [],
        )
