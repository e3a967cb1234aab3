"""Federated early stopping of the point prediction's residual (server side)."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord

from fedneurogen.server.early_stopping import ResidualEarlyStopping
from fedneurogen.shared.model.mean import is_residual_parameter as is_residual

RESIDUAL = "modality_heads.fmri.mean.network.0.weight"
RIDGE = "modality_heads.fmri.mean.ridge.coef"
DIT = "backbone.blocks.0.attn.weight"


def arrays(value: float) -> ArrayRecord:
    return ArrayRecord({name: Array(np.full((2, 2), value, dtype=np.float32)) for name in (RESIDUAL, RIDGE, DIT)})


def test_only_the_trainable_residual_counts_as_residual():
    assert is_residual(RESIDUAL) and not is_residual(RIDGE) and not is_residual(DIT)


def test_the_residual_of_the_best_round_is_kept_after_patience_runs_out():
    stopping = ResidualEarlyStopping(patience=2)
    stopping.offer(0, 0.10, arrays(0.0))  # the ridge path alone
    stopping.offer(1, 0.12, arrays(1.0))  # better: round 1 is the best
    stopping.offer(2, 0.11, arrays(2.0))
    assert not stopping.stopped
    stopping.offer(3, 0.05, arrays(3.0))
    assert stopping.stopped and stopping.summary() == {
        "best_round": 1,
        "best_pcc": 0.12,
        "rounds_without_gain": 2,
        "stopped": True,
    }
    stopping.offer(4, 0.50, arrays(4.0))  # once stopped, later rounds do not change the choice
    kept = stopping.best_residual(arrays(5.0))
    assert kept[RESIDUAL].numpy().max() == 1.0  # the residual of round 1
    assert kept[RIDGE].numpy().max() == 5.0 and kept[DIT].numpy().max() == 5.0  # the rest as trained


def test_no_score_or_patience_zero_changes_nothing():
    off = ResidualEarlyStopping(patience=0)
    off.offer(1, 0.3, arrays(1.0))
    assert not off.active and off.best_residual(arrays(2.0))[RESIDUAL].numpy().max() == 2.0
    on = ResidualEarlyStopping(patience=1)
    on.offer(1, None, arrays(1.0))
    on.offer(2, float("nan"), arrays(2.0))
    assert on.best is None and not on.stopped
