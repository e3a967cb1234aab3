"""Reading the simulator's expected scalp band power (the EEG-informed ceiling's features).

The simulator writes, next to the noise-free target, the power each simulated rhythm is expected
to have at each electrode, without spectral-estimation noise (``simulations.eeg.
expected_band_power``)::

    derivatives/ground_truth/sub-01/[ses-1/]eeg/sub-01_task-visual_run-1_desc-expectedpower_timeseries.tsv.gz
    derivatives/ground_truth/sub-01/[ses-1/]eeg/sub-01_task-visual_run-1_desc-expectedpower_timeseries.json

The TSV holds one column per (electrode, rhythm), named ``<channel>_<rhythm>`` (``Oz_alpha``),
one row per time bin, in ln V^2. The JSON sidecar gives ``SamplingFrequency``, ``StartTime``
(the centre of the first bin: 0.5 s on the 1 Hz grid), ``Columns``, ``Units`` and
``ColumnPositionsMM`` (the electrode of each column, mm in fsaverage/MNI space).

Positions come from the sidecar rather than from the EEG recording's montage: the file then
stands on its own (no EEG to open, no MNE montage or ``_electrodes.tsv`` lookup), and they are
the positions the simulator placed the electrodes at, the ones the EEG loader resolves too.
"""

from __future__ import annotations

import gzip
import math
import warnings
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..recording import Recording
from .bids import _same_run, parse_bids_name, read_json

GROUND_TRUTH_DIR = ("derivatives", "ground_truth")
SUFFIX = "_desc-expectedpower_timeseries"


def _run_entities(run_key: str) -> dict[str, str]:
    """``sub-01_ses-1_task-visual_run-1`` -> ``{"sub": "01", "ses": "1", "task": "visual", "run": "1"}``."""
    entities = dict(part.partition("-")[::2] for part in run_key.split("_"))
    if not entities.get("sub") or not entities.get("task"):
        raise ValueError(f"not a run key (sub-<label>_[ses-<label>_]task-<label>[_run-<index>]): {run_key!r}")
    return entities


def expected_power_path(site_dir: str | Path, run_key: str, desc: str = "expectedpower") -> Path | None:
    """The expected-power TSV of a run, or None when the site has none for it.

    Files are matched on the run entities, so ``run-01`` on disk matches the key's ``run-1``;
    ``desc="expectedsourcepower"``: the power at the cortical parcels instead of the electrodes.
    """
    entities = _run_entities(run_key)
    folder = Path(site_dir).joinpath(*GROUND_TRUTH_DIR, f"sub-{entities['sub']}")
    if entities.get("ses"):
        folder = folder / f"ses-{entities['ses']}"
    folder = folder / "eeg"
    if not folder.is_dir():
        return None
    found = []
    for path in sorted(folder.iterdir()):
        name = parse_bids_name(path.name)
        if (
            name.suffix == "timeseries"
            and name.extension == ".tsv.gz"
            and name.entities.get("desc") == desc
            and _same_run(name.entities, entities)
        ):
            found.append(path)
    if len(found) > 1:
        raise DataError(folder, f"several expected-power files for run {run_key}: {', '.join(p.name for p in found)}")
    return found[0] if found else None


def read_expected_band_power(site_dir: str | Path, run_key: str, desc: str = "expectedpower") -> Recording | None:
    """The simulator's expected scalp band power of one run, or None where the site has none.

    Parameters
    ----------
    site_dir : the BIDS site folder (the one holding ``derivatives/ground_truth``).
    run_key : the run, as in ``RunFiles.key``: ``sub-01_task-visual_run-1``, ``sub-01_ses-1_task-motor_run-1``.
    desc : ``expectedpower`` (at the electrodes) or ``expectedsourcepower`` (at the cortical
    parcels, columns ``P<parcel>_<rhythm>``, positions the parcel centres).

    Returns
    -------
    Recording with ``data [n_channels * n_rhythms, n_bins]`` float32 (ln V^2), ``sfreq`` from the
    sidecar (1 Hz), ``positions`` the electrode of each column (mm), ``names`` the column names
    (``Oz_alpha``) and ``modality="eeg"``. Sample ``k`` is the mean over ``[k, k + 1) / sfreq``
    s, centred at ``StartTime + k / sfreq`` (0.5 s, 1.5 s, ...), not at ``k / sfreq`` as
    ``Recording.times`` says.

    Raises ``DataError`` (file and problem) for an unreadable file, a missing or inconsistent
    sidecar, or non-finite values.
    """
    path = expected_power_path(site_dir, run_key, desc)
    if path is None:
        return None
    sidecar_path = path.with_name(path.name[: -len(".tsv.gz")] + ".json")
    if not sidecar_path.is_file():
        raise DataError(path, f"has no JSON sidecar ({sidecar_path.name})")
    sidecar = read_json(sidecar_path)
    header, values = _read_table(path)

    columns = sidecar.get("Columns")
    if columns is not None and list(columns) != header:
        raise DataError(path, f"header does not match Columns of {sidecar_path.name}")
    sfreq = sidecar.get("SamplingFrequency")
    if not isinstance(sfreq, (int, float)) or isinstance(sfreq, bool) or not math.isfinite(sfreq) or sfreq <= 0:
        raise DataError(sidecar_path, f"SamplingFrequency must be a positive number, got {sfreq!r}")
    try:
        positions = np.asarray(sidecar.get("ColumnPositionsMM"), dtype=np.float64)
    except (TypeError, ValueError):
        positions = np.empty(0)
    if positions.shape != (len(header), 3) or not np.isfinite(positions).all():
        raise DataError(sidecar_path, f"ColumnPositionsMM must give x, y, z (mm) for each of the {len(header)} columns")
    return Recording(data=values.T, sfreq=float(sfreq), positions=positions, names=header, modality="eeg")


def _read_table(path: Path) -> tuple[list[str], np.ndarray]:
    """Header and ``[n_rows, n_columns]`` values of a gzipped TSV of numbers."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            header = f.readline().rstrip("\n").split("\t")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # numpy's "empty input" notice: reported below
                values = np.loadtxt(f, delimiter="\t", dtype=np.float64, ndmin=2)
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as err:
        raise DataError(path, f"cannot be read as a gzip-compressed TSV ({type(err).__name__}: {err})") from None
    except ValueError as err:
        raise DataError(path, f"holds a row that is not {len(header)} numbers ({err})") from None
    if not header or any(not name for name in header) or len(set(header)) != len(header):
        raise DataError(path, "header must name every column once")
    if values.shape[0] == 0:
        raise DataError(path, "holds no rows")
    if values.shape[1] != len(header):
        raise DataError(path, f"rows have {values.shape[1]} values for {len(header)} columns")
    if not np.isfinite(values).all():
        raise DataError(path, f"holds {int((~np.isfinite(values)).sum())} NaN/inf values")
    return header, values
