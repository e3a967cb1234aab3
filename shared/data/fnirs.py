"""Reading fNIRS (BIDS-NIRS SNIRF) as HbO/HbR per channel (docs/architecture.md §3).

Raw intensity -> optical density -> HbO/HbR (modified Beer-Lambert law, ``config.fnirs_ppf``);
files that already hold processed ``hbo``/``hbr`` data (e.g. ground truth) are used as they
are. Then a zero-phase Butterworth band-pass (``config.fnirs_l_freq``-``config.fnirs_h_freq``)
and resampling to ``config.fnirs_sfreq``. Points are channels (``S1_D1 hbo``, ``S1_D1 hbr``, ...)
positioned at the source-detector midpoint in mm.

Short-separation channels (source-detector distance below ``SHORT_CHANNEL_MAX_MM``, as MNE-NIRS
identifies them) see the scalp, not the cortex: they are never target points. With
``config.fnirs_short_channel_regression`` (the default) each long channel first has its nearest
short channel of the same chromophore regressed out (``regress_short_channels``), which removes
the systemic physiology that both carry. Files without short channels are read as before.
"""

from __future__ import annotations

import math
import warnings
from fractions import Fraction
from pathlib import Path

import mne
import numpy as np

from ..config import PreprocessConfig
from ..errors import DataError
from ..recording import Recording
from .eeg import check_finite

_HB_TYPES = ("hbo", "hbr")
#: Channels with a shorter source-detector distance are short-separation channels (MNE-NIRS
#: uses 1-1.5 cm; long channels are usually 25-40 mm).
SHORT_CHANNEL_MAX_MM = 15.0


def load_raw_snirf(path: str | Path) -> mne.io.BaseRaw:
    """Read a SNIRF file with MNE; unreadable or non-finite data raise ``DataError``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = mne.io.read_raw_snirf(path, preload=True, verbose="error")
    except Exception as err:  # noqa: BLE001 - h5py/MNE raise many kinds for broken files
        raise DataError(path, f"cannot be read as SNIRF ({type(err).__name__}: {err})") from None
    types = set(raw.get_channel_types())
    if not types & {"fnirs_cw_amplitude", "fnirs_od", "hbo", "hbr"}:
        raise DataError(path, f"holds no CW intensity, optical density or HbO/HbR channels ({sorted(types)})")
    check_finite(path, raw.get_data(), raw.ch_names)
    return raw


def to_haemoglobin(raw: mne.io.BaseRaw, ppf: float, path: Path) -> mne.io.BaseRaw:
    """Intensity or optical density -> HbO/HbR; HbO/HbR data is returned unchanged."""
    types = set(raw.get_channel_types())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if "fnirs_cw_amplitude" in types:
                raw = mne.preprocessing.nirs.optical_density(raw, verbose="error")
                types = set(raw.get_channel_types())
            if "fnirs_od" in types:
                raw = mne.preprocessing.nirs.beer_lambert_law(raw, ppf=ppf)
    except (ValueError, RuntimeError) as err:
        raise DataError(path, f"cannot convert to HbO/HbR ({err})") from None
    raw.pick([i for i, t in enumerate(raw.get_channel_types()) if t in _HB_TYPES])
    return raw


def short_channel_mask(raw: mne.io.BaseRaw) -> np.ndarray:
    """Boolean per channel of ``raw``: a short-separation channel (distance < ``SHORT_CHANNEL_MAX_MM``).

    Channels without optode positions (NaN distance) count as long."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        distances_mm = np.asarray(mne.preprocessing.nirs.source_detector_distances(raw.info), dtype=float) * 1000.0
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(distances_mm, nan=np.inf) < SHORT_CHANNEL_MAX_MM


def regress_short_channels(
    long: np.ndarray, short: np.ndarray, long_positions: np.ndarray, short_positions: np.ndarray
) -> np.ndarray:
    """Remove from every long channel its nearest short channel, scaled by least squares.

    ``long [n_long, n_times]`` and ``short [n_short, n_times]`` hold one chromophore (all HbO or
    all HbR), already band-passed; positions ``[n, 3]`` are channel midpoints (any one unit). Each
    long channel ``y`` becomes ``y - b x`` with ``x`` the nearest short channel and
    ``b = <y, x> / <x, x>`` over the mean-removed series (the short-channel regression of
    Saager & Berger 2005, as MNE-NIRS applies it). Returns a new array; ``long`` is unchanged.
    """
    long = np.asarray(long, dtype=float)
    short = np.asarray(short, dtype=float)
    if not len(short) or not len(long):
        return long.copy()
    d = np.linalg.norm(np.asarray(long_positions)[:, None, :] - np.asarray(short_positions)[None, :, :], axis=2)
    nearest = short[np.argmin(d, axis=1)]  # [n_long, n_times]
    x = nearest - nearest.mean(axis=1, keepdims=True)
    y = long - long.mean(axis=1, keepdims=True)
    power = np.sum(x * x, axis=1)
    beta = np.divide(np.sum(x * y, axis=1), power, out=np.zeros_like(power), where=power > 0)
    return long - beta[:, None] * x


def bandpass(data: np.ndarray, sfreq: float, l_freq: float, h_freq: float, order: int, path: Path) -> np.ndarray:
    """Zero-phase Butterworth band-pass of total order ``order`` (``order // 2`` per edge)."""
    from scipy import signal  # imported here: scipy.signal slows every process's start-up

    nyquist = sfreq / 2.0
    if h_freq >= nyquist:
        raise DataError(path, f"sampling rate {sfreq:g} Hz is too low for a {h_freq:g} Hz low-pass edge")
    sos = signal.butter(max(1, order // 2), [l_freq, h_freq], btype="bandpass", fs=sfreq, output="sos")
    # Mirror-pad by ~1/l_freq: the filter's transient at 0.01 Hz is much longer than the default pad.
    padlen = min(data.shape[1] - 1, int(round(sfreq / l_freq)))
    if padlen < 3 * (2 * len(sos) + 1):
        raise DataError(path, f"recording too short to filter ({data.shape[1]} samples at {sfreq:g} Hz)")
    return signal.sosfiltfilt(sos, data, axis=1, padlen=padlen)


def resample(data: np.ndarray, sfreq: float, new_sfreq: float) -> np.ndarray:
    """Polyphase resampling by the nearest rational factor (data already low-passed)."""
    from scipy import signal  # imported here: scipy.signal slows every process's start-up

    if math.isclose(sfreq, new_sfreq, rel_tol=1e-9):
        return data
    ratio = Fraction(new_sfreq / sfreq).limit_denominator(1000)
    return signal.resample_poly(data, ratio.numerator, ratio.denominator, axis=1, padtype="line")


def read_fnirs(path: str | Path, config: PreprocessConfig | None = None) -> Recording:
    """Read one SNIRF run as band-passed HbO/HbR on the common fNIRS grid.

    Parameters
    ----------
    path : path-like
        ``sub-X_task-T_nirs.snirf`` with raw CW intensity (two wavelengths) or HbO/HbR.
    config : PreprocessConfig, optional
        ``fnirs_ppf``, ``fnirs_l_freq``, ``fnirs_h_freq``, ``fnirs_filter_order``,
        ``fnirs_sfreq``, ``fnirs_scale`` (mol/L -> micromolar by default) and
        ``fnirs_short_channel_regression``.

    Returns
    -------
    Recording
        ``[n_long_channels * 2, n_times]``: HbO and HbR per long source-detector pair (short
        channels are used for regression, never returned), ``point_types`` says which,
        positions are channel midpoints in mm.
    """
    config = config or PreprocessConfig()
    path = Path(path)
    raw = to_haemoglobin(load_raw_snirf(path), config.fnirs_ppf, path)
    if not len(raw.ch_names):
        raise DataError(path, "no HbO/HbR channels after conversion")
    sfreq = float(raw.info["sfreq"])
    positions = np.array([ch["loc"][:3] for ch in raw.info["chs"]], dtype=float) * 1000.0  # m -> mm
    if not np.isfinite(positions).all():
        raise DataError(path, "some channels have no optode positions (sourcePos3D/detectorPos3D)")
    short = short_channel_mask(raw)
    if short.all():
        raise DataError(
            path,
            f"only short-separation channels (< {SHORT_CHANNEL_MAX_MM:g} mm): nothing on the cortex to use as a target",
        )
    types = np.array(raw.get_channel_types())
    data = bandpass(raw.get_data(), sfreq, config.fnirs_l_freq, config.fnirs_h_freq, config.fnirs_filter_order, path)
    if short.any() and config.fnirs_short_channel_regression:
        for kind in _HB_TYPES:
            rows, refs = np.flatnonzero(~short & (types == kind)), np.flatnonzero(short & (types == kind))
            data[rows] = regress_short_channels(data[rows], data[refs], positions[rows], positions[refs])
    keep = np.flatnonzero(~short)
    data = resample(data[keep], sfreq, config.fnirs_sfreq) * config.fnirs_scale
    return Recording(
        data=data,
        sfreq=config.fnirs_sfreq,
        positions=positions[keep],
        names=[raw.ch_names[i] for i in keep],
        modality="fnirs",
        point_types=types[keep].tolist(),
    )
