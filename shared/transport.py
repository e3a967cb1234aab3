"""What a round's messages carry: what changes, once.

**Frozen records** travel once per run, named by their content hash. The ridge path (coefficients, intercepts, class offsets, feature standardisation) is solved from
the sites' statistics before round 1 and frozen: about 80 % of the ``tiny`` model's values. Sent
with the weights every round, both ways, it made the bytes per round ~5x what changes. So a
training or evaluation message carries the trained parameters, the SHA-256 of the frozen ones
(``FROZEN_HASH`` in its config) and the frozen records themselves (``FROZEN_RECORD``) only to a
site that has not said it holds that hash. A site keeps the last frozen records it received in its
state folder (``FrozenStore``: a restarted site daemon still has them), checks what it receives
against the hash, says in every reply which hash it holds, and never sends frozen records back.
A site asked to use a hash it does not hold refuses the message; the server then re-sends them
(``server/strategy.py``): a mismatch is re-sent, never silently used.

**Folded evaluation.** A training message may ask the site to score the model it received before
training on it (``EVALUATE_FIRST``); the scores come back in the training reply, prefixed
``EVALUATED_PREFIX``, and stand for an evaluate round of the previous round's model: one message
per site per round. The last round's model is still scored in an evaluate round of its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fedneurogen.shared.io import atomic_path

#: Training-message config key (1): score the received model on the held-out subjects first.
EVALUATE_FIRST = "evaluate-first"
#: A training reply's metrics with this prefix score the received model (folded evaluation).
EVALUATED_PREFIX = "evaluated-"
#: Message config key: the content hash of the frozen records the message goes with.
FROZEN_HASH = "frozen-hash"
#: Array record holding the frozen records, sent to a site that does not hold them.
FROZEN_RECORD = "frozen"


def frozen_names(model: torch.nn.Module) -> list[str]:
    """The parameters training never changes (``requires_grad`` off: the ridge path)."""
    return [name for name, p in model.named_parameters() if not p.requires_grad]


def content_hash(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 of named arrays: names, dtypes, shapes and bytes, in name order.

    Parameters
    ----------
    arrays : mapping of str to np.ndarray
        The records.

    Returns
    -------
    str
        64 hex digits; equal exactly when every name, dtype, shape and value is.
    """
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


class FrozenStore:
    """A site's copy of the frozen records it received last, in ``folder`` (one file per hash,
    the older ones removed when a new one is kept).

    Parameters
    ----------
    folder : Path
        The site's own folder for them (in its state folder).
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def _path(self, digest: str) -> Path:
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"frozen records: {digest[:80]!r} is not a SHA-256 hex digest")
        return self.folder / f"{digest}.npz"

    def save(self, digest: str, arrays: Mapping[str, np.ndarray]) -> None:
        """Keep ``arrays`` under ``digest`` (written atomically); earlier ones are removed.

        Raises
        ------
        ValueError
            ``arrays`` do not hash to ``digest``.
        """
        if content_hash(arrays) != digest:
            raise ValueError(f"frozen records do not match their hash {digest[:12]}")
        path = self._path(digest)
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as out:
            np.savez(out, **{name: np.asarray(a) for name, a in arrays.items()})
        for other in self.folder.glob("*.npz"):
            if other != path:
                other.unlink(missing_ok=True)
        _remember(path, digest, arrays)

    def load(self, digest: str) -> dict[str, np.ndarray] | None:
        """The records kept under ``digest``; None when not held, or when the file no longer
        hashes to it (damaged: removed, so the server's copy replaces it)."""
        path = self._path(digest)
        if not path.exists():
            return None
        if _LAST.digest == digest and _LAST.stamps.get(str(path)) == _stamp(path):
            return _LAST.arrays  # read (and hashed) already, and the file unchanged
        try:
            with np.load(path, allow_pickle=False) as stored:
                arrays = {name: stored[name] for name in stored.files}
        except (OSError, ValueError):
            arrays = None
        if arrays is None or content_hash(arrays) != digest:
            path.unlink(missing_ok=True)
            return None
        _remember(path, digest, arrays)
        return arrays


# The records this process read or wrote last, and the files (size, mtime) known to hold them: a
# site, or a simulation's site actor serving many sites, uses them every round without reading and
# hashing 15 MB again. Every site of a run holds the same records.
@dataclass
class _Recent:
    digest: str | None = None
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    stamps: dict[str, tuple[int, int]] = field(default_factory=dict)  # file -> (size, mtime) when known to hold them


_LAST = _Recent()


def _stamp(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_size, info.st_mtime_ns


def _remember(path: Path, digest: str, arrays: Mapping[str, np.ndarray]) -> None:
    if _LAST.digest != digest:
        _LAST.digest, _LAST.arrays, _LAST.stamps = digest, dict(arrays), {}
    _LAST.stamps[str(path)] = _stamp(path)
