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

In a federation the sites score the shares on their own held-out windows in the last round's
evaluation (``departure-windows`` of them, ``N_SAMPLES`` samples each) and the server takes the
share of the least window-weighted CRPS (``server/closed_form.py``).
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
#: Samples per scored window, and validation windows scored per modality when training centrally.
N_SAMPLES, MAX_WINDOWS = 4, 64
#: Evaluate-config key: score the departure shares on this many held-out windows (0: do not).
DEPARTURE_WINDOWS = "departure-windows"


def crps_key(share: float) -> str:
    """The evaluation-reply metric holding a share's CRPS (``departure-crps-0.5``)."""
    return f"departure-crps-{share:g}"


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
    model, sites: Sequence[PairedWindows], class_to_index: dict[str, int], seed: int = 0, batch_size: int = 16
) -> dict[str, dict]:
    """Set every fitted modality's ``noise.departure`` from its validation windows (``sites``: at
    most ``MAX_WINDOWS`` of them, a seeded draw spread over the sites).

    Parameters
    ----------
    model : NeuroGenModel
        The trained model (the weights it will sample with).
    sites : sequence of PairedWindows
        Validation windows, one entry per site.
    class_to_index : dict of str to int
        The model's label index of each class.
    seed : int
        Seed of the window draw and of the sampling noise.
    batch_size : int
        Windows sampled together.

    Returns
    -------
    dict
        Per modality: ``set_departure``'s record and the ``windows`` scored.
    """
    out: dict[str, dict] = {}
    rng = np.random.default_rng(seed)
    for modality, head in model.modality_heads.items():
        windows = [w for w in sites if w.target_modality == modality and len(w)]
        if not windows or not head.noise.fitted:
            continue
        per_site = max(1, MAX_WINDOWS // len(windows))
        totals = dict.fromkeys(DEPARTURES, 0.0)
        count = 0
        for w in windows:
            part = w.subset(np.isin(np.arange(len(w)), rng.choice(len(w), min(per_site, len(w)), replace=False)))
            for share, crps in departure_scores(model, part, class_to_index, seed, batch_size).items():
                totals[share] += crps * len(part)
            count += len(part)
        chosen = set_departure(model, modality, {s: v / count for s, v in totals.items()})
        if chosen is not None:
            out[modality] = {**chosen, "windows": count}
    return out
