"""Training the generator on paired windows: one loop for centralized and federated training.

A batch always comes from one site (one montage, one target layout); batches of different sites
are interleaved in a seeded random order. ``train_epochs`` is the unit a Flower client runs each
round; ``Trainer`` wraps it for ``fedneurogen train`` with logs, checkpoints and resume.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from fedneurogen.shared.errors import ConfigError
from fedneurogen.shared.io import atomic_path, file_sha256, write_json_atomic, write_text_atomic
from fedneurogen.shared.model import EMA, Batch, NeuroGenModel
from fedneurogen.shared.recording import PairedWindows
from fedneurogen.shared.splits import PROVENANCE_KEY, SubjectSplit, seen_record, split_record, subject_keys

log = logging.getLogger(__name__)


class TrainConfig(BaseModel):
    """Optimisation settings of the training loop; ``TRAIN_PRESETS`` gives one per model preset.

    Parameters
    ----------
    epochs : int
        Passes over the training windows (>= 1).
    batch_size : int
        Windows per batch (>= 2, for the contrastive loss).
    lr : float
        Peak learning rate of AdamW, reached after the warm-up.
    weight_decay : float
        AdamW weight decay.
    grad_clip : float
        Maximum gradient norm (when gradients are clipped).
    warmup_steps : int
        Steps of linear learning-rate warm-up (0: none).
    checkpoint_every : int
        Steps between checkpoints.
    val_fraction, test_fraction : float
        Shares of each site's subjects held out for validation and test.
    cross_fit_folds : int
        Folds of training subjects for the residual's cross-fitted targets
        (``shared.model.crossfit``); 0: the residual trains on the in-sample ridge residual.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    epochs: int = Field(20, ge=1)
    batch_size: int = Field(16, ge=2, description="Windows per batch (>= 2 for the contrastive loss)")
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    warmup_steps: int = Field(50, ge=0)
    checkpoint_every: int = Field(200, ge=1, description="Steps between checkpoints")
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    cross_fit_folds: int = Field(5, ge=0, description="Subject folds of the residual's cross-fitted targets (0: off)")


TRAIN_PRESETS: dict[str, TrainConfig] = {
    "tiny": TrainConfig(epochs=3, batch_size=8, lr=1e-3, warmup_steps=5, checkpoint_every=50),
    "small": TrainConfig(epochs=30, batch_size=16, lr=5e-4, warmup_steps=50, checkpoint_every=200),
    "base": TrainConfig(epochs=100, batch_size=32, lr=2e-4, warmup_steps=500, checkpoint_every=1000),
}


def class_index(sites: Sequence[PairedWindows]) -> dict[str, int]:
    """Map every class name of ``sites`` to a label index.

    Parameters
    ----------
    sites : sequence of PairedWindows
        The sites' windows.

    Returns
    -------
    dict of str to int
        Label name -> index, over the union of the sites' classes in sorted order, so that
        sites with the same classes agree on it.
    """
    names = sorted({label for site in sites for label in site.classes})
    return {name: i for i, name in enumerate(names)}


def iterate_batches(
    sizes: Sequence[int], batch_size: int, rng: np.random.Generator
) -> Iterator[tuple[int, np.ndarray]]:
    """Plan one epoch of single-site batches, interleaved over the sites.

    Parameters
    ----------
    sizes : sequence of int
        Number of windows of each site.
    batch_size : int
        Windows per batch.
    rng : numpy.random.Generator
        Source of the shuffles (of each site's windows and of the batch order).

    Yields
    ------
    site : int
        Index of the batch's site.
    index : numpy.ndarray
        Indices of the batch's windows in that site. A site's last batch is dropped when it
        holds fewer than 2 windows.
    """
    plan: list[tuple[int, np.ndarray]] = []
    for site, n in enumerate(sizes):
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            chunk = order[start : start + batch_size]
            if len(chunk) >= 2:
                plan.append((site, chunk))
    for i in rng.permutation(len(plan)):
        yield plan[i]


def poisson_batches(n: int, batch_size: int, rng: np.random.Generator) -> Iterator[tuple[int, np.ndarray]]:
    """Plan one epoch of Poisson-sampled batches, the sampling DP-SGD's accountant assumes.

    Parameters
    ----------
    n : int
        Number of windows (of one site).
    batch_size : int
        Expected batch size.
    rng : numpy.random.Generator
        Source of the sampling.

    Yields
    ------
    site : int
        Always 0 (one site).
    index : numpy.ndarray
        The batch's window indices: ``ceil(n / batch_size)`` steps, each taking every window
        independently with probability ``1 / steps`` (``batch_size`` windows on average; a
        batch may be empty).
    """
    steps = math.ceil(n / batch_size)
    for _ in range(steps):
        yield 0, np.flatnonzero(rng.random(n) < 1.0 / steps)


def make_optimizer(
    params: Sequence[torch.nn.Parameter] | Iterator[torch.nn.Parameter], config: TrainConfig
) -> torch.optim.Optimizer:
    """Create the AdamW optimiser of the training loop.

    Parameters
    ----------
    params : sequence or iterator of torch.nn.Parameter
        The parameters to optimise.
    config : TrainConfig
        Gives the learning rate and weight decay.

    Returns
    -------
    torch.optim.Optimizer
        An ``AdamW`` optimiser.
    """
    return torch.optim.AdamW(list(params), lr=config.lr, weight_decay=config.weight_decay)


def set_learning_rate(optimizer: torch.optim.Optimizer, config: TrainConfig, step: int) -> None:
    """Set the learning rate of ``step``: linear warm-up to ``config.lr``, then constant.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
        Its parameter groups get the learning rate.
    config : TrainConfig
        Gives ``lr`` and ``warmup_steps``.
    step : int
        The (0-based) step about to be taken.
    """
    scale = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    for group in optimizer.param_groups:
        group["lr"] = config.lr * scale


@dataclass
class EpochStats:
    """Running totals of a training call: steps, examples and example-weighted losses.

    Parameters
    ----------
    steps : int
        Optimiser steps taken.
    examples : int
        Windows trained on.
    loss_sum : float
        Sum of the total loss weighted by batch size.
    parts_sum : dict of str to float
        Sum of each loss part weighted by batch size.
    stopped_early : bool
        Whether training stopped at its deadline.
    """

    steps: int = 0
    examples: int = 0
    loss_sum: float = 0.0
    parts_sum: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False

    def add(self, n: int, parts: dict[str, float]) -> None:
        """Count one step on a batch of ``n`` windows with loss parts ``parts`` (``total`` included)."""
        self.steps += 1
        self.examples += n
        self.loss_sum += parts["total"] * n
        for k, v in parts.items():
            self.parts_sum[k] = self.parts_sum.get(k, 0.0) + v * n

    def summary(self) -> dict[str, float]:
        """Return the means per window.

        Returns
        -------
        dict of str to float
            ``loss`` (mean total loss), ``loss_<part>`` for every other part, ``steps`` and
            ``examples``.
        """
        n = max(self.examples, 1)
        return {
            "loss": self.loss_sum / n,
            **{f"loss_{k}": v / n for k, v in self.parts_sum.items() if k != "total"},
            "steps": self.steps,
            "examples": self.examples,
        }


def train_epochs(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    sites: Sequence[PairedWindows],
    *,
    epochs: int,
    config: TrainConfig,
    class_to_index: dict[str, int] | None,
    seed: int | None,
    ema: EMA | None = None,
    start_step: int = 0,
    deadline: float | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    progress: Any = None,
    clip_gradients: bool = True,
    poisson: bool = False,
) -> tuple[EpochStats, int]:
    """Train for ``epochs`` passes over ``sites``.

    Parameters
    ----------
    model : torch.nn.Module
        A ``NeuroGenModel``, or an Opacus ``GradSampleModule`` wrapping one (then pass
        ``clip_gradients=False``: DP-SGD clips per sample itself, and ``poisson=True``).
    optimizer : torch.optim.Optimizer
        Steps the model's parameters.
    sites : sequence of PairedWindows
        Training windows; a batch always comes from one site.
    epochs : int
        Passes over the windows.
    config : TrainConfig
        Batch size, learning-rate schedule and gradient clipping.
    class_to_index : dict of str to int or None
        Label indices (``class_index``); None trains unconditionally.
    seed : int or None
        Seed of the batch order and of the diffusion noise; None draws both from the operating
        system's entropy (a deployed site under DP: the coordinator must not choose its batches).
    ema : EMA, optional
        Updated after every step.
    start_step : int
        Step count so far (drives the warm-up).
    deadline : float, optional
        ``time.time()`` at which training stops, cleanly, before the next step.
    on_step : callable, optional
        Called as ``on_step(step, parts)`` after every step with a non-empty batch.
    progress : callable, optional
        Called as ``progress(parts)`` after every step with a non-empty batch.
    clip_gradients : bool
        Clip the gradient norm to ``config.grad_clip``.
    poisson : bool
        Batches by Poisson sampling of one site's windows, as the DP accountant assumes; an
        empty batch is still a step, of noise only.

    Returns
    -------
    stats : EpochStats
        Losses and counts (``stopped_early`` when the deadline passed).
    step : int
        The new step count.

    Raises
    ------
    ValueError
        When ``poisson`` is set with more than one site.
    """
    if poisson and len(sites) != 1:
        raise ValueError(f"Poisson sampling trains one site's windows, got {len(sites)} sites")
    inner: NeuroGenModel = getattr(model, "_module", model)
    device = inner.device
    rng = np.random.default_rng(seed)  # None: OS entropy
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    stats = EpochStats()
    step = start_step
    model.train()
    for _ in range(epochs):
        plan = (
            poisson_batches(len(sites[0]), config.batch_size, rng)
            if poisson
            else iterate_batches([len(s) for s in sites], config.batch_size, rng)
        )
        for site, index in plan:
            if deadline is not None and time.time() > deadline:
                stats.stopped_early = True
                return stats, step
            set_learning_rate(optimizer, config, step)
            optimizer.zero_grad(set_to_none=True)
            if len(index) == 0:
                noise_only_step(model, optimizer)
                step += 1
                stats.add(0, {"total": 0.0})
                continue
            batch = Batch.from_windows(sites[site], np.sort(index), class_to_index, device)
            loss, parts = model(batch, generator=generator)
            loss.backward()
            if clip_gradients:
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], config.grad_clip)
            optimizer.step()
            if ema is not None:
                ema.update(inner)
            step += 1
            stats.add(batch.batch_size, parts)
            if on_step is not None:
                on_step(step, parts)
            if progress is not None:
                progress(parts)
    return stats, step


def noise_only_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Take a DP-SGD step on an empty Poisson batch: no gradient, the Gaussian noise alone.

    Opacus' optimiser clips an empty set of per-sample gradients, then adds noise and counts
    the step.

    Parameters
    ----------
    model : torch.nn.Module
        The Opacus ``GradSampleModule``; its trainable parameters get empty per-sample gradients.
    optimizer : torch.optim.Optimizer
        The Opacus DP optimiser.
    """
    for p in model.parameters():
        if p.requires_grad:
            p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)
    optimizer.step()


@torch.no_grad()
def validation_loss(
    model: NeuroGenModel,
    sites: Sequence[PairedWindows],
    class_to_index: dict[str, int] | None,
    batch_size: int,
    seed: int = 0,
) -> float:
    """Compute the mean diffusion loss with fixed timesteps and noise.

    A seeded generator draws the timesteps and noise, so that two evaluations of the same
    weights give the same number.

    Parameters
    ----------
    model : NeuroGenModel
        The model (its training mode is restored afterwards).
    sites : sequence of PairedWindows
        Validation windows; batches of fewer than 2 windows are skipped.
    class_to_index : dict of str to int or None
        Label indices; None: unconditional.
    batch_size : int
        Windows per batch.
    seed : int
        Seed of the generator.

    Returns
    -------
    float
        The diffusion loss averaged over windows; NaN when no batch was scored.
    """
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=model.device).manual_seed(seed)
    total, count = 0.0, 0
    for site in sites:
        for start in range(0, len(site), batch_size):
            index = np.arange(start, min(start + batch_size, len(site)))
            if len(index) < 2:
                continue
            batch = Batch.from_windows(site, index, class_to_index, model.device)
            _, parts = model.loss(batch, generator=generator)
            total += parts["diffusion"] * len(index)
            count += len(index)
    model.train(was_training)
    return total / count if count else float("nan")


@torch.no_grad()
def point_prediction_pcc(model: NeuroGenModel, sites: Sequence[PairedWindows], batch_size: int = 64) -> float:
    """Score the label-free point prediction on ``sites`` by temporal PCC.

    This is the figure that early stopping and checkpoint choice look at.

    Parameters
    ----------
    model : NeuroGenModel
        The model (its training mode is restored afterwards).
    sites : sequence of PairedWindows
        Windows to score, one run at a time.
    batch_size : int
        Windows per batch of the point prediction.

    Returns
    -------
    float
        Pearson correlation over time of each point's stitched run, Fisher-z averaged over
        points, runs and sites; NaN without windows.
    """
    from fedneurogen.shared.metrics import fisher_mean, pearson_rows, stitch_windows
    from fedneurogen.shared.workflows.synthesis import point_predictions

    was_training = model.training
    correlations = []
    for site in sites:
        for run in dict.fromkeys(site.runs.tolist()):  # one run at a time: memory bounded by a run, not the site
            windows = site.subset(site.runs == run)
            pred = point_predictions(model, windows, batch_size=batch_size)  # label-free
            real = stitch_windows(windows.target, windows.runs, windows.onsets, windows.target_sfreq)[run]
            values = stitch_windows(pred, windows.runs, windows.onsets, windows.target_sfreq)[run]
            correlations.append(pearson_rows(values, real))
    model.train(was_training)
    return fisher_mean(np.concatenate(correlations)) if correlations else float("nan")


class BestMean:
    """Keep the residual weights of the point prediction that scored best on validation.

    So the mean never ends worse on validation subjects than where it started (the ridge path).

    Parameters
    ----------
    model : NeuroGenModel
        Its residual parameters are the first snapshot.
    score : float
        That snapshot's validation score (higher is better).
    """

    def __init__(self, model: NeuroGenModel, score: float):
        self.score = score
        self.state = self._snapshot(model)

    @staticmethod
    def _snapshot(model: NeuroGenModel) -> dict[str, torch.Tensor]:
        from fedneurogen.shared.model.mean import is_residual_parameter

        return {n: p.detach().clone() for n, p in model.named_parameters() if is_residual_parameter(n)}

    def offer(self, model: NeuroGenModel, score: float) -> bool:
        """Keep ``model``'s residual weights if ``score`` beats the best so far.

        Parameters
        ----------
        model : NeuroGenModel
            The model scored.
        score : float
            Its validation score; a non-finite score is never kept.

        Returns
        -------
        bool
            Whether the weights were kept.
        """
        if np.isfinite(score) and (not np.isfinite(self.score) or score > self.score):
            self.score, self.state = score, self._snapshot(model)
            return True
        return False

    @torch.no_grad()
    def restore(self, model: NeuroGenModel, ema: EMA | None = None) -> None:
        """Copy the kept residual weights back into ``model`` (and into ``ema``'s shadow when given)."""
        params = dict(model.named_parameters())
        for name, value in self.state.items():
            params[name].copy_(value)
            if ema is not None:
                ema.shadow[name].copy_(value)


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


# -- centralized training (``fedneurogen train``) -----------------------------------------------

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "train_state.pt"


@dataclass
class SplitSites:
    """Each site's windows cut by subject into train / validation / test.

    Parameters
    ----------
    train : list of PairedWindows
        Every site's training windows (possibly empty).
    val, test : list of PairedWindows
        The validation and test windows of the sites that have any.
    subjects : list of SubjectSplit
        Each site's subject split, in the order of the sites.
    """

    train: list[PairedWindows]
    val: list[PairedWindows]
    test: list[PairedWindows]
    subjects: list[SubjectSplit] = field(default_factory=list)


def split_sites(sites: Sequence[PairedWindows], seed: int, val_fraction: float, test_fraction: float) -> SplitSites:
    """Cut each site's windows by subject into train / validation / test.

    Parameters
    ----------
    sites : sequence of PairedWindows
        The sites' windows.
    seed : int
        Seed of the subject split (``splits.split_subjects``).
    val_fraction, test_fraction : float
        Shares of each site's subjects held out.

    Returns
    -------
    SplitSites
        The windows of each part; a subject's windows are all in one part.
    """
    from fedneurogen.shared.splits import split_subjects

    out = SplitSites([], [], [])
    for site in sites:
        split = split_subjects(site.subjects, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)
        out.subjects.append(split)
        train, val, test = split.masks(site.subjects)
        out.train.append(site.subset(train))
        if val.any():
            out.val.append(site.subset(val))
        if test.any():
            out.test.append(site.subset(test))
    return out


def subject_record(
    sites: Sequence[PairedWindows],
    site_dirs: Sequence[str | Path],
    splits: Sequence[SubjectSplit],
    names: Sequence[str],
) -> dict[str, Any]:
    """What a centralized checkpoint saw: each site's split by the content of its subjects' files.

    Parameters
    ----------
    sites : sequence of PairedWindows
        The sites' windows.
    site_dirs : sequence of path-like
        Their folders, in the same order.
    splits : sequence of SubjectSplit
        Each site's subject split (``SplitSites.subjects``).
    names : sequence of str
        The sites' names (display only).

    Returns
    -------
    dict
        The record for the provenance (``splits.seen_record``).

    Raises
    ------
    ValueError
        ``site_dirs`` and ``sites`` differ in length.
    DataError
        A file of a run cannot be read to hash it.
    """
    if len(site_dirs) != len(sites):
        raise ValueError(f"{len(site_dirs)} site folders for {len(sites)} sites")
    entries = []
    for windows, folder, split, name in zip(sites, site_dirs, splits, names):
        keys = subject_keys(folder, windows.runs, windows.subjects)
        entries.append(split_record(split, keys, name))
    return seen_record(entries)


def train_centralized(
    sites: Sequence[PairedWindows],
    run_dir: Path,
    *,
    preset: str = "tiny",
    seed: int = 0,
    max_minutes: float | None = None,
    resume: bool = False,
    device: str | None = None,
    train_config: TrainConfig | None = None,
    preprocess: dict[str, Any] | None = None,
    site_names: Sequence[str] | None = None,
    site_dirs: Sequence[str | Path] | None = None,
    progress: bool = True,
) -> Path:
    """Train one model on the pooled training subjects of ``sites``.

    Writes ``run_dir/checkpoint/`` (after every epoch and at the end), ``train_state.pt``
    (optimiser and counters for ``resume``), ``log.jsonl``, ``tensorboard/`` and ``run.json``.
    When ``max_minutes`` runs out, training stops after a checkpoint and logs it (INFO).

    Parameters
    ----------
    sites : sequence of PairedWindows
        Each site's windows; they are split by subject (``split_sites``).
    run_dir : Path
        The run directory (created if needed).
    preset : str
        Model preset (``tiny``, ``small``, ``base``); also picks the ``TRAIN_PRESETS`` entry.
    seed : int
        Seed of the subject split, the initialisation and the batches.
    max_minutes : float, optional
        Stop (and checkpoint) after this many minutes.
    resume : bool
        Continue from the checkpoint and training state in ``run_dir``.
    device : str, optional
        ``cpu`` or ``cuda`` (default: CUDA when available).
    train_config : TrainConfig, optional
        Overrides the preset's training settings.
    preprocess : dict, optional
        Preprocessing settings of the windows, stored with the checkpoint.
    site_names : sequence of str, optional
        Names of the sites for the provenance (default ``site-01``, ``site-02``, ...), for display.
    site_dirs : sequence of path-like, optional
        The sites' folders, in the order of ``sites``: the checkpoint then records the content
        hashes of each split's subjects (``splits.split_record``), which ``evaluate`` needs to
        score only subjects the model never saw. Without them the record is left out and
        ``evaluate`` refuses the checkpoint unless told ``--allow-seen``.
    progress : bool
        Show a progress bar on stderr.

    Returns
    -------
    Path
        The checkpoint directory, ``run_dir/checkpoint``.

    Raises
    ------
    ConfigError
        When the data has more classes than the preset has label slots, or ``resume`` finds no
        checkpoint or an unusable training state.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from fedneurogen.shared.config import PreprocessConfig
    from fedneurogen.shared.model import (
        get_preset,
        load_checkpoint_into,
        load_ema,
        read_checkpoint_config,
        save_checkpoint,
    )

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = train_config or TRAIN_PRESETS.get(preset, TrainConfig())
    torch.manual_seed(seed)
    split = split_sites(sites, seed, config.val_fraction, config.test_fraction)
    classes = class_index(sites)
    model_config = get_preset(preset)
    if len(classes) > model_config.num_classes:
        raise ConfigError(
            f"the data has {len(classes)} classes {sorted(classes)} but preset {preset!r} has {model_config.num_classes} label slots"
        )
    if preprocess:
        model_config = model_config.for_preprocess(PreprocessConfig(**preprocess))
        model_config.check_preprocess(PreprocessConfig(**preprocess))
    model = NeuroGenModel(model_config, device=device)
    checkpoint_dir = run_dir / CHECKPOINT_DIR
    if resume and preprocess and (checkpoint_dir / "config.json").exists():
        before = PreprocessConfig(**(read_checkpoint_config(checkpoint_dir).get("preprocess") or {}))
        changed = PreprocessConfig(**preprocess).changed_fields(before)
        if changed:
            raise ConfigError(
                f"--resume: {run_dir} was trained with other preprocessing ({', '.join(changed)}); "
                "resume with the same --preprocess settings"
            )
    step, first_epoch = 0, 0
    if not resume:
        from fedneurogen.shared.model.mean import fit_ridge_paths

        ridge_choice = fit_ridge_paths(model, split.train, split.val)
    else:  # solved before: the checkpoint says how
        saved = read_checkpoint_config(checkpoint_dir) if (checkpoint_dir / "config.json").exists() else {}
        ridge_choice = (saved.get("provenance") or {}).get("ridge_path")
    ema = EMA(model, decay=model_config.ema_decay)
    optimizer = make_optimizer(model.parameters(), config)
    if resume:
        if not (checkpoint_dir / "config.json").exists():
            raise ConfigError(f"--resume: no checkpoint in {checkpoint_dir}")
        load_checkpoint_into(model, checkpoint_dir)
        ema = load_ema(checkpoint_dir, model) or ema
        state = load_training_state(run_dir / STATE_FILE, optimizer)
        step, first_epoch = int(state["step"]), int(state["epoch"])
        log.info("resuming %s at epoch %d, step %d", run_dir, first_epoch, step)

    from fedneurogen.shared.model.crossfit import cross_fitted_training, fit_class_offsets

    train_sites, cross_fit, class_offsets = list(split.train), None, {}
    if config.cross_fit_folds and ridge_choice:  # the residual learns the error on new subjects
        train_sites, cross_fit = cross_fitted_training(model, split.train, ridge_choice, config.cross_fit_folds)
    if not resume:  # each class's mean (cross-fitted) residual: the class in closed form
        for modality in sorted({w.target_modality for w in train_sites}):
            of = lambda ws: [w for w in ws if w.target_modality == modality]  # noqa: E731
            class_offsets[modality] = fit_class_offsets(model, modality, of(train_sites), of(split.val), classes)
    names = list(site_names or [f"site-{i + 1:02d}" for i in range(len(sites))])
    provenance = {
        "mode": "centralized",
        "preset": preset,
        "seed": seed,
        "split_seed": seed,
        "val_fraction": config.val_fraction,
        "test_fraction": config.test_fraction,
        "train_config": config.model_dump(),
        "sites": names,
        "train_windows": int(sum(len(s) for s in split.train)),
        "ridge_path": ridge_choice,
        "cross_fit": cross_fit,
        "class_offsets": class_offsets,
    }
    if site_dirs is not None:
        provenance[PROVENANCE_KEY] = subject_record(sites, site_dirs, split.subjects, names)
    write_run_config(run_dir, {"provenance": provenance, "classes": list(classes)})
    logger = JsonlLogger(run_dir)
    deadline = time.time() + 60 * max_minutes if max_minutes else None
    steps_per_epoch = sum(max(0, len(s) // config.batch_size + (len(s) % config.batch_size >= 2)) for s in split.train)

    def checkpoint(epoch: int) -> None:
        extra = {
            "class_names": list(classes),
            "preprocess": preprocess or {},
            "provenance": {**provenance, "epochs": epoch, "steps": step},
        }
        save_checkpoint(checkpoint_dir, model, ema=ema, extra=extra)
        save_training_state(run_dir / STATE_FILE, optimizer, step, epoch)

    selection_sites = split.val or train_sites  # validation subjects; the training ones only when there are none
    with ema.average_parameters(model):
        best = BestMean(model, point_prediction_pcc(model, selection_sites))
    logger.log(step, **{"val/pcc_point": best.score})
    columns = (
        TextColumn("[bold]train[/] epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), disable=not progress, transient=False) as bar:
        task = bar.add_task(
            "train", total=steps_per_epoch * (config.epochs - first_epoch), epoch=first_epoch + 1, loss=float("nan")
        )
        finished = first_epoch
        for epoch in range(first_epoch, config.epochs):
            bar.update(task, epoch=epoch + 1)
            stats, step = train_epochs(
                model,
                optimizer,
                train_sites,
                epochs=1,
                config=config,
                class_to_index=classes,
                seed=seed * 1000 + epoch,
                ema=ema,
                start_step=step,
                deadline=deadline,
                on_step=lambda s, parts: logger.log(s, **{f"train/{k}": v for k, v in parts.items()}),
                progress=lambda parts: bar.update(task, advance=1, loss=parts["total"]),
            )
            with ema.average_parameters(model):
                val = validation_loss(model, selection_sites, classes, config.batch_size, seed=seed)
                val_pcc = point_prediction_pcc(model, selection_sites)
                best.offer(model, val_pcc)
            finished = epoch + 1 if not stats.stopped_early else epoch
            logger.log(
                step,
                epoch=finished,
                **{"val/loss": val, "val/pcc_point": val_pcc, "train/epoch_loss": stats.summary()["loss"]},
            )
            checkpoint(finished)
            log.debug(
                "epoch %d: step %d, train loss %.4f, validation loss %.4f, validation point PCC %.3f",
                finished, step, stats.summary()["loss"], val, val_pcc,
            )  # fmt: skip
            if stats.stopped_early:
                log.info("stopped after %s min (--max-minutes) at step %d", max_minutes, step)
                break
    # the point prediction keeps its best validation weights (the diffusion keeps its last)
    best.restore(model, ema)
    checkpoint(finished)
    logger.close()
    return checkpoint_dir
