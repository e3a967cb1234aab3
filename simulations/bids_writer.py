"""Writers for the BIDS layout of ``docs/data-contract.md``.

The file formats themselves (TSV, GIFTI, SNIRF, dataset descriptions) are written by
``fedneurogen.shared.formats``, which synthesis shares; this module lays out the simulator's
files and sidecars. Every file is written atomically (a temporary file in the target directory,
then a rename), so a reader never sees half a file. The measurement date is fixed, so the same
seed gives the same bytes. EDF and BrainVision are written with the libraries the readers use
(MNE/edfio, pybv).
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedneurogen.shared import formats
from fedneurogen.shared.formats import (
    BIDS_VERSION,
    FSAVERAGE5_SPATIAL_REFERENCE,
    MEAS_DATE,
    SURFACE_BOLD_BIDSIGNORE,
    write_gifti_timeseries,
    write_snirf,
    write_tsv,
)
from fedneurogen.shared.io import atomic_path, write_bytes_atomic, write_json_atomic, write_text_atomic
from fedneurogen.simulations.latent import Event
from fedneurogen.simulations.geometry import SHORT_SEPARATION_MM, motor_probe

# Re-exported: the simulator and its tests write SNIRF and TSV through this module.
__all__ = [
    "BIDS_VERSION",
    "GENERATED_BY",
    "MEAS_DATE",
    "write_bold",
    "write_dataset_description",
    "write_eeg",
    "write_electrodes",
    "write_events",
    "write_expected_power",
    "write_gifti_timeseries",
    "write_nirs_sidecars",
    "write_participants",
    "write_readme",
    "write_snirf",
    "write_tsv",
]

GENERATED_BY = {"Name": "FedNeuroGen simulator", "Description": "fedneurogen.simulations"}
#: Marker of a volume trigger in EDF annotations (BrainVision writes it as a ``Response`` 128).
TRIGGER = "R128"
#: ``Authors`` of every simulated dataset (BIDS recommends the field; the data has no human authors).
AUTHORS = ["FedNeuroGen contributors"]


#: ``.bidsignore`` of the simulator's derivative datasets: what the BIDS schema has no rule for yet
#: (surface BOLD as GIFTI, and EEG derivatives such as the expected band power), so the BIDS
#: validator checks the rest (``tests/test_bids_validator.py``).
DERIVATIVE_BIDSIGNORE = (
    *SURFACE_BOLD_BIDSIGNORE,
    "# The EEG's expected band power at the electrodes and the parcels (write_expected_power): no EEG derivatives in the BIDS schema yet.",
    "*_desc-expectedpower_timeseries.tsv.gz",
    "*_desc-expectedpower_timeseries.json",
    "*_desc-expectedsourcepower_timeseries.tsv.gz",
    "*_desc-expectedsourcepower_timeseries.json",
)


def write_dataset_description(root: Path, name: str, derivative: bool = False) -> Path:
    """The simulator's ``dataset_description.json`` (``GeneratedBy`` names the simulator).

    A derivative dataset also gets the other dataset-level files BIDS asks of it: a ``README``
    and the ``.bidsignore`` of ``DERIVATIVE_BIDSIGNORE``."""
    path = formats.write_dataset_description(
        root, name, derivative=derivative, generated_by=[GENERATED_BY], Authors=list(AUTHORS)
    )
    if derivative:
        readme = [
            f"{name}: a derivative dataset of the simulated site two folders up (see its README).",
            "",
            "Written by the FedNeuroGen simulator (fedneurogen.simulations): synthetic data with known ground truth,",
            "no human participants. See the FedNeuroGen README and docs/data-contract.md.",
            "",
            ".bidsignore lists the files the BIDS schema has no rule for yet.",
            "",
        ]
        write_text_atomic(Path(root) / "README", "\n".join(readme))
        formats.write_bidsignore(root, DERIVATIVE_BIDSIGNORE)
    return path


def write_readme(root: Path, spec) -> Path:
    """The dataset's ``README`` (BIDS recommends one at the root): what the site is and holds.

    ``spec`` is the site's ``scenarios.SiteSpec``. The text depends on the specification only,
    so the same seed gives the same bytes."""
    if spec.modality == "fmri":
        target = (
            f"fMRI: simulated fMRIPrep surface output (fsaverage5 GIFTI, TR {spec.tr:g} s) under derivatives/fmriprep; "
            "events under sub-*/func."
        )
    else:
        probe = motor_probe()
        target = (
            f"fNIRS: sub-*/nirs/*_nirs.snirf, raw continuous-wave intensity at {spec.nirs_sfreq:g} Hz and two wavelengths: "
            f"{probe.n_channels} long channels (~35 mm) over both motor cortices and {probe.n_short_channels} short-separation "
            f"channels ({SHORT_SEPARATION_MM:g} mm, marked in the short_channel column of _channels.tsv) that record scalp "
            "and systemic physiology only."
        )
    lines = [
        f"{spec.site_id}: a simulated paired EEG-{'fMRI' if spec.modality == 'fmri' else 'fNIRS'} site",
        "",
        "Written by the FedNeuroGen simulator (fedneurogen.simulations): synthetic data with known ground truth,",
        "no human participants. See the FedNeuroGen README and docs/data-contract.md.",
        "",
        f"Task: {spec.task} (classes: {', '.join(spec.classes)}), one run per subject.",
        f"EEG: {spec.cap}, {spec.n_channels} channels at {spec.eeg_sfreq:g} Hz ({spec.eeg_format}), sub-*/eeg.",
        target,
        "participants.tsv: sex, age and physiological group (A/B) of each participant.",
        "derivatives/ground_truth: the noise-free target signals and the EEG's expected band power.",
        "",
    ]
    return write_text_atomic(root / "README", "\n".join(lines))


def write_participants(root: Path, participants: Sequence) -> None:
    write_tsv(
        root / "participants.tsv",
        ("participant_id", "sex", "age", "group"),
        [(p.participant_id, p.sex, p.age, p.group) for p in participants],
    )
    write_json_atomic(
        root / "participants.json",
        {
            "sex": {"Description": "sex of the participant", "Levels": {"F": "female", "M": "male"}},
            "age": {"Description": "age of the participant", "Units": "year"},
            "group": {
                "Description": "physiological group; B has a slower, smaller haemodynamic response and a slower alpha rhythm",
                "Levels": {"A": "group A", "B": "group B"},
            },
        },
    )


def write_events(path: Path, events: Sequence[Event]) -> Path:
    return write_tsv(
        path,
        ("onset", "duration", "trial_type"),
        [(f"{e.onset:.1f}", f"{e.duration:.1f}", e.trial_type) for e in events],
    )


# ----------------------------------------------------------------------------------------------
# EEG


def write_eeg(
    eeg_dir: Path,
    base: str,
    data_v: np.ndarray,
    ch_names: Sequence[str],
    sfreq: float,
    fmt: str,
    events: Sequence[Event],
    task: str,
    cap: str,
    line_freq: float = 50.0,
    ecg_v: np.ndarray | None = None,
    triggers: Sequence[float] = (),
    sidecar: dict | None = None,
) -> Path:
    """Write one EEG run (EDF or BrainVision) with its ``_eeg.json``, ``_channels.tsv`` and
    ``_events.tsv``; returns the data file's path. ``data_v`` is ``[n_channels, n_times]`` in V.

    In-scanner runs (``simulations.scanner``) add an ``ECG`` channel (``ecg_v``, ``[n_times]`` V,
    typed ECG in ``_channels.tsv``), the volume triggers (onsets in s) as markers named ``R128``
    (BrainVision ``Response`` markers, EDF annotations), and ``sidecar`` keys in ``_eeg.json``.
    Without them the files are the same bytes as before these options existed."""
    eeg_dir.mkdir(parents=True, exist_ok=True)
    names = list(ch_names)
    if ecg_v is not None:
        data_v = np.vstack([data_v, np.asarray(ecg_v, dtype=data_v.dtype)[None, :]])
        names.append("ECG")
    if fmt == "edf":
        path = eeg_dir / f"{base}_eeg.edf"
        _write_edf(path, data_v, names, sfreq, events, triggers)
    elif fmt == "brainvision":
        path = eeg_dir / f"{base}_eeg.vhdr"
        _write_brainvision(eeg_dir, f"{base}_eeg", data_v, names, sfreq, events, triggers)
    else:
        raise ValueError(f"unknown EEG format {fmt!r}")
    write_json_atomic(
        eeg_dir / f"{base}_eeg.json",
        {
            "TaskName": task,
            "SamplingFrequency": sfreq,
            "PowerLineFrequency": line_freq,
            "EEGReference": "average",
            "SoftwareFilters": "n/a",
            "EEGChannelCount": len(ch_names),
            "EOGChannelCount": 0,
            "ECGChannelCount": int(ecg_v is not None),
            "EMGChannelCount": 0,
            "MISCChannelCount": 0,
            "TriggerChannelCount": 0,
            "RecordingDuration": data_v.shape[1] / sfreq,
            "RecordingType": "continuous",
            "CapManufacturersModelName": cap,
            "Manufacturer": GENERATED_BY["Name"],
            **(sidecar or {}),
        },
    )
    write_tsv(
        eeg_dir / f"{base}_channels.tsv",
        ("name", "type", "units", "status"),
        [(n, "EEG", "µV", "good") for n in ch_names] + ([("ECG", "ECG", "µV", "good")] if ecg_v is not None else []),
    )
    write_events(eeg_dir / f"{base}_events.tsv", events)
    return path


def _write_edf(
    path: Path, data_v: np.ndarray, ch_names: Sequence[str], sfreq: float, events: Sequence[Event], triggers=()
) -> None:
    import mne

    types = ["ecg" if n == "ECG" else "eeg" for n in ch_names]
    raw = mne.io.RawArray(data_v.astype(np.float64), mne.create_info(list(ch_names), sfreq, types), verbose=False)
    raw.set_meas_date(MEAS_DATE)
    marks = [(e.onset, e.duration, e.trial_type) for e in events] + [(float(t), 0.0, TRIGGER) for t in triggers]
    marks.sort(key=lambda m: m[0])  # stable: the events keep their order
    raw.set_annotations(mne.Annotations([m[0] for m in marks], [m[1] for m in marks], [m[2] for m in marks]))
    with atomic_path(path) as tmp:
        mne.export.export_raw(tmp, raw, fmt="edf", overwrite=True, verbose=False)


def _write_brainvision(
    eeg_dir: Path,
    stem: str,
    data_v: np.ndarray,
    ch_names: Sequence[str],
    sfreq: float,
    events: Sequence[Event],
    triggers: Sequence[float] = (),
) -> None:
    """BrainVision is three files whose header names the other two, so they are written under
    their final names in a private temporary folder of ``eeg_dir`` and renamed into place one by
    one, header last (a reader that finds the header finds the data)."""
    import pybv

    markers = [
        {
            "onset": int(round(e.onset * sfreq)),
            "duration": max(1, int(round(e.duration * sfreq))),
            "description": e.trial_type,
            "type": "Comment",
        }
        for e in events
    ]
    if len(triggers):  # the scanner's volume pulses, as BrainVision Recorder marks them: Response 128 ("R128")
        volume = [
            {"onset": int(round(t * sfreq)), "duration": 1, "description": 128, "type": "Response"} for t in triggers
        ]
        markers = sorted(markers + volume, key=lambda m: m["onset"])
    tmp_dir = Path(tempfile.mkdtemp(prefix=".tmp-bv-", dir=eeg_dir))
    try:
        pybv.write_brainvision(
            data=data_v,
            sfreq=sfreq,
            ch_names=list(ch_names),
            fname_base=stem,
            folder_out=tmp_dir,
            overwrite=True,
            events=markers,
            fmt="binary_float32",
            meas_date=MEAS_DATE,
        )
        for ext in (".eeg", ".vmrk", ".vhdr"):
            os.replace(tmp_dir / f"{stem}{ext}", eeg_dir / f"{stem}{ext}")
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def write_electrodes(eeg_dir: Path, subject: str, ch_names: Sequence[str], positions_mm: np.ndarray) -> None:
    """``_electrodes.tsv`` (mm) and ``_coordsystem.json`` for caps with non-10-05 names."""
    write_tsv(
        eeg_dir / f"{subject}_electrodes.tsv",
        ("name", "x", "y", "z"),
        [(n, f"{p[0]:.2f}", f"{p[1]:.2f}", f"{p[2]:.2f}") for n, p in zip(ch_names, positions_mm)],
    )
    write_json_atomic(
        eeg_dir / f"{subject}_coordsystem.json",
        {
            "EEGCoordinateSystem": "fsaverage",
            "EEGCoordinateUnits": "mm",
            "EEGCoordinateSystemDescription": "FreeSurfer fsaverage surface RAS (MNI305), the frame of MNE's standard 10-05 montage",
        },
    )


def write_expected_power(
    eeg_dir: Path,
    base: str,
    log_power: np.ndarray,
    ch_names: Sequence[str],
    rhythms: Sequence[str],
    positions_mm: np.ndarray,
    sfreq: float = 1.0,
    desc: str = "expectedpower",
    description: str | None = None,
) -> Path:
    """The expected scalp band power of one run (``eeg.expected_band_power``), for the
    EEG-informed ceiling: ``<base>_desc-expectedpower_timeseries.tsv.gz`` and its ``.json``.
    With ``desc="expectedsourcepower"`` the "channels" are the cortical patches and the power
    each rhythm has there (``eeg.expected_source_power``): the source-space ceiling's features.

    ``log_power`` is ``[n_channels, n_rhythms, n_bins]`` (ln V^2); the TSV has one column per
    (channel, rhythm), named ``<channel>_<rhythm>`` channel by channel (``Oz_alpha``, ``Oz_beta``,
    ...), and one row per bin. The sidecar gives each column's electrode position
    (``ColumnPositionsMM``, mm), so the file can be used without the EEG recording. Returns the
    TSV's path. The gzip header holds no time stamp: the same seed gives the same bytes.
    """
    columns = [f"{ch}_{r}" for ch in ch_names for r in rhythms]
    table = np.asarray(log_power, dtype=np.float64).reshape(len(columns), -1).T  # [n_bins, n_columns]
    text = io.StringIO()
    np.savetxt(text, table, fmt="%.5f", delimiter="\t", header="\t".join(columns), comments="")
    stem = eeg_dir / f"{base}_desc-{desc}_timeseries"
    # Sidecar first, data last: a reader that finds the data also finds its description.
    write_json_atomic(
        stem.with_name(stem.name + ".json"),
        {
            "Description": description
            or (
                "Natural log of the expected power of each simulated cortical rhythm at each electrode: the average-referenced "
                "lead field applied to the latent activity, 0.5 * sum_p g_cp^2 m_p(t)^2, averaged over 1/SamplingFrequency "
                "bins, without spectral-estimation noise, background, artifacts or sensor noise "
                "(EEG-informed ceiling: what EEG can explain at all)"
            ),
            "SamplingFrequency": sfreq,
            "StartTime": 0.5 / sfreq,  # bin k covers [k, k+1) / sfreq, centred half a bin in
            "Columns": columns,
            "Units": "log V^2",
            "EEGReference": "average",
            "Rhythms": list(rhythms),
            "ColumnPositionsMM": [
                [round(float(v), 2) for v in positions_mm[i]] for i in range(len(ch_names)) for _ in rhythms
            ],
        },
    )
    path = stem.with_name(stem.name + ".tsv.gz")
    write_bytes_atomic(path, gzip.compress(text.getvalue().encode("utf-8"), compresslevel=6, mtime=0))
    return path


# ----------------------------------------------------------------------------------------------
# fMRI


def write_bold(func_dir: Path, base: str, data: np.ndarray, tr: float, task: str, description: str) -> None:
    """Both hemispheres (``data`` is ``[20484, n_tr]``, left first) and the JSON sidecar."""
    n = data.shape[0] // 2
    for hemi, rows in (("L", slice(0, n)), ("R", slice(n, 2 * n))):
        write_gifti_timeseries(func_dir / f"{base}_hemi-{hemi}_space-fsaverage5_bold.func.gii", data[rows], hemi, tr)
    write_json_atomic(
        func_dir / f"{base}_space-fsaverage5_bold.json",
        {
            "RepetitionTime": tr,
            "TaskName": task,
            "StartTime": 0.0,
            "SliceTimingCorrected": True,
            "SpatialReference": FSAVERAGE5_SPATIAL_REFERENCE,
            "Description": description,
        },
    )


# ----------------------------------------------------------------------------------------------
# fNIRS (SNIRF 1.1, https://github.com/fNIRS/snirf)


def write_nirs_sidecars(
    nirs_dir: Path,
    subject: str,
    base: str,
    probe,
    sfreq: float,
    n_times: int,
    events: Sequence[Event],
    task: str,
    wavelengths: Sequence[int],
) -> None:
    """BIDS-NIRS sidecars: ``_nirs.json``, ``_channels.tsv``, ``_events.tsv``, and the
    subject's ``_optodes.tsv`` + ``_coordsystem.json``.

    A BIDS-NIRS channel is one source-detector pair at one wavelength (a row of
    ``_channels.tsv``): ``NIRSChannelCount`` counts all of them, ``ShortChannelCount`` those of
    the short-separation pairs, which ``_channels.tsv`` marks in its ``short_channel`` column.
    Short detectors are ordinary detectors in ``_optodes.tsv`` (BIDS has no optode type for them).
    """
    n_wl = len(wavelengths)
    write_json_atomic(
        nirs_dir / f"{base}_nirs.json",
        {
            "TaskName": task,
            "SamplingFrequency": sfreq,
            "NIRSChannelCount": (probe.n_channels + probe.n_short_channels) * n_wl,
            "NIRSSourceOptodeCount": len(probe.source_labels),
            "NIRSDetectorOptodeCount": len(probe.detector_labels),
            "ACCELChannelCount": 0,
            "ShortChannelCount": probe.n_short_channels * n_wl,
            "PowerLineFrequency": 50,
            "SoftwareFilters": "n/a",
            "RecordingDuration": n_times / sfreq,
            "Manufacturer": GENERATED_BY["Name"],
        },
    )
    channels = [(name, s, d, "false") for name, (s, d) in zip(probe.channel_names, probe.pairs)]
    channels += [(name, s, d, "true") for name, (s, d) in zip(probe.short_channel_names, probe.short_pairs)]
    rows = [
        (f"{name} {wl}", "NIRSCWAMPLITUDE", f"S{s + 1}", f"D{d + 1}", wl, "n/a", short)
        for name, s, d, short in channels
        for wl in wavelengths
    ]
    header = ("name", "type", "source", "detector", "wavelength_nominal", "units", "short_channel")
    write_tsv(nirs_dir / f"{base}_channels.tsv", header, rows)
    write_events(nirs_dir / f"{base}_events.tsv", events)
    optodes = [(f"S{i + 1}", "source", *(f"{v:.2f}" for v in p)) for i, p in enumerate(probe.source_pos)]
    optodes += [(f"D{i + 1}", "detector", *(f"{v:.2f}" for v in p)) for i, p in enumerate(probe.detector_pos)]
    write_tsv(nirs_dir / f"{subject}_optodes.tsv", ("name", "type", "x", "y", "z"), optodes)
    write_json_atomic(
        nirs_dir / f"{subject}_coordsystem.json",
        {
            "NIRSCoordinateSystem": "fsaverage",
            "NIRSCoordinateUnits": "mm",
            "NIRSCoordinateSystemDescription": "FreeSurfer fsaverage surface RAS (MNI305); optodes on 10-10 positions around C3/C4",
        },
    )
