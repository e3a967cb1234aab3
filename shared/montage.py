"""Standard EEG electrode positions (MNE's 10-05 montage, MNI / fsaverage space).

Read by the EEG reader (``shared/data/eeg.py``, electrodes a site's files do not place) and by
the design's virtual montage (``shared/design.py``); below both.
"""

from __future__ import annotations

import functools
import warnings

import mne
import numpy as np


@functools.lru_cache(maxsize=1)
def standard_positions() -> dict[str, tuple[str, np.ndarray]]:
    """Standard 10-05 positions in mm, keyed by lower-case name: ``{"cz": ("Cz", xyz_mm)}``.

    MNE's ``standard_1005`` montage (renamed ``colin27_1005`` in MNE 1.13), already in MNI /
    fsaverage space. Cached: the table is read once.

    Returns
    -------
    dict of str to (str, np.ndarray)
        The electrode's name as MNE spells it and its position, mm, by lower-case name.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation of the old name in newer MNE
        try:
            montage = mne.channels.make_standard_montage("colin27_1005")
        except ValueError:
            montage = mne.channels.make_standard_montage("standard_1005")
    pos = montage.get_positions()["ch_pos"]
    return {name.lower(): (name, np.asarray(xyz) * 1000.0) for name, xyz in pos.items()}
