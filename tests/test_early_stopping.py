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


def sites(*pccs: float) -> dict:
    return {str(node): {"pcc": pcc, "num-examples": 8} for node, pcc in enumerate(pccs, start=1)}


def test_the_residual_of_the_best_round_is_kept_after_patience_runs_out():
    stopping = ResidualEarlyStopping(patience=2)
    stopping.offer(0, 0.10, arrays(0.0), sites(0.10, 0.09, 0.11))  # the ridge path alone
    stopping.offer(1, 0.12, arrays(1.0), sites(0.12, 0.115, 0.125))  # better at every site: round 1 is the best
    stopping.offer(2, 0.11, arrays(2.0), sites(0.11, 0.10, 0.12))
    assert not stopping.stopped
    stopping.offer(3, 0.05, arrays(3.0), sites(0.05, 0.04, 0.06))
    summary = stopping.summary()
    assert stopping.stopped and {
        k: summary[k] for k in ("best_round", "best_pcc", "rounds_without_gain", "stopped")
    } == {
        "best_round": 1,
        "best_pcc": 0.12,
        "rounds_without_gain": 2,
        "stopped": True,
    }
    assert summary["kept"] and summary["sites"] == 3 and summary["site_gain_z"] > summary["site_gain_standard_error"]
    stopping.offer(4, 0.50, arrays(4.0), sites(0.5, 0.5, 0.5))  # once stopped, later rounds do not change the choice
    kept = stopping.best_residual(arrays(5.0))
    assert kept[RESIDUAL].numpy().max() == 1.0  # the residual of round 1
    assert kept[RIDGE].numpy().max() == 5.0 and kept[DIT].numpy().max() == 5.0  # the rest as trained


def test_a_best_round_within_one_standard_error_of_the_start_leaves_the_start():
    """A better median that one site's large gain and the others' losses make is not kept (the
    one-standard-error rule); nor is any best round without per-site scores to judge it by."""
    stopping = ResidualEarlyStopping(patience=1)
    stopping.offer(0, 0.10, arrays(0.0), sites(0.10, 0.10, 0.10))
    stopping.offer(1, 0.105, arrays(1.0), sites(0.30, 0.105, 0.02))
    stopping.offer(2, 0.09, arrays(2.0), sites(0.09, 0.09, 0.09))
    assert stopping.stopped and stopping.best_round == 1 and not stopping.keeps_best
    assert stopping.best_residual(arrays(3.0))[RESIDUAL].numpy().max() == 0.0  # round 0's
    assert stopping.summary()["kept"] is False
    unscored = ResidualEarlyStopping(patience=1)
    unscored.offer(0, 0.10, arrays(0.0))
    unscored.offer(1, 0.20, arrays(1.0))
    assert not unscored.keeps_best and unscored.best_residual(arrays(2.0))[RESIDUAL].numpy().max() == 0.0


def test_no_score_or_patience_zero_changes_nothing():
    off = ResidualEarlyStopping(patience=0)
    off.offer(1, 0.3, arrays(1.0))
    assert not off.active and off.best_residual(arrays(2.0))[RESIDUAL].numpy().max() == 2.0
    on = ResidualEarlyStopping(patience=1)
    on.offer(1, None, arrays(1.0))
    on.offer(2, float("nan"), arrays(2.0))
    assert on.best is None and not on.stopped
