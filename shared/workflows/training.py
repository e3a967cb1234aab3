"""Training the generator on paired windows: one loop for centralized and federated training.

A batch always comes from one site (one montage, one target layout); batches of different sites
are interleaved in a seeded random order. ``train_epochs`` is the unit a Flower client runs each
round; ``centralized.train_centralized`` runs it for ``fedneurogen train`` with logs, checkpoints
and resume (the run folder's files: ``run_state.py``). Here: the settings (``TrainConfig``), the
batches, the optimiser and its schedule, the loop, and the validation scores.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from fedneurogen.shared.model import EMA, Batch, NeuroGenModel
from fedneurogen.shared.recording import PairedWindows
from fedneurogen.shared.model.mean import is_residual_parameter
from fedneurogen.shared.metrics import fisher_z, pearson_rows, stitch_windows

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
    departure_windows : int
        Validation windows (per modality, spread over the sites) whose samples choose the share
        of the DiT's departure from the noise model's Gaussian at the end of training
        (``workflows/departure.py``; each is sampled 4 times per share tried). 0: not chosen,
        the samples take the DiT's full share.
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
    departure_windows: int = Field(64, ge=0, description="Validation windows the departure share is chosen on (0: off)")


TRAIN_PRESETS: dict[str, TrainConfig] = {
    # tiny: CPU tests and the demo; its 16 departure windows are a federation's default too
    "tiny": TrainConfig(epochs=3, batch_size=8, lr=1e-3, warmup_steps=5, checkpoint_every=50, departure_windows=16),
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
    rng, generator = _seeded_generators(seed, device)
    grad_clip = config.grad_clip if clip_gradients else None
    # dropout draws from torch's global generator: seeded from this one for the epochs (so a
    # process that trains several simulated sites in turn repeats), its state restored after
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(generator.initial_seed())
        stats = EpochStats()
        step = start_step
        model.train()
        for _ in range(epochs):
            for site, index in _epoch_batches(sites, config.batch_size, rng, poisson):
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
                parts = _optimizer_step(model, optimizer, batch, generator, grad_clip, ema)
                step += 1
                stats.add(batch.batch_size, parts)
                if on_step is not None:
                    on_step(step, parts)
                if progress is not None:
                    progress(parts)
        return stats, step


def _seeded_generators(seed: int | None, device: torch.device) -> tuple[np.random.Generator, torch.Generator]:
    """The batch order's generator and the diffusion noise's (on ``device``), both seeded with
    ``seed``; None: both from the operating system's entropy."""
    rng = np.random.default_rng(seed)  # None: OS entropy
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return rng, generator


def _epoch_batches(sites: Sequence[PairedWindows], batch_size: int, rng: np.random.Generator, poisson: bool):
    """One epoch's ``(site, window indices)`` batches: Poisson sampling of the one site's windows,
    or every window once (``iterate_batches``)."""
    if poisson:
        return poisson_batches(len(sites[0]), batch_size, rng)
    return iterate_batches([len(s) for s in sites], batch_size, rng)


def _optimizer_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    generator: torch.Generator,
    grad_clip: float | None,
    ema: EMA | None,
) -> dict[str, float]:
    """One step on a non-empty batch: loss, backward, gradient norm clipped to ``grad_clip``
    (None: not clipped), optimizer step and EMA update; returns the loss's parts."""
    loss, parts = model(batch, generator=generator)
    loss.backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip)
    optimizer.step()
    if ema is not None:
        ema.update(getattr(model, "_module", model))
    return parts


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
def point_prediction_scores(
    model: NeuroGenModel, sites: Sequence[PairedWindows], batch_size: int = 64
) -> dict[str, float]:
    """Score the label-free point prediction on ``sites``, one value per subject.

    These are the scores that choose the learned residual (``BestMean``).

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
    dict of str to float
        ``"<site index>:<subject>"`` -> Fisher z of the Pearson correlation over time of each
        point's stitched run, averaged over the subject's points and runs (``subject_pcc``
        turns them into one PCC); empty without windows.
    """
    from fedneurogen.shared.workflows.synthesis import point_predictions

    was_training = model.training
    z: dict[str, list[np.ndarray]] = {}
    for i, site in enumerate(sites):
        for run in dict.fromkeys(site.runs.tolist()):  # one run at a time: memory bounded by a run, not the site
            windows = site.subset(site.runs == run)
            pred = point_predictions(model, windows, batch_size=batch_size)  # label-free
            real = stitch_windows(windows.target, windows.runs, windows.onsets, windows.target_sfreq)[run]
            values = stitch_windows(pred, windows.runs, windows.onsets, windows.target_sfreq)[run]
            r = pearson_rows(values, real)
            r = r[np.isfinite(r)]
            z.setdefault(f"{i}:{windows.subjects[0]}", []).append(fisher_z(r))
    model.train(was_training)
    return {subject: float(np.mean(np.concatenate(parts))) for subject, parts in z.items() if sum(map(len, parts))}


def subject_pcc(scores: dict[str, float]) -> float:
    """One PCC from ``point_prediction_scores``: the subjects' Fisher z averaged; NaN without any."""
    return float(np.tanh(np.mean(list(scores.values())))) if scores else float("nan")


class BestMean:
    """Choose the point prediction's learned residual on validation subjects, or none.

    Each epoch's residual weights are offered with their per-subject scores
    (``point_prediction_scores``) and the best by mean is remembered. What is restored at the end
    is that best residual only if its gain over the start (the linear paths alone; a resumed run:
    the residual it resumed with) exceeds one standard error of the per-subject gains — the
    one-standard-error rule, which keeps the simpler model unless the gain is clearly there. The
    best of many epochs scored on a few subjects is optimistic: on the generator benchmark the
    best of 62 epochs gained 5 % on three validation subjects and cost the test subjects 12 %.
    With fewer than two subjects scored in both there is no standard error, and the start is kept.

    Parameters
    ----------
    model : NeuroGenModel
        Its residual parameters are the start.
    scores : dict of str to float
        The start's validation scores (``point_prediction_scores``).
    """

    def __init__(self, model: NeuroGenModel, scores: dict[str, float]):
        self.start_scores = dict(scores)
        self.start_state = self._snapshot(model)
        self.best_scores, self.state = self.start_scores, self.start_state
        self.offers, self.best_offer = 0, 0

    @staticmethod
    def _snapshot(model: NeuroGenModel) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in model.named_parameters() if is_residual_parameter(n)}

    @property
    def score(self) -> float:
        """The best offer's validation PCC (``subject_pcc``; the start's before any offer)."""
        return subject_pcc(self.best_scores)

    def offer(self, model: NeuroGenModel, scores: dict[str, float]) -> bool:
        """Remember ``model``'s residual weights if their mean score beats the best so far.

        Parameters
        ----------
        model : NeuroGenModel
            The model scored.
        scores : dict of str to float
            Its validation scores; a non-finite mean is never remembered.

        Returns
        -------
        bool
            Whether the weights were remembered.
        """
        self.offers += 1
        mean = subject_pcc(scores)
        if np.isfinite(mean) and (not np.isfinite(self.score) or mean > self.score):
            self.best_scores, self.state, self.best_offer = dict(scores), self._snapshot(model), self.offers
            return True
        return False

    def gain(self) -> tuple[float, float, int]:
        """The best offer's mean per-subject gain in Fisher z over the start, its standard error,
        and the number of subjects scored in both (NaN standard error under two)."""
        common = sorted(set(self.best_scores) & set(self.start_scores))
        gains = np.array([self.best_scores[s] - self.start_scores[s] for s in common])
        if len(gains) == 0:
            return float("nan"), float("nan"), 0
        se = float(gains.std(ddof=1) / np.sqrt(len(gains))) if len(gains) >= 2 else float("nan")
        return float(gains.mean()), se, len(gains)

    @property
    def keeps_best(self) -> bool:
        """Whether the best offer's gain over the start exceeds one standard error."""
        if self.best_offer == 0:
            return False
        mean, se, _ = self.gain()
        return bool(np.isfinite(se) and mean > se)

    @torch.no_grad()
    def restore(self, model: NeuroGenModel, ema: EMA | None = None) -> None:
        """Copy the chosen residual weights (``keeps_best``: the best offer's, else the start's)
        back into ``model`` (and into ``ema``'s shadow when given)."""
        params = dict(model.named_parameters())
        for name, value in (self.state if self.keeps_best else self.start_state).items():
            params[name].copy_(value)
            if ema is not None:
                ema.shadow[name].copy_(value)

    def summary(self) -> dict[str, Any]:
        """What was chosen and why, for the run's provenance."""
        mean, se, n = self.gain()
        finite = lambda v: v if np.isfinite(v) else None  # noqa: E731 - JSON has no NaN
        return {
            "kept": self.keeps_best, "best_epoch": self.best_offer, "epochs_offered": self.offers,
            "validation_subjects": n, "gain_z": finite(mean), "gain_standard_error": finite(se),
            "start_pcc": finite(subject_pcc(self.start_scores)), "best_pcc": finite(self.score),
        }  # fmt: skip


# Moved to centralized.py and run_state.py; still importable from here for callers not yet
# updated (simulations/fairness_table.py imports split_sites). Resolved lazily, because
# centralized.py imports this module.
_MOVED = {
    "split_sites": "centralized",
    "SplitSites": "centralized",
    "subject_record": "centralized",
    "train_centralized": "centralized",
    "CHECKPOINT_DIR": "run_state",
    "STATE_FILE": "run_state",
    "JsonlLogger": "run_state",
    "save_training_state": "run_state",
    "load_training_state": "run_state",
    "write_run_config": "run_state",
}


def __getattr__(name: str):
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(f"fedneurogen.shared.workflows.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
