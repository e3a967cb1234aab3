"""The hemodynamic basis and the causal convolution with it, shared by the scalp design
(``shared/design.py``) and the cortical-source design (``shared/sources.py``).

Below both: it imports neither, so each imports it at the top.
"""

from __future__ import annotations

import functools

import numpy as np

from fedneurogen.shared.config import PreprocessConfig

#: Basis functions per ``hrf_basis`` setting.
HRF_BASES = {"canonical": 1, "canonical+derivative": 2}
BASIS_STEP = 0.05  # s; resolution at which the HRF basis is tabulated before interpolation


@functools.lru_cache(maxsize=8)
def basis_table(kind: str, history: float) -> tuple[np.ndarray, np.ndarray]:
    """The hemodynamic basis on a fine lag grid, each function scaled to unit peak (the
    regression absorbs scale; equal scales help the penalty).

    Parameters
    ----------
    kind : str
        ``"canonical"`` (Glover's HRF) or ``"canonical+derivative"`` (and its time derivative).
    history : float
        Seconds of history the basis covers.

    Returns
    -------
    lags : np.ndarray
        ``[L]`` lags, s, every ``BASIS_STEP``.
    basis : np.ndarray
        ``[K, L]`` the ``K`` basis functions at the lags.
    """
    # imported here: nilearn's GLM module takes about 2 s to import (measured on a 2-core CPU), and
    # the table is made once per setting (cached) by the first design that needs it
    from nilearn.glm.first_level import glover_hrf, glover_time_derivative

    oversampling = int(round(1.0 / BASIS_STEP))
    functions = [glover_hrf(t_r=1.0, oversampling=oversampling, time_length=history + 1.0)]
    if kind == "canonical+derivative":
        functions.append(glover_time_derivative(t_r=1.0, oversampling=oversampling, time_length=history + 1.0))
    lags = np.arange(len(functions[0])) * BASIS_STEP
    basis = np.stack([f / np.abs(f).max() for f in functions])
    return lags, basis


def hemodynamic_convolution(
    series: np.ndarray, centres: np.ndarray, frame_times: np.ndarray, config: PreprocessConfig
) -> np.ndarray:
    """Convolve series with the hemodynamic basis, causally, sampled at the target frames.

    Each of the ``K`` basis functions is applied over the ``history_seconds`` before each frame.

    Parameters
    ----------
    series : np.ndarray
        ``[P, L]``: ``P`` series known at ``L`` segment centres.
    centres : np.ndarray
        ``[L]`` segment centres, s.
    frame_times : np.ndarray
        ``[n_frames]`` target frame times, s (same clock as ``centres``).
    config : PreprocessConfig
        ``hrf_basis``, ``history_seconds`` and ``power_hop_seconds`` (the integration step).

    Returns
    -------
    np.ndarray
        ``[n_frames, P * K]``, columns ``P`` major, ``K`` minor.
    """
    lags, basis = basis_table(config.hrf_basis, config.history_seconds)
    lag = frame_times[:, None] - centres[None, :]  # [F, L]
    inside = (lag >= 0) & (lag <= config.history_seconds)
    kernels = np.stack([np.where(inside, np.interp(lag, lags, b), 0.0) for b in basis])  # [K, F, L]
    out = np.einsum("kfl,pl->fpk", kernels, series) * config.power_hop_seconds
    return out.reshape(len(frame_times), -1)
