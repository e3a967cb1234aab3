"""On-disk cache of a site's preprocessed ``PairedWindows``.

An entry is keyed by the SHA-256 of every input file's content (EEG, companions, sidecars,
events, target files, ``participants.tsv``, by path relative to the site) plus
``PreprocessConfig.cache_key()`` and ``CACHE_VERSION``. Any content change, any added or
removed input file, or any config change gives a new key. An entry is a folder
``sites/<site>-<key>/`` holding the site's continuous runs joined end to end (``eeg.npy``,
``target.npy``, ``design.npy``: float32, read back memory-mapped, so a site's size costs disk,
not RAM) and ``windows.npz`` (where each window starts, its label, subject, run, onset), plus
``sites/<site>-<key>.json`` (everything else). The folder is built under a temporary name
(``staging``) and renamed; the JSON is written last and marks the entry complete.

Hashing large files is the main cost of a cache hit, so file hashes are memoised in
``file-hashes.json`` by ``(size, mtime_ns, ctime_ns, inode)``. A memo entry is trusted only if
the file had been unchanged for ``SETTLE_NS`` when it was hashed: a write in the same
filesystem-clock tick as the hash could otherwise leave a stale hash with an identical stat
(git's "racy clean" problem). ``ctime`` cannot be set by tools such as ``touch -d``, so a
content change always shows in the stat.

The cache holds patient data and, in the memo, every input path (with subject IDs): the folders
it creates are readable by their owner only (0700) and so are its files (0600).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..config import PreprocessConfig
from ..errors import ConfigError, DataError
from ..io import atomic_path, file_sha256, write_json_atomic
from ..recording import PairedWindows, WindowView

#: Bump when the loader's output for the same inputs changes (new preprocessing, bug fix).
CACHE_VERSION = 5  # 5: missing participant values read as n/a; 4: continuous runs, memory-mapped
SETTLE_NS = 2_000_000_000
#: Entries not used for this long are deleted when the next entry is written.
DEFAULT_RETENTION_DAYS = 30.0
_CONTINUOUS = ("eeg", "target", "design")  # one .npy each, memory-mapped on load
_SMALL = ("eeg_starts", "target_starts", "labels", "subjects", "runs", "onsets", "eeg_positions", "target_positions")


def default_cache_dir() -> Path:
    """The default cache folder.

    Returns
    -------
    Path
        ``$FEDNEUROGEN_CACHE`` (user-expanded) or ``~/.cache/fedneurogen``.
    """
    env = os.environ.get("FEDNEUROGEN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fedneurogen"


class HashMemo:
    """SHA-256 of files, remembered across runs while a file's stat is unchanged.

    A missing or broken memo file starts empty (see the module docstring for when a memo entry
    is trusted).

    Parameters
    ----------
    path : Path
        The memo file (``file-hashes.json``).
    """

    def __init__(self, path: Path):
        self.path = path
        self._entries: dict[str, dict[str, Any]] = _read_memo(path)
        self._dirty = False
        self.hashed = 0  # files actually read in this session (for tests and benchmarks)

    @staticmethod
    def _signature(st: os.stat_result) -> list[int]:
        return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]

    def sha256(self, file: Path) -> str:
        """The SHA-256 of a file, from the memo when its stat is unchanged and trusted.

        Parameters
        ----------
        file : Path
            The file.

        Returns
        -------
        str
            Hex digest.

        Raises
        ------
        OSError
            The file cannot be read.
        """
        file = file.resolve()
        st = file.stat()
        sig = self._signature(st)
        entry = self._entries.get(str(file))
        if entry and entry.get("stat") == sig and entry.get("trusted"):
            return entry["sha256"]
        started = time.time_ns()
        digest = file_sha256(file)
        self.hashed += 1
        settled = started - max(st.st_mtime_ns, st.st_ctime_ns) > SETTLE_NS
        # Re-stat: a file that changed while it was being read must not be memoised.
        if self._signature(file.stat()) == sig:
            self._entries[str(file)] = {"stat": sig, "sha256": digest, "trusted": settled}
            self._dirty = True
        return digest

    def save(self) -> None:
        """Write the memo if it changed, forgetting files that no longer exist.

        A memo that cannot be written is skipped silently (it only costs time).
        """
        if not self._dirty:
            return
        # Forget files that no longer exist so the memo does not grow without bound.
        self._entries = {k: v for k, v in self._entries.items() if os.path.exists(k)}
        try:
            private_dir(self.path.parent)
            write_json_atomic(self.path, self._entries, indent=0, mode=0o600)
            _READ[self.path] = (_memo_stat(self.path), dict(self._entries))
        except OSError:
            pass  # a memo we cannot write only costs time
        self._dirty = False


# The memo as this process last read or wrote it, by the file's stat: a simulation actor serving
# hundreds of sites loads one per turn, and parsing the memo of every site's files each time made
# a round grow with the square of the sites. A write by another process (an atomic rename: a new
# inode) changes the stat and is read again.
_READ: dict[Path, tuple[tuple[int, int, int] | None, dict[str, dict[str, Any]]]] = {}


def _memo_stat(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino


def _read_memo(path: Path) -> dict[str, dict[str, Any]]:
    """The memo's entries (a copy of this process's last reading while the file is unchanged);
    empty when there is no memo yet or a broken one."""
    stat = _memo_stat(path)
    if stat is None:
        return {}
    known = _READ.get(path)
    if known is not None and known[0] == stat:
        return dict(known[1])  # entries are replaced, never changed in place: a shallow copy is enough
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # a broken memo: start empty
    entries = loaded if isinstance(loaded, dict) else {}
    _READ[path] = (stat, dict(entries))
    return entries


class SiteCache:
    """The cache folder: ``sites/<site>-<key>/`` entries, their ``.json`` and the hash memo.

    Parameters
    ----------
    cache_dir : str | Path | None
        The cache folder; None: ``default_cache_dir()``.

    Raises
    ------
    ConfigError
        ``$FEDNEUROGEN_CACHE_DAYS`` is not a number (``retention_days``).
    """

    def __init__(self, cache_dir: str | Path | None = None):
        self.dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.memo = HashMemo(self.dir / "file-hashes.json")
        self.retention_days = retention_days()  # a bad setting fails here, before any work

    def key(self, site_dir: Path, files: list[Path], config: PreprocessConfig) -> str:
        """Content key of a site's inputs under a config.

        Parameters
        ----------
        site_dir : Path
            The site's BIDS root (file paths are hashed relative to it).
        files : list of Path
            Every input file (``RunFiles.inputs`` of each run, ``participants.tsv``).
        config : PreprocessConfig
            The preprocessing settings (``cache_key``).

        Returns
        -------
        str
            Hex SHA-256 over ``CACHE_VERSION``, the config and each file's path and content hash.

        Raises
        ------
        DataError
            An input file cannot be read.
        """
        site_dir = site_dir.resolve()
        h = hashlib.sha256(f"fedneurogen-data v{CACHE_VERSION}\nconfig {config.cache_key()}\n".encode())
        for file in sorted({f.resolve() for f in files}):
            try:
                rel = file.relative_to(site_dir).as_posix()
            except ValueError:
                rel = file.as_posix()
            try:
                digest = self.memo.sha256(file)
            except OSError as err:
                raise DataError(file, f"cannot be read ({err.strerror or err})") from None
            h.update(f"{rel}\t{digest}\n".encode("utf-8", "surrogateescape"))  # non-UTF-8 names hash as their bytes
        self.memo.save()
        return h.hexdigest()

    def _entry(self, site_dir: Path, key: str) -> tuple[Path, Path]:
        """(metadata JSON, arrays folder) of an entry."""
        stem = f"{site_dir.resolve().name}-{key[:32]}"
        return self.dir / "sites" / f"{stem}.json", self.dir / "sites" / stem

    def staging(self, site_dir: Path, key: str) -> Path:
        """A new private folder where an entry's arrays are written before ``store`` publishes them.

        Parameters
        ----------
        site_dir : Path
            The site's BIDS root.
        key : str
            The entry's key (``key``).

        Returns
        -------
        Path
            An empty folder (mode 0o700) next to the entry's final place.

        Raises
        ------
        OSError
            The cache cannot be written.
        """
        _, folder = self._entry(site_dir, key)
        private_dir(folder.parent)
        staged = folder.with_name(f".{folder.name}.partial-{os.getpid()}-{time.time_ns()}")
        staged.mkdir(mode=0o700)
        return staged

    def allocator(self, staged: Path):
        """An array allocator for ``combine_runs`` that writes into ``staged``.

        Parameters
        ----------
        staged : Path
            The staging folder (``staging``).

        Returns
        -------
        callable
            ``allocate(name, shape)`` -> a float32 ``<name>.npy`` file in ``staged``,
            memory-mapped for writing (readable by this user only: patient data).
        """

        def allocate(name: str, shape: tuple[int, int]) -> np.ndarray:
            path = staged / f"{name}.npy"
            array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
            os.chmod(path, 0o600)
            return array

        return allocate

    def load(self, site_dir: Path, key: str) -> tuple[PairedWindows, dict[str, Any]] | None:
        """Read an entry.

        A hit marks the entry as used (for retention).

        Parameters
        ----------
        site_dir : Path
            The site's BIDS root.
        key : str
            The entry's key (``key``).

        Returns
        -------
        tuple of (PairedWindows, dict) | None
            The windows (``WindowView`` objects into the memory-mapped runs) and the entry's
            metadata; None on a miss or an unreadable entry.
        """
        meta_path, folder = self._entry(site_dir, key)
        if not meta_path.is_file() or not folder.is_dir():
            return None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if meta.get("key") != key:
                return None
            continuous = {
                name: np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False) for name in _CONTINUOUS
            }
            with np.load(folder / "windows.npz", allow_pickle=False) as npz:
                small = {name: npz[name] for name in _SMALL}
            w = meta["windows"]
            eeg_length, target_length = int(w["eeg_length"]), int(w["target_length"])
            windows = PairedWindows(
                eeg=WindowView(continuous["eeg"], small["eeg_starts"], eeg_length, time_axis=1),
                eeg_sfreq=w["eeg_sfreq"],
                eeg_channel_names=w["eeg_channel_names"],
                eeg_positions=small["eeg_positions"],
                target=WindowView(continuous["target"], small["target_starts"], target_length, time_axis=1),
                target_sfreq=w["target_sfreq"],
                target_modality=w["target_modality"],
                target_names=w["target_names"],
                target_positions=small["target_positions"],
                labels=small["labels"],
                subjects=small["subjects"],
                runs=small["runs"],
                onsets=small["onsets"],
                lag=w["lag"],
                participants=w["participants"],
                target_point_types=w["target_point_types"],
                design=WindowView(continuous["design"], small["target_starts"], target_length, time_axis=0),
                history=w["history"],
            )
        except (OSError, ValueError, KeyError):
            return None  # damaged entry: recompute and overwrite
        try:
            os.utime(meta_path)  # last use, for retention
        except OSError:
            pass
        return windows, meta

    def store(
        self,
        site_dir: Path,
        key: str,
        windows: PairedWindows,
        config: PreprocessConfig,
        extra: dict[str, Any],
        staged: Path,
    ) -> Path:
        """Publish an entry.

        The staging folder becomes the entry and its JSON is written last. Older entries of the
        same site and config are removed, and entries unused for the retention period are purged.

        Parameters
        ----------
        site_dir : Path
            The site's BIDS root.
        key : str
            The entry's key (``key``).
        windows : PairedWindows
            Windows whose ``eeg``, ``target`` and ``design`` are ``WindowView`` objects into the
            arrays ``allocator(staged)`` made.
        config : PreprocessConfig
            The preprocessing settings (stored in the metadata).
        extra : dict of str to Any
            More metadata, stored as given.
        staged : Path
            The staging folder (``staging``).

        Returns
        -------
        Path
            The entry's folder.

        Raises
        ------
        TypeError
            ``windows`` are not views built in the staging folder.
        """
        meta_path, folder = self._entry(site_dir, key)
        views = {name: getattr(windows, name) for name in _CONTINUOUS}
        if not all(isinstance(v, WindowView) for v in views.values()):
            raise TypeError("SiteCache.store needs the windows combine_runs built in the staging folder")
        for view in views.values():
            if isinstance(view.data, np.memmap):
                view.data.flush()
        with atomic_path(staged / "windows.npz", mode=0o600) as tmp:
            with open(tmp, "wb") as f:
                np.savez(
                    f, eeg_starts=windows.eeg.starts, target_starts=windows.target.starts, labels=windows.labels,
                    subjects=windows.subjects, runs=windows.runs, onsets=windows.onsets,
                    eeg_positions=windows.eeg_positions, target_positions=windows.target_positions,
                )  # fmt: skip
        if folder.exists():  # an unpublished leftover of a crashed run (its JSON was never written)
            shutil.rmtree(folder)
        os.replace(staged, folder)
        meta = {
            "key": key,
            "version": CACHE_VERSION,
            "site_dir": str(site_dir.resolve()),
            "config_key": config.cache_key(),
            "config": config.model_dump(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "n_windows": len(windows),
            "windows": {
                "eeg_sfreq": windows.eeg_sfreq,
                "eeg_channel_names": list(windows.eeg_channel_names),
                "eeg_length": windows.eeg.length,
                "target_sfreq": windows.target_sfreq,
                "target_modality": windows.target_modality,
                "target_names": list(windows.target_names),
                "target_length": windows.target.length,
                "lag": windows.lag,
                "participants": windows.participants,
                "target_point_types": windows.target_point_types,
                "history": windows.history,
            },
            **extra,
        }
        write_json_atomic(meta_path, meta, mode=0o600)
        self._prune(meta_path, meta)
        self.purge(older_than_days=self.retention_days)
        return folder

    def _prune(self, keep: Path, meta: dict[str, Any]) -> None:
        """Entries of the same site folder and config with another key can never hit again."""
        for other in (self.dir / "sites").glob("*.json"):
            if other == keep:
                continue
            try:
                m = json.loads(other.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            same = [m.get(k) == meta.get(k) for k in ("site_dir", "config_key", "subjects")]
            if all(same):  # a subset's entry (synthesize --subjects) does not replace the whole site's
                _remove(other)

    # -- what is kept, and removing it (``fedneurogen cache``) ---------------------------------

    def entries(self) -> list[dict[str, Any]]:
        """Every cached site (``fedneurogen cache``).

        Returns
        -------
        list of dict
            Per entry: ``site_dir``, ``created``, ``n_windows``, ``bytes`` (on disk),
            ``modified`` (last use, epoch seconds) and ``files`` (its JSON first).
        """
        out = []
        for meta_path in sorted((self.dir / "sites").glob("*.json")):
            folder = _folder_of(meta_path)
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                meta = {}
            files = [meta_path, *sorted(folder.iterdir())] if folder.is_dir() else [meta_path]
            out.append({
                "site_dir": meta.get("site_dir", "?"), "created": meta.get("created", "?"), "n_windows": meta.get("n_windows"),
                "bytes": sum(p.stat().st_size for p in files), "modified": max(p.stat().st_mtime for p in files), "files": files,
            })  # fmt: skip
        return out

    def purge(self, older_than_days: float | None = None) -> list[dict[str, Any]]:
        """Delete every entry, or those not used for ``older_than_days``.

        Staging folders a crashed run left behind go too once a day old. Purging everything
        also deletes the hash memo (file names and hashes of the inputs).

        Parameters
        ----------
        older_than_days : float | None
            Age since last use; None: everything.

        Returns
        -------
        list of dict
            The removed entries, as ``entries`` lists them.
        """
        cutoff = None if older_than_days is None else time.time() - older_than_days * 86400
        removed = [e for e in self.entries() if cutoff is None or e["modified"] < cutoff]
        for entry in removed:
            _remove(entry["files"][0])
        for staged in (self.dir / "sites").glob(".*.partial-*"):
            try:
                if older_than_days is None or staged.stat().st_mtime < time.time() - 86400:
                    shutil.rmtree(staged, ignore_errors=True)
            except OSError:
                pass
        if older_than_days is None:
            self.memo.path.unlink(missing_ok=True)  # file names and hashes of the inputs, too
        return removed


def private_dir(folder: Path) -> Path:
    """Create a folder and its missing parents readable by their owner only (0700).

    Folders that exist already are left as they are (the user may have chosen them).

    Parameters
    ----------
    folder : Path
        The folder.

    Returns
    -------
    Path
        ``folder``.

    Raises
    ------
    OSError
        A folder cannot be created.
    """
    missing = [folder, *[p for p in folder.parents]]
    missing = [p for p in missing if not p.exists()]
    for parent in reversed(missing):
        try:
            parent.mkdir(mode=0o700)
        except FileExistsError:  # created meanwhile by another process
            continue
        os.chmod(parent, 0o700)  # mkdir's mode is masked by the umask
    return folder


def _folder_of(meta_path: Path) -> Path:
    return meta_path.with_name(meta_path.name[: -len(".json")])


def _remove(meta_path: Path) -> None:
    """Delete an entry: its JSON first (so a half-removed entry is never read), then its arrays
    (a folder; a single ``.npz`` for entries of cache version 3 and older)."""
    meta_path.unlink(missing_ok=True)
    shutil.rmtree(_folder_of(meta_path), ignore_errors=True)
    meta_path.with_name(meta_path.name[: -len(".json")] + ".npz").unlink(missing_ok=True)


def retention_days() -> float:
    """Days an entry is kept after its last use.

    Returns
    -------
    float
        ``$FEDNEUROGEN_CACHE_DAYS``, or ``DEFAULT_RETENTION_DAYS`` (30) when unset.

    Raises
    ------
    ConfigError
        The variable is not a number.
    """
    raw = os.environ.get("FEDNEUROGEN_CACHE_DAYS", "")
    try:
        return float(raw) if raw else DEFAULT_RETENTION_DAYS
    except ValueError:
        raise ConfigError(f"FEDNEUROGEN_CACHE_DAYS must be a number of days, got {raw!r}") from None
