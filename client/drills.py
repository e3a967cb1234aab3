"""Drills for the local simulation: a site that fails, a site that sends poisoned updates.

They are switched on by run-config keys that name one simulated node (its ``partition-id``);
a deployed site daemon has no partition id unless its operator sets one, so they stay off there.
``fault-partition``: that node raises in every round (tests the server's failure handling).
``attack-partition`` with ``attack-mode``: that node replaces its update by a poisoned one, for
``benchmarks/robustness.py`` (``scale``: the update times ``attack-scale``, i.e. global +
scale x (local - global); ``random``: Gaussian noise with the update's per-tensor std x scale).
"""

from __future__ import annotations

from typing import get_args

import torch

from fedneurogen.shared.run_config import AttackMode, RunConfig

ATTACK_MODES: tuple[str, ...] = get_args(AttackMode)


def _is_node(partition: int, node_config: dict) -> bool:
    return partition == int(node_config.get("partition-id", -2))


def check_fault(run: RunConfig, node_config: dict) -> None:
    if _is_node(run.fault_partition, node_config):
        raise RuntimeError("injected fault (run config fault-partition)")


def poison(
    run: RunConfig, node_config: dict, local: dict[str, torch.Tensor], received: dict[str, torch.Tensor], seed: int
) -> dict[str, torch.Tensor]:
    """The update this node sends: ``local`` unchanged unless it is the attack drill's node."""
    if not _is_node(run.attack_partition, node_config):
        return local
    mode, scale = run.attack_mode, run.attack_scale
    generator = torch.Generator().manual_seed(seed)
    poisoned = {}
    for name, weights in local.items():
        start = received[name].to(weights.dtype)
        update = weights - start
        if mode == "scale":
            poisoned[name] = start + scale * update
        else:
            noise = torch.randn(weights.shape, generator=generator, dtype=weights.dtype)
            # a one-element tensor (the model's learned scalars) has no std: only the floor applies
            spread = update.std() if update.numel() > 1 else update.new_zeros(())
            poisoned[name] = start + scale * spread.nan_to_num(0.0).clamp_min(1e-3) * noise
    return poisoned
