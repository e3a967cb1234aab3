"""Differential privacy on the site: Opacus DP-SGD with a privacy ledger that outlives the round.

The ledger is the accountant's history, ``(noise multiplier, sample rate, steps)`` per change
of either, plus the noise multiplier chosen at the first round. A fresh ``PrivacyEngine`` is made
every round (the model arrives anew each round) but its accountant starts from the ledger, so
the epsilon a site reports is cumulative over the whole training run. The ledger lives in the
ClientApp's ``context.state`` between rounds and in a JSON file under the site's state folder,
so a restarted site daemon or a resumed run continues it instead of starting from zero.

The noise multiplier is set once, for the planned ``rounds x local steps``, so that the run
ends at ``target_epsilon``; a round that would go past it is not trained (budget exhausted).

Batches are the training loop's shuffled fixed-size batches, accounted like Opacus' own
``poisson_sampling=False`` mode (sample rate = 1 / batches per epoch).
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from fedneurogen.shared.io import write_json_atomic

if TYPE_CHECKING:
    from opacus import PrivacyEngine

# Opacus is imported where it is used: a site without DP (and every ClientApp process the
# SuperNode starts per message) does not pay for its import.

LEDGER_FORMAT = "fedneurogen.privacy-ledger"


@dataclass(frozen=True)
class DPSettings:
    target_epsilon: float
    delta: float
    max_grad_norm: float
    planned_rounds: int
    accountant: str = "rdp"  # or "prv"


@dataclass
class PrivacyLedger:
    accountant: str = "rdp"
    noise_multiplier: float | None = None  # fixed at the first private round
    history: list[tuple[float, float, int]] = field(default_factory=list)

    def epsilon(self, delta: float, extra: tuple[float, float, int] | None = None) -> float:
        """Cumulative epsilon of the history (plus ``extra`` steps, to look ahead)."""
        history = self.history + ([extra] if extra else [])
        if not history:
            return 0.0
        from opacus.accountants import create_accountant

        accountant = create_accountant(self.accountant)
        accountant.history = list(history)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "optimal order is the largest alpha"
            return float(accountant.get_epsilon(delta=delta))

    @property
    def steps(self) -> int:
        return sum(int(s) for _, _, s in self.history)

    def to_json(self) -> dict:
        return {"format": LEDGER_FORMAT, "accountant": self.accountant, "noise_multiplier": self.noise_multiplier, "history": [list(h) for h in self.history]}

    @classmethod
    def from_json(cls, data: dict) -> "PrivacyLedger":
        if data.get("format") != LEDGER_FORMAT:
            raise ValueError(f"not a privacy ledger (format {data.get('format')!r})")
        history = [(float(nm), float(q), int(s)) for nm, q, s in data["history"]]
        return cls(data["accountant"], data["noise_multiplier"], history)


def ledger_path(state_dir: Path, run_key: str) -> Path:
    """One ledger per site and training run (``run_key``: the run's checkpoint folder, so a
    resumed run finds its ledger and a new run starts its own)."""
    return Path(state_dir) / f"privacy-{hashlib.sha256(run_key.encode()).hexdigest()[:16]}.json"


def load_ledger(path: Path, accountant: str) -> PrivacyLedger:
    if path.is_file():
        return PrivacyLedger.from_json(json.loads(path.read_text(encoding="utf-8")))
    return PrivacyLedger(accountant=accountant)


def save_ledger(path: Path, ledger: PrivacyLedger) -> None:
    write_json_atomic(path, ledger.to_json())


def steps_per_epoch(n_windows: int, batch_size: int) -> int:
    """Optimizer steps in one epoch of ``train_epochs`` (a last batch of one window is dropped)."""
    return n_windows // batch_size + (1 if n_windows % batch_size >= 2 else 0)


def plan_round(ledger: PrivacyLedger, settings: DPSettings, n_windows: int, batch_size: int, epochs: int) -> tuple[float, float, int]:
    """``(noise multiplier, sample rate, steps)`` of this round; sets the ledger's noise
    multiplier at its first round, for the planned number of rounds."""
    batches = math.ceil(n_windows / batch_size)
    sample_rate = 1.0 / batches
    steps = steps_per_epoch(n_windows, batch_size) * epochs
    if ledger.noise_multiplier is None:
        from opacus.accountants.utils import get_noise_multiplier

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "optimal order is the largest alpha"
            ledger.noise_multiplier = float(get_noise_multiplier(
                target_epsilon=settings.target_epsilon, target_delta=settings.delta,
                sample_rate=sample_rate, steps=steps * settings.planned_rounds, accountant=ledger.accountant,
            ))
    return ledger.noise_multiplier, sample_rate, steps


def budget_allows(ledger: PrivacyLedger, settings: DPSettings, planned: tuple[float, float, int]) -> bool:
    """Whether training this round keeps the cumulative epsilon within the target."""
    return ledger.epsilon(settings.delta, planned) <= settings.target_epsilon * (1 + 1e-9)


def make_private(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, ledger: PrivacyLedger, settings: DPSettings,
    n_windows: int, batch_size: int,
) -> tuple[torch.nn.Module, torch.optim.Optimizer, "PrivacyEngine"]:
    """Wrap ``model`` (already ``prepare_for_dp``-ed) and ``optimizer`` for DP-SGD, the engine's
    accountant continuing the ledger. After training, ``ledger.history = engine.accountant.history``."""
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader

    # The loader only tells Opacus the sample rate (1 / batches); training batches come from
    # train_epochs' own shuffled plan of the same size.
    loader = DataLoader(range(n_windows), batch_size=batch_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # secure RNG / non-Poisson sampling notices
        engine = PrivacyEngine(accountant=ledger.accountant)
        engine.accountant.history = list(ledger.history)
        dp_model, dp_optimizer, _ = engine.make_private(
            module=model, optimizer=optimizer, data_loader=loader,
            noise_multiplier=ledger.noise_multiplier, max_grad_norm=settings.max_grad_norm,
            poisson_sampling=False,
            # Per-sample gradients from module hooks: about 1.5x a non-private step (see
            # benchmarks/dp_overhead.py). Ghost clipping ("ghost") measured about 7x: its norms
            # cost T^2 per layer and the EEG encoder has T = channels x patches ~ 1000 tokens per
            # window, and it needs a second backward pass.
            grad_sample_mode="hooks",
        )
    return dp_model, dp_optimizer, engine
