"""Reading and preprocessing EEG (docs/architecture.md §3).

``read_eeg`` = ``load_raw_eeg`` (read + integrity checks) -> ``prepare_channels`` (types from
``_channels.tsv``, names and positions) -> ``scanner.clean_scanner_artifacts`` (in-scanner runs:
gradient artefact, BCG) -> ``preprocess_eeg`` (notch, band-pass, ICA, resample, scale).
``validate_dataset`` uses the first two without the costly rest.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import mne
import numpy as np
import pandas as pd

from ..config import PreprocessConfig
from ..errors import DataError
from ..montage import standard_positions
from ..recording import Recording
from .bids import RunFiles, brainvision_references, read_events, read_json, read_tsv, run_files_for_eeg
from .problems import DataWarning
from .scanner import clean_scanner_artifacts, events_from_first_volume

# BIDS channel types (``_channels.tsv``) -> MNE channel types.
_BIDS_TYPES = {
    "EEG": "eeg", "EOG": "eog", "HEOG": "eog", "VEOG": "eog", "ECG": "ecg", "EKG": "ecg",
    "EMG": "emg", "TRIG": "stim", "STIM": "stim", "MISC": "misc", "REF": "misc", "RESP": "resp",
    "GSR": "gsr", "TEMP": "temp", "SYSCLOCK": "syst", "AUDIO": "misc", "PPG": "bio",
}  # fmt: skip
_UNIT_TO_MM = {"m": 1000.0, "cm": 10.0, "mm": 1.0}
#: Above this rate (Hz) ICA components are scored against the EOG on a copy at the target rate.
SCORE_MAX_SFREQ = 1000.0


# --- reading ------------------------------------------------------------------------------------


def _check_edf_size(path: Path) -> None:
    """Reject EDF/BDF files shorter than their header says (MNE would silently read less)."""
    try:
        with open(path, "rb") as f:
            head = f.read(256)
            if len(head) < 256:
                raise DataError(path, f"is not a valid EDF/BDF file: {len(head)} bytes, less than its 256-byte header")
            header_bytes = int(head[184:192])
            n_records = int(head[236:244])
            n_signals = int(head[252:256])
            signal_header = f.read(n_signals * 256)
    except ValueError:
        return  # unreadable numeric fields: let MNE report the problem
    size = path.stat().st_size
    if size < header_bytes:
        raise DataError(path, f"is truncated: the file ends inside its {header_bytes}-byte header ({size} bytes)")
    if n_records <= 0 or len(signal_header) < n_signals * 256:
        return
    offset = n_signals * 216  # "number of samples in each data record", 8 bytes per signal
    try:
        samples = [int(signal_header[offset + 8 * i : offset + 8 * i + 8]) for i in range(n_signals)]
    except ValueError:
        return
    bytes_per_sample = 3 if head[:1] == b"\xff" else 2  # BDF starts with 0xFF, 24-bit samples
    record_bytes = sum(samples) * bytes_per_sample
    expected = header_bytes + n_records * record_bytes
    if record_bytes > 0 and size < expected:
        complete = max(0, (size - header_bytes) // record_bytes)
        raise DataError(
            path,
            f"is truncated: the header declares {n_records} data records ({expected} bytes) but the file "
            f"has {size} bytes ({complete} complete records)",
        )


def check_finite(path: Path, data: np.ndarray, names: list[str]) -> None:
    """Raise a ``DataError`` naming the channels that hold NaN or infinite samples."""
    finite = np.isfinite(data)
    if finite.all():
        return
    bad_rows = np.flatnonzero(~finite.all(axis=1))
    listed = ", ".join(names[i] for i in bad_rows[:8]) + (" ..." if len(bad_rows) > 8 else "")
    raise DataError(path, f"contains {int((~finite).sum())} NaN/inf samples in {len(bad_rows)} channel(s): {listed}")


def load_raw_eeg(path: str | Path, preload: bool = True) -> mne.io.BaseRaw:
    """Read an EEG file with MNE; corrupt, truncated or non-finite data raise ``DataError``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    if path.suffix.lower() in (".edf", ".bdf"):
        _check_edf_size(path)
    if path.suffix.lower() == ".vhdr":
        _check_brainvision_companions(path)
    try:
        with warnings.catch_warnings():
            # Naming and "records don't match" warnings are handled above; keep MNE quiet.
            warnings.simplefilter("ignore")
            raw = mne.io.read_raw(path, preload=preload, verbose="error")
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - any reader failure is a problem with this file
        raise DataError(path, f"cannot be read as EEG ({type(err).__name__}: {err})") from None
    if raw.n_times < 2:
        raise DataError(path, f"holds no samples ({raw.n_times})")
    if preload:
        check_finite(path, raw.get_data(), raw.ch_names)
    return raw


def _check_brainvision_companions(header: Path) -> None:
    """A BrainVision header names its data and marker files; they must be plain file names in the
    header's own folder, so that a dataset cannot make the reader open files outside it, and exist
    (MNE's own error would not say which line of the header is wrong)."""
    for number, key, name in brainvision_references(header):
        if Path(name).name != name or name in (".", ".."):
            raise DataError(
                header,
                f"line {number}: {key}={name!r} points outside the header's folder; it must be a file name beside it",
            )
        if not (header.parent / name).is_file():
            what = "data" if key == "DataFile" else "marker"
            raise DataError(
                header,
                f"line {number}: {key}={name} names a {what} file that does not exist ({header.parent / name}); "
                "fix the line or restore the file",
            )


# --- channels and positions ---------------------------------------------------------------------


def _guess_type(name: str, current: str) -> str:
    upper = name.upper()
    if "EOG" in upper:
        return "eog"
    if "ECG" in upper or "EKG" in upper:
        return "ecg"
    if upper.startswith(("STI", "TRIG", "STATUS")):
        return "stim"
    return current


def _read_electrodes(files: RunFiles) -> dict[str, tuple[str, np.ndarray]]:
    """``_electrodes.tsv`` positions in mm keyed by lower-case name (units from coordsystem)."""
    if files.electrodes is None:
        return {}
    df = read_tsv(files.electrodes, required=("name", "x", "y", "z"))
    xyz = df[["x", "y", "z"]].apply(pd.to_numeric, errors="coerce").to_numpy(float)
    ok = np.isfinite(xyz).all(axis=1)
    unit = None
    if files.coordsystem is not None:
        unit = str(read_json(files.coordsystem).get("EEGCoordinateUnits", "")).strip() or None
    if unit is None or unit not in _UNIT_TO_MM:
        # No usable unit: infer from head size (radius ~0.1 m = 10 cm = 100 mm).
        extent = np.abs(xyz[ok]).max() if ok.any() else 100.0
        unit = "m" if extent < 0.5 else "cm" if extent < 30 else "mm"
    scale = _UNIT_TO_MM[unit]
    return {
        str(name).strip().lower(): (str(name).strip(), xyz[i] * scale) for i, name in enumerate(df["name"]) if ok[i]
    }


def prepare_channels(raw: mne.io.BaseRaw, files: RunFiles) -> tuple[mne.io.BaseRaw, dict[str, np.ndarray]]:
    """Set channel types, keep EEG (+EOG for ICA, ECG for the BCG), name channels canonically, locate them.

    Types come from ``_channels.tsv`` (``status == bad`` marks bad channels); without one, EOG/ECG/
    trigger channels are recognised by name. Positions come from ``_electrodes.tsv`` first, then
    the standard 10-05 montage (case-insensitive: ``FP1`` is ``Fp1``). An EEG channel found in
    neither is a ``DataError``: its signal cannot be placed on the head.

    Returns the raw (modified in place) and EEG positions in mm by (canonical) channel name.
    """
    types: dict[str, str] = {}
    bads: list[str] = []
    if files.channels is not None:
        df = read_tsv(files.channels, required=("name", "type"))
        for _, row in df.iterrows():
            name = str(row["name"]).strip()
            if name in raw.ch_names:
                types[name] = _BIDS_TYPES.get(str(row["type"]).strip().upper(), "misc")
                if str(row.get("status", "")).strip().lower() == "bad":
                    bads.append(name)
    current = dict(zip(raw.ch_names, raw.get_channel_types()))
    for name in raw.ch_names:
        if name not in types:
            types[name] = _guess_type(name, current[name]) if files.channels is None else current[name]
    changed = {n: t for n, t in types.items() if t != current[n]}
    if changed:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "unit changed" notices
            raw.set_channel_types(changed, verbose="error")
    raw.pick([n for n in raw.ch_names if types[n] in ("eeg", "eog", "ecg")])  # ECG: R-peaks of in-scanner runs
    eeg_names = [n for n in raw.ch_names if types[n] == "eeg"]
    if not eeg_names:
        raise DataError(files.channels or files.eeg, "no EEG channels (none typed EEG)")

    electrodes = _read_electrodes(files)
    standard = standard_positions()
    rename: dict[str, str] = {}
    positions: dict[str, np.ndarray] = {}
    unknown: list[str] = []
    for name in eeg_names:
        key = name.strip().lower()
        if key in electrodes:
            canonical, xyz = electrodes[key]
        elif key in standard:
            canonical, xyz = standard[key]
        else:
            unknown.append(name)
            continue
        if canonical in positions:
            twin = next(old for old, new in rename.items() if new == canonical)
            raise DataError(files.eeg, f"channels {twin} and {name} name the same electrode ({canonical})")
        rename[name] = canonical
        positions[canonical] = xyz
    if unknown:
        where = f"not in {files.electrodes.name}" if files.electrodes else "and there is no _electrodes.tsv"
        raise DataError(
            files.eeg,
            f"EEG channel(s) {', '.join(unknown)} are not standard 10-05 names {where}; add their positions "
            "to sub-<label>_electrodes.tsv or type them as non-EEG (e.g. MISC) in _channels.tsv",
        )
    rename = {old: new for old, new in rename.items() if old != new}
    if rename:
        raw.rename_channels(rename, verbose="error")
        bads = [rename.get(b, b) for b in bads]
    raw.info["bads"] = [b for b in bads if b in raw.ch_names and b in positions]
    montage = mne.channels.make_dig_montage(
        ch_pos={n: positions[n] / 1000.0 for n in raw.ch_names if n in positions}, coord_frame="head"
    )
    raw.set_montage(montage, on_missing="ignore", verbose="error")
    return raw, positions


# --- preprocessing ------------------------------------------------------------------------------


def line_frequency(files: RunFiles, config: PreprocessConfig) -> float | None:
    """``PowerLineFrequency`` from the ``_eeg.json`` sidecar, else the config's."""
    if files.eeg_sidecar is not None:
        value = read_json(files.eeg_sidecar).get("PowerLineFrequency")
        if isinstance(value, (int, float)) and value > 0:
            return float(value)
    return config.eeg_line_freq


def _remove_ocular(raw: mne.io.BaseRaw, config: PreprocessConfig, path: Path) -> None:
    """ICA ocular-artifact removal, fitted on a decimated copy to stay fast."""
    eog = [raw.ch_names[i] for i in mne.pick_types(raw.info, eeg=False, eog=True)]
    n_eeg = len(mne.pick_types(raw.info, eeg=True, exclude="bads"))
    if not eog or n_eeg < 3:
        return
    fit_raw = raw if config.eeg_l_freq >= 1.0 else raw.copy().filter(1.0, None, picks="eeg", verbose="error")
    decim = max(1, int(raw.info["sfreq"] // 100))  # ~100 Hz is plenty to find blink components
    # Few components and bounded iterations keep the fit to about a second per run; blink
    # components separate early even where FastICA has not fully converged.
    ica = mne.preprocessing.ICA(
        n_components=min(15, n_eeg - 1), method="fastica", random_state=97, max_iter=200, verbose="error"
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence notices on short runs
            ica.fit(fit_raw, picks="eeg", decim=decim, verbose="error")
            # With ~15 components the z-score criterion is unreliable (two blink components
            # mask each other); an absolute correlation with the EOG of 0.5 is robust.
            # Scoring filters the EOG with a 10 s FIR: at kHz rates (in-scanner amplifiers record at 5 kHz)
            # that takes half a minute per run; blinks are slow, so a copy at the target rate scores the same.
            score_raw = raw
            if raw.info["sfreq"] > SCORE_MAX_SFREQ:
                score_raw = raw.copy().resample(config.eeg_sfreq, method="polyphase", verbose="error")
            bad, _ = ica.find_bads_eog(score_raw, ch_name=eog, measure="correlation", threshold=0.5, verbose="error")
            ica.exclude = list(bad)
            ica.apply(raw, verbose="error")
    except (ValueError, RuntimeError, np.linalg.LinAlgError) as err:
        # ICA is an enhancement: a failure leaves the run usable, uncorrected.
        warnings.warn(f"{path}: ICA ocular removal failed, run kept without it ({err})", DataWarning, stacklevel=2)


def preprocess_eeg(
    raw: mne.io.BaseRaw, config: PreprocessConfig, line_freq: float | None, path: Path
) -> mne.io.BaseRaw:
    """Notch, band-pass, ICA (where EOG exists), drop EOG, resample (in place; returns raw)."""
    sfreq = raw.info["sfreq"]
    nyquist = sfreq / 2.0
    picks = mne.pick_types(raw.info, eeg=True, eog=True, exclude=[])
    if line_freq:
        # Harmonics below Nyquist, with room for the notch's transition band.
        freqs = np.arange(line_freq, nyquist - 2.0, line_freq)
        if len(freqs):
            raw.notch_filter(freqs, picks=picks, verbose="error")
    h_freq = min(config.eeg_h_freq, 0.9 * nyquist) if config.eeg_h_freq else None
    l_freq = config.eeg_l_freq or None
    if h_freq is not None and l_freq is not None and h_freq <= l_freq:
        h_freq = None
    if l_freq or h_freq:
        raw.filter(l_freq, h_freq, picks=picks, fir_design="firwin", verbose="error")
    if config.eeg_ica:
        _remove_ocular(raw, config, path)
    if raw.info["bads"]:
        raw.interpolate_bads(reset_bads=True, verbose="error")
    raw.pick("eeg")
    if not math.isclose(sfreq, config.eeg_sfreq):
        raw.resample(config.eeg_sfreq, method="polyphase", verbose="error")
    return raw


def read_eeg(
    path: str | Path, config: PreprocessConfig | None = None, files: RunFiles | None = None
) -> tuple[Recording, pd.DataFrame]:
    """Read and preprocess one EEG run.

    Parameters
    ----------
    path : path-like
        EEG file (EDF, BDF, BrainVision ``.vhdr``, EEGLAB ``.set`` or FIF) inside a BIDS tree.
    config : PreprocessConfig, optional
        Preprocessing parameters (defaults: 1-100 Hz band-pass, line notch, ICA, 200 Hz, x1e4).
    files : RunFiles, optional
        The run's sidecars; found next to ``path`` (BIDS inheritance) when omitted.

    Returns
    -------
    recording : Recording
        EEG at ``config.eeg_sfreq`` in units of 100 uV, positions in mm.
    events : pandas.DataFrame
        ``onset``, ``duration`` (s from the start of the run) and ``trial_type``.
    """
    config = config or PreprocessConfig()
    path = Path(path)
    files = files or run_files_for_eeg(path)
    raw = load_raw_eeg(path)
    raw, positions = prepare_channels(raw, files)
    duration = raw.n_times / raw.info["sfreq"]
    events = read_events(files.events, files.task, duration)
    try:
        scanner = clean_scanner_artifacts(raw, config, files, path)  # in-scanner runs: gradient artefact and BCG first
        events = events_from_first_volume(events, scanner, files.events, path)  # cropped to the volumes: t = 0 moved
        preprocess_eeg(raw, config, line_frequency(files, config), path)
    except DataError:
        raise
    except (ValueError, RuntimeError) as err:
        raise DataError(path, f"EEG preprocessing failed ({type(err).__name__}: {err})") from None
    data = raw.get_data() * config.eeg_scale
    check_finite(path, data, raw.ch_names)
    recording = Recording(
        data=data,
        sfreq=float(raw.info["sfreq"]),
        positions=np.array([positions[n] for n in raw.ch_names]),
        names=list(raw.ch_names),
        modality="eeg",
    )
    return recording, events
