"""Benchmark: seconds per generated segment (one target window) with the synthesis defaults.

    python benchmarks/synthesis_latency.py --out benchmarks/results/synthesis_latency.json

``fedneurogen synthesize`` samples every window with ``shared.workflows.synthesis.generate``: DDIM with the
checkpoint's ``sampling_steps`` (``tiny`` 20, ``small`` 25), ``eta = 0``, guidance 1 (the plain
conditional model: no doubled classifier-free-guidance batch), batches of 16 windows. This
times ``generate`` itself (batch build, EEG encoding once per batch, the DDIM loop; no file I/O)
on 64-channel EEG -> ico4 fMRI windows for ``small`` (the CPU training preset: the headline)
and ``tiny`` (the CLI's default preset), at batch 1 (latency) and batch 32 (throughput), plus
guidance 2 (``fedneurogen augment``'s default: the doubled batch) at batch 32.
Target: <= 0.3 s per segment on a 2-core CPU. Anchor: the original UnifiedNeuroGen code needs
about 32 s per segment on an RTX 3090 (289 segments in 2 h 34 min, 1000 DDIM steps).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as bc  # noqa: E402

TARGET_S_PER_SEGMENT = 0.3
ANCHOR = {
    "system": "UnifiedNeuroGen (authors' code), RTX 3090, 1000 DDIM steps",
    "segments": 289,
    "seconds": 2 * 3600 + 34 * 60,
    "s_per_segment": (2 * 3600 + 34 * 60) / 289,
}
# (preset, batch size, guidance scale)
DEFAULT_CASES = (("small", 1, 1.0), ("small", 32, 1.0), ("small", 32, 2.0), ("tiny", 1, 1.0), ("tiny", 32, 1.0))


def make_generate(preset: str, batch_size: int, guidance: float, seed: int = 0, device: str = "cpu"):
    """``run()`` generates one batch of ``batch_size`` windows as ``synthesize`` does."""
    import numpy as np
    import torch

    from fedneurogen.shared.model import NeuroGenModel
    from fedneurogen.shared.workflows.synthesis import generate

    torch.manual_seed(seed)
    model = NeuroGenModel(preset, device="cpu")
    # Random weights at the scale of trained ones: the init's zeroed output layers would make
    # some work trivially cheap (the timing of dense kernels does not depend on values, but be safe).
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed)
        for _, p in sorted(model.named_parameters()):
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    model.to(device).eval()
    windows = bc.synthetic_windows(batch_size, "fmri", 64, seed)
    labels = np.arange(batch_size) % 2
    steps = model.config.sampling_steps

    def run():
        return generate(model, windows, labels, steps=steps, guidance_scale=guidance, seed=seed, batch_size=batch_size)

    return run, steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the result JSON here")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls at batch 1 (batch 32: at least 3)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores)")
    parser.add_argument("--quick", action="store_true", help="small preset only, batch 1 and 32")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args(argv)

    bc.set_threads(args.threads)
    device = bc.resolve_device(args.device)
    cases = DEFAULT_CASES if not args.quick else DEFAULT_CASES[:2]
    if device == "cuda":
        cases = (("base", 1, 1.0), ("base", 32, 1.0), ("small", 1, 1.0), ("small", 128, 1.0))
    rows = []
    for preset, batch_size, guidance in cases:
        run, steps = make_generate(preset, batch_size, guidance, device=device)
        repeats = args.repeats if batch_size == 1 else max(3, args.repeats // 2)
        cpu: list[float] = []
        times = bc.time_call(run, warmup=args.warmup, repeats=repeats, cpu=cpu)
        median = statistics.median(times)
        rows.append({
            "preset": preset, "batch_size": batch_size, "guidance": guidance, "ddim_steps": steps,
            "network_evaluations_per_segment": steps * (2 if guidance != 1.0 else 1),
            "batch_s": median, "s_per_segment": median / batch_size, "segments_per_s": batch_size / median,
            "speedup_vs_anchor": ANCHOR["s_per_segment"] / (median / batch_size),
            "cpu_s_per_segment": statistics.median(cpu) / batch_size, "times_s": times, "cpu_times_s": cpu,
        })  # fmt: skip

    figures = []
    for row in rows:
        tag = (
            f"{row['preset']}, batch {row['batch_size']}, {row['ddim_steps']} DDIM steps"
            + (", cuda" if device == "cuda" else "")
            + (f", guidance {row['guidance']:g}" if row["guidance"] != 1.0 else "")
        )
        headline = row["guidance"] == 1.0  # the synthesize default; guided rows are detail
        figures.append(bc.figure(
            f"synthesis s/segment ({tag})", row["s_per_segment"], "s/segment", f"<= {TARGET_S_PER_SEGMENT}" if headline else None,
            note=f"{row['speedup_vs_anchor']:.0f}x faster than UnifiedNeuroGen's {ANCHOR['s_per_segment']:.1f} s/segment (RTX 3090)",
        ))  # fmt: skip
    detail = {
        "description": "shared.workflows.synthesis.generate on 64-channel EEG -> ico4 fMRI windows (DDIM, eta 0, synthesize defaults), no file I/O",
        "device": device,
        "anchor": ANCHOR,
        "timing": "median wall seconds (s_per_segment); cpu_s_per_segment is process CPU time (all threads), robust to other load",
        "cases": rows,
    }
    bc.write_result(args.out, "synthesis_latency", figures, detail)
    columns = [
        "preset",
        "batch_size",
        "guidance",
        "ddim_steps",
        "batch_s",
        "s_per_segment",
        "cpu_s_per_segment",
        "speedup_vs_anchor",
    ]
    bc.print_figures("synthesis latency", figures, rows, columns)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
