"""Federated early stopping of the point prediction's learned residual.

The ridge path is solved once; the residual on top of it (``MeanHead``'s network and readout)
is trained by the federation. Each round the sites score the global point prediction on their
held-out subjects (``pcc``: with three or more sites the median over them, so that one site
lying about its score cannot choose the round; with fewer, the mean by held-out windows,
``server/strategy.py``). The server keeps the residual of
the best round, starting from the model before any training (the ridge path alone); after
``patience`` rounds without a better score the residual is stopped: every later round's
aggregate has it replaced by the best one, while the rest of the model (the DiT that samples
around the mean) trains on. The best round's residual is kept only where the sites support it: the median
of the sites' gains over round 0 (in Fisher z of their PCCs) must exceed one standard error of
those gains, else round 0's residual stays — the one-standard-error rule of
``shared.workflows.training.BestMean`` for centralized training, with sites as the units (the
best of many rounds scored on a few held-out subjects is optimistic). Median and spread are
robust (the spread from the median absolute deviation), so one site lying about its score
neither makes nor vetoes the choice. The final checkpoint carries the chosen residual.
"""

from __future__ import annotations

import math

import numpy as np
from flwr.app import ArrayRecord

from fedneurogen.shared.metrics import fisher_z
from fedneurogen.shared.model.mean import is_residual_parameter


class ResidualEarlyStopping:
    def __init__(self, patience: int):
        self.patience = patience  # 0: off
        self.best_round: int | None = None
        self.best_score = -math.inf
        self.best: dict | None = None  # residual arrays of the best round
        self.best_sites: dict[str, float] = {}  # the sites' own PCCs in that round
        self.start: dict | None = None  # residual arrays of the first round offered (round 0)
        self.start_sites: dict[str, float] = {}
        self.rounds_without_gain = 0
        self.stopped = False

    @property
    def active(self) -> bool:
        return self.patience > 0

    def offer(self, server_round: int, score: float | None, arrays: ArrayRecord, sites: dict | None = None) -> None:
        """The held-out score of the global model of ``server_round`` (0: before training), and
        each site's own PCC (``sites``: the evaluate report's ``{node: metrics}``)."""
        if not self.active or self.stopped or score is None or not math.isfinite(score):
            return
        pccs = {
            str(node): float(m["pcc"])
            for node, m in (sites or {}).items()
            if isinstance(m, dict) and isinstance(m.get("pcc"), int | float) and math.isfinite(m["pcc"])
        }
        residual = {k: arrays[k] for k in arrays.keys() if is_residual_parameter(k)}
        if self.start is None:
            self.start, self.start_sites = residual, pccs
        if score > self.best_score:
            self.best_round, self.best_score, self.rounds_without_gain = server_round, score, 0
            self.best, self.best_sites = residual, pccs
        else:
            self.rounds_without_gain += 1
            self.stopped = self.rounds_without_gain >= self.patience

    def gain(self) -> tuple[float, float, int]:
        """The median of the sites' gains in Fisher z from the start to the best round, their
        robust standard error (1.4826 x the median absolute deviation, over the root of their
        number), and the number of sites scored in both."""
        common = sorted(set(self.best_sites) & set(self.start_sites))
        gains = np.array([float(fisher_z(self.best_sites[n]) - fisher_z(self.start_sites[n])) for n in common])
        if len(gains) < 2:
            return (float(gains[0]) if len(gains) else math.nan), math.nan, len(gains)
        median = float(np.median(gains))
        spread = 1.4826 * float(np.median(np.abs(gains - median)))  # the SD of normal gains, robustly
        return median, spread / math.sqrt(len(gains)), len(gains)

    @property
    def keeps_best(self) -> bool:
        """Whether the best round's residual is kept (its sites' median gain past one standard error)."""
        if self.best is None or self.best is self.start:
            return False
        median, se, _ = self.gain()
        return bool(math.isfinite(se) and median > se)

    def resume(self, summary: dict, score: float | None, arrays: ArrayRecord) -> None:
        """Continue a resumed run: the residual it resumes from stands as the start and the best
        (its own score, the last round's), with the count of rounds without gain it had."""
        self.best_round = summary.get("best_round")
        self.best_score = score if score is not None and math.isfinite(score) else -math.inf
        self.best = self.start = {k: arrays[k] for k in arrays.keys() if is_residual_parameter(k)}
        self.rounds_without_gain, self.stopped = (
            int(summary.get("rounds_without_gain", 0)),
            bool(summary.get("stopped", False)),
        )

    def best_residual(self, arrays: ArrayRecord) -> ArrayRecord:
        """``arrays`` with the chosen residual (``keeps_best``: the best round's, else the
        start's; unchanged when none was offered yet)."""
        chosen = self.best if self.keeps_best else self.start
        if chosen is None:
            return arrays
        return ArrayRecord({k: chosen.get(k, arrays[k]) for k in arrays.keys()})

    def summary(self) -> dict:
        median, se, n = self.gain()
        finite = lambda v: v if math.isfinite(v) else None  # noqa: E731 - JSON has no NaN
        return {
            "best_round": self.best_round, "best_pcc": self.best_score if math.isfinite(self.best_score) else None,
            "rounds_without_gain": self.rounds_without_gain, "stopped": self.stopped,
            "kept": self.keeps_best, "site_gain_z": finite(median), "site_gain_standard_error": finite(se), "sites": n,
        }  # fmt: skip
