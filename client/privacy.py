"""Differential privacy on the site: Opacus DP-SGD with a privacy ledger that outlives the round.

The ledger is the accountant's history, ``(noise multiplier, sample rate, steps)`` per change
of either, plus the noise multiplier chosen at the first round. A fresh ``PrivacyEngine`` is made
every round (the model arrives anew each round) but its accountant starts from the ledger, so
the epsilon a site reports is cumulative over the whole training run. The ledger lives in a JSON
file under the site's state folder, read by every message (never from memory a message could
share with another), so a restarted site daemon or a resumed run continues it instead of
starting from zero.

The noise multiplier is set once, for the planned ``rounds x local steps``, so that the run
ends at ``target_epsilon``; a round that would go past it is not trained (budget exhausted).

Batches are drawn by Poisson sampling (``shared.workflows.training.poisson_batches``: each window joins
each step independently with probability q = 1 / steps per epoch), the sampling the RDP/PRV
accountants analyse; an empty batch is still a step, of noise only. Opacus' warnings are left
on: without ``dp-secure-mode`` (a site's node config; needs the ``torchcsprng`` package) the
noise comes from PyTorch's default generator, which Opacus says is not cryptographically secure.

Nothing random in a DP release comes from the coordinator: on a deployed site the Poisson
batches and the DP-SGD noise draw from the operating system's entropy (``noise_generator``, or
Opacus' ``secure_mode``), and the ``max-windows`` subset from a key only the site holds
(``keyed_seed``); none of them from the run config's ``seed`` or a message's ``server-round``.
Only a simulated node takes a ``site-seed`` from its (simulated) node config, for reproducible
simulations.

The ledger reserves before it spends (``reserve``): under a lock on ``privacy.lock`` beside the
ledgers, every DP message of a run checks the sum over every run on the site's data of
``max(spent, reserved)`` plus this run's target against the site's ``dp-lifetime-epsilon``, all at
one delta (the policy's ``dp-max-delta``, default ``LIFETIME_DELTA``), and writes this run's
reservation of its whole target before its first release. By basic composition the k runs on a
dataset are then together (sum of epsilons, k x delta)-DP. A run is finished, and its unused
reservation released (``release``), when its last planned round (``num-server-rounds``) is
trained or when the site's operator releases it; a message of a released run reserves again,
checked again, so releasing early can never let runs pass the cap. A second message of the
same run while one is using its ledger is refused (``run_lock``): two processes must not spend
from one ledger each believing it is alone.

Before round 1 a site may also release the sufficient statistics of the ridge path
(``release_statistics``) by the Gaussian mechanism, with one *subject* as the privacy unit: a
share (``statistics_share``) of the budget, entered in the same ledger as one step of sample rate
1, so the epsilon a site reports covers both.

Every epsilon is per *subject*. DP-SGD here is window-level (each window is clipped and Poisson
sampled on its own), and a subject contributes ``k`` windows: every window of its recordings,
which overlap by half and whose design rows carry 30 s of earlier EEG, so one stretch of
recording is in several windows. The ledger states the epsilon of the whole subject by group
privacy over ``k``, the most training windows any one subject has at the site
(``windows_per_subject``, kept as ``group_size``, never lowered within a run):

- one DP-SGD step on a neighbouring dataset that lacks (or adds) a subject's ``k`` windows moves
  the clipped sum by ``S``, the sum of the sampled ones among them: ``||S|| <= j C`` with
  ``j ~ Binomial(k, q)``. The step's output is therefore a mixture over ``j`` of Gaussians shifted
  by at most ``k C``, each present with probability ``p = 1 - (1 - q)^k`` at most. By the joint
  quasi-convexity of the Renyi divergence (van Erven & Harremoes, "Renyi divergence and
  Kullback-Leibler divergence", IEEE Trans. Inf. Theory 60(7), 2014, Thm. 13; the hockey-stick
  divergence the PRV accountant uses is jointly convex) and the monotonicity of the Gaussian's
  divergence in the shift, it is dominated by the sampled Gaussian mechanism of sample rate
  ``p`` and noise multiplier ``sigma / k`` (Mironov, Talwar & Zhang, "Renyi Differential Privacy
  of the Sampled Gaussian Mechanism", 2019), which Opacus' accountants compute exactly
  (``group_step``). Adaptive composition over the steps holds as for single windows.
- the statistics release is per subject already (each subject's sums clipped together): its
  step enters as it is (``subject_history``).

So ``epsilon``, the noise calibration (``noise_for_budget``), ``budget_allows``, the lifetime
``reserve`` and the numbers a site reports and prints are all subject-level, and a run's
``dp-target-epsilon`` (and a policy's ``dp-max-epsilon``) is a subject-level epsilon. The price is
noise: on the default simulated consortium (k about 54) the noise multiplier for a subject-level
epsilon of 8 is about 450 times the one for a window-level 8, and that window-level run was a
subject-level epsilon of about 4 x 10^5 by this bound (``benchmarks/subject_epsilon.py``). The
bound is loose (it charges every step as if all k windows were sampled and aligned); a tighter,
still sound accounting of the group's Binomial mixture of Gaussians, or user-level DP-SGD
(sample and clip subjects), would need less. ``window_epsilon`` gives the old, window-level
figure for comparison only. A ledger written before subject-level accounting kept its statistics
step in ``history``: it is then charged as a group step too (more than it cost: still sound).

The accountants the ledger composes its history with (``ACCOUNTANTS``, ``group_step``,
``windows_per_subject``, ``engine_accountant``) are in ``fedneurogen.client.accounting``;
they are importable from here too.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import math
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from fedneurogen.client.accounting import (
    ACCOUNTANTS,
    NUMERICAL_EPSILON_CAP,
    _accounted,
    engine_accountant,
    group_step,
    windows_per_subject,
)
from fedneurogen.client.refusal import SiteRefusal
from fedneurogen.shared.errors import ConfigError
from fedneurogen.shared.io import write_json_atomic
from fedneurogen.shared.ridge import RidgeStatistics, sum_statistics
from fedneurogen.shared.run_config import RunConfig

if TYPE_CHECKING:
    from opacus import PrivacyEngine

# Opacus is imported where it is used: a site without DP (and every ClientApp process the
# SuperNode starts per message) does not pay for its import.

# the accountants live in ``accounting``; they are importable from here too
__all__ = [
    "ACCOUNTANTS", "LEDGER_FORMAT", "LIFETIME_DELTA", "LOCK_FILE", "NUMERICAL_EPSILON_CAP", "SECRET_FILE",
    "DPSettings", "PrivacyLedger", "add_gaussian_noise", "budget_allows", "clip_subject", "dp_settings",
    "dp_steps_per_epoch", "engine_accountant", "group_step", "keyed_seed", "ledger_path", "load_ledger",
    "make_private", "noise_for_budget", "plan_round", "release", "release_statistics", "reserve", "run_lock",
    "save_ledger", "site_key", "site_secret", "statistics_noise_multiplier", "steps_per_epoch",
    "windows_per_subject",
]  # fmt: skip

LEDGER_FORMAT = "fedneurogen.privacy-ledger"
LOCK_FILE = "privacy.lock"  # the site's lock over all its ledgers (reservations)
SECRET_FILE = "site-secret"  # 32 random bytes, never sent: the key of the site's own seeds
LIFETIME_DELTA = 1e-5  # the delta of the lifetime ledger when the policy names no dp-max-delta
_RUN_DEFAULTS = RunConfig()  # the defaults below are the run config's (kept in one place)


@dataclass(frozen=True)
class DPSettings:
    """A run's DP settings at a site; ``dp_settings`` builds them from the run config."""

    target_epsilon: float
    delta: float
    max_grad_norm: float
    planned_rounds: int
    accountant: str = _RUN_DEFAULTS.dp_accountant  # "rdp", "prv" or "pld" (_accounted)
    statistics_share: float = (
        _RUN_DEFAULTS.dp_statistics_share
    )  # of target_epsilon, spent on the ridge statistics (0: not released)
    statistics_clip: float = _RUN_DEFAULTS.dp_statistics_clip  # bound on a subject's per-frame-averaged statistics (L2)
    secure_mode: bool = False  # Opacus' cryptographically secure noise (needs torchcsprng; a site's node config)
    noise_seed: int | None = None  # None: OS entropy; a simulated node's site-seed only, never the run's seed


def dp_settings(run: RunConfig, secure_mode: bool = False, noise_seed: int | None = None) -> DPSettings:
    """The run's DP settings (whether DP is on is ``run.dp_enabled``): the budget is spread over
    ``dp-rounds``, or ``num-server-rounds`` when that is 0. ``secure_mode`` is the site's own
    ``dp-secure-mode`` (node config), never the run's; ``noise_seed`` seeds the DP noise of a
    simulated node (None, a deployed site: OS entropy)."""
    return DPSettings(
        target_epsilon=run.dp_target_epsilon, delta=run.dp_delta, max_grad_norm=run.dp_max_grad_norm,
        planned_rounds=run.dp_rounds or run.num_server_rounds, accountant=run.dp_accountant,
        statistics_share=run.dp_statistics_share, statistics_clip=run.dp_statistics_clip, secure_mode=secure_mode,
        noise_seed=noise_seed,
    )  # fmt: skip


@dataclass
class PrivacyLedger:
    accountant: str = "rdp"
    noise_multiplier: float | None = None  # fixed at the first private round
    history: list[tuple[float, float, int]] = field(default_factory=list)
    statistics: dict | None = None  # the ridge statistics' release (noise multiplier, clip), once per run
    reserved: float = 0.0  # the epsilon this run may still reach (its target), held against the lifetime cap
    group_size: int = 1  # the most training windows one subject has at the site (group privacy over them)
    subject_history: list[tuple[float, float, int]] = field(default_factory=list)  # steps per subject already

    def epsilon(
        self, delta: float, extra: tuple[float, float, int] | None = None, subject_level: bool = False
    ) -> float:
        """Cumulative epsilon per subject (plus ``extra`` steps, to look ahead: DP-SGD steps, or
        with ``subject_level`` a release whose unit is the subject already)."""
        window_steps = self.history + ([extra] if extra and not subject_level else [])
        subject_steps = self.subject_history + ([extra] if extra and subject_level else [])
        return _accounted(
            self.accountant, [group_step(*h, self.group_size) for h in window_steps] + subject_steps, delta
        )

    def window_epsilon(self, delta: float) -> float:
        """The epsilon of one *window* (no group privacy): the figure a site used to report, for
        comparison only; never compared with a policy."""
        return _accounted(self.accountant, self.history + self.subject_history, delta)

    @property
    def steps(self) -> int:
        return sum(int(s) for _, _, s in self.history)

    def to_json(self) -> dict:
        return {
            "format": LEDGER_FORMAT, "accountant": self.accountant, "noise_multiplier": self.noise_multiplier,
            "history": [list(h) for h in self.history], "statistics": self.statistics, "reserved": self.reserved,
            "group_size": self.group_size, "subject_history": [list(h) for h in self.subject_history],
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: dict) -> "PrivacyLedger":
        if data.get("format") != LEDGER_FORMAT:
            raise ValueError(f"not a privacy ledger (format {data.get('format')!r})")
        history = [(float(nm), float(q), int(s)) for nm, q, s in data["history"]]
        subject_history = [(float(nm), float(q), int(s)) for nm, q, s in data.get("subject_history", [])]
        return cls(
            data["accountant"],
            data["noise_multiplier"],
            history,
            data.get("statistics"),
            float(data.get("reserved", 0.0)),
            int(data.get("group_size", 1)),
            subject_history,
        )

    def committed(self, delta: float) -> float:
        """What this run counts against a lifetime cap: ``max(spent, reserved)`` at ``delta``."""
        return max(self.epsilon(delta), self.reserved)


def ledger_path(state_dir: Path, run_key: str) -> Path:
    """One ledger per site and training run (``run_key``: the run's checkpoint folder, so a
    resumed run finds its ledger and a new run starts its own)."""
    # "runs/x", "runs/x/" and "runs/./x" are one run: they must not start separate budgets
    key = os.path.normpath(run_key.strip())
    return Path(state_dir) / f"privacy-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


@contextmanager
def _flock(path: Path, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path`` (created if absent); yields False when
    ``blocking`` is off and another process or thread holds it. The kernel releases it when its
    holder dies, so a killed site never leaves its ledgers locked."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:  # each open is its own lock owner, even within one process
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def run_lock(ledger_file: Path) -> Iterator[None]:
    """One message of a run at a time uses its ledger (from loading it to saving what it spent);
    a second, concurrent one is refused rather than spend from a copy of the same ledger."""
    with _flock(Path(ledger_file).with_suffix(".lock"), blocking=False) as held:
        if not held:
            raise SiteRefusal("privacy budget: another message of this run is using its ledger at this site")
        yield


def reserve(state_dir: Path, ledger_file: Path, settings: DPSettings, delta: float, cap: float | None) -> PrivacyLedger:
    """Reserve this run's whole target epsilon in its ledger before it releases anything.

    Under the site's lock, the sum over the other runs' ledgers of ``max(spent, reserved)`` plus
    this run's ``max(spent, reserved, target)``, all at ``delta`` (the site's), must stay within
    ``cap``; the ledger is then written (atomically) with its reservation. Called by every DP
    message of a run, a resumed one included, so no message spends unchecked.

    Parameters
    ----------
    state_dir : Path
        The site's state folder (every ledger on this dataset).
    ledger_file : Path
        This run's ledger (``ledger_path``).
    settings : DPSettings
        The run's DP settings (its target and accountant).
    delta : float
        The one delta every run's epsilon is stated at (the policy's ``dp-max-delta``).
    cap : float or None
        The site's ``dp-lifetime-epsilon``; None: no cap (the reservation is still written).

    Returns
    -------
    PrivacyLedger
        This run's ledger as on disk, with its reservation.

    Raises
    ------
    SiteRefusal
        When the reservation would take the dataset past ``cap``.
    """
    state_dir = Path(state_dir)
    with _flock(state_dir / LOCK_FILE):
        ledger = load_ledger(ledger_file, settings.accountant)
        need = max(ledger.committed(delta), settings.target_epsilon)
        if cap is not None:
            others = sum(
                load_ledger(path, settings.accountant).committed(delta)
                for path in sorted(state_dir.glob("privacy-*.json"))
                if path != Path(ledger_file)
            )
            if others + need > cap * (1 + 1e-9):
                raise SiteRefusal(
                    f"privacy budget: other runs on this site's data have spent or reserved epsilon {others:.2f} "
                    f"(delta {delta:g}); with this run's {need:g} it would exceed the site's lifetime limit {cap:g}"
                )
        ledger.reserved = max(ledger.reserved, settings.target_epsilon)
        save_ledger(ledger_file, ledger)
    return ledger


def release(state_dir: Path, ledger_file: Path) -> PrivacyLedger | None:
    """Release a finished run's unused reservation: it counts what it spent only (``committed``).

    Parameters
    ----------
    state_dir : Path
        The site's state folder.
    ledger_file : Path
        The run's ledger.

    Returns
    -------
    PrivacyLedger or None
        The ledger as written, or None when the run has none.
    """
    with _flock(Path(state_dir) / LOCK_FILE):
        if not Path(ledger_file).is_file():
            return None
        ledger = load_ledger(ledger_file, "rdp")
        ledger.reserved = 0.0
        save_ledger(ledger_file, ledger)
    return ledger


def site_secret(state_dir: Path) -> bytes:
    """The site's secret key (``SECRET_FILE`` in its state folder, made once, mode 0600).

    Parameters
    ----------
    state_dir : Path
        The site's state folder.

    Returns
    -------
    bytes
        32 bytes from the operating system's entropy, the same on every later call.
    """
    path = Path(state_dir) / SECRET_FILE
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(secrets.token_bytes(32))
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(tmp, path)  # atomic, and never replaces a key another process made first
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_bytes()


def keyed_seed(state_dir: Path, purpose: str, run_key: str) -> int:
    """A seed for ``purpose`` in one run that only this site can compute (HMAC of its secret):
    stable across the run's messages, unknown to the coordinator whatever it sends.

    Parameters
    ----------
    state_dir : Path
        The site's state folder (where its secret is).
    purpose : str
        What the seed draws, e.g. ``"max-windows"``.
    run_key : str
        The run's ``run-dir`` (normalised as ``ledger_path`` does).

    Returns
    -------
    int
        A 128-bit seed.
    """
    message = f"{purpose}\0{os.path.normpath(run_key.strip())}".encode()
    return int.from_bytes(hmac.new(site_secret(state_dir), message, "sha256").digest()[:16], "big")


def site_key(state_dir: Path, purpose: str) -> bytes:
    """A key for ``purpose`` that holds for every run on this site's data (HMAC of its secret),
    e.g. the key of its subject split: the same whatever a coordinator sends.

    Parameters
    ----------
    state_dir : Path
        The site's state folder (where its secret is).
    purpose : str
        What the key is for, e.g. ``"split"``.

    Returns
    -------
    bytes
        32 bytes.
    """
    return hmac.new(site_secret(state_dir), f"site-key\0{purpose}".encode(), "sha256").digest()


def load_ledger(path: Path, accountant: str) -> PrivacyLedger:
    if path.is_file():
        return PrivacyLedger.from_json(json.loads(path.read_text(encoding="utf-8")))
    return PrivacyLedger(accountant=accountant)


def save_ledger(path: Path, ledger: PrivacyLedger) -> None:
    write_json_atomic(path, ledger.to_json())


def steps_per_epoch(n_windows: int, batch_size: int) -> int:
    """Optimizer steps in one epoch of ``train_epochs`` (a last batch of one window is dropped)."""
    return n_windows // batch_size + (1 if n_windows % batch_size >= 2 else 0)


def dp_steps_per_epoch(n_windows: int, batch_size: int) -> int:
    """DP-SGD steps in one epoch of Poisson sampling (``shared.workflows.training.poisson_batches``)."""
    return math.ceil(n_windows / batch_size)


def plan_round(
    ledger: PrivacyLedger, settings: DPSettings, n_windows: int, batch_size: int, epochs: int
) -> tuple[float, float, int]:
    """``(noise multiplier, sample rate, steps)`` of this round; sets the ledger's noise
    multiplier at its first round, for the planned number of rounds."""
    batches = dp_steps_per_epoch(n_windows, batch_size)
    sample_rate = 1.0 / batches
    steps = batches * epochs
    if ledger.noise_multiplier is None:  # what is left after anything already spent (the statistics)
        ledger.noise_multiplier = noise_for_budget(
            ledger, settings.target_epsilon, settings.delta, sample_rate, steps * settings.planned_rounds
        )
    return ledger.noise_multiplier, sample_rate, steps


def noise_for_budget(
    ledger: PrivacyLedger, epsilon: float, delta: float, sample_rate: float, steps: int, subject_level: bool = False
) -> float:
    """The smallest noise multiplier (within 1 %) with which ``steps`` more steps of
    ``sample_rate`` keep the ledger's cumulative epsilon per subject within ``epsilon`` (bisection
    on the accountant, as Opacus' ``get_noise_multiplier`` does, but after the ledger's history).
    DP-SGD steps are per window (group privacy over ``ledger.group_size``); ``subject_level``:
    steps whose unit is the subject already (the statistics release)."""
    if ledger.epsilon(delta) >= epsilon:
        raise ValueError(f"the ledger has spent epsilon {ledger.epsilon(delta):.3g} of {epsilon:.3g} already")

    def spent(noise: float) -> float:
        return ledger.epsilon(delta, (noise, sample_rate, steps), subject_level=subject_level)

    low, high = 0.0, 1.0
    while spent(high) > epsilon:
        low, high = high, 2 * high
        if high > 1e6:
            raise ValueError(f"no noise multiplier reaches epsilon {epsilon:.3g}")
    while high - low > 0.005 * high:
        middle = (low + high) / 2
        if spent(middle) > epsilon:
            low = middle
        else:
            high = middle
    return high


def budget_allows(ledger: PrivacyLedger, settings: DPSettings, planned: tuple[float, float, int]) -> bool:
    """Whether training this round keeps the cumulative epsilon within the target."""
    return ledger.epsilon(settings.delta, planned) <= settings.target_epsilon * (1 + 1e-9)


def release_statistics(
    ledger: PrivacyLedger,
    settings: DPSettings,
    train: list[RidgeStatistics],
    val: list[RidgeStatistics] | None,
    weights: dict[str, float] | None = None,
) -> dict[str, np.ndarray]:
    """The Gaussian mechanism on the ridge path's statistics, one subject per privacy unit.

    Each subject's statistics are divided by its frame count and scaled down to L2 norm at most
    ``statistics_clip`` (with its count scaled alike, so the sum stays the statistics of a
    regression that weights every subject equally, or less when clipped); the count enters the
    released vector multiplied by the clip, so a subject changes the vector by at most
    ``sqrt(2) * clip``. Gaussian noise of that times the noise multiplier is added to every
    entry (``sxx``'s upper triangle, mirrored). Training and held-out subjects are disjoint, so
    both sums are released for one step of the ledger. The noise comes from the operating
    system's entropy (it must not be reproducible from anything the server knows); only a
    simulated node's ``settings.noise_seed`` makes it repeatable.

    ``weights`` (``private_path.BLOCK_WEIGHTS``) scale each block before the clip and divide its
    noise after: a block that changes nothing the server chooses spends little of the clip."""
    if ledger.statistics is not None:
        raise ValueError("this run's ridge statistics were released already")
    sigma = statistics_noise_multiplier(ledger, settings)
    rng = np.random.default_rng(secrets.randbits(128) if settings.noise_seed is None else settings.noise_seed)
    out = {}
    for prefix, subjects in (("train", train), ("val", val)):
        if not subjects:
            continue
        noisy = add_gaussian_noise(
            sum_statistics([clip_subject(s, settings.statistics_clip, weights) for s in subjects]),
            sigma,
            settings.statistics_clip,
            rng,
            weights,
        )
        out |= {f"{prefix}.{k}": np.atleast_1d(v) for k, v in noisy.as_arrays().items()}
    ledger.subject_history.append((sigma, 1.0, 1))  # a subject is this release's unit: no group step
    ledger.statistics = {
        "noise_multiplier": sigma,
        "clip": settings.statistics_clip,
        "epsilon": ledger.epsilon(settings.delta),
        "subjects": len(train) + len(val or []),
    }
    return out


def clip_subject(stats: RidgeStatistics, clip: float, weights: dict[str, float] | None = None) -> RidgeStatistics:
    """One subject's statistics per frame, scaled to L2 norm (all but the count, each block times
    its weight, default 1) at most ``clip``; the count becomes the subject's weight (1, or less
    when clipped)."""
    weights = weights or {}
    mean = RidgeStatistics(**{k: v / stats.n for k, v in stats.as_arrays().items()})
    norm = math.sqrt(
        sum(float(np.sum((weights.get(k, 1.0) * v) ** 2)) for k, v in mean.as_arrays().items() if k != "n")
    )
    factor = min(1.0, clip / max(norm, 1e-12))
    return RidgeStatistics(**{k: v * factor for k, v in mean.as_arrays().items()} | {"n": factor})


def statistics_noise_multiplier(ledger: PrivacyLedger, settings: DPSettings) -> float:
    """The Gaussian mechanism's noise multiplier that spends ``statistics_share`` of the budget."""
    return noise_for_budget(
        ledger, settings.statistics_share * settings.target_epsilon, settings.delta, 1.0, 1, subject_level=True
    )


def add_gaussian_noise(
    stats: RidgeStatistics,
    noise_multiplier: float,
    clip: float,
    rng: np.random.Generator,
    weights: dict[str, float] | None = None,
) -> RidgeStatistics:
    """Summed clipped statistics plus the Gaussian mechanism's noise (sensitivity sqrt(2) x clip
    on the weighted vector, so a block of weight ``w`` gets noise of std ``sigma sqrt(2) clip / w``)."""
    weights = weights or {}
    std = noise_multiplier * math.sqrt(2.0) * clip
    arrays = stats.as_arrays()
    noisy = {
        k: v + rng.normal(0.0, std / weights.get(k, 1.0), size=v.shape)
        for k, v in arrays.items()
        if k not in ("n", "sxx")
    }
    upper = np.triu(rng.normal(0.0, std / weights.get("sxx", 1.0), size=arrays["sxx"].shape))
    noisy["sxx"] = arrays["sxx"] + upper + np.triu(upper, 1).T
    noisy["n"] = (clip * float(arrays["n"]) + rng.normal(0.0, std)) / clip  # released as clip x count
    return RidgeStatistics(**noisy)


def make_private(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    ledger: PrivacyLedger,
    settings: DPSettings,
    n_windows: int,
    batch_size: int,
) -> tuple[torch.nn.Module, torch.optim.Optimizer, "PrivacyEngine"]:
    """Wrap ``model`` (already ``prepare_for_dp``-ed) and ``optimizer`` for DP-SGD, the engine's
    accountant continuing the ledger. After training, ``ledger.history = engine.accountant.history``."""
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    # The loader only tells Opacus the sample rate (1 / batches) and the expected batch size it
    # divides the noisy sum by; the batches themselves come from train_epochs' Poisson sampling
    # with the same rate.
    loader = DataLoader(TensorDataset(torch.zeros(n_windows, 1)), batch_size=batch_size)  # Opacus inspects item shapes
    if settings.secure_mode:
        try:
            import torchcsprng  # noqa: F401
        except ImportError:
            raise ConfigError(
                "dp-secure-mode needs the torchcsprng package (Opacus' secure noise generator); install it or unset dp-secure-mode"
            ) from None
    engine = PrivacyEngine(accountant=engine_accountant(ledger.accountant), secure_mode=settings.secure_mode)
    # Not secure mode: the noise still comes from a generator of its own seeded from OS entropy,
    # not from torch's process-wide default one (which anything sharing the process can reset
    # with torch.manual_seed, e.g. to a run-config seed), nor from the run config; a simulated
    # node's site-seed alone makes it repeatable.
    noise = torch.Generator(device=next(model.parameters()).device)
    noise.manual_seed(secrets.randbits(63) if settings.noise_seed is None else settings.noise_seed)
    engine.accountant.history = list(ledger.history)
    dp_model, dp_optimizer, _ = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=ledger.noise_multiplier,
        max_grad_norm=settings.max_grad_norm,
        poisson_sampling=True,
        noise_generator=None if settings.secure_mode else noise,  # secure mode: Opacus' CSPRNG
        # Per-sample gradients from module hooks: about 1.5x a non-private step (see
        # benchmarks/dp_overhead.py). Ghost clipping ("ghost") measured about 7x: its norms
        # cost T^2 per layer and the EEG encoder has T = channels x patches ~ 1000 tokens per
        # window, and it needs a second backward pass.
        grad_sample_mode="hooks",
    )
    return dp_model, dp_optimizer, engine
