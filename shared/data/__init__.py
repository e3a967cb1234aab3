"""The data layer: BIDS sites in, ``Recording`` / ``PairedWindows`` out.

- ``find_runs``: the runs of a site (EEG + target + sidecars), ``bids``
- ``read_eeg`` / ``read_fmri`` / ``read_fnirs``: one recording, preprocessed (docs/architecture.md §3)
- ``load_site``: a whole site as paired windows, cached on disk (``site``, ``pairing``, ``cache``)
- ``validate_dataset``: a summary of a site and every problem in it (``validate``)

Bad input raises ``fedneurogen.shared.errors.DataError`` naming the file and the problem;
``load_site`` skips broken runs with a ``DataWarning`` when other runs are usable.
"""

from .bids import RunFiles, find_runs
from .cache import SiteCache, default_cache_dir
from .eeg import read_eeg
from .fmri import read_fmri
from .fnirs import read_fnirs
from .problems import DataWarning, Problem
from .site import LoadedSite, load_site, load_site_data
from .validate import ValidationReport, render_report, validate_dataset

__all__ = [
    "DataWarning",
    "Problem",
    "RunFiles",
    "SiteCache",
    "LoadedSite",
    "ValidationReport",
    "default_cache_dir",
    "find_runs",
    "load_site",
    "load_site_data",
    "read_eeg",
    "read_fmri",
    "read_fnirs",
    "render_report",
    "validate_dataset",
]
