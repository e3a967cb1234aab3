"""Benchmark: DP-SGD (Opacus) training-step time against the same step without DP.

    python benchmarks/dp_overhead.py --out benchmarks/results/dp_overhead.json

Same model (``prepare_for_dp``: the InfoNCE term off, the other modality's head and the target
encoders frozen, as on a DP site), same preset, batch and data. Variants, timed interleaved:
- ``plain``: forward, backward, global gradient clipping, AdamW (a site without DP);
- ``dp_hooks``: ``client.privacy.make_private`` (the default: Opacus per-sample gradients from
  module hooks, per-sample clipping, noise);
- ``dp_ghost``: Opacus ghost clipping (``grad_sample_mode="ghost"``, loss through its
  ``DPLossFastGradientClipping`` on per-window losses): per-sample gradient norms without
  per-sample gradients, at the price of a second backward pass.
Target: DP step <= 2x the plain step.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as bc  # noqa: E402

TARGET_RATIO = 2.0
DEFAULT_CASES = (("small", 16), ("tiny", 8))


class PerWindowLoss:
    """The criterion Opacus' ghost clipping wraps: the model already returns each window's loss."""

    reduction = "mean"

    def __call__(self, losses, target=None):
        return losses if self.reduction == "none" else (losses.mean() if self.reduction == "mean" else losses.sum())


def make_variant(kind: str, preset: str, batch_size: int, seed: int = 0):
    import numpy as np
    import torch

    from fedneurogen.client import privacy
    from fedneurogen.shared.model import Batch, NeuroGenModel
    from fedneurogen.shared.workflows.training import TRAIN_PRESETS, make_optimizer, set_learning_rate

    torch.manual_seed(seed)
    model = NeuroGenModel(preset, device="cpu")
    params = model.prepare_for_dp("fmri")
    config = TRAIN_PRESETS[preset]
    optimizer = make_optimizer(params, config)
    windows = bc.synthetic_windows(batch_size, "fmri", 64, seed)
    classes = {"a": 0, "b": 1}
    generator = torch.Generator().manual_seed(seed)
    index = np.arange(batch_size)
    n_windows = 10 * batch_size  # the sample rate only matters to the accountant
    net, criterion = model, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "dp_hooks":
            settings = privacy.DPSettings(target_epsilon=8.0, delta=1e-5, max_grad_norm=1.0, planned_rounds=1)
            ledger = privacy.PrivacyLedger(noise_multiplier=1.0)
            net, optimizer, _ = privacy.make_private(model, optimizer, ledger, settings, n_windows, batch_size)
        elif kind == "dp_ghost":
            from opacus import PrivacyEngine
            from torch.utils.data import DataLoader

            engine = PrivacyEngine(accountant="rdp")
            net, optimizer, criterion, _ = engine.make_private(
                module=model, optimizer=optimizer, data_loader=DataLoader(range(n_windows), batch_size=batch_size),
                noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=False, grad_sample_mode="ghost",
                criterion=PerWindowLoss(), loss_reduction="mean",
            )  # fmt: skip
    net.train()

    def step() -> None:
        batch = Batch.from_windows(windows, index, classes, "cpu")
        set_learning_rate(optimizer, config, 100)
        optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if criterion is not None:
                losses, _ = net(batch, generator=generator, per_sample=True)
                criterion(losses).backward()
            else:
                loss, _ = net(batch, generator=generator)
                loss.backward()
                if kind == "plain":
                    torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()

    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the result JSON here")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores)")
    parser.add_argument("--variants", default="plain,dp_hooks,dp_ghost")
    parser.add_argument("--quick", action="store_true", help="small preset only, 3 repeats")
    parser.add_argument("--preset", action="append", help="only these presets (at their default batch size)")
    args = parser.parse_args(argv)

    bc.set_threads(args.threads)
    kinds = args.variants.split(",")
    cases = DEFAULT_CASES if not args.quick else DEFAULT_CASES[:1]
    if args.preset:
        cases = [c for c in DEFAULT_CASES if c[0] in args.preset]
    repeats = 3 if args.quick else args.repeats
    rows, figures = [], []
    for preset, batch_size in cases:
        times = bc.interleaved(
            {k: make_variant(k, preset, batch_size) for k in kinds}, warmup=args.warmup, repeats=repeats
        )
        plain = statistics.median(times["plain"]) if "plain" in times else None
        for kind, ts in times.items():
            median = statistics.median(ts)
            rows.append({
                "preset": preset, "batch_size": batch_size, "variant": kind, "step_s": median, "min_s": min(ts),
                "ratio_to_plain": median / plain if plain else None, "times_s": ts,
            })  # fmt: skip
        if plain:
            for kind in kinds:
                if kind == "plain":
                    continue
                ratio = statistics.median(times[kind]) / plain
                default = " (default)" if kind == "dp_hooks" else ""
                figures.append(bc.figure(
                    f"DP step time / plain step ({preset} b{batch_size}, {kind}{default})", ratio, "x",
                    f"<= {TARGET_RATIO}" if kind == "dp_hooks" else None,
                ))  # fmt: skip
    detail = {
        "description": "training step on 64-channel EEG -> ico4 fMRI windows; same model (prepare_for_dp) with and without Opacus DP-SGD",
        "opacus": __import__("opacus").__version__,
        "cases": rows,
    }
    bc.write_result(args.out, "dp_overhead", figures, detail)
    bc.print_figures("DP overhead", figures, rows, ["preset", "batch_size", "variant", "step_s", "ratio_to_plain"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
