"""The benchmark scripts' model harness runs: the synthetic windows they time carry everything a
real batch does (a benchmark that crashes is found here, not when someone needs its figure)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import synthesis_latency  # noqa: E402
import training_efficiency  # noqa: E402


@pytest.mark.parametrize("preset", ["tiny"])
def test_training_step_counts_flops(preset):
    step, model = training_efficiency.make_step(preset, 2)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    flops = step(count_flops=True)
    assert flops > 1e8, "the FLOP counter saw no matmuls"
    changed = [k for k, v in model.state_dict().items() if not np.array_equal(v.numpy(), before[k].numpy())]
    assert changed, "the optimiser step changed no weight"


def test_generate_returns_one_target_window_per_input():
    run, steps = synthesis_latency.make_generate("tiny", 2, 1.0)
    out = run()
    assert steps > 0
    assert out.shape[:2] == (1, 2), "one sample of each of the two windows"
    assert np.isfinite(out).all() and out.std() > 0
