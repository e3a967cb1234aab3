"""Which of a site's subjects an evaluation scores, by what the checkpoint recorded of them.

The checkpoint records the subjects of each split by the content of their files
(``fedneurogen.shared.splits``); only subjects it never trained or validated on are scored,
whatever the folder is called and whichever subjects load, and the report lists the excluded
ones with the reason (``EvaluationSplit.held_out``). None left is an error; ``allow_seen`` scores
every subject, each labelled. A checkpoint without that record is refused (``read_seen``):
rebuilding its split from the seed depends on which subjects load, so it cannot tell held-out
subjects from seen ones. The baselines learn from the subjects the checkpoint trained on; where
it trained on none of the site's, they are fitted on one half of the scored subjects to predict
the other (2 folds). ``seen_by_checkpoint`` labels the subjects of reports that use every
subject (``explain``, ``augment``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedneurogen.shared.errors import DataError
from fedneurogen.shared.recording import PairedWindows
from fedneurogen.shared.splits import SeenSubjects, SubjectSplit, subject_keys

#: How a subject's status reads in reports.
STATUS_TEXT = {"train": "trained on", "val": "validated on", "unseen": "never seen", "unknown": "not known"}


@dataclass
class EvaluationSplit:
    """The windows scored, the windows the baselines learn from, and why.

    Parameters
    ----------
    test : PairedWindows
        The windows scored.
    train : PairedWindows or None
        The windows of this site's subjects the checkpoint trained on; None when it trained on
        none of them (the baselines are then cross-fitted on the scored subjects).
    split : SubjectSplit
        This site's subjects the checkpoint trained on (``train``) and validated on (``val``),
        and the subjects scored (``test``).
    site_in_training : bool
        Whether the checkpoint trained on any subject of this site (by content).
    note : str
        What was scored, what was left out and why, and what the baselines learn from.
    val : PairedWindows, optional
        The windows of this site's subjects the checkpoint validated on (penalties of the baselines).
    status : dict of str to str
        Every subject of the site: ``train``, ``val``, ``unseen``, or ``unknown`` (the
        checkpoint records no subjects; only with ``allow_seen``).
    allow_seen : bool
        Whether subjects the checkpoint saw (or may have seen) are scored.
    """

    test: PairedWindows
    train: PairedWindows | None  # None: no subject of the site was trained on (baselines cross-fit)
    split: SubjectSplit
    site_in_training: bool
    note: str
    val: PairedWindows | None = None  # validated-on subjects (penalties of the baselines)
    status: dict[str, str] = field(default_factory=dict)
    allow_seen: bool = False

    def held_out(self) -> dict[str, Any]:
        """The report's account of which subjects were scored and which left out.

        Returns
        -------
        dict
            ``checked_by``, ``allow_seen``, ``subjects`` (each subject's status),
            ``excluded`` (subject, reason) and its count, and ``scored_seen`` (scored subjects
            the checkpoint saw or may have seen, each labelled).
        """
        scored = set(self.split.test)
        label = lambda s: {"subject": s, "status": STATUS_TEXT[self.status[s]]}  # noqa: E731
        excluded = [label(s) for s in sorted(self.status) if s not in scored]
        return {
            "checked_by": "content hash of each subject's EEG and target files (splits.subject_keys), not folder names",
            "allow_seen": self.allow_seen,
            "subjects": {s: STATUS_TEXT[v] for s, v in sorted(self.status.items())},
            "excluded": excluded,
            "excluded_count": len(excluded),
            "scored_seen": [label(s) for s in sorted(scored) if self.status[s] != "unseen"],
        }


def subject_status(subjects: list[str], keys: dict[str, str], seen: SeenSubjects | None) -> dict[str, str]:
    """What a checkpoint knows of each subject of a site.

    Parameters
    ----------
    subjects : list of str
        The site's subject ids.
    keys : dict of str to str
        Subject id -> content key (``splits.subject_keys``).
    seen : SeenSubjects or None
        The checkpoint's record; None when it has none.

    Returns
    -------
    dict of str to str
        ``train`` / ``val`` (any of the subject's runs trained / validated on), ``unseen``, or
        ``unknown`` when there is no record.
    """
    if seen is None:
        return {s: "unknown" for s in subjects}
    return {s: seen.status(keys[s]) or "unseen" for s in subjects}


def seen_by_checkpoint(
    meta: dict[str, Any], site_dir: Path, windows: PairedWindows, cache_dir: str | Path | None = None
) -> dict[str, Any]:
    """Label a site's subjects with what a checkpoint knows of them, for reports that use every
    subject (``explain``, ``augment``) and so claim no held-out score.

    Parameters
    ----------
    meta : dict
        The checkpoint's metadata.
    site_dir : Path
        The site's folder.
    windows : PairedWindows
        The site's windows.
    cache_dir : path-like, optional
        The cache whose file-hash memo is used.

    Returns
    -------
    dict
        ``checked_by``, ``subjects`` (id -> ``trained on`` / ``validated on`` / ``never seen`` /
        ``not known``) and ``seen_count`` (trained or validated on; None when not known).

    Raises
    ------
    DataError
        A file of a run cannot be read to hash it.
    """
    try:
        seen = SeenSubjects.from_provenance(meta.get("provenance") or {})
    except ValueError as err:
        seen, why = None, str(err)
    subjects = sorted(set(windows.subjects.tolist()))
    keys = subject_keys(site_dir, windows.runs, windows.subjects, cache_dir) if seen is not None else {}
    status = subject_status(subjects, keys, seen)
    return {
        "checked_by": "content hash of each subject's EEG and target files"
        if seen is not None
        else f"not known: the checkpoint {why}",
        "subjects": {s: STATUS_TEXT[v] for s, v in status.items()},
        "seen_count": None if seen is None else sum(v in ("train", "val") for v in status.values()),
    }


def read_site_record(path: Path) -> dict[str, Any]:
    """A site's own record of its split in a run (the ``split-<run>.json`` a DP site writes beside its ledger).

    Parameters
    ----------
    path : Path
        The record.

    Returns
    -------
    dict
        Its content (checked when ``SeenSubjects.from_provenance`` reads it).

    Raises
    ------
    DataError
        The file cannot be read or is not JSON.
    """
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise DataError(path, f"cannot read this site record ({err})") from None


def read_seen(
    meta: dict[str, Any], checkpoint: Path, allow_seen: bool, site_records: Sequence[dict[str, Any]] = ()
) -> SeenSubjects | None:
    """The checkpoint's record of the subjects it saw.

    Parameters
    ----------
    meta : dict
        The checkpoint's metadata.
    checkpoint : Path
        The checkpoint (named in the error).
    allow_seen : bool
        Accept a checkpoint without a usable record (every subject is then ``unknown``).
    site_records : sequence of dict
        Sites' own records of their split in the run (``SeenSubjects.from_provenance``): what a
        DP site withheld from the server.

    Returns
    -------
    SeenSubjects or None
        None when the checkpoint has no usable record and ``allow_seen`` is set.

    Raises
    ------
    DataError
        No usable record and not ``allow_seen``: a split rebuilt from the seed would depend on
        which subjects load, so no subject could be called held-out.
    """
    try:
        return SeenSubjects.from_provenance(meta.get("provenance") or {}, site_records)
    except ValueError as err:
        if allow_seen:
            return None
        raise DataError(
            checkpoint,
            f"{err}, so no subject can be called held-out (written before subjects were recorded, or trained "
            "without its site folders); retrain it, or pass --allow-seen to score every subject labelled as possibly seen",
        ) from None


def evaluation_split(
    windows: PairedWindows,
    seen: SeenSubjects | None,
    keys: dict[str, str],
    site_dir: Path,
    *,
    allow_seen: bool = False,
    scoring: bool = True,
) -> EvaluationSplit:
    """Choose the subjects scored: those the checkpoint never trained or validated on, by content.

    A subject is seen when any of its runs' data files were in the checkpoint's training or
    validation split at any of its sites, whatever the folders are called and whichever
    subjects load now.

    Parameters
    ----------
    windows : PairedWindows
        The site's windows.
    seen : SeenSubjects or None
        The checkpoint's record (``read_seen``); None: unknown (only with ``allow_seen``).
    keys : dict of str to str
        Subject id -> content key of the site's subjects (``splits.subject_keys``).
    site_dir : Path
        The site's folder (named in errors and notes).
    allow_seen : bool
        Score every subject, each labelled with what the checkpoint knows of it.
    scoring : bool
        False for a site whose windows only teach the baselines (``pooled_sites``): no error
        when none is left to score.

    Returns
    -------
    EvaluationSplit
        The scored windows, the trained-on and validated-on ones, and the note.

    Raises
    ------
    DataError
        When ``scoring`` and no subject is left to score.
    """
    subjects = sorted(set(windows.subjects.tolist()))
    status = subject_status(subjects, keys, seen)
    trained = [s for s in subjects if status[s] == "train"]
    validated = [s for s in subjects if status[s] == "val"]
    unseen = [s for s in subjects if status[s] == "unseen"]
    scored = subjects if allow_seen else unseen
    seen_named = ", ".join(f"{s} ({STATUS_TEXT[status[s]]})" for s in trained + validated)
    if scoring and not scored:
        raise DataError(
            site_dir,
            f"no held-out subject to score: the checkpoint trained or validated on all {len(subjects)} subject(s) "
            f"({seen_named}; matched by file content); --allow-seen scores them, labelled as seen",
        )
    split = SubjectSplit(train=tuple(trained), val=tuple(validated), test=tuple(scored))
    in_training = bool(trained)
    train_mask = np.isin(windows.subjects, trained)
    val_mask = np.isin(windows.subjects, validated)
    test_mask = np.isin(windows.subjects, scored)
    if seen is None:
        note = (
            f"--allow-seen: the checkpoint records no subjects it saw; all {len(subjects)} subject(s) scored, "
            "each possibly seen in training (not a held-out score)"
        )
    elif allow_seen:
        labelled = f", {len(trained + validated)} of them seen by the checkpoint: {seen_named}" if seen_named else ""
        note = f"--allow-seen: all {len(subjects)} subject(s) scored{labelled}"
    else:
        excluded = f"; excluded {len(trained + validated)} seen by the checkpoint: {seen_named}" if seen_named else ""
        note = f"{len(scored)} held-out subject(s) scored (never seen by the checkpoint, by file content){excluded}"
    if in_training:
        note += f"; baselines fitted on the {len(trained)} subject(s) the checkpoint trained on"
        note += " (scored too: in-sample for the baselines as for the model)" if allow_seen else ""
    else:
        note += "; baselines fitted on half of the scored subjects, predicting the other half (2 folds by subject)"
    return EvaluationSplit(
        test=windows.subset(test_mask),
        train=windows.subset(train_mask) if in_training else None,
        split=split,
        site_in_training=in_training,
        note=note,
        val=windows.subset(val_mask) if val_mask.any() else None,
        status=status,
        allow_seen=allow_seen,
    )


def limit_windows(windows: PairedWindows, max_windows: int | None) -> PairedWindows:
    """Keep at most ``max_windows`` windows, spread over the subjects.

    Parameters
    ----------
    windows : PairedWindows
        The windows.
    max_windows : int or None
        The limit; None keeps all.

    Returns
    -------
    PairedWindows
        Each subject's first windows (consecutive in time, so runs still stitch into
        continuous series).
    """
    if max_windows is None or len(windows) <= max_windows:
        return windows
    subjects = sorted(set(windows.subjects.tolist()))
    per_subject = max(1, max_windows // len(subjects))
    keep = np.concatenate([np.flatnonzero(windows.subjects == s)[:per_subject] for s in subjects])
    return windows.subset(np.sort(keep)[:max_windows])
