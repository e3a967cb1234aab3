"""Site-side DP-SGD: cumulative epsilon across rounds, equal to Opacus' own accounting, budget
enforced, ledger persisted; DP and non-DP training both work with the model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

from fedneurogen.client import privacy, site
from fedneurogen.shared.config import PreprocessConfig
from fedneurogen.shared.design import n_design_features
from fedneurogen.shared.model import NeuroGenModel, load_checkpoint, parameter_modality, save_checkpoint
from fedneurogen.shared.recording import PairedWindows
from fedneurogen.shared.workflows.training import TRAIN_PRESETS

CONFIG = TRAIN_PRESETS["tiny"]
EEG = ["Fp1", "Fp2", "C3", "C4", "O1", "O2"]


def fnirs_windows(n: int, subject: str, seed: int) -> PairedWindows:
    """Random EEG-fNIRS windows shaped like the data layer's (16 s, 4 channels x HbO/HbR)."""
    rng = np.random.default_rng(seed)
    names = [f"S{c}_D{c} {kind}" for c in range(1, 5) for kind in ("hbo", "hbr")]
    channel = rng.normal(size=(4, 3))
    return PairedWindows(
        eeg=rng.normal(size=(n, len(EEG), 3200)).astype(np.float32),
        eeg_sfreq=200.0,
        eeg_channel_names=EEG,
        eeg_positions=rng.normal(size=(len(EEG), 3)) * 60,
        target=rng.normal(size=(n, 8, 16)).astype(np.float32),
        target_sfreq=1.0,
        target_modality="fnirs",
        target_names=names,
        target_positions=np.repeat(70 * channel / np.linalg.norm(channel, axis=1, keepdims=True), 2, axis=0),
        labels=np.array(["left", "right"] * (n // 2) + ["rest"] * (n % 2)),
        subjects=np.array([subject] * n),
        runs=np.array([f"{subject}_run-1"] * n),
        onsets=np.arange(n) * 8.0,
        lag=6.0,
        target_point_types=[name.split()[-1] for name in names],
        design=rng.normal(size=(n, 16, n_design_features(PreprocessConfig()))).astype(np.float32),
    )


@pytest.fixture(scope="module")
def data() -> site.SiteSplit:
    return site.SiteSplit(train=fnirs_windows(20, "sub-01", 0), val=fnirs_windows(6, "sub-02", 1))


def fresh_model(weights: dict[str, torch.Tensor] | None) -> NeuroGenModel:
    """What a site does each round: a new model holding the received global weights."""
    if weights is None:
        torch.manual_seed(0)
        return NeuroGenModel("tiny", fmri_positions=None, device="cpu")
    model = NeuroGenModel("tiny", fmri_positions=None, device="cpu")
    model.load_state_dict(weights)
    return model


def test_epsilon_is_cumulative_equals_opacus_and_the_budget_is_enforced(data, tmp_path):
    settings = privacy.DPSettings(
        target_epsilon=8.0, delta=1e-5, max_grad_norm=1.0, planned_rounds=3, statistics_share=0.0
    )
    ledger = privacy.PrivacyLedger()
    weights, epsilons = None, []
    for round_ in range(1, 4):
        model = fresh_model(weights)  # a new model and PrivacyEngine every round, as on a site
        metrics = site.train(
            model,
            data,
            config=CONFIG,
            epochs=1,
            class_names=["left", "rest", "right"],
            seed=round_,
            dp=settings,
            ledger=ledger,
        )
        assert metrics["budget_exhausted"] == 0 and metrics["num-examples"] == 20 and metrics["steps"] == 3
        epsilons.append(metrics["epsilon"])
        weights = model.state_dict()
        # the ledger goes through context.state (JSON in a ConfigRecord) and disk between rounds
        ledger = privacy.PrivacyLedger.from_json(json.loads(json.dumps(ledger.to_json())))
        privacy.save_ledger(tmp_path / "ledger.json", ledger)

    assert epsilons[0] < epsilons[1] < epsilons[2] <= 8.0
    assert epsilons[2] > 0.9 * 8.0  # the noise was calibrated to spend the budget over 3 rounds
    # an independent accountant, told only the subject's group step, gives the same epsilons: the
    # 20 windows are one subject's, so a step moves by up to 20 clips (sigma / 20) and includes
    # the subject when any of its windows is sampled (1 - (1 - q)^20)
    sigma, sample_rate = ledger.noise_multiplier, 1 / 3  # 20 windows in batches of 8: 3 batches
    assert ledger.group_size == 20
    for k, eps in enumerate(epsilons, start=1):
        reference = RDPAccountant()
        reference.history = [(sigma / 20, 1 - (1 - sample_rate) ** 20, 3 * k)]
        assert eps == pytest.approx(reference.get_epsilon(delta=1e-5), rel=1e-9)

    # the ledger on disk continues where it was; a 4th round would overspend, so nothing trains
    reloaded = privacy.load_ledger(tmp_path / "ledger.json", "rdp")
    assert reloaded.steps == 9 and reloaded.epsilon(1e-5) == pytest.approx(epsilons[-1])
    model = fresh_model(weights)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    metrics = site.train(model, data, config=CONFIG, epochs=1, class_names=[], seed=4, dp=settings, ledger=reloaded)
    assert metrics["budget_exhausted"] == 1 and metrics["num-examples"] == 0 and metrics["steps"] == 0
    assert metrics["epsilon"] == pytest.approx(epsilons[-1])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert reloaded.steps == 9


def test_dp_and_plain_training_both_update_the_model_it_still_saves_and_loads(data, tmp_path):
    start = fresh_model(None).state_dict()
    for dp in (
        None,
        privacy.DPSettings(target_epsilon=8.0, delta=1e-5, max_grad_norm=1.0, planned_rounds=2, statistics_share=0.0),
    ):
        model = fresh_model(start)
        ledger = privacy.PrivacyLedger() if dp else None
        metrics = site.train(
            model, data, config=CONFIG, epochs=1, class_names=["left", "rest", "right"], seed=0, dp=dp, ledger=ledger
        )
        assert metrics["steps"] == 3
        # the training loss is computed outside DP-SGD's noise: a DP site withholds it
        assert ("loss" not in metrics) if dp else np.isfinite(metrics["loss"])
        sent = site.site_parameters(model, "fnirs")
        assert sent and all(parameter_modality(name) in (None, "fnirs") for name in sent)
        changed = {name for name, p in model.named_parameters() if not torch.equal(p.detach(), start[name])}
        assert any(parameter_modality(name) == "fnirs" for name in changed) and any(
            parameter_modality(name) is None for name in changed
        )
        assert not any(parameter_modality(name) == "fmri" for name in changed)  # the other head is untouched
        path = save_checkpoint(
            tmp_path / ("dp" if dp else "plain"), model, extra={"class_names": ["left", "rest", "right"]}
        )
        loaded, meta = load_checkpoint(path, device="cpu")
        assert torch.equal(next(loaded.parameters()), next(model.parameters()).detach())
        metrics = site.evaluate(loaded, data, class_names=meta["class_names"], batch_size=8, seed=0, pcc_windows=3)
        assert metrics["num-examples"] == 6 and np.isfinite(metrics["loss"]) and -1 <= metrics["pcc"] <= 1


def test_dp_batches_are_poisson_sampled_and_an_empty_batch_is_a_noise_step(data):
    """The accountant assumes Poisson sampling: each step takes every window with probability
    q = 1 / steps per epoch, so batch sizes vary around the batch size; an empty batch is still
    a step (noise only, counted)."""
    from fedneurogen.shared.workflows.training import noise_only_step, poisson_batches

    rng = np.random.default_rng(0)
    sizes = [len(index) for _ in range(200) for _, index in poisson_batches(100, 8, rng)]
    assert len(sizes) == 200 * 13  # ceil(100 / 8) steps per epoch
    assert len(set(sizes)) > 5 and np.mean(sizes) == pytest.approx(100 / 13, rel=0.05)

    settings = privacy.DPSettings(target_epsilon=8.0, delta=1e-5, max_grad_norm=1.0, planned_rounds=1)
    ledger = privacy.PrivacyLedger()
    model = fresh_model(None)
    params = model.prepare_for_dp("fnirs")
    optimizer = torch.optim.SGD(params, lr=1.0)
    privacy.plan_round(ledger, settings, 20, 8, 1)
    net, dp_optimizer, engine = privacy.make_private(model, optimizer, ledger, settings, 20, 8)
    before = [p.detach().clone() for p in params]
    dp_optimizer.zero_grad(set_to_none=True)
    noise_only_step(net, dp_optimizer)
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, params)), "no noise was added"
    assert engine.accountant.history == [(ledger.noise_multiplier, 1 / 3, 1)]


def test_prv_accountant_is_cumulative_too():
    from opacus.accountants import PRVAccountant

    step = (1.2, 1 / 3, 3)  # (sigma, sample rate, steps) of one round
    reference = PRVAccountant()
    reference.history = [(1.2, 1 / 3, 6)]
    two_rounds = reference.get_epsilon(delta=1e-5)
    settings = privacy.DPSettings(
        target_epsilon=two_rounds * 1.001, delta=1e-5, max_grad_norm=1.0, planned_rounds=2, accountant="prv"
    )
    ledger = privacy.PrivacyLedger(accountant="prv", noise_multiplier=1.2)
    assert privacy.plan_round(ledger, settings, 20, 8, 1) == step
    eps = []
    while privacy.budget_allows(ledger, settings, step):
        ledger.history.append(step)
        eps.append(ledger.epsilon(1e-5))
    assert len(eps) == 2 and 0 < eps[0] < eps[1] == pytest.approx(two_rounds, rel=1e-3)


def test_site_state_dir_prefers_the_daemon_setting(tmp_path):
    from fedneurogen.shared.run_config import RunConfig

    data = tmp_path / "site-01"
    assert site.state_dir({"state-dir": str(tmp_path / "s")}, RunConfig(site_state_dir="x"), data) == tmp_path / "s"
    # a site daemon does not let the run config move its ledger (that would reset its budget)
    fresh = RunConfig(site_state_dir=str(tmp_path / "fresh"))
    assert not str(site.state_dir({"data-path": str(data)}, fresh, data)).startswith(str(tmp_path / "fresh"))
    chosen = site.state_dir({}, RunConfig(site_state_dir=str(tmp_path / "sim")), data)
    assert chosen.parent == tmp_path / "sim" and chosen.name.startswith("site-01-")
    # one ledger per training run: the same run-dir finds it again, another run gets its own
    assert (
        privacy.ledger_path(chosen, "runs/a")
        == privacy.ledger_path(chosen, "runs/a")
        != privacy.ledger_path(chosen, "runs/b")
    )


def test_ridge_statistics_go_through_the_gaussian_mechanism_once_on_the_same_ledger(data, tmp_path):
    """Under DP a site releases the private path's statistics (the small regression of
    ``shared.private_path``, not the full path's) with noise, spends a share of the budget on
    them in the ledger DP-SGD continues, and sends the same release if asked again."""
    from fedneurogen.shared.private_path import BLOCK_WEIGHTS, private_reduction
    from fedneurogen.shared.ridge import sum_statistics

    settings = privacy.DPSettings(
        target_epsilon=8.0, delta=1e-5, max_grad_norm=1.0, planned_rounds=3, statistics_share=0.25, statistics_clip=4.0
    )
    ledger, ledger_file = privacy.PrivacyLedger(), tmp_path / "ledger.json"
    # fNIRS windows: pooled scalp regions -> the channels themselves (no mesh basis, no prior)
    reduction = private_reduction(data.modality, data.train.design.shape[-1], data.train.target.shape[1], prior=False)
    clipped = sum_statistics(
        [privacy.clip_subject(s, 4.0, BLOCK_WEIGHTS) for s in reduction.subject_statistics(data.train)]
    )
    released = site.private_ridge_statistics(data, settings, ledger, ledger_file, prior=False)
    assert released["train.sxy"].shape == (reduction.n_inputs, 8) == clipped.sxy.shape  # 80 pooled features, 8 channels
    assert released["train.sxx"].shape == (reduction.n_inputs, reduction.n_inputs)
    assert not np.allclose(released["train.sxy"], clipped.sxy)  # noised
    assert np.allclose(released["train.sxx"], released["train.sxx"].T)  # symmetric noise
    # one full-batch Gaussian step, per subject already (no group privacy on it)
    assert not ledger.history and len(ledger.subject_history) == 1 and ledger.subject_history[0][1:] == (1.0, 1)
    assert 0.24 * 8.0 <= ledger.epsilon(1e-5) <= 0.25 * 8.0

    again = site.private_ridge_statistics(
        data, settings, privacy.load_ledger(ledger_file, "rdp"), ledger_file, prior=False
    )  # a restarted server asks again
    assert all(np.array_equal(again[k], released[k]) for k in released)
    assert len(privacy.load_ledger(ledger_file, "rdp").subject_history) == 1  # nothing spent twice

    # DP-SGD's noise is set for what is left: statistics + the planned rounds end at the target
    noise, rate, steps = privacy.plan_round(ledger, settings, len(data.train), CONFIG.batch_size, 1)
    total = ledger.epsilon(1e-5, (noise, rate, steps * settings.planned_rounds))
    assert 0.97 * 8.0 <= total <= 8.0


def test_a_subject_is_clipped_to_the_bound_and_weighted_alike_in_every_statistic():
    from fedneurogen.shared.ridge import RidgeStatistics

    rng = np.random.default_rng(0)
    loud = RidgeStatistics.from_rows(100 * rng.normal(size=(40, 5)), rng.normal(size=(40, 3)))
    clipped = privacy.clip_subject(loud, 2.0)
    norm = np.sqrt(sum(float((v**2).sum()) for k, v in clipped.as_arrays().items() if k != "n"))
    assert norm == pytest.approx(2.0) and 0 < clipped.n < 1
    factor = clipped.n  # every statistic is the subject's frame average times the same weight
    assert np.allclose(clipped.sxy, loud.sxy / loud.n * factor) and np.allclose(clipped.syy, loud.syy / loud.n * factor)
    quiet = RidgeStatistics.from_rows(0.01 * rng.normal(size=(40, 5)), 0.01 * rng.normal(size=(40, 3)))
    assert privacy.clip_subject(quiet, 2.0).n == 1.0  # within the bound: weight 1


def test_a_site_lifetime_cap_counts_its_other_runs(tmp_path):
    """``dp-lifetime-epsilon`` in a site's node config: a DP run is refused when the epsilon its
    data has spent (or reserved) in other runs plus this run's target would pass the cap; a run
    that passes holds its whole target as a reservation in its ledger."""
    from flwr.app import Context, RecordDict

    from fedneurogen.client import app
    from fedneurogen.client.refusal import SiteRefusal
    from fedneurogen.shared.run_config import RunConfig

    data, state = tmp_path / "bids", tmp_path / "state"
    data.mkdir()
    earlier = privacy.PrivacyLedger("rdp", 1.0, [(1.0, 0.1, 200)])
    privacy.save_ledger(privacy.ledger_path(state, "runs/earlier"), earlier)
    spent = earlier.epsilon(1e-5)
    raw = {**RunConfig().model_dump(by_alias=True), "dp-enabled": True, "dp-target-epsilon": 4.0, "run-dir": "runs/new"}
    run = RunConfig.model_validate(raw)

    def context(cap: float) -> Context:
        node = {"data-path": str(data), "state-dir": str(state), "dp-lifetime-epsilon": cap}
        return Context(run_id=1, node_id=1, node_config=node, state=RecordDict(), run_config=raw)

    with app._privacy(context(spent + 4.5), run) as (dp, ledger, path):  # room for this run
        assert dp.target_epsilon == 4.0 and path == privacy.ledger_path(state, "runs/new")
        assert ledger.reserved == 4.0 and privacy.load_ledger(path, "rdp").reserved == 4.0  # on disk before any release
    with pytest.raises(SiteRefusal, match="lifetime limit"):
        with app._privacy(context(spent + 3.5), run):
            pass


def test_dp_settings_are_built_from_the_run_config_in_one_place():
    """``privacy.dp_settings`` is the one builder; DPSettings made by hand default to the run config's values."""
    from fedneurogen.shared.run_config import RunConfig

    run = RunConfig(dp_enabled=True, dp_target_epsilon=4.0, num_server_rounds=5)
    dp = privacy.dp_settings(run)
    assert dp == privacy.DPSettings(4.0, run.dp_delta, run.dp_max_grad_norm, 5)  # the other defaults: RunConfig's
    assert (dp.accountant, dp.statistics_share, dp.statistics_clip, dp.secure_mode) == (
        run.dp_accountant,
        run.dp_statistics_share,
        run.dp_statistics_clip,
        False,
    )
    spread = privacy.dp_settings(RunConfig(dp_rounds=9, num_server_rounds=5, dp_accountant="prv"), secure_mode=True)
    assert (spread.planned_rounds, spread.accountant, spread.secure_mode) == (
        9,
        "prv",
        True,
    )  # dp-rounds, when set, over num-server-rounds
