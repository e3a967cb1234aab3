"""The PLD accountant (dp-accounting) beside Opacus' RDP: exact where the exact epsilon is known,
never looser than RDP, and the same through everything a site does with a ledger."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.optimize import brentq
from scipy.stats import norm

from fedneurogen.client import privacy
from fedneurogen.shared.errors import ConfigError
from fedneurogen.shared.run_config import RunConfig, validate_run_config

DELTA = 1e-5


def analytic_gaussian_epsilon(sigma: float, delta: float) -> float:
    """Balle & Wang (2018), Thm. 8: the Gaussian mechanism of noise ``sigma`` (sensitivity 1) is
    (eps, delta)-DP exactly when Phi(-eps sigma + 1/(2 sigma)) - e^eps Phi(-eps sigma - 1/(2 sigma)) <= delta."""

    def excess(eps: float) -> float:
        return (
            norm.cdf(-eps * sigma + 1 / (2 * sigma)) - math.exp(eps) * norm.cdf(-eps * sigma - 1 / (2 * sigma)) - delta
        )

    return brentq(excess, 0.0, 100.0, xtol=1e-12)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0, 4.0, 8.0])
def test_pld_of_one_gaussian_release_is_the_analytic_epsilon(sigma):
    exact = analytic_gaussian_epsilon(sigma, DELTA)
    pld = privacy._accounted("pld", [(sigma, 1.0, 1)], DELTA)
    # an upper bound (pessimistic rounding), and tight: RDP overstates it by 5-10 %
    assert exact - 1e-9 <= pld <= exact + 1e-3
    assert privacy._accounted("rdp", [(sigma, 1.0, 1)], DELTA) > exact * 1.03


@pytest.mark.parametrize(
    "history",
    [
        [(1.0, 0.01, 1000)],  # a long DP-SGD run
        [(0.64, 1 / 33, 99)],  # the default run's window-level plan (264 windows, batch 8, 3 rounds)
        [privacy.group_step(280.0, 1 / 33, 99, 54), (4.0, 1.0, 1)],  # per subject, with a statistics release
    ],
)
def test_pld_is_tighter_than_rdp_for_subsampled_compositions(history):
    rdp = privacy._accounted("rdp", history, DELTA)
    pld = privacy._accounted("pld", history, DELTA)
    prv = privacy._accounted("prv", history, DELTA)
    assert 0 < pld < 0.97 * rdp
    assert pld <= prv + 1e-6  # PRV states its upper bound (eps_error 0.01) of the remove neighbour alone


def test_noise_for_budget_with_pld_spends_at_most_the_target_and_needs_less_noise():
    group, rate, steps = 54, 1 / 33, 99  # a subject of the default consortium, the default plan
    sigmas = {}
    for name in ("rdp", "pld"):
        ledger = privacy.PrivacyLedger(accountant=name, group_size=group)
        sigmas[name] = privacy.noise_for_budget(ledger, 8.0, DELTA, rate, steps)
        spent = ledger.epsilon(DELTA, (sigmas[name], rate, steps))
        assert 0.95 * 8.0 < spent <= 8.0
    assert sigmas["pld"] < 0.97 * sigmas["rdp"]
    # the same for the statistics release (sample rate 1, the subject its unit)
    ledger = privacy.PrivacyLedger(accountant="pld")
    sigma = privacy.noise_for_budget(ledger, 0.8, DELTA, 1.0, 1, subject_level=True)
    assert 0.95 * 0.8 < analytic_gaussian_epsilon(sigma, DELTA) <= ledger.epsilon(DELTA, (sigma, 1.0, 1), True) <= 0.8


def test_a_pld_run_trains_every_planned_round_and_no_more():
    """Checked round by round, the ledger composes what its calibration composed: the last
    planned round is allowed (a numerical accountant's rounding must not refuse it)."""
    settings = privacy.DPSettings(
        target_epsilon=4.0, delta=DELTA, max_grad_norm=1.0, planned_rounds=3, accountant="pld", statistics_share=0.25
    )
    ledger = privacy.PrivacyLedger(accountant="pld", group_size=10)
    ledger.subject_history.append((privacy.statistics_noise_multiplier(ledger, settings), 1.0, 1))
    trained = 0
    for _ in range(4):
        planned = privacy.plan_round(ledger, settings, 200, 8, 1)
        if not privacy.budget_allows(ledger, settings, planned):
            break
        ledger.history = [(planned[0], planned[1], sum(s for *_, s in ledger.history) + planned[2])]
        trained += 1
    assert trained == 3
    assert 0.95 * 4.0 < ledger.epsilon(DELTA) <= 4.0


def test_a_pld_ledger_saved_and_loaded_states_the_same_epsilon(tmp_path):
    ledger = privacy.PrivacyLedger(accountant="pld", noise_multiplier=300.0, group_size=54)
    ledger.subject_history.append((4.6, 1.0, 1))
    ledger.history.append((300.0, 1 / 33, 66))
    path = tmp_path / "privacy-run.json"
    privacy.save_ledger(path, ledger)
    loaded = privacy.load_ledger(path, "rdp")  # the file's accountant, not the caller's default
    assert loaded.accountant == "pld"
    assert loaded.epsilon(DELTA) == ledger.epsilon(DELTA)
    assert loaded.epsilon(DELTA) < privacy.PrivacyLedger(**{**vars(loaded), "accountant": "rdp"}).epsilon(DELTA)


def test_far_past_any_budget_the_numerical_accountants_state_rdps_bound():
    """noise_for_budget probes noise 1 for a subject of 54 windows (RDP epsilon ~1.6e5): a PLD or
    PRV grid for it outgrows memory, so RDP's bound (sound too) is stated there."""
    history = [privacy.group_step(1.0, 1 / 33, 99, 54)]
    rdp = privacy._accounted("rdp", history, DELTA)
    assert rdp > privacy.NUMERICAL_EPSILON_CAP
    assert privacy._accounted("pld", history, DELTA) == privacy._accounted("prv", history, DELTA) == rdp


def test_the_run_config_takes_pld_and_an_unknown_accountant_is_named():
    run = validate_run_config({"dp-accountant": "pld", "dp-enabled": True})
    assert privacy.dp_settings(run).accountant == "pld"
    assert RunConfig().dp_accountant in ("rdp", "prv", "pld")  # the default is a sound accountant
    with pytest.raises(ConfigError, match="choose one of: rdp, prv, pld"):
        validate_run_config({"dp-accountant": "gdp"})
    with pytest.raises(ConfigError, match="accountant 'pdl' is unknown"):
        privacy._accounted("pdl", [(1.0, 0.1, 10)], DELTA)


def test_opacus_records_a_pld_ledgers_steps():
    """Opacus has no PLD accountant: the engine records the steps (as its RDP one does) and the
    ledger states their epsilon by PLD."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    settings = privacy.DPSettings(
        target_epsilon=8.0, delta=DELTA, max_grad_norm=1.0, planned_rounds=1, accountant="pld"
    )
    ledger = privacy.PrivacyLedger(accountant="pld")
    privacy.plan_round(ledger, settings, 20, 8, 1)
    net, dp_optimizer, engine = privacy.make_private(model, optimizer, ledger, settings, 20, 8)
    dp_optimizer.zero_grad(set_to_none=True)
    net(torch.randn(5, 4)).sum().backward()
    dp_optimizer.step()
    assert engine.accountant.history == [(ledger.noise_multiplier, 1 / 3, 1)]
    ledger.history = [tuple(h) for h in engine.accountant.history]
    assert 0 < ledger.epsilon(DELTA) < privacy._accounted("rdp", ledger.history, DELTA)
