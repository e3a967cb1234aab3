"""Subject-level splits: a subject's windows are all in one split, so test subjects are unseen.

A checkpoint records which subjects it trained and validated on by the *content* of their
files, never by folder or subject names (``subject_keys``, ``split_record``, ``SeenSubjects``):

- a run's hash is the SHA-256 over the sorted SHA-256 digests of its data files: the EEG file,
  the files its format reads besides it (BrainVision ``.eeg``/``.vmrk``, EEGLAB ``.fdt``) and
  the target files (GIFTI, NIfTI, SNIRF). Names are left out (a copy of a site under another
  folder, or a subject renamed, hashes the same) and so are sidecars and events (fixing a
  sidecar does not make a recording new);
- a subject's key is its runs' hashes, sorted and joined by ``:`` (the runs that fed its
  windows). A subject is *seen* when any of its runs is among the checkpoint's trained or
  validated runs, so the same subject with a run more or less is still recognised;
- a site's dataset hash is the SHA-256 over the sorted run hashes of all its subjects (for
  display: it changes when a subject is added, so it never decides anything).

What a hash reveals: only whether a file the reader already holds, byte for byte, was part of a
split. It identifies nobody to a reader without the file. A recording that differs in any byte
(re-exported, re-derived target) is a new recording to this check.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fedneurogen.shared.errors import DataError


@dataclass(frozen=True)
class SubjectSplit:
    """Subject ids in each split; a subject is in exactly one.

    Attributes
    ----------
    train, val, test : tuple of str
        Subject ids (``sub-01``) of the training, validation and test splits.
    """

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    def masks(self, subjects: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-window membership of each split.

        Parameters
        ----------
        subjects : np.ndarray
            Subject id of each window, ``[n_windows]`` (``PairedWindows.subjects``).

        Returns
        -------
        train, val, test : np.ndarray
            Boolean masks ``[n_windows]``.
        """
        return np.isin(subjects, self.train), np.isin(subjects, self.val), np.isin(subjects, self.test)

    def to_dict(self) -> dict[str, list[str]]:
        """The split as JSON-ready lists.

        Returns
        -------
        dict of str to list of str
            ``{"train": [...], "val": [...], "test": [...]}``.
        """
        return {"train": list(self.train), "val": list(self.val), "test": list(self.test)}


def split_subjects(
    subjects: np.ndarray | list[str], seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.2
) -> SubjectSplit:
    """Shuffle the unique subjects with ``seed`` and cut them into train/val/test.

    With three or more subjects, validation and test each get at least one subject and
    training keeps at least one; with fewer, everything goes to training.

    Parameters
    ----------
    subjects : np.ndarray | list of str
        Subject ids, repeated or not (e.g. one per window).
    seed : int
        Seed of the shuffle.
    val_fraction, test_fraction : float
        Shares of the subjects for validation and test (rounded, at least one each).

    Returns
    -------
    SubjectSplit
        The sorted subject ids of each split.
    """
    unique = sorted(set(np.asarray(subjects).tolist()))
    order = np.random.default_rng(seed).permutation(len(unique))
    shuffled = [unique[i] for i in order]
    n = len(shuffled)
    if n < 3:
        return SubjectSplit(tuple(shuffled), (), ())
    n_test = max(1, int(round(test_fraction * n)))
    n_val = max(1, int(round(val_fraction * n)))
    if n_test + n_val > n - 1:
        n_test, n_val = 1, 1
    test = tuple(sorted(shuffled[:n_test]))
    val = tuple(sorted(shuffled[n_test : n_test + n_val]))
    train = tuple(sorted(shuffled[n_test + n_val :]))
    return SubjectSplit(train, val, test)


def keyed_split_subjects(
    subjects: np.ndarray | list[str], key: bytes, val_fraction: float = 0.15, test_fraction: float = 0.2
) -> SubjectSplit:
    """Assign each subject to train/val/test by a keyed hash of its id alone (a deployed site's split).

    A subject's score is HMAC-SHA256 of its id under ``key`` (a secret the site holds), read as a
    number in [0, 1): below ``test_fraction`` it is a test subject, below ``test_fraction +
    val_fraction`` a validation one, else a training one. So a subject's split depends on its id
    and the key only: adding or removing another subject, or any run-config ``seed``, moves
    nobody, and without the key nobody can tell or steer which subject is held out. The one
    exception keeps a site training: when every subject would be held out, the one of highest
    score trains.

    Parameters
    ----------
    subjects : np.ndarray | list of str
        Subject ids, repeated or not (e.g. one per window).
    key : bytes
        The site's split key (``client.privacy.site_key``); a simulated node's is derived from its
        ``site-seed``.
    val_fraction, test_fraction : float
        Expected shares of the subjects for validation and test.

    Returns
    -------
    SubjectSplit
        The sorted subject ids of each split.

    Raises
    ------
    ValueError
        An empty ``key``, or fractions that leave no room for training.
    """
    if not key:
        raise ValueError("keyed_split_subjects needs a non-empty key")
    if not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction < 1):
        raise ValueError(f"val_fraction + test_fraction must be in [0, 1), got {val_fraction} + {test_fraction}")
    unique = sorted(set(np.asarray(subjects).tolist()))
    score = {s: int.from_bytes(hmac.new(key, str(s).encode(), "sha256").digest()[:8], "big") / 2**64 for s in unique}
    parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for s in unique:
        parts[
            "test" if score[s] < test_fraction else "val" if score[s] < test_fraction + val_fraction else "train"
        ].append(s)
    if unique and not parts["train"]:
        best = max(unique, key=score.__getitem__)
        parts = {name: [s for s in members if s != best] for name, members in parts.items()}
        parts["train"] = [best]
    return SubjectSplit(*(tuple(sorted(parts[name])) for name in ("train", "val", "test")))


# ----------------------------------------------------------------------------------------------
# What a checkpoint saw, by content

#: Names the hashing scheme in a checkpoint (a future scheme gets a new name).
HASH_SCHEME = "run-data-sha256-v1"
#: Hex digits of one run hash (SHA-256).
HASH_LENGTH = 64
#: Bounds on what a record (or a site's report) may hold: runs per subject, subjects per split.
MAX_RUNS_PER_SUBJECT = 256
MAX_SUBJECTS_PER_SPLIT = 10_000
#: The provenance key of the record.
PROVENANCE_KEY = "split_subjects"
SPLIT_NAMES = ("train", "val", "test")
#: Config keys of a federated site's report (its training and validation runs' hashes) and the
#: most run hashes one key may hold.
REPORT_KEYS = {"train": "train-runs", "val": "val-runs"}
MAX_REPORTED_RUNS = 20_000
_KEY = re.compile(r"[0-9a-f]{64}(?::[0-9a-f]{64})*")


def run_hash(digests: Iterable[str]) -> str:
    """Hash one run from the SHA-256 digests of its data files.

    Parameters
    ----------
    digests : iterable of str
        Hex SHA-256 of each data file (order does not matter).

    Returns
    -------
    str
        Hex SHA-256 over the sorted digests.
    """
    body = "\n".join(sorted(digests))
    return hashlib.sha256(f"fedneurogen-run {HASH_SCHEME}\n{body}\n".encode()).hexdigest()


def subject_keys(
    site_dir: str | Path, runs: np.ndarray, subjects: np.ndarray, cache_dir: str | Path | None = None
) -> dict[str, str]:
    """Content key of every subject of a site's windows (see the module docstring).

    File digests come from the preprocessing cache's memo (``file-hashes.json``), so files the
    loader has just hashed are not read again.

    Parameters
    ----------
    site_dir : path-like
        The site's BIDS folder.
    runs, subjects : np.ndarray
        Run key and subject id of each window (``PairedWindows.runs``, ``.subjects``).
    cache_dir : path-like, optional
        The cache folder whose memo is used (default: ``default_cache_dir()``).

    Returns
    -------
    dict of str to str
        Subject id -> its sorted run hashes joined by ``:``.

    Raises
    ------
    DataError
        A run of the windows is not in the folder any more, or one of its files cannot be read.
    """
    from fedneurogen.shared.data.bids import find_runs
    from fedneurogen.shared.data.cache import HashMemo, default_cache_dir

    site_dir = Path(site_dir)
    found = {run.key: run for run in find_runs(site_dir)}
    memo = HashMemo((Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "file-hashes.json")
    per_subject: dict[str, set[str]] = {}
    for key, subject in sorted(set(zip(np.asarray(runs).tolist(), np.asarray(subjects).tolist()))):
        run = found.get(key)
        if run is None:
            raise DataError(site_dir, f"run {key} gave windows but is no longer in the folder")
        digests = []
        for file in [run.eeg, *run.eeg_companions, *run.target]:
            try:
                digests.append(memo.sha256(file))
            except OSError as err:
                raise DataError(file, f"cannot be read to hash it ({err.strerror or err})") from None
        per_subject.setdefault(str(subject), set()).add(run_hash(digests))
    memo.save()
    return {subject: ":".join(sorted(hashes)) for subject, hashes in per_subject.items()}


def dataset_hash(keys: Iterable[str]) -> str:
    """The content hash of a site's data (display only: it changes with every subject added).

    Parameters
    ----------
    keys : iterable of str
        The subjects' keys (``subject_keys``).

    Returns
    -------
    str
        Hex SHA-256 over the sorted run hashes of all of them.
    """
    return run_hash(h for key in keys for h in key.split(":"))


def check_subject_keys(values: Any, what: str) -> list[str]:
    """Validate a list of subject keys read from a checkpoint or received from a site.

    Parameters
    ----------
    values : Any
        The received value.
    what : str
        What it is, for the error message (``site node 7: train``).

    Returns
    -------
    list of str
        The keys, each one to ``MAX_RUNS_PER_SUBJECT`` lower-case hex SHA-256 joined by ``:``.

    Raises
    ------
    ValueError
        Not a list of such strings, or more than ``MAX_SUBJECTS_PER_SPLIT`` of them.
    """
    if not isinstance(values, (list, tuple)):
        raise ValueError(f"{what}: expected a list of subject hashes, got {type(values).__name__}")
    if len(values) > MAX_SUBJECTS_PER_SPLIT:
        raise ValueError(f"{what}: {len(values)} subjects, more than the {MAX_SUBJECTS_PER_SPLIT} allowed")
    out = []
    for i, value in enumerate(values):
        if not isinstance(value, str) or len(value) > (HASH_LENGTH + 1) * MAX_RUNS_PER_SUBJECT:
            raise ValueError(
                f"{what}: item {i} is not a subject hash (a string of at most {MAX_RUNS_PER_SUBJECT} runs)"
            )
        if not _KEY.fullmatch(value):
            raise ValueError(f"{what}: item {i} is not {HASH_LENGTH}-digit lower-case hex run hashes joined by ':'")
        out.append(value)
    return out


def split_record(split: SubjectSplit, keys: dict[str, str], name: str | None = None) -> dict[str, Any]:
    """One site's entry in a checkpoint's record of what it saw.

    Parameters
    ----------
    split : SubjectSplit
        The site's subject split.
    keys : dict of str to str
        Subject id -> key (``subject_keys``) of every subject of the split.
    name : str, optional
        The site's folder name, for display only.

    Returns
    -------
    dict
        ``{"name", "dataset", "train", "val", "test"}``: the sorted keys of each split.
    """
    record: dict[str, Any] = {"name": name, "dataset": dataset_hash(keys.values())}
    for part in SPLIT_NAMES:
        record[part] = sorted(keys[s] for s in getattr(split, part))
    return record


def seen_record(sites: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A checkpoint's record of what it saw, for its ``provenance[PROVENANCE_KEY]``.

    Parameters
    ----------
    sites : sequence of dict
        One entry per site (``split_record``; a federated site's has ``train`` and ``val`` only,
        or ``withheld`` with the reason when the site sent none).

    Returns
    -------
    dict
        ``{"scheme": HASH_SCHEME, "sites": [...]}``.
    """
    return {"scheme": HASH_SCHEME, "sites": list(sites)}


@dataclass(frozen=True)
class SeenSubjects:
    """The runs a checkpoint trained and validated on, over all its sites, by content.

    Attributes
    ----------
    train, val : frozenset of str
        Run hashes of the training and validation subjects.
    covered : frozenset of str or None
        When the record was completed by sites' own records (a DP site withholds its split from
        the server): every run it knows the status of. A run outside it is ``unknown``, never
        ``unseen``. None: a complete record, where any run not trained or validated on is unseen.
    """

    train: frozenset[str]
    val: frozenset[str]
    covered: frozenset[str] | None = None

    @classmethod
    def from_provenance(cls, provenance: dict[str, Any], site_records: Sequence[dict[str, Any]] = ()) -> SeenSubjects:
        """Read the record of a checkpoint's provenance, completed by sites' own records.

        Parameters
        ----------
        provenance : dict
            The checkpoint's ``provenance``.
        site_records : sequence of dict
            Records a site keeps of its own split in a run (``seen_record`` of one
            ``split_record``: train, val and held-out runs; a DP site writes one beside its
            ledger and sends none). They fill in the sites whose subjects the checkpoint
            does not know; a subject then counts as unseen only when a record names it held out.

        Returns
        -------
        SeenSubjects
            What it trained and validated on.

        Raises
        ------
        ValueError
            The checkpoint has no record, a record of another scheme, a site whose subjects are
            not recorded (``withheld``) and no site record, or a malformed one; the message says which.
        """
        record = provenance.get(PROVENANCE_KEY)
        if not isinstance(record, dict):
            raise ValueError("records no content hashes of the subjects it trained and validated on")
        if record.get("scheme") != HASH_SCHEME:
            raise ValueError(f"records its subjects by scheme {record.get('scheme')!r}, not {HASH_SCHEME!r}")
        train: set[str] = set()
        val: set[str] = set()
        withheld = []
        for i, site in enumerate(record.get("sites") or []):
            if not isinstance(site, dict):
                raise ValueError(f"site {i} of its subject record is malformed")
            if "withheld" in site:
                withheld.append(site["withheld"])
                continue
            for part, into in (("train", train), ("val", val)):
                for key in check_subject_keys(site.get(part, []), f"site {i}: {part}"):
                    into.update(key.split(":"))
        if not record.get("sites"):
            raise ValueError("records no site in its subject record")
        if not withheld and not site_records:
            return cls(frozenset(train), frozenset(val))
        if withheld and not site_records:
            raise ValueError(
                f"does not know the subjects of one of its sites: {withheld[0]} "
                "(pass that site's own record of this run: evaluate --site-record)"
            )
        covered = set(train) | set(val)
        for r, own in enumerate(site_records):  # a site's own record: its train, val and held-out runs
            sites = own.get("sites") if isinstance(own, dict) and own.get("scheme") == HASH_SCHEME else None
            if not sites:
                raise ValueError(f"site record {r} is not a {HASH_SCHEME} record of a site's split")
            for i, site in enumerate(sites):
                for part in SPLIT_NAMES:
                    for key in check_subject_keys(site.get(part, []), f"site record {r}, site {i}: {part}"):
                        runs = key.split(":")
                        covered.update(runs)
                        {"train": train, "val": val}.get(part, set()).update(runs)
        return cls(frozenset(train), frozenset(val), frozenset(covered))

    def status(self, key: str) -> str | None:
        """Whether a subject was seen.

        Parameters
        ----------
        key : str
            The subject's key (``subject_keys``).

        Returns
        -------
        str or None
            ``"train"`` when any of its runs was trained on, else ``"val"`` when any was
            validated on, else ``"unknown"`` when the record does not cover it, else None (never seen).
        """
        runs = set(key.split(":"))
        if runs & self.train:
            return "train"
        if runs & self.val:
            return "val"
        if self.covered is not None and not runs <= self.covered:
            return "unknown"  # possibly a withheld site's subject no record names
        return None


def subject_folds(subjects: np.ndarray, n_folds: int) -> list[np.ndarray]:
    """Split the subjects into folds (sorted ids dealt in turn).

    Parameters
    ----------
    subjects : np.ndarray
        Subject of each window (any hashable ids).
    n_folds : int
        Folds wanted (at most one per subject).

    Returns
    -------
    list of np.ndarray
        Each fold's subject ids.
    """
    ids = np.array(sorted(set(np.asarray(subjects).tolist())), dtype=object)
    n = max(1, min(n_folds, len(ids)))
    return [ids[i::n] for i in range(n)]
