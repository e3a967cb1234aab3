"""The simulation drills (``client/drills.py``): a failing site and a poisoning site.

Pure tensor functions: no Flower processes, no data.
"""

from __future__ import annotations

import pytest
import torch

from fedneurogen.client import drills
from fedneurogen.shared.errors import ConfigError
from fedneurogen.shared.run_config import RunConfig, validate_run_config

ATTACKER = {"partition-id": 2}
HONEST = {"partition-id": 0}


def _weights(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "blocks.0.weight": torch.randn(4, 3, generator=g),
        "blocks.0.bias": torch.randn(4, generator=g),
        "modality_heads.fmri.scale": torch.randn(1, generator=g),  # one element: std() is NaN
    }


@pytest.fixture
def received() -> dict[str, torch.Tensor]:
    return _weights(0)


@pytest.fixture
def local(received) -> dict[str, torch.Tensor]:
    step = _weights(1)
    return {k: received[k] + 0.01 * step[k] for k in received}


def _config(mode: str = "scale", scale: float = 100.0, partition: int = 2) -> RunConfig:
    return validate_run_config({"attack-partition": partition, "attack-mode": mode, "attack-scale": scale})


def test_scale_poisoning_is_global_plus_scale_times_update(local, received):
    out = drills.poison(_config("scale", 100.0), ATTACKER, local, received, seed=1)
    assert set(out) == set(local)
    for name in local:
        expected = received[name] + 100.0 * (local[name] - received[name])
        assert torch.equal(out[name], expected), name
        assert out[name].dtype == local[name].dtype and out[name].shape == local[name].shape
    # the poisoned update is 100x the honest one (up to float rounding)
    update, poisoned_update = (
        local["blocks.0.weight"] - received["blocks.0.weight"],
        out["blocks.0.weight"] - received["blocks.0.weight"],
    )
    torch.testing.assert_close(poisoned_update, 100.0 * update, rtol=1e-4, atol=1e-5)


def test_scale_one_sends_the_local_update(local, received):
    out = drills.poison(_config("scale", 1.0), ATTACKER, local, received, seed=1)
    for name in local:
        torch.testing.assert_close(out[name], local[name], rtol=0, atol=1e-6)


def test_random_poisoning_is_seeded_and_differs_from_the_update(local, received):
    config = _config("random", 100.0)
    first = drills.poison(config, ATTACKER, local, received, seed=3)
    again = drills.poison(config, ATTACKER, local, received, seed=3)
    other = drills.poison(config, ATTACKER, local, received, seed=4)
    for name in local:
        assert torch.equal(first[name], again[name]), name  # same seed: same noise
        assert torch.isfinite(first[name]).all(), name
        assert not torch.allclose(first[name], local[name]), name
        assert not torch.equal(first[name], other[name]), name  # another round: other noise
    # noise of the update's per-tensor std x scale around the received weights
    update = local["blocks.0.weight"] - received["blocks.0.weight"]
    noise = first["blocks.0.weight"] - received["blocks.0.weight"]
    assert 10 * update.std() < noise.std() < 1000 * update.std()
    # a one-element tensor (std undefined) still gets finite noise
    assert first["modality_heads.fmri.scale"].item() != local["modality_heads.fmri.scale"].item()


@pytest.mark.parametrize("mode", drills.ATTACK_MODES)
def test_other_nodes_send_their_update_unchanged(local, received, mode):
    for node in (HONEST, {"partition-id": 1}, {}):  # {}: a deployed site without a partition id
        out = drills.poison(_config(mode), node, local, received, seed=1)
        assert out is local


def test_attack_off_by_default(local, received):
    for node in (ATTACKER, HONEST, {}):
        assert drills.poison(RunConfig(), node, local, received, seed=1) is local
        assert drills.poison(RunConfig(attack_partition=-1), node, local, received, seed=1) is local


def test_bad_attack_mode_is_refused_with_the_run_config():
    with pytest.raises(ConfigError, match="attack-mode = 'flip' is not allowed; choose one of: scale, random"):
        _config("flip")
    assert drills.ATTACK_MODES == ("scale", "random")


def test_fault_drill_raises_only_on_its_node():
    config = RunConfig(fault_partition=1)
    with pytest.raises(RuntimeError, match="injected fault"):
        drills.check_fault(config, {"partition-id": 1})
    for node in ({"partition-id": 0}, {"partition-id": 2}, {}):
        drills.check_fault(config, node)
    for node in ({"partition-id": 0}, {"partition-id": 1}, {}):  # off by default
        drills.check_fault(RunConfig(), node)
        drills.check_fault(RunConfig(fault_partition=-1), node)
