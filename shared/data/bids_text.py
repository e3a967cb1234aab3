"""Small readers for BIDS text files: JSON sidecars, TSV tables, ``participants.tsv`` and events.

``read_json`` / ``read_tsv`` read one file and raise ``DataError`` naming it; ``read_participants``
reads a site's participants, every missing value spelled ``MISSING`` (``n/a``, or a value its
``participants.json`` sidecar describes as missing), and ``attribute_kind`` says whether a
participant column can be a sensitive attribute (groups); ``read_events`` reads a run's
``_events.tsv`` (or makes one event of the task when there is none). Finding runs and their
files is ``bids``, which re-exports these names.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import DataError

#: How ``participants.tsv`` spells a missing value (BIDS); empty cells and values the
#: ``participants.json`` sidecar describes as missing are read as this too.
MISSING = "n/a"
#: A participant column with more distinct values than this is free text or a measurement, not a group.
MAX_GROUP_LEVELS = 8


def read_json(path: Path) -> dict[str, Any]:
    """A JSON sidecar as a dict.

    Parameters
    ----------
    path : Path
        The JSON file.

    Returns
    -------
    dict of str to Any
        Its object.

    Raises
    ------
    DataError
        The file cannot be read, is not JSON, or does not hold an object.
    """
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(path, f"cannot be read as JSON ({err})") from None
    if not isinstance(obj, dict):
        raise DataError(path, "JSON sidecar must hold an object ({...})")
    return obj


def read_tsv(path: Path, required: tuple[str, ...] = ()) -> pd.DataFrame:
    """A BIDS TSV file as strings (``n/a`` kept as text, column names stripped).

    Parameters
    ----------
    path : Path
        The TSV file.
    required : tuple of str
        Columns that must be present.

    Returns
    -------
    pd.DataFrame
        Every cell a string.

    Raises
    ------
    DataError
        The file cannot be read as a table, or lacks a required column.
    """
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_filter=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataError(path, f"cannot be read as a tab-separated table ({err})") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(path, f"missing column(s) {', '.join(missing)} (has: {', '.join(df.columns)})")
    return df


_MISSING_WORDS = re.compile(
    r"\b(missing|not available|unavailable|unknown|not known|not reported|not recorded|not applicable|"
    r"not collected|declined|prefer not to say|n/a)\b",
    re.IGNORECASE,
)


def participants_sidecar(site_dir: str | Path) -> dict[str, Any]:
    """The ``participants.json`` sidecar of a site: per column, its ``Description``, ``Levels``, ``Units``.

    Parameters
    ----------
    site_dir : str | Path
        The BIDS root of the site.

    Returns
    -------
    dict of str to Any
        Column -> its description object; {} when the file is absent.

    Raises
    ------
    DataError
        The file exists but is not a JSON object.
    """
    path = Path(site_dir) / "participants.json"
    return read_json(path) if path.is_file() else {}


def missing_levels(sidecar: dict[str, Any]) -> dict[str, set[str]]:
    """Per column, the values a ``participants.json`` sidecar describes as meaning "missing".

    A value counts when it is a key of the column's ``Levels`` whose description says so
    ("missing", "not available", "unknown", "not reported", "declined", ...), e.g.
    ``"Levels": {"F": "female", "M": "male", "-999": "not recorded"}``.

    Parameters
    ----------
    sidecar : dict of str to Any
        The sidecar (``participants_sidecar``).

    Returns
    -------
    dict of str to set of str
        Column -> its missing-value codes (columns without any are left out).
    """
    out: dict[str, set[str]] = {}
    for column, spec in sidecar.items():
        levels = spec.get("Levels") if isinstance(spec, dict) else None
        if isinstance(levels, dict):
            codes = {str(k).strip() for k, v in levels.items() if _MISSING_WORDS.search(str(v))}
            if codes:
                out[str(column)] = codes
    return out


def is_missing(value: str) -> bool:
    """Whether a (normalised) participant value means "no value".

    Parameters
    ----------
    value : str
        A value of ``read_participants``.

    Returns
    -------
    bool
        True for ``n/a``, in any case, and for an empty cell.
    """
    return value.strip().lower() in ("", MISSING)


def read_participants(site_dir: str | Path) -> dict[str, dict[str, str]]:
    """A site's ``participants.tsv``, every missing value spelled ``n/a``.

    Missing: ``n/a`` in any case, an empty cell, and any value the ``participants.json``
    sidecar lists among a column's ``Levels`` as meaning missing (``missing_levels``). A broken
    sidecar is ignored here (``validate_dataset`` reports it).

    Parameters
    ----------
    site_dir : str | Path
        The BIDS root of the site.

    Returns
    -------
    dict of str to dict of str to str
        ``{participant_id: {column: value}}``, ids with the ``sub-`` prefix; {} when the file is
        absent.

    Raises
    ------
    DataError
        The file cannot be read or has no ``participant_id`` column.
    """
    path = Path(site_dir) / "participants.tsv"
    if not path.is_file():
        return {}
    df = read_tsv(path, required=("participant_id",))
    try:
        codes = missing_levels(participants_sidecar(site_dir))
    except DataError:
        codes = {}
    out: dict[str, dict[str, str]] = {}
    for row in df.to_dict(orient="records"):
        pid = str(row.pop("participant_id")).strip()
        if pid and not pid.startswith("sub-"):
            pid = f"sub-{pid}"
        values = {k: str(v).strip() for k, v in row.items()}
        out[pid] = {k: MISSING if is_missing(v) or v in codes.get(k, ()) else v for k, v in values.items()}
    return out


@dataclass(frozen=True)
class AttributeKind:
    """Whether a participant column can be a sensitive attribute (groups), and why not.

    Attributes
    ----------
    column : str
        The column.
    kind : {"group", "numeric", "free-text"}
        ``group``: a few categories, usable for per-group metrics; ``numeric``: a measurement such
        as age (not binned); ``free-text``: too many distinct values to be groups.
    levels : dict of str to int
        Subjects per value (missing values left out).
    missing : int
        Subjects without a value.
    reason : str
        Why the column is not a group (empty for a group).
    """

    column: str
    kind: str
    levels: dict[str, int]
    missing: int
    reason: str = ""

    @property
    def is_group(self) -> bool:
        """Whether the column's values are groups."""
        return self.kind == "group"


def attribute_kind(column: str, values: list[str], sidecar: dict[str, Any] | None = None) -> AttributeKind:
    """Classify a participant column: groups, a numeric measurement, or free text.

    Rules, in order: a column whose sidecar entry has ``Levels`` is a group (its levels are
    categories); one with ``Units`` is numeric. Otherwise numbers are a measurement when any is
    not a whole number, when there are more than 5 distinct values, or when each of 3 or more
    subjects has its own value (ages); anything with more than ``MAX_GROUP_LEVELS`` (8) distinct
    values is free text. Missing values (``n/a``) are never a level.

    Parameters
    ----------
    column : str
        The column name.
    values : list of str
        One value per subject (``read_participants``: missing spelled ``n/a``).
    sidecar : dict of str to Any, optional
        ``participants_sidecar``.

    Returns
    -------
    AttributeKind
        Its kind, levels and, when it is not a group, why.
    """
    present = [v for v in values if not is_missing(v)]
    levels = dict(sorted(Counter(present).items()))
    spec = (sidecar or {}).get(column)
    spec = spec if isinstance(spec, dict) else {}
    missing = len(values) - len(present)
    numbers = pd.to_numeric(pd.Series(present, dtype=object), errors="coerce")
    numeric = bool(len(present)) and bool(numbers.notna().all())
    if isinstance(spec.get("Levels"), dict) and spec["Levels"]:
        return AttributeKind(column, "group", levels, missing)
    if numeric:
        whole = bool(np.all(np.mod(numbers.to_numpy(float), 1) == 0))
        distinct = len(levels)
        if "Units" in spec or not whole or distinct > 5 or (distinct >= 3 and distinct == len(present)):
            return AttributeKind(
                column, "numeric", levels, missing,
                f"numeric values ({numbers.min():g}-{numbers.max():g}{', ' + str(spec['Units']) if 'Units' in spec else ''}) "
                "are a measurement, not groups; add a categorical column (e.g. age_group) to use it",
            )  # fmt: skip
    if len(levels) > MAX_GROUP_LEVELS:
        return AttributeKind(
            column, "free-text", levels, missing,
            f"{len(levels)} distinct values (more than {MAX_GROUP_LEVELS}): free text, not groups",
        )  # fmt: skip
    return AttributeKind(column, "group", levels, missing)


def read_events(path: Path | None, task: str, duration: float | None = None) -> pd.DataFrame:
    """Events as a DataFrame with float ``onset``, ``duration`` and str ``trial_type``.

    Without a ``trial_type`` column (or where it is ``n/a``) the task name is the class; without
    an events file the whole run is one event of class ``task`` (docs/architecture.md §3: "``trial_type``
    or the task entity gives the class").

    Parameters
    ----------
    path : Path | None
        The ``_events.tsv`` file; None: no events file.
    task : str
        The run's task entity, the default class.
    duration : float | None
        Length of the run in seconds, for the single event without a file (None: infinite).

    Returns
    -------
    pd.DataFrame
        Columns ``onset`` and ``duration`` (float, seconds; ``n/a`` durations are 0) and
        ``trial_type`` (str).

    Raises
    ------
    DataError
        The file cannot be read, has no ``onset`` column, or a non-numeric onset or duration.
    """
    if path is None:
        length = float(duration) if duration is not None else np.inf
        return pd.DataFrame({"onset": [0.0], "duration": [length], "trial_type": [task]})
    df = read_tsv(path, required=("onset",))
    onset = pd.to_numeric(df["onset"], errors="coerce")
    bad = onset.isna()
    if bad.any():
        raise DataError(path, f"non-numeric onset in row(s) {', '.join(str(i + 2) for i in np.flatnonzero(bad)[:5])}")
    if "duration" in df.columns:
        dur = pd.to_numeric(df["duration"].replace("n/a", "0"), errors="coerce")
        if dur.isna().any():
            rows = ", ".join(str(i + 2) for i in np.flatnonzero(dur.isna())[:5])
            raise DataError(path, f"non-numeric duration in row(s) {rows}")
    else:
        dur = pd.Series(np.zeros(len(df)))
    if "trial_type" in df.columns:
        tt = df["trial_type"].astype(str).str.strip().replace({"n/a": task, "": task})
    else:
        tt = pd.Series([task] * len(df))
    return pd.DataFrame(
        {"onset": onset.to_numpy(float), "duration": dur.to_numpy(float), "trial_type": tt.to_numpy(str)}
    )
