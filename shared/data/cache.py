"""On-disk cache of a site's preprocessed ``PairedWindows``.

An entry is keyed by the SHA-256 of every input file's content (EEG, companions, sidecars,
events, target files, ``participants.tsv``, by path relative to the site) plus
``PreprocessConfig.cache_key()`` and ``CACHE_VERSION``. Any content change, any added or
removed input file, or any config change gives a new key. Entries are an uncompressed ``.npz``
(arrays) plus a ``.json`` (everything else), both written atomically; the JSON is written last
and marks the entry complete.

Hashing large files is the main cost of a cache hit, so file hashes are memoised in
``file-hashes.json`` by ``(size, mtime_ns, ctime_ns, inode)``. A memo entry is trusted only if
the file had been unchanged for ``SETTLE_NS`` when it was hashed: a write in the same
filesystem-clock tick as the hash could otherwise leave a stale hash with an identical stat
(git's "racy clean" problem). ``ctime`` cannot be set by tools such as ``touch -d``, so a
content change always shows in the stat.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..config import PreprocessConfig
from ..errors import DataError
from ..io import atomic_path, file_sha256, write_json_atomic
from ..recording import PairedWindows

#: Bump when the loader's output for the same inputs changes (new preprocessing, bug fix).
CACHE_VERSION = 3  # 3: problems stored relative to the site
SETTLE_NS = 2_000_000_000
_ARRAYS = ("eeg", "target", "labels", "subjects", "runs", "onsets", "eeg_positions", "target_positions", "design")


def default_cache_dir() -> Path:
    """``$FEDNEUROGEN_CACHE`` or ``~/.cache/fedneurogen``."""
    env = os.environ.get("FEDNEUROGEN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fedneurogen"


class HashMemo:
    """SHA-256 of files, remembered across runs while a file's stat is unchanged."""

    def __init__(self, path: Path):
        self.path = path
        self._entries: dict[str, dict[str, Any]] = {}
        self._dirty = False
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(loaded, dict):
                self._entries = loaded
        except (OSError, ValueError):
            pass  # no memo yet, or a broken one: start empty
        self.hashed = 0  # files actually read in this session (for tests and benchmarks)

    @staticmethod
    def _signature(st: os.stat_result) -> list[int]:
        return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]

    def sha256(self, file: Path) -> str:
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
        if not self._dirty:
            return
        # Forget files that no longer exist so the memo does not grow without bound.
        self._entries = {k: v for k, v in self._entries.items() if os.path.exists(k)}
        try:
            write_json_atomic(self.path, self._entries, indent=0)
        except OSError:
            pass  # a memo we cannot write only costs time
        self._dirty = False


class SiteCache:
    """The cache folder: ``sites/<site>-<key>.{npz,json}`` and the hash memo."""

    def __init__(self, cache_dir: str | Path | None = None):
        self.dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.memo = HashMemo(self.dir / "file-hashes.json")

    def key(self, site_dir: Path, files: list[Path], config: PreprocessConfig) -> str:
        """Content key of a site's inputs under a config."""
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
        """(metadata JSON, arrays NPZ) of an entry."""
        stem = f"{site_dir.resolve().name}-{key[:32]}"
        return self.dir / "sites" / f"{stem}.json", self.dir / "sites" / f"{stem}.npz"

    def load(self, site_dir: Path, key: str) -> tuple[PairedWindows, dict[str, Any]] | None:
        """The cached windows and metadata, or None on a miss (or an unreadable entry)."""
        meta_path, npz_path = self._entry(site_dir, key)
        if not meta_path.is_file() or not npz_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if meta.get("key") != key:
                return None
            with np.load(npz_path, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in _ARRAYS}
        except (OSError, ValueError, KeyError):
            return None  # damaged entry: recompute and overwrite
        w = meta["windows"]
        windows = PairedWindows(
            eeg=arrays["eeg"],
            eeg_sfreq=w["eeg_sfreq"],
            eeg_channel_names=w["eeg_channel_names"],
            eeg_positions=arrays["eeg_positions"],
            target=arrays["target"],
            target_sfreq=w["target_sfreq"],
            target_modality=w["target_modality"],
            target_names=w["target_names"],
            target_positions=arrays["target_positions"],
            labels=arrays["labels"],
            subjects=arrays["subjects"],
            runs=arrays["runs"],
            onsets=arrays["onsets"],
            lag=w["lag"],
            participants=w["participants"],
            target_point_types=w["target_point_types"],
            design=arrays["design"],
            history=w["history"],
        )
        return windows, meta

    def store(
        self, site_dir: Path, key: str, windows: PairedWindows, config: PreprocessConfig, extra: dict[str, Any]
    ) -> Path:
        """Write an entry atomically and remove older entries of the same site and config."""
        meta_path, npz_path = self._entry(site_dir, key)
        # patient data and participant attributes: readable by this user only
        npz_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with atomic_path(npz_path, mode=0o600) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **{name: np.asarray(getattr(windows, name)) for name in _ARRAYS})
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
                "target_sfreq": windows.target_sfreq,
                "target_modality": windows.target_modality,
                "target_names": list(windows.target_names),
                "lag": windows.lag,
                "participants": windows.participants,
                "target_point_types": windows.target_point_types,
                "history": windows.history,
            },
            **extra,
        }
        write_json_atomic(meta_path, meta, mode=0o600)
        self._prune(meta_path, meta)
        return npz_path

    def _prune(self, keep: Path, meta: dict[str, Any]) -> None:
        """Entries of the same site folder and config with another key can never hit again."""
        for other in (self.dir / "sites").glob("*.json"):
            if other == keep:
                continue
            try:
                m = json.loads(other.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if m.get("site_dir") == meta["site_dir"] and m.get("config_key") == meta["config_key"]:
                for p in (other, other.with_name(other.name[: -len(".json")] + ".npz")):
                    p.unlink(missing_ok=True)

    # -- what is kept, and removing it (``fedneurogen cache``) ---------------------------------

    def entries(self) -> list[dict[str, Any]]:
        """Every cached site: its folder, when it was made, windows, bytes on disk, its files."""
        out = []
        for meta_path in sorted((self.dir / "sites").glob("*.json")):
            npz = meta_path.with_name(meta_path.name[: -len(".json")] + ".npz")
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                meta = {}
            files = [p for p in (meta_path, npz) if p.exists()]
            out.append({
                "site_dir": meta.get("site_dir", "?"), "created": meta.get("created", "?"), "n_windows": meta.get("n_windows"),
                "bytes": sum(p.stat().st_size for p in files), "modified": max(p.stat().st_mtime for p in files), "files": files,
            })  # fmt: skip
        return out

    def purge(self, older_than_days: float | None = None) -> list[dict[str, Any]]:
        """Delete every entry (or those not written for ``older_than_days``); returns them."""
        cutoff = None if older_than_days is None else time.time() - older_than_days * 86400
        removed = [e for e in self.entries() if cutoff is None or e["modified"] < cutoff]
        for entry in removed:
            for path in entry["files"]:
                path.unlink(missing_ok=True)
        if older_than_days is None:
            self.memo.path.unlink(missing_ok=True)  # file names and hashes of the inputs, too
        return removed
