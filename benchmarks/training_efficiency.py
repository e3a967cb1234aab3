"""Benchmark: training throughput (samples/s) and achieved FLOP/s as a fraction of matmul peak.

    python benchmarks/training_efficiency.py --out benchmarks/results/training_efficiency.json

One full training step as ``train_epochs`` runs it (batch from windows, forward, backward,
gradient clipping, AdamW step) is timed for the ``small`` preset (the CPU training preset) and
``tiny``, at the batch size of ``TRAIN_PRESETS`` and a larger one, on EEG-fMRI batches shaped
like real ones (64 EEG channels x 16 s at 200 Hz, ico4 fMRI, 8 frames). The FLOPs of the step's
forward and backward are counted with ``torch.utils.flop_counter.FlopCounterMode`` on the real
step (matmuls, convolutions, attention; elementwise work is not counted, as usual for MFU), and
the achieved FLOP/s is compared with this machine's fp32 ``torch.matmul`` peak, measured in the
same run (best of several 2048^2 and 4096^2 products). Target: >= 40 % of peak.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as bc  # noqa: E402

TARGET_FRACTION = 0.40
DEFAULT_CASES = (("small", 16), ("small", 64), ("tiny", 8), ("tiny", 32))


def make_step(preset: str, batch_size: int, seed: int = 0, device: str = "cpu"):
    """``(step, model, windows)``: ``step()`` runs one training step like ``train_epochs``."""
    import numpy as np
    import torch

    from fedneurogen.shared.model import Batch, NeuroGenModel
    from fedneurogen.shared.workflows.training import TRAIN_PRESETS, make_optimizer, set_learning_rate

    torch.manual_seed(seed)
    model = NeuroGenModel(preset, device=device)
    config = TRAIN_PRESETS[preset]
    optimizer = make_optimizer(model.parameters(), config)
    windows = bc.synthetic_windows(batch_size, "fmri", 64, seed)
    classes = {"a": 0, "b": 1}
    generator = torch.Generator(device=device).manual_seed(seed)
    index = np.arange(batch_size)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()

    def step(count_flops: bool = False) -> float:
        batch = Batch.from_windows(windows, index, classes, device)
        set_learning_rate(optimizer, config, 100)
        optimizer.zero_grad(set_to_none=True)
        flops = 0.0
        if count_flops:
            from torch.utils.flop_counter import FlopCounterMode

            with FlopCounterMode(display=False) as counter:
                loss, _ = model(batch, generator=generator)
                loss.backward()
            flops = float(counter.get_total_flops())
        else:
            loss, _ = model(batch, generator=generator)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        return flops

    return step, model


def measure(cases, repeats: int, warmup: int, device: str = "cpu") -> tuple[dict, list[dict]]:
    peak = bc.matmul_peak(device=device)
    rows = []
    for preset, batch_size in cases:
        step, model = make_step(preset, batch_size, device=device)
        flops = step(count_flops=True)  # also the first warm-up
        cpu: list[float] = []
        times = bc.time_call(step, warmup=warmup, repeats=repeats, cpu=cpu)
        median = statistics.median(times)
        rows.append({
            "preset": preset, "batch_size": batch_size, "step_s": median, "min_s": min(times),
            "samples_per_s": batch_size / median, "gflop_per_step": flops / 1e9,
            "gflops": flops / median / 1e9, "fraction_of_peak": flops / median / peak["flops"],
            "fraction_of_peak_best": flops / min(times) / peak["flops"], "cpu_step_s": statistics.median(cpu),
            "times_s": times, "cpu_times_s": cpu,
        })  # fmt: skip
    # the peak again at the end: on a shared machine the load may have changed meanwhile
    peak_after = bc.matmul_peak(device=device)
    peak["flops_after"] = peak_after["flops"]
    return peak, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the result JSON here")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores)")
    parser.add_argument("--quick", action="store_true", help="only the preset batch sizes, 3 repeats")
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="cuda: bf16 autocast, peak measured in bf16"
    )
    args = parser.parse_args(argv)

    bc.set_threads(args.threads)
    device = bc.resolve_device(args.device)
    cases = DEFAULT_CASES if not args.quick else (("small", 16), ("tiny", 8))
    if device == "cuda":  # the GPU presets and batch sizes; small batches only measure launch overhead there
        cases = (("base", 32), ("base", 64), ("small", 128)) if not args.quick else (("base", 32), ("small", 128))
    peak, rows = measure(cases, 3 if args.quick else args.repeats, args.warmup, device)

    precision = "bf16" if device == "cuda" else "fp32"
    figures = []
    for row in rows:
        tag = f"{row['preset']} b{row['batch_size']}" + (", cuda" if device == "cuda" else "")
        figures.append(bc.figure(f"training samples/s ({tag})", row["samples_per_s"], "samples/s"))
        figures.append(bc.figure(
            f"training FLOP/s fraction of {precision} matmul peak ({tag})", row["fraction_of_peak"], "fraction", f">= {TARGET_FRACTION}",
            note=f"{row['gflops']:.1f} GFLOP/s of {peak['flops'] / 1e9:.1f} GFLOP/s peak",
        ))  # fmt: skip
    detail = {
        "description": "full training step (batch build, forward, backward, clip, AdamW) on 64-channel EEG -> ico4 fMRI windows",
        "device": device,
        "matmul_peak_precision": precision,
        "matmul_peak_gflops": peak["flops"] / 1e9,
        "matmul_peak_gflops_after": peak["flops_after"] / 1e9,
        "matmul_peak_by_size_gflops": {k: v / 1e9 for k, v in peak["by_size"].items()},
        "flop_counting": "torch.utils.flop_counter.FlopCounterMode over forward + backward of one real step",
        "cases": rows,
    }
    bc.write_result(args.out, "training_efficiency", figures, detail)
    columns = ["preset", "batch_size", "step_s", "samples_per_s", "gflop_per_step", "gflops", "fraction_of_peak"]
    bc.print_figures(f"training efficiency (matmul peak {peak['flops'] / 1e9:.1f} GFLOP/s)", figures, rows, columns)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
