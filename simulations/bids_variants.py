"""Real-like variants of a small BIDS site, so that every reader is tried on what labs actually have.

Each variant is a copy of one small, valid base site (``bids_factory.make_site``: 3 subjects, one
short EEG-fMRI run each) transformed the way real datasets differ: sessions, task names with
digits and zero-padded runs, BrainVision and EEGLAB EEG, ``n/a`` and free text in
``participants.tsv``, runs of unequal length, volume fMRIPrep output, a read-only site, a folder
name with spaces and non-ASCII characters, 5 kHz EEG with an ECG channel, a versioned fMRIPrep
folder, and the broken cases a new user meets (a truncated run, every run broken, a BrainVision
header naming a missing data file, a class recorded in one subject only, targets in a folder the
loader does not read).

``make_variant(base, name, root)`` copies ``base`` under ``root`` and applies ``VARIANTS[name]``;
``EXPECTED[name]`` says what ``validate`` answers for it (``tests/test_dataset_variants.py``).
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import mne
import nibabel as nib
import numpy as np
import pandas as pd

from .bids_factory import (
    SiteSpec,
    make_site,
    mni_volume,
    write_eeg,
    write_gifti,
    write_json,
    write_tsv,
    write_volume,
)

#: The base site: 3 subjects (F, M, F; groups A, B, A), one 80 s visual run each, EDF at 250 Hz.
BASE_SPEC = SiteSpec(subjects=("01", "02", "03"), duration=80.0)
#: Folder name of the variant with an odd path.
ODD_NAME = "Site Zürich – 01"


def make_base(root: str | Path, name: str = "base") -> Path:
    """Write the base site.

    Parameters
    ----------
    root : str | Path
        Where the site folder goes.
    name : str
        The site folder's name.

    Returns
    -------
    Path
        The site.
    """
    return make_site(Path(root), BASE_SPEC, name=name)


def make_variant(base: str | Path, name: str, root: str | Path) -> Path:
    """Copy the base site under ``root`` and transform it into variant ``name``.

    Parameters
    ----------
    base : str | Path
        The base site (``make_base``).
    name : str
        A key of ``VARIANTS``.
    root : str | Path
        Where the variant's folder goes (``ODD_NAME`` for ``odd-path``, else ``name``).

    Returns
    -------
    Path
        The variant site.

    Raises
    ------
    KeyError
        An unknown variant.
    """
    transform = VARIANTS[name]
    site = Path(root) / (ODD_NAME if name == "odd-path" else name)
    if site.exists():
        make_writable(site)
        shutil.rmtree(site)
    shutil.copytree(base, site)
    transform(site)
    return site


def make_writable(site: str | Path) -> None:
    """Undo ``read_only`` (so that a temporary folder can be deleted).

    Parameters
    ----------
    site : str | Path
        The site.
    """
    for folder, dirs, files in os.walk(site):
        os.chmod(folder, 0o755)
        for f in files:
            os.chmod(os.path.join(folder, f), 0o644)


# -- helpers --------------------------------------------------------------------------------------


def _files(site: Path, pattern: str) -> list[Path]:
    return sorted(p for p in site.rglob(pattern) if p.is_file())


def _eeg_files(site: Path) -> list[Path]:
    return [p for p in _files(site, "*_eeg.*") if p.suffix in (".edf", ".vhdr", ".set", ".fif", ".bdf")]


def _rename(site: Path, rename: Callable[[str], str]) -> None:
    """Rename every file under ``site`` whose name ``rename`` changes."""
    for path in _files(site, "*"):
        new = rename(path.name)
        if new != path.name:
            path.rename(path.with_name(new))


def _read(path: Path) -> mne.io.BaseRaw:
    return mne.io.read_raw(path, preload=True, verbose="error")


def _channels_tsv(eeg: Path) -> Path:
    return eeg.with_name(eeg.name.rsplit("_eeg.", 1)[0] + "_channels.tsv")


def _replace_eeg(eeg: Path, ext: str) -> Path:
    """Rewrite one EEG file in another format (the factory's writers)."""
    raw = _read(eeg)
    new = eeg.with_name(eeg.name.rsplit(".", 1)[0] + ext)
    types = raw.get_channel_types()
    eeg.unlink()
    if ext == ".set":
        return write_eeglab(new, raw.get_data(), raw.info["sfreq"], raw.ch_names)
    return write_eeg(new, raw.get_data(), raw.info["sfreq"], raw.ch_names, types)


def write_eeglab(path: Path, data: np.ndarray, sfreq: float, ch_names: list[str]) -> Path:
    """Write EEG (volts) as an EEGLAB ``.set`` header with its ``.fdt`` data file (float32, µV).

    Parameters
    ----------
    path : Path
        The ``.set`` file.
    data : np.ndarray
        ``[n_channels, n_times]`` volts.
    sfreq : float
        Sampling rate, Hz.
    ch_names : list of str
        Channel names.

    Returns
    -------
    Path
        ``path``.
    """
    from scipy.io import savemat

    fdt = path.with_suffix(".fdt")
    (data * 1e6).astype("<f4").T.tofile(fdt)  # EEGLAB's .fdt: samples x channels, float32, µV
    chanlocs = np.array([(n, "EEG") for n in ch_names], dtype=[("labels", object), ("type", object)])
    eeg = {
        "setname": path.stem, "filename": path.name, "filepath": "", "nbchan": float(len(ch_names)),
        "pnts": float(data.shape[1]), "trials": 1.0, "srate": float(sfreq), "xmin": 0.0,
        "xmax": (data.shape[1] - 1) / sfreq, "data": fdt.name, "chanlocs": chanlocs, "event": np.array([]),
        "epoch": np.array([]), "icawinv": np.array([]), "icasphere": np.array([]), "icaweights": np.array([]),
        "ref": "common",
    }  # fmt: skip
    savemat(path, {"EEG": eeg}, appendmat=False)
    return path


# -- variants that every reader must take ---------------------------------------------------------


def sessions(site: Path) -> None:
    """Every subject's run inside ``ses-1`` (EEG, raw func and the fMRIPrep derivatives)."""
    for sub in sorted(site.glob("sub-*")) + sorted((site / "derivatives" / "fmriprep").glob("sub-*")):
        for datatype in [d for d in sub.iterdir() if d.is_dir()]:
            target = sub / "ses-1" / datatype.name
            target.parent.mkdir(exist_ok=True)
            datatype.rename(target)
    _rename(site, lambda n: n.replace("_task-", "_ses-1_task-", 1) if n.startswith("sub-") else n)


def task_digits(site: Path) -> None:
    """Task ``nback2`` instead of ``visual``, and the EEG named ``run-01`` while the BOLD says ``run-1``."""

    def rename(name: str) -> str:
        name = name.replace("task-visual", "task-nback2")
        return name.replace("_run-1_", "_run-01_") if name.endswith(("_eeg.edf", "_eeg.json")) else name

    _rename(site, rename)


def brainvision(site: Path) -> None:
    """BrainVision EEG (``.vhdr`` + ``.vmrk`` + ``.eeg``) instead of EDF."""
    for eeg in _eeg_files(site):
        _replace_eeg(eeg, ".vhdr")


def eeglab(site: Path) -> None:
    """EEGLAB EEG (``.set`` + ``.fdt``) instead of EDF."""
    for eeg in _eeg_files(site):
        _replace_eeg(eeg, ".set")


def na_participants(site: Path) -> None:
    """``participants.tsv`` with ``n/a`` and an empty cell, a code the sidecar says is missing, and a
    free-text column; it also lists 7 participants without data (excluded ones), as real sites do."""
    ids = [f"sub-{i:02d}" for i in range(1, 11)]
    write_tsv(
        site / "participants.tsv",
        {
            "participant_id": ids,
            "sex": ["F", "n/a", "M", "F", "M", "F", "M", "F", "M", "F"],
            "handedness": ["R", "-999", "", "R", "L", "R", "R", "L", "R", "R"],
            "age": [21, 34, 27, 45, 19, 52, 38, 23, 30, 41],
            "group": ["A", "B", "A", "B", "A", "B", "A", "B", "A", "B"],
            "notes": [f"session note {i}: {w}" for i, w in enumerate("calm tired late early ok noisy good bad fine odd".split())],
        },
    )  # fmt: skip
    write_json(
        site / "participants.json",
        {
            "sex": {"Description": "sex", "Levels": {"F": "female", "M": "male"}},
            "handedness": {"Description": "hand", "Levels": {"R": "right", "L": "left", "-999": "not recorded"}},
            "age": {"Description": "age", "Units": "year"},
        },
    )


def unequal_lengths(site: Path) -> None:
    """sub-02's run is 56 s long, the others 80 s (EEG and BOLD cut alike)."""
    seconds = 56.0
    (eeg,) = _eeg_files(site / "sub-02")
    raw = _read(eeg)
    raw.crop(tmax=seconds - 1.0 / raw.info["sfreq"])
    write_eeg(eeg, raw.get_data(), raw.info["sfreq"], raw.ch_names, raw.get_channel_types())
    for gii in _files(site / "derivatives" / "fmriprep" / "sub-02", "*.func.gii"):
        img = nib.load(gii)
        data = np.stack([d.data for d in img.darrays], axis=1)[:, : int(seconds / BASE_SPEC.tr)]
        write_gifti(gii, data, BASE_SPEC.tr)


def volume(site: Path) -> None:
    """fMRIPrep volume output (MNI152 NIfTI, projected to the surface by the loader) instead of GIFTI."""
    for gii in _files(site / "derivatives" / "fmriprep", "*_hemi-L_space-fsaverage5_bold.func.gii"):
        stem = gii.name.split("_hemi-")[0]
        n_vols = len(nib.load(gii).darrays)
        for old in gii.parent.glob(f"{stem}_*"):
            old.unlink()
        data, affine = mni_volume(n_vols, BASE_SPEC.tr)
        path = write_volume(gii.parent / f"{stem}_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz", data, affine)
        write_json(path.with_name(path.name.replace(".nii.gz", ".json")), {"RepetitionTime": BASE_SPEC.tr})


def read_only(site: Path) -> None:
    """Every file and folder of the site read-only (undo with ``make_writable``)."""
    for folder, dirs, files in os.walk(site, topdown=False):
        for f in files:
            os.chmod(os.path.join(folder, f), stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        os.chmod(folder, 0o555)


def odd_path(site: Path) -> None:
    """Nothing inside changes: the site's folder is ``ODD_NAME`` (a space, an en dash, an umlaut)."""


def eeg_5khz_ecg(site: Path) -> None:
    """EEG at 5 kHz with an ECG channel (typed ECG in ``_channels.tsv``), as in-scanner amplifiers record."""
    sfreq = 5000.0
    for eeg in _eeg_files(site):
        raw = _read(eeg)
        raw.resample(sfreq, verbose="error")
        t = raw.times
        ecg = 800e-6 * np.exp(-(((t % 0.85) - 0.2) ** 2) / (2 * 0.01**2))  # R peaks at 70 bpm
        data = np.vstack([raw.get_data(), ecg])
        names = raw.ch_names + ["ECG"]
        types = ["eog" if "EOG" in n else "ecg" if n == "ECG" else "eeg" for n in names]  # EDF keeps no types
        write_eeg(eeg, data, sfreq, names, types)
        write_tsv(
            _channels_tsv(eeg),
            {"name": names, "type": [t.upper() for t in types], "units": ["V"] * len(names), "status": ["good"] * len(names)},
        )  # fmt: skip
        sidecar = eeg.with_name(eeg.name.rsplit("_eeg.", 1)[0] + "_eeg.json")
        write_json(
            sidecar,
            {"TaskName": "visual", "SamplingFrequency": sfreq, "PowerLineFrequency": 50.0, "ECGChannelCount": 1},
        )


def versioned_fmriprep(site: Path) -> None:
    """fMRIPrep output in ``derivatives/fmriprep-23.2.1`` (fMRIPrep's versioned folder name)."""
    (site / "derivatives" / "fmriprep").rename(site / "derivatives" / "fmriprep-23.2.1")


# -- variants that are broken in the ways a new user meets ------------------------------------------


def other_pipeline(site: Path) -> None:
    """The BOLD under ``derivatives/preproc``, a folder the loader does not read: every run is EEG only."""
    (site / "derivatives" / "fmriprep").rename(site / "derivatives" / "preproc")


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def one_run_broken(site: Path) -> None:
    """sub-03's EDF is cut in half: that run is skipped, the others are used."""
    _truncate(_eeg_files(site / "sub-03")[0])


def every_run_broken(site: Path) -> None:
    """Every EDF is cut in half: the dataset is unusable."""
    for eeg in _eeg_files(site):
        _truncate(eeg)


def vhdr_missing_data(site: Path) -> None:
    """BrainVision EEG, and sub-01's header names a data file that is not there."""
    brainvision(site)
    (vhdr,) = _files(site / "sub-01", "*_eeg.vhdr")
    vhdr.with_suffix(".eeg").unlink()


def class_in_one_subject(site: Path) -> None:
    """An ``oddball`` class in sub-01's events only."""
    (events,) = _files(site / "sub-01" / "eeg", "*_events.tsv")
    table = pd.read_csv(events, sep="\t", dtype=str)
    table.loc[table.index[-2:], "trial_type"] = "oddball"
    table.to_csv(events, sep="\t", index=False)


#: Variant name -> transform of a copy of the base site (in place).
VARIANTS: dict[str, Callable[[Path], None]] = {
    "sessions": sessions,
    "task-digits": task_digits,
    "brainvision": brainvision,
    "eeglab": eeglab,
    "na-participants": na_participants,
    "unequal-lengths": unequal_lengths,
    "volume": volume,
    "read-only": read_only,
    "odd-path": odd_path,
    "eeg-5khz-ecg": eeg_5khz_ecg,
    "versioned-fmriprep": versioned_fmriprep,
    "other-pipeline": other_pipeline,
    "one-run-broken": one_run_broken,
    "every-run-broken": every_run_broken,
    "vhdr-missing-data": vhdr_missing_data,
    "class-in-one-subject": class_in_one_subject,
}
#: What ``validate`` answers per variant: ``ok`` (no error), ``usable`` (runs skipped, exit 0) or
#: ``unusable`` (exit 1).
EXPECTED: dict[str, str] = {
    **{name: "ok" for name in VARIANTS},
    "other-pipeline": "unusable",
    "one-run-broken": "usable",
    "every-run-broken": "unusable",
    "vhdr-missing-data": "usable",
}
