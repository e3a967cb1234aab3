"""What a training run keeps in its folder, beside the checkpoint: the optimiser state and counters
(``train_state.pt``, hashed, for ``--resume``), the log (``log.jsonl`` and ``tensorboard/``) and
the run's configuration (``run.json``). Used by centralized training (``centralized.py``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedneurogen.shared.errors import ConfigError
from fedneurogen.shared.io import atomic_path, file_sha256, write_json_atomic, write_text_atomic

#: The run folder's checkpoint directory and optimiser-state file.
CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "train_state.pt"


def save_training_state(
    path: Path, optimizer: torch.optim.Optimizer, step: int, epoch: int, extra: dict[str, Any] | None = None
) -> None:
    """Write the optimiser state and counters next to a checkpoint.

    The file is written atomically, with its SHA-256 beside it (``train_state.pt.sha256``) so
    that a damaged file is refused on resume.

    Parameters
    ----------
    path : Path
        The state file (``train_state.pt``).
    optimizer : torch.optim.Optimizer
        Its ``state_dict`` is saved.
    step, epoch : int
        The counters to resume from.
    extra : dict, optional
        More entries of the saved dict (tensors and plain values only).
    """
    state = {"optimizer": optimizer.state_dict(), "step": step, "epoch": epoch, **(extra or {})}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    write_text_atomic(_hash_file(path), file_sha256(path) + "\n")


def _hash_file(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def load_training_state(path: Path, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Load the state ``save_training_state`` wrote into ``optimizer``.

    The file is loaded with ``weights_only=True``, so a planted pickle in a run folder cannot
    run code.

    Parameters
    ----------
    path : Path
        The state file.
    optimizer : torch.optim.Optimizer
        Receives the saved optimiser state.

    Returns
    -------
    dict
        The saved state: ``optimizer``, ``step``, ``epoch`` and any extra entries.

    Raises
    ------
    ConfigError
        Naming the file, when its hash is missing or does not match, or it cannot be loaded
        (anything but tensors and plain values, or an optimiser state that does not fit).
    """
    import pickle

    recorded = _hash_file(path)
    try:
        expected = recorded.read_text(encoding="utf-8").strip()
    except OSError:
        raise ConfigError(
            f"cannot resume from {path}: its hash {recorded.name} is missing (a run saved before hashes; start a new run)"
        ) from None
    if file_sha256(path) != expected:
        raise ConfigError(
            f"cannot resume from {path}: the file is damaged or was changed (its SHA-256 differs from {recorded.name})"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
    except (OSError, RuntimeError, KeyError, ValueError, pickle.UnpicklingError) as err:
        raise ConfigError(f"cannot resume from {path}: {err}") from err
    return state


class JsonlLogger:
    """Append-only JSON-lines log (``log.jsonl``) plus TensorBoard scalars (``tensorboard/``).

    Parameters
    ----------
    run_dir : Path
        The run directory both are written into.
    """

    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.path = run_dir / "log.jsonl"
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(self, step: int, **values: float | str) -> None:
        """Append one record ``{"step", "time", **values}``; finite numbers also go to TensorBoard."""
        record = {"step": step, "time": time.time(), **values}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in values.items():
            if isinstance(value, (int, float)) and np.isfinite(value):
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        """Flush and close the TensorBoard writer."""
        self.writer.close()


def write_run_config(run_dir: Path, config: dict[str, Any]) -> None:
    """Write a run's configuration as ``run_dir/run.json`` (atomically).

    Parameters
    ----------
    run_dir : Path
        The run directory.
    config : dict
        JSON-ready values (provenance, classes).
    """
    write_json_atomic(run_dir / "run.json", config)
