"""Federated early stopping of the point prediction's learned residual.

The ridge path is solved once; the residual on top of it (``MeanHead``'s network and readout)
is trained by the federation. Each round the sites score the global point prediction on their
held-out subjects (``pcc``: with three or more sites the median over them, so that one site
lying about its score cannot choose the round; with fewer, the mean by held-out windows,
``server/strategy.py``). The server keeps the residual of
the best round, starting from the model before any training (the ridge path alone); after
``patience`` rounds without a better score the residual is stopped: every later round's
aggregate has it replaced by the best one, while the rest of the model (the DiT that samples
around the mean) trains on. The final checkpoint carries the best residual, so the federated
mean never ends worse on the sites' held-out subjects than where it started, as
``shared.workflows.training.BestMean`` does for centralized training.
"""

from __future__ import annotations

import math

from flwr.app import ArrayRecord

from fedneurogen.shared.model.mean import is_residual_parameter


class ResidualEarlyStopping:
    def __init__(self, patience: int):
        self.patience = patience  # 0: off
        self.best_round: int | None = None
        self.best_score = -math.inf
        self.best: dict | None = None  # residual arrays of the best round
        self.rounds_without_gain = 0
        self.stopped = False

    @property
    def active(self) -> bool:
        return self.patience > 0

    def offer(self, server_round: int, score: float | None, arrays: ArrayRecord) -> None:
        """The held-out score of the global model of ``server_round`` (0: before training)."""
        if not self.active or self.stopped or score is None or not math.isfinite(score):
            return
        if score > self.best_score:
            self.best_round, self.best_score, self.rounds_without_gain = server_round, score, 0
            self.best = {k: arrays[k] for k in arrays.keys() if is_residual_parameter(k)}
        else:
            self.rounds_without_gain += 1
            self.stopped = self.rounds_without_gain >= self.patience

    def resume(self, summary: dict, score: float | None, arrays: ArrayRecord) -> None:
        """Continue a resumed run: the residual it resumes from stands as the best (its own
        score, the last round's), with the count of rounds without gain it had."""
        self.best_round = summary.get("best_round")
        self.best_score = score if score is not None and math.isfinite(score) else -math.inf
        self.best = {k: arrays[k] for k in arrays.keys() if is_residual_parameter(k)}
        self.rounds_without_gain, self.stopped = (
            int(summary.get("rounds_without_gain", 0)),
            bool(summary.get("stopped", False)),
        )

    def best_residual(self, arrays: ArrayRecord) -> ArrayRecord:
        """``arrays`` with the best round's residual (unchanged when there is none yet)."""
        if self.best is None:
            return arrays
        return ArrayRecord({k: self.best.get(k, arrays[k]) for k in arrays.keys()})

    def summary(self) -> dict:
        return {
            "best_round": self.best_round, "best_pcc": self.best_score if math.isfinite(self.best_score) else None,
            "rounds_without_gain": self.rounds_without_gain, "stopped": self.stopped,
        }  # fmt: skip
