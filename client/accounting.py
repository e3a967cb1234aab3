"""The privacy accountants of a site's ledger: epsilon of a history of DP steps.

A history is a list of ``(noise multiplier, sample rate, steps)`` entries, as Opacus' accountants
keep it. ``_accounted`` composes one with the ledger's accountant (``ACCOUNTANTS``: Opacus'
``rdp``, ``prv``, ``gdp``; ``pld``, Google's ``dp-accounting``), ``engine_accountant`` names the
one a ``PrivacyEngine`` records a round with, and ``group_step`` / ``windows_per_subject`` turn a
window-level DP-SGD step into the subject-level one the ledger charges (group privacy, argued in
``fedneurogen.client.privacy``'s docstring, which holds the ledger built on these and re-exports
them).
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np

from fedneurogen.shared.errors import ConfigError

ACCOUNTANTS = ("rdp", "prv", "pld", "gdp")  # "gdp" is Opacus' CLT approximation: not an upper bound, never a default
NUMERICAL_EPSILON_CAP = 100.0  # above this RDP epsilon the numerical accountants give RDP's bound (see _accounted)


def _accounted(accountant_name: str, history: list[tuple[float, float, int]], delta: float) -> float:
    """The accountant's epsilon at ``delta`` of ``(noise multiplier, sample rate, steps)`` entries.

    ``"rdp"``, ``"prv"``, ``"gdp"``: Opacus' accountants. ``"pld"``: the privacy loss
    distribution of Google's ``dp-accounting`` (``_pld_epsilon``), composed numerically for both
    the add and the remove neighbour and rounded pessimistically, so an upper bound; ``"prv"``
    (Opacus, Gopi et al. 2021) composes the remove neighbour's privacy loss alone, which for the
    Poisson-subsampled Gaussian is the larger one in every case ``benchmarks/accountants.py``
    measures (its result, the upper end of its ``eps_error`` of 0.01, is then about 0.01 above ``"pld"``'s).

    Both numerical accountants are sound for the subject-level entries of ``group_step``: that
    entry's Gaussian pair dominates the group's step in every hockey-stick divergence
    (``fedneurogen.client.privacy``'s docstring: joint convexity of the hockey-stick divergence, an f-divergence), and
    pairs that dominate each step of an adaptive composition dominate the composition (Zhu, Dong
    & Wang, "Optimal Accounting of Differential Privacy via Characteristic Function", AISTATS
    2022, Thm. 10). ``"gdp"`` is neither: a central-limit approximation of the composition, and
    Opacus' ``GaussianAccountant`` reads only the last history entry.

    Where RDP's epsilon exceeds ``NUMERICAL_EPSILON_CAP`` the numerical accountants return it
    instead of composing: RDP's figure is an upper bound too, and there their grids outgrow
    memory (Opacus' PRV takes gigabytes from an RDP epsilon of about 2000, the probe of
    ``noise_for_budget`` at noise 1 for a subject of 54 windows is 1.6 x 10^5).
    """
    if not history:
        return 0.0
    entries = [(float(s), float(q), int(n)) for s, q, n in history]
    if accountant_name != "gdp":  # gdp reads the last entry only: left as Opacus has it
        # Composition does not depend on order: the same mechanism's steps are counted as one
        # entry, so a run checked round by round composes exactly what its calibration composed
        # (a numerical accountant's rounding differs, if only slightly, between 66 + 33 steps and 99).
        merged: dict[tuple[float, float], int] = {}
        for s, q, n in entries:
            merged[(s, q)] = merged.get((s, q), 0) + n
        entries = sorted((s, q, n) for (s, q), n in merged.items() if n > 0)
    return _accounted_cached(accountant_name, tuple(entries), float(delta)) if entries else 0.0


@functools.lru_cache(maxsize=512)  # a ledger's epsilon is asked for several times per message
def _accounted_cached(accountant_name: str, history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    if accountant_name not in ACCOUNTANTS:
        raise ConfigError(
            f"privacy ledger: accountant {accountant_name!r} is unknown; choose one of: {', '.join(ACCOUNTANTS)}"
        )
    if accountant_name in ("prv", "pld"):
        bound = _opacus_epsilon("rdp", history, delta)
        if bound > NUMERICAL_EPSILON_CAP:
            return bound
        if accountant_name == "pld":
            # grid step relative to the epsilon: its pessimistic rounding adds < 1e-4 x epsilon
            # (benchmarks/accountants.py's cases), 3-10x faster than a step of 1e-4
            return _pld_epsilon(history, delta, interval=5e-4 * max(1.0, bound))
    return _opacus_epsilon(accountant_name, history, delta)


def _opacus_epsilon(accountant_name: str, history, delta: float) -> float:
    from opacus.accountants import create_accountant

    accountant = create_accountant(accountant_name)
    accountant.history = list(history)
    # "optimal order is the largest alpha"; PRV's log(1 - q) at sample rate 1 (masked by np.where)
    with warnings.catch_warnings(), np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", UserWarning)
        return float(accountant.get_epsilon(delta=delta))


def _pld_epsilon(history, delta: float, interval: float = 1e-4) -> float:
    """dp-accounting's PLD epsilon of the history: each entry a Poisson-subsampled Gaussian
    (a plain Gaussian at sample rate 1) self-composed ``steps`` times, add-or-remove neighbours."""
    from dp_accounting import dp_event
    from dp_accounting.pld import pld_privacy_accountant

    events = []
    for noise_multiplier, sample_rate, steps in history:
        event = dp_event.GaussianDpEvent(noise_multiplier)
        if sample_rate < 1:
            event = dp_event.PoissonSampledDpEvent(sample_rate, event)
        events.append(dp_event.SelfComposedDpEvent(event, int(steps)))
    accountant = pld_privacy_accountant.PLDAccountant(value_discretization_interval=interval)
    accountant.compose(dp_event.ComposedDpEvent(events))
    return float(accountant.get_epsilon(delta))


def engine_accountant(accountant_name: str) -> str:
    """The Opacus accountant a ``PrivacyEngine`` records a round's steps with: the ledger's own,
    or Opacus' RDP one for ``"pld"`` (Opacus has none; its history is the same list of
    ``(noise multiplier, sample rate, steps)``, and the ledger computes every epsilon itself).

    Parameters
    ----------
    accountant_name : str
        The ledger's accountant.

    Returns
    -------
    str
        A name Opacus' ``create_accountant`` knows.
    """
    return "rdp" if accountant_name == "pld" else accountant_name


def group_step(noise_multiplier: float, sample_rate: float, steps: int, group: int) -> tuple[float, float, int]:
    """A DP-SGD history entry as seen by a group of ``group`` windows (one subject's): the sampled
    Gaussian mechanism of sample rate ``1 - (1 - q)^group`` and noise multiplier ``sigma / group``,
    which dominates the group's step (``fedneurogen.client.privacy``'s docstring gives the argument).

    Parameters
    ----------
    noise_multiplier : float
        The step's noise multiplier (noise std over the per-window clip).
    sample_rate : float
        The probability ``q`` that a window joins a step (Poisson sampling).
    steps : int
        How many such steps.
    group : int
        Windows of one subject (1: the entry unchanged).

    Returns
    -------
    tuple of (float, float, int)
        The subject-level entry, for the same accountant.
    """
    if group <= 1:
        return float(noise_multiplier), float(sample_rate), int(steps)
    rate = -math.expm1(group * math.log1p(-sample_rate)) if sample_rate < 1 else 1.0
    return float(noise_multiplier) / group, rate, int(steps)


def windows_per_subject(subjects: np.ndarray) -> int:
    """The most windows any one subject has (the group size of subject-level accounting).

    Parameters
    ----------
    subjects : np.ndarray
        The subject id of every training window (``PairedWindows.subjects``).

    Returns
    -------
    int
        The largest count, 1 for no windows.
    """
    if len(subjects) == 0:
        return 1
    return int(np.unique(np.asarray(subjects), return_counts=True)[1].max())
