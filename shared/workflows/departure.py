"""How much of the DiT's learned departure from the noise model's Gaussian the samples take.

The diffusion works in the noise model's whitened coordinates (``shared/model/noise.py``), where
a network output ``v = 0`` is the exact denoiser of the linear-Gaussian residual. Sampling with
``s * v`` (``noise.departure = s``) keeps that share of what the DiT learnt beyond the Gaussian:
0 gives the point prediction plus linear-Gaussian noise, 1 the DiT as trained. Like ``BestMean``
for the point prediction, ``s`` is chosen on validation subjects, by the ensemble CRPS of their
samples (a proper score of each value's predictive distribution): a DiT that learnt little in its
budget does not make the samples worse than its own Gaussian.

Why samples, not the validation diffusion loss: the sampler integrates the network's output over
the noise levels, so a small error the loss hardly sees (a DiT of tiny output, loss 1.134 against
1.136 for zero) can add up to a worse sample (CRPS 0.721 against 0.686: measured on the simulated
nonlinear consortium, seed 31, ``tiny`` after 8 CPU-minutes).

The noise model's **spread** is calibrated on the same validation windows first: the noise
model is fitted on training subjects' cross-fitted residuals about the closed-form linear mean,
but samples are drawn about the model's own point prediction and for new subjects. Its scale is
multiplied by ``sqrt(m)``, with ``m`` the mean square of the validation residuals about the
samples' mean (the labelled point prediction, class offsets whole) in the noise model's whitened coordinates (the maximum-likelihood
scale of a Gaussian ``N(mu, c^2 Sigma)``; 1 where the noise model already fits), within
``SPREAD_RANGE``. The linear-Gaussian baseline is calibrated the same way
(``baselines/linear_gaussian.py``), so both generators are compared at their calibrated scale.

In a federation the sites score the shares on their own held-out windows in the last round's
evaluation (``departure-windows`` of them, ``N_SAMPLES`` samples each, at their own windows'
spread) with the windows' whitened mean square, and the server takes the share of the least
window-weighted CRPS and the spread of the window-weighted mean square (``server/closed_form.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from fedneurogen.shared.metrics import ensemble_crps
from fedneurogen.shared.model.crossfit import class_indices
from fedneurogen.shared.recording import PairedWindows

#: The shares tried, in the order equal scores are settled (the DiT as trained first).
DEPARTURES = (1.0, 0.5, 0.0)
#: Samples per scored window.
N_SAMPLES = 4
#: Evaluate-config key: score the departure shares on this many held-out windows (0: do not).
DEPARTURE_WINDOWS = "departure-windows"
#: Evaluation-reply metric: the scored windows' whitened mean square (the spread's statistic).
SPREAD_KEY = "departure-whitened-msq"
#: The calibrated mean square is kept within this range (the spread within [1/3, 3]).
SPREAD_RANGE = (1.0 / 9.0, 9.0)


def crps_key(share: float) -> str:
    """The evaluation-reply metric holding a share's CRPS (``departure-crps-0.5``)."""
    return f"departure-crps-{share:g}"


#: Every metric of a departure scoring (what only the sites asked to score may contribute).
DEPARTURE_METRICS = (*(crps_key(share) for share in DEPARTURES), SPREAD_KEY)


def departure_scores(
    model, windows: PairedWindows, class_to_index: dict[str, int], seed: int = 0, batch_size: int = 16
) -> dict[float, float]:
    """Each share's mean ensemble CRPS of ``N_SAMPLES`` samples of ``windows`` (the same noise for
    every share); the model's ``departure`` is left as it was.

    Parameters
    ----------
    model : NeuroGenModel
        The model (its modality head's noise model fitted).
    windows : PairedWindows
        Held-out windows of one modality, with targets.
    class_to_index : dict of str to int
        The model's label index of each class (samples are conditioned on the windows' classes).
    seed : int
        Seed of the sampling noise.
    batch_size : int
        Windows sampled together.

    Returns
    -------
    dict of float to float
        Share -> CRPS.
    """
    from fedneurogen.shared.workflows.synthesis import generate

    departure = model.modality_heads[windows.target_modality].noise.departure
    kept = departure.detach().clone()
    labels, real = class_indices(windows, class_to_index), np.asarray(windows.target)
    scores = {}
    try:
        for share in DEPARTURES:
            with torch.no_grad():
                departure.fill_(share)
            samples = generate(model, windows, labels, n_samples=N_SAMPLES, seed=seed, batch_size=batch_size)
            scores[share] = ensemble_crps(samples, real)
    finally:
        with torch.no_grad():
            departure.copy_(kept)
    return scores


def whitened_mean_square(model, windows: PairedWindows, class_to_index: dict[str, int], batch_size: int = 16) -> float:
    """Mean square of ``windows``' residuals about the mean their samples are drawn about (the
    labelled point prediction, class offsets whole), in the noise model's whitened coordinates
    (1 where its covariance fits these subjects' residuals).

    Parameters
    ----------
    model : NeuroGenModel
        The model (its modality head's noise model fitted).
    windows : PairedWindows
        Windows of one modality, with targets.
    class_to_index : dict of str to int
        The model's label index of each class.
    batch_size : int
        Windows per forward pass.

    Returns
    -------
    float
        The mean over windows, points and frames.
    """
    from fedneurogen.shared.model import Batch

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(windows), batch_size):
            index = np.arange(start, min(start + batch_size, len(windows)))
            batch = Batch.from_windows(windows, index, class_to_index, model.device)
            target = torch.as_tensor(np.asarray(windows.target[index]), dtype=torch.float32, device=model.device)
            white = model.whiten(target - model.point_prediction(batch, whole_class_offset=True).float(), batch)
            total, count = total + float((white.double() ** 2).sum()), count + white.numel()
    return total / max(count, 1)


def calibrated_spread(mean_square: float) -> float:
    """The noise's spread for a whitened validation mean square: its root, within ``SPREAD_RANGE``."""
    return float(np.sqrt(np.clip(mean_square, *SPREAD_RANGE)))


def set_spread(model, modality: str, mean_square: float) -> dict | None:
    """Set ``modality``'s ``noise.spread`` to ``sqrt(mean_square)`` (within ``SPREAD_RANGE``);
    nothing where the noise model is not fitted or the statistic is not a finite positive number.
    Returns what was set (None: nothing)."""
    head = model.modality_heads[modality]
    if not head.noise.fitted or not np.isfinite(mean_square) or mean_square <= 0:
        return None
    spread = calibrated_spread(mean_square)
    with torch.no_grad():
        head.noise.spread.fill_(spread)
    return {"spread": spread, "whitened_mean_square": float(mean_square)}


def site_scores(
    model, windows: PairedWindows, class_to_index: dict[str, int], seed: int = 0, batch_size: int = 16
) -> dict[str, float]:
    """A site's evaluation metrics for the server's choice: the windows' whitened mean square
    (``SPREAD_KEY``) and each share's CRPS (``crps_key``), scored at the spread those windows
    calibrate; the model's spread is left as it was."""
    modality = windows.target_modality
    spread = model.modality_heads[modality].noise.spread
    kept = spread.detach().clone()
    mean_square = whitened_mean_square(model, windows, class_to_index, batch_size)
    try:
        set_spread(model, modality, mean_square)
        scores = departure_scores(model, windows, class_to_index, seed, batch_size)
    finally:
        with torch.no_grad():
            spread.copy_(kept)
    return {SPREAD_KEY: mean_square, **{crps_key(share): crps for share, crps in scores.items()}}


def set_departure(model, modality: str, scores: Mapping[float, float]) -> dict | None:
    """Set ``modality``'s ``noise.departure`` to the share of the least CRPS (the first of equal
    ones in ``DEPARTURES``); nothing where the noise model is not fitted (a DP run's raw residual)
    or a share's score is missing or not finite. Returns the choice and the scores (None: nothing)."""
    head = model.modality_heads[modality]
    if not head.noise.fitted or any(not np.isfinite(scores.get(s, np.nan)) for s in DEPARTURES):
        return None
    best = min(DEPARTURES, key=lambda share: scores[share])
    with torch.no_grad():
        head.noise.departure.fill_(best)
    return {"chosen": best, "crps": {f"{s:g}": float(scores[s]) for s in DEPARTURES}}


def choose_departure(
    model,
    sites: Sequence[PairedWindows],
    class_to_index: dict[str, int],
    max_windows: int = 64,
    seed: int = 0,
    batch_size: int = 16,
) -> dict[str, dict]:
    """Set every fitted modality's ``noise.departure`` from its validation windows (``sites``: at
    most ``max_windows`` of them, a seeded draw spread over the sites).

    Parameters
    ----------
    model : NeuroGenModel
        The trained model (the weights it will sample with).
    sites : sequence of PairedWindows
        Validation windows, one entry per site.
    class_to_index : dict of str to int
        The model's label index of each class.
    max_windows : int
        Most windows scored per modality (``TrainConfig.departure_windows``).
    seed : int
        Seed of the window draw and of the sampling noise.
    batch_size : int
        Windows sampled together.

    Returns
    -------
    dict
        Per modality: ``set_departure``'s and ``set_spread``'s records and the ``windows`` scored.
    """
    out: dict[str, dict] = {}
    rng = np.random.default_rng(seed)
    for modality, head in model.modality_heads.items():
        windows = [w for w in sites if w.target_modality == modality and len(w)]
        if not windows or not head.noise.fitted:
            continue
        per_site = max(1, max_windows // len(windows))
        parts = [
            w.subset(np.isin(np.arange(len(w)), rng.choice(len(w), min(per_site, len(w)), replace=False)))
            for w in windows
        ]  # fmt: skip
        count = sum(len(part) for part in parts)
        # the spread first (closed form), then the shares' samples at that spread
        mean_square = sum(whitened_mean_square(model, p, class_to_index, batch_size) * len(p) for p in parts) / count
        spread = set_spread(model, modality, mean_square) or {}
        totals = dict.fromkeys(DEPARTURES, 0.0)
        for part in parts:
            for share, crps in departure_scores(model, part, class_to_index, seed, batch_size).items():
                totals[share] += crps * len(part)
        chosen = set_departure(model, modality, {s: v / count for s, v in totals.items()})
        if chosen is not None:
            out[modality] = {**chosen, **spread, "windows": count}
    return out
