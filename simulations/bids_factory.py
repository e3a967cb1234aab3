"""Tiny, valid BIDS sites with simple, known signals (written with MNE, pybv, nibabel, h5py).

Not the physiological simulator (``simulator.py``): the signals are simple and known, so the
data-layer tests can check the readers against them, and the data benchmarks can write sites of
any size quickly. Every writer is also usable on its own, so a test can build a broken file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import mne
import nibabel as nib
import numpy as np

from fedneurogen.shared.surface import FSAVERAGE5_PER_HEMI

STANDARD_CHANNELS = ["Fp1", "Fp2", "F3", "F4", "C3", "C4", "P3", "P4", "O1", "O2", "Cz", "Pz"]
FMRI_CLASSES = ["faces", "scenes", "tools", "motion"]
FNIRS_CLASSES = ["left", "right"]
WAVELENGTHS = (760, 850)
#: MNE's absorption coefficients (``0.2303 * extinction``, per M per ...) at 760/850 nm, rows =
#: wavelength, columns = (HbO, HbR): with these the factory's intensities invert exactly.
ABSORPTION = np.array([[134.9558, 356.624156], [243.6574, 159.210996]])
# Two sources and two detectors over each motor cortex (MNI mm); channels are the 30 mm pairs.
SOURCES = np.array([[-40.0, -20.0, 70.0], [40.0, -20.0, 70.0]])
DETECTORS = np.array([[-40.0, -50.0, 65.0], [-40.0, 10.0, 65.0], [40.0, -50.0, 65.0], [40.0, 10.0, 65.0]])
PAIRS = [(1, 1), (1, 2), (2, 3), (2, 4)]  # (source, detector), 1-based as in SNIRF


def write_json(path: Path, obj: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))
    return path


def write_tsv(path: Path, columns: dict[str, list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(columns)
    rows = ["\t".join(names)] + ["\t".join(str(columns[c][i]) for c in names) for i in range(len(columns[names[0]]))]
    path.write_text("\n".join(rows) + "\n")
    return path


def block_events(duration: float, classes: list[str], block: float = 12.0, period: float = 16.0) -> dict[str, list]:
    """A block design: one ``block``-second event every ``period`` seconds, classes in turn."""
    onsets = np.arange(2.0, duration - block, period)
    return {
        "onset": [f"{o:.1f}" for o in onsets],
        "duration": [f"{block:.1f}"] * len(onsets),
        "trial_type": [classes[i % len(classes)] for i in range(len(onsets))],
    }


def slow_signal(times: np.ndarray, rng: np.random.Generator, n: int = 1) -> np.ndarray:
    """Smooth random signals (sum of sines at 0.02-0.08 Hz), shape ``[n, len(times)]``."""
    freqs = rng.uniform(0.02, 0.08, size=(n, 4, 1))
    phases = rng.uniform(0, 2 * np.pi, size=(n, 4, 1))
    return np.sin(2 * np.pi * freqs * times + phases).sum(axis=1) / 2.0


def write_eeg(path: Path, data: np.ndarray, sfreq: float, ch_names: list[str], ch_types: list[str]) -> Path:
    """Write EEG (volts) as EDF, BrainVision (``.vhdr``) or FIF, chosen by ``path``'s extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    info = mne.create_info(ch_names, sfreq, ch_types)
    raw = mne.io.RawArray(data, info, verbose="error")
    ext = path.suffix.lower()
    if ext == ".edf":
        mne.export.export_raw(path, raw, fmt="edf", overwrite=True, verbose="error")
    elif ext == ".vhdr":
        import pybv

        pybv.write_brainvision(
            data=data, sfreq=sfreq, ch_names=ch_names, fname_base=path.stem, folder_out=path.parent,
            fmt="binary_float32", unit="µV", overwrite=True,
        )  # fmt: skip
    elif ext == ".fif":
        raw.save(path, overwrite=True, verbose="error")
    else:
        raise ValueError(f"factory cannot write {ext}")
    return path


def write_gifti(path: Path, data: np.ndarray, tr: float | None = None) -> Path:
    """One hemisphere of BOLD, ``data[n_vertices, n_vols]``, one data array per volume (fMRIPrep);
    with ``tr`` the first array records ``TimeStep`` (ms), as fMRIPrep's do."""
    path.parent.mkdir(parents=True, exist_ok=True)
    darrays = [nib.gifti.GiftiDataArray(np.ascontiguousarray(col, dtype=np.float32)) for col in data.T]
    if tr is not None:
        darrays[0].meta = nib.gifti.GiftiMetaData({"TimeStep": f"{tr * 1000:g}"})
    nib.save(nib.gifti.GiftiImage(darrays=darrays), path)
    return path


def write_volume(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), path)
    return path


def _bytes(text: str) -> np.bytes_:
    return np.bytes_(text.encode())


def write_snirf(
    path: Path,
    data: np.ndarray,
    sfreq: float,
    kind: str = "intensity",
    sources: np.ndarray = SOURCES,
    detectors: np.ndarray = DETECTORS,
    pairs: list[tuple[int, int]] = PAIRS,
) -> Path:
    """SNIRF 1.0 file. ``kind="intensity"``: data rows are (pair, wavelength) in order;
    ``kind="hb"``: rows are (pair, HbO/HbR) in mol/L as processed data (dataType 99999)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("formatVersion", data=_bytes("1.0"))
        nirs = f.create_group("nirs")
        meta = nirs.create_group("metaDataTags")
        for key, value in {
            "SubjectID": "sub", "MeasurementDate": "2024-01-01", "MeasurementTime": "12:00:00",
            "LengthUnit": "mm", "TimeUnit": "s", "FrequencyUnit": "Hz",
        }.items():  # fmt: skip
            meta.create_dataset(key, data=_bytes(value))
        d1 = nirs.create_group("data1")
        d1.create_dataset("dataTimeSeries", data=np.ascontiguousarray(data.T, dtype=np.float64))
        d1.create_dataset("time", data=np.arange(data.shape[1]) / sfreq)
        k = 1
        for src, det in pairs:
            for j in range(2):
                ml = d1.create_group(f"measurementList{k}")
                ml.create_dataset("sourceIndex", data=np.int32(src))
                ml.create_dataset("detectorIndex", data=np.int32(det))
                ml.create_dataset("wavelengthIndex", data=np.int32(j + 1))
                if kind == "intensity":
                    ml.create_dataset("dataType", data=np.int32(1))
                    ml.create_dataset("dataTypeIndex", data=np.int32(1))
                else:
                    ml.create_dataset("dataType", data=np.int32(99999))
                    ml.create_dataset("dataTypeIndex", data=np.int32(1))
                    ml.create_dataset("dataTypeLabel", data=_bytes(["HbO", "HbR"][j]))
                    ml.create_dataset("dataUnit", data=_bytes("M"))
                k += 1
        probe = nirs.create_group("probe")
        probe.create_dataset("wavelengths", data=np.array(WAVELENGTHS, dtype=float))
        probe.create_dataset("sourcePos3D", data=sources)
        probe.create_dataset("detectorPos3D", data=detectors)
    return path


def hb_to_intensity(hb: np.ndarray, ppf: float = 6.0, pairs=PAIRS) -> np.ndarray:
    """Modified Beer-Lambert forward model: rows (pair, HbO/HbR) in M -> rows (pair, wavelength)."""
    out = np.empty_like(hb)
    for p, (src, det) in enumerate(pairs):
        distance = np.linalg.norm(SOURCES[src - 1] - DETECTORS[det - 1]) / 1000.0  # m
        od = (ABSORPTION * distance * ppf) @ hb[2 * p : 2 * p + 2] * 1e3  # inverse of MNE's "* 1e-3"
        out[2 * p : 2 * p + 2] = 1.0 * np.exp(-od)
    return out


@dataclass
class SiteSpec:
    """What to write; defaults give a small valid EEG-fMRI site."""

    modality: str = "fmri"  # "fmri" or "fnirs"
    subjects: tuple[str, ...] = ("01", "02")
    runs: tuple[int, ...] = (1,)
    duration: float = 64.0
    eeg_format: str = ".edf"
    eeg_sfreq: float = 250.0
    channels: list[str] = field(default_factory=lambda: list(STANDARD_CHANNELS))
    eog: bool = True
    tr: float = 2.0
    fmri_space: str = "surface"  # or "volume"
    nirs_sfreq: float = 10.0
    line_freq: float = 50.0
    electrodes: dict[str, tuple[float, float, float]] | None = None  # name -> xyz in mm
    participants: bool = True
    seed: int = 0


def make_site(root: Path, spec: SiteSpec | None = None, name: str = "site-01") -> Path:
    """Write a BIDS site under ``root/name`` and return its path."""
    spec = spec or SiteSpec()
    rng = np.random.default_rng(spec.seed)
    site = Path(root) / name
    write_json(site / "dataset_description.json", {"Name": f"test {name}", "BIDSVersion": "1.9.0"})
    if spec.participants:
        write_tsv(
            site / "participants.tsv",
            {
                "participant_id": [f"sub-{s}" for s in spec.subjects],
                "sex": ["F" if i % 2 == 0 else "M" for i in range(len(spec.subjects))],
                "age": [20 + 3 * i for i in range(len(spec.subjects))],
                "group": ["A" if i % 2 == 0 else "B" for i in range(len(spec.subjects))],
            },
        )
    task = "visual" if spec.modality == "fmri" else "motor"
    classes = FMRI_CLASSES if spec.modality == "fmri" else FNIRS_CLASSES
    for sub in spec.subjects:
        for run in spec.runs:
            stem = f"sub-{sub}_task-{task}_run-{run}"
            write_eeg_run(site, sub, stem, spec, rng, classes)
            if spec.modality == "fmri":
                write_fmri_run(site, sub, stem, spec, rng)
            else:
                write_fnirs_run(site, sub, stem, spec, rng)
    return site


def eeg_signals(spec: SiteSpec, rng: np.random.Generator, n_channels: int) -> np.ndarray:
    """Band-limited (2-90 Hz) noise + 10 Hz alpha + line noise, in volts, ``[n_channels, n_times]``."""
    n = int(round(spec.duration * spec.eeg_sfreq))
    t = np.arange(n) / spec.eeg_sfreq
    spectrum = np.fft.rfft(rng.standard_normal((n_channels, n)), axis=1)
    f = np.fft.rfftfreq(n, 1 / spec.eeg_sfreq)
    spectrum[:, (f < 2) | (f > 90)] = 0
    noise = np.fft.irfft(spectrum, n=n, axis=1)
    noise *= 10e-6 / noise.std(axis=1, keepdims=True)
    alpha = 10e-6 * (1 + 0.5 * slow_signal(t, rng)) * np.sin(2 * np.pi * 10 * t)
    line = 20e-6 * np.sin(2 * np.pi * spec.line_freq * t)
    return noise + alpha + line


def write_eeg_run(site: Path, sub: str, stem: str, spec: SiteSpec, rng, classes) -> Path:
    eeg_dir = site / f"sub-{sub}" / "eeg"
    names = list(spec.channels) + (["EOG"] if spec.eog else [])
    types = ["eeg"] * len(spec.channels) + (["eog"] if spec.eog else [])
    data = eeg_signals(spec, rng, len(names))
    if spec.eog:
        # Blinks: 150 uV pulses in EOG, leaking into frontal channels.
        t = np.arange(data.shape[1]) / spec.eeg_sfreq
        blinks = sum(np.exp(-((t - c) ** 2) / (2 * 0.1**2)) for c in rng.uniform(1, spec.duration - 1, 12))
        data[-1] += 150e-6 * blinks
        for i, n in enumerate(spec.channels):
            if n.lower().startswith("fp"):
                data[i] += 60e-6 * blinks
    path = write_eeg(eeg_dir / f"{stem}_eeg{spec.eeg_format}", data, spec.eeg_sfreq, names, types)
    write_json(
        eeg_dir / f"{stem}_eeg.json",
        {"TaskName": stem.split("task-")[1].split("_")[0], "SamplingFrequency": spec.eeg_sfreq,
         "PowerLineFrequency": spec.line_freq, "EEGReference": "Cz", "SoftwareFilters": "n/a"},
    )  # fmt: skip
    write_tsv(
        eeg_dir / f"{stem}_channels.tsv",
        {
            "name": names,
            "type": [t.upper() for t in types],
            "units": ["V"] * len(names),
            "status": ["good"] * len(names),
        },
    )
    write_tsv(eeg_dir / f"{stem}_events.tsv", block_events(spec.duration, classes))
    if spec.electrodes:
        write_tsv(
            eeg_dir / f"sub-{sub}_electrodes.tsv",
            {
                "name": list(spec.electrodes),
                "x": [v[0] / 1000 for v in spec.electrodes.values()],
                "y": [v[1] / 1000 for v in spec.electrodes.values()],
                "z": [v[2] / 1000 for v in spec.electrodes.values()],
            },
        )
        write_json(
            eeg_dir / f"sub-{sub}_coordsystem.json",
            {"EEGCoordinateSystem": "MNI152NLin2009cAsym", "EEGCoordinateUnits": "m"},
        )
    return path


def fmri_dir(site: Path, sub: str) -> Path:
    return site / "derivatives" / "fmriprep" / f"sub-{sub}" / "func"


def surface_bold(n_vols: int, tr: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random-weight mixtures of slow signals, ``(left, right)`` each ``[10242, n_vols]``."""
    t = np.arange(n_vols) * tr
    sources = slow_signal(t, rng, n=3)
    hemis = []
    for _ in range(2):
        weights = rng.standard_normal((FSAVERAGE5_PER_HEMI, 3))
        hemis.append(100 + weights @ sources + 0.3 * rng.standard_normal((FSAVERAGE5_PER_HEMI, n_vols)))
    return hemis[0], hemis[1]


def write_fmri_run(site: Path, sub: str, stem: str, spec: SiteSpec, rng) -> list[Path]:
    n_vols = int(round(spec.duration / spec.tr))
    out = fmri_dir(site, sub)
    write_json(site / f"sub-{sub}" / "func" / f"{stem}_bold.json", {"RepetitionTime": spec.tr, "TaskName": "visual"})
    write_tsv(site / f"sub-{sub}" / "func" / f"{stem}_events.tsv", block_events(spec.duration, FMRI_CLASSES))
    if spec.fmri_space == "volume":
        data, affine = mni_volume(n_vols, spec.tr)
        path = write_volume(out / f"{stem}_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz", data, affine)
        write_json(path.with_name(path.name.replace(".nii.gz", ".json")), {"RepetitionTime": spec.tr})
        return [path]
    left, right = surface_bold(n_vols, spec.tr, rng)
    paths = [
        write_gifti(out / f"{stem}_hemi-L_space-fsaverage5_bold.func.gii", left, spec.tr),
        write_gifti(out / f"{stem}_hemi-R_space-fsaverage5_bold.func.gii", right, spec.tr),
    ]
    write_json(out / f"{stem}_space-fsaverage5_bold.json", {"RepetitionTime": spec.tr})
    return paths


#: Travelling wave used by ``mni_volume``: period (s) and phase per mm along x.
WAVE_PERIOD, WAVE_PHASE_PER_MM = 20.0, 1.0 / 30.0


def mni_volume(n_vols: int, tr: float, voxel: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
    """A 4-D MNI-space image whose value is ``sin(2 pi t / 20 + x / 30)``: phase follows x (mm)."""
    affine = np.diag([voxel, voxel, voxel, 1.0])
    affine[:3, 3] = [-96.0, -132.0, -78.0]
    shape = (int(192 / voxel) + 1, int(228 / voxel) + 1, int(192 / voxel) + 1)
    x = affine[0, 3] + voxel * np.arange(shape[0])
    t = np.arange(n_vols) * tr
    wave = np.sin(2 * np.pi * t[None, :] / WAVE_PERIOD + WAVE_PHASE_PER_MM * x[:, None])  # [nx, nt]
    data = np.broadcast_to(wave[:, None, None, :], shape + (n_vols,)).copy()
    return data, affine


def write_fnirs_run(site: Path, sub: str, stem: str, spec: SiteSpec, rng) -> Path:
    n = int(round(spec.duration * spec.nirs_sfreq))
    t = np.arange(n) / spec.nirs_sfreq
    hbo = 1e-6 * slow_signal(t, rng, n=len(PAIRS))
    hbr = -0.3 * hbo + 0.2e-6 * slow_signal(t, rng, n=len(PAIRS))
    hb = np.empty((2 * len(PAIRS), n))
    hb[0::2], hb[1::2] = hbo, hbr
    nirs_dir = site / f"sub-{sub}" / "nirs"
    path = write_snirf(nirs_dir / f"{stem}_nirs.snirf", hb_to_intensity(hb), spec.nirs_sfreq)
    write_json(nirs_dir / f"{stem}_nirs.json", {"SamplingFrequency": spec.nirs_sfreq, "TaskName": "motor"})
    write_tsv(nirs_dir / f"{stem}_events.tsv", block_events(spec.duration, FNIRS_CLASSES))
    return path
