"""Centralized training: checkpoints, logs, resume and the time limit."""

import json

import numpy as np
import pytest
import torch

from fedneurogen.shared.errors import ConfigError
from fedneurogen.shared.model import load_checkpoint, read_checkpoint_config
from fedneurogen.shared.workflows.centralized import split_sites, train_centralized
from fedneurogen.shared.workflows.training import (
    TRAIN_PRESETS,
    BestMean,
    class_index,
    iterate_batches,
    point_prediction_scores,
    subject_pcc,
)

TWO_EPOCHS = TRAIN_PRESETS["tiny"].model_copy(update={"epochs": 2, "batch_size": 8})


def _log(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_iterate_batches_covers_each_site_once_per_epoch():
    rng = np.random.default_rng(0)
    plan = list(iterate_batches([10, 5], batch_size=4, rng=rng))
    for site, n in ((0, 10), (1, 5)):
        seen = np.concatenate([idx for s, idx in plan if s == site])
        # a last batch of one window is dropped (the contrastive loss needs two)
        assert len(seen) == len(set(seen.tolist())) >= n - 1
    assert all(len(idx) >= 2 for _, idx in plan)


def test_split_sites_keeps_subjects_apart(small_fmri_windows):
    split = split_sites(small_fmri_windows, seed=0, val_fraction=0.15, test_fraction=0.2)
    for train, test in zip(split.train, split.test):
        assert not set(train.subjects) & set(test.subjects)
    assert sum(len(s) for s in split.train) + sum(len(s) for s in split.val) + sum(len(s) for s in split.test) == sum(
        len(s) for s in small_fmri_windows
    )


def test_train_writes_checkpoint_logs_and_resumes(small_fmri_windows, tmp_path):
    run = tmp_path / "run"
    checkpoint = train_centralized(
        small_fmri_windows, run, preset="tiny", seed=0, train_config=TWO_EPOCHS, device="cpu", progress=False
    )
    meta = read_checkpoint_config(checkpoint)
    assert meta["class_names"] == sorted(class_index(small_fmri_windows))
    assert meta["provenance"]["epochs"] == 2 and meta["provenance"]["split_seed"] == 0
    steps_after_two = meta["provenance"]["steps"]
    assert steps_after_two > 0
    # the residual's noise model is fitted, and the samples' share of the DiT's departure from it
    # is the one of the least validation CRPS
    assert meta["provenance"]["class_offsets"]["fmri"]["noise_model"]["points"] == 5124
    departure = meta["provenance"]["departure"]["fmri"]
    assert departure["crps"][f"{departure['chosen']:g}"] == min(departure["crps"].values())
    trained, _ = load_checkpoint(checkpoint, device="cpu", use_ema=True)
    assert trained.modality_heads["fmri"].noise.fitted
    assert float(trained.modality_heads["fmri"].noise.departure) == pytest.approx(departure["chosen"], rel=1e-6)
    # the noise's spread: the root of the validation windows' whitened mean square
    assert departure["spread"] == pytest.approx(np.sqrt(np.clip(departure["whitened_mean_square"], 1 / 9, 9)))
    assert float(trained.modality_heads["fmri"].noise.spread) == pytest.approx(departure["spread"], rel=1e-6)
    # the learned residual: kept only past one standard error of the per-subject gains, and the
    # checkpoint holds what was chosen
    residual = meta["provenance"]["residual"]
    assert residual["epochs_offered"] == 2 and 0 <= residual["best_epoch"] <= 2
    assert residual["validation_subjects"] >= 1
    if residual["kept"]:
        assert residual["gain_z"] > residual["gain_standard_error"]
    else:
        head = trained.modality_heads["fmri"].mean
        assert not head.readout.weight.detach().abs().any()  # the start: zero readout
    log = _log(run)
    assert [r["epoch"] for r in log if "val/loss" in r] == [1, 2]
    assert all(np.isfinite(r["val/loss"]) for r in log if "val/loss" in r)
    assert any((run / "tensorboard").iterdir())

    three = TWO_EPOCHS.model_copy(update={"epochs": 3})
    train_centralized(
        small_fmri_windows, run, preset="tiny", seed=0, train_config=three, device="cpu", resume=True, progress=False
    )
    meta = read_checkpoint_config(checkpoint)
    assert meta["provenance"]["epochs"] == 3
    assert meta["provenance"]["steps"] == steps_after_two * 3 // 2
    model, _ = load_checkpoint(checkpoint, device="cpu", use_ema=True)
    assert model.config.preset == "tiny"


def test_time_limit_stops_and_still_checkpoints(small_fmri_windows, tmp_path):
    run = tmp_path / "limited"
    checkpoint = train_centralized(
        small_fmri_windows,
        run,
        preset="tiny",
        seed=0,
        train_config=TWO_EPOCHS,
        max_minutes=1e-6,
        device="cpu",
        progress=False,
    )
    meta = read_checkpoint_config(checkpoint)
    assert meta["provenance"]["steps"] == 0 and meta["provenance"]["epochs"] == 0


def test_resume_without_checkpoint_is_a_clear_error(small_fmri_windows, tmp_path):
    with pytest.raises(ConfigError, match="no checkpoint"):
        train_centralized(
            small_fmri_windows, tmp_path / "empty", preset="tiny", resume=True, device="cpu", progress=False
        )


def test_a_damaged_or_planted_training_state_is_refused(tmp_path):
    """``train --resume`` reads train_state.pt: a flipped byte is caught by its hash, and a pickle
    that would run code is not unpickled (weights_only), each with the file named."""
    import pickle

    from fedneurogen.shared.errors import ConfigError
    from fedneurogen.shared.io import file_sha256
    from fedneurogen.shared.workflows.run_state import load_training_state, save_training_state

    weights = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([weights], lr=0.1)
    weights.grad = torch.ones(3)
    optimizer.step()
    path = tmp_path / "train_state.pt"
    save_training_state(path, optimizer, step=7, epoch=2)
    fresh = torch.optim.AdamW([torch.nn.Parameter(torch.ones(3))], lr=0.1)
    assert load_training_state(path, fresh)["step"] == 7 and fresh.state_dict()["state"][0]["exp_avg"].shape == (3,)

    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=r"train_state\.pt: the file is damaged or was changed"):
        load_training_state(path, fresh)

    class Payload:  # unpickling this would call os.system
        def __reduce__(self):
            import os

            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    with open(path, "wb") as out:
        pickle.dump({"optimizer": Payload(), "step": 0, "epoch": 0}, out)
    (tmp_path / "train_state.pt.sha256").write_text(file_sha256(path))  # the attacker rewrote the hash too
    with pytest.raises(ConfigError, match=r"cannot resume from .*train_state\.pt"):
        load_training_state(path, fresh)
    assert not (tmp_path / "pwned").exists()


def _residual(model):
    from fedneurogen.shared.model.mean import is_residual_parameter

    return {n: p for n, p in model.named_parameters() if is_residual_parameter(n)}


def _set_residual(model, value: float):
    with torch.no_grad():
        for p in _residual(model).values():
            p.fill_(value)


@pytest.mark.parametrize(
    "gains, kept",
    [
        ([0.02, 0.025, 0.03], True),  # every subject gains: far past one standard error
        ([0.09, -0.05, -0.01], False),  # a better mean that rests on one subject: within one standard error
        ([0.05], False),  # one subject: no standard error, the start stands
    ],
)
def test_the_residual_is_kept_only_past_one_standard_error_of_the_subjects_gains(gains, kept):
    from fedneurogen.shared.model import NeuroGenModel

    model = NeuroGenModel("tiny", device="cpu")
    start = {f"0:sub-{i}": 0.2 + 0.01 * i for i in range(len(gains))}
    _set_residual(model, 0.0)
    best = BestMean(model, start)
    _set_residual(model, 1.0)  # a worse epoch: not remembered
    assert not best.offer(model, {k: v - 0.01 for k, v in start.items()})
    _set_residual(model, 2.0)  # the best epoch
    assert best.offer(model, {k: v + g for (k, v), g in zip(start.items(), gains)})
    _set_residual(model, 3.0)
    assert not best.offer(model, {k: float("nan") for k in start})  # never a non-finite score
    mean, se, n = best.gain()
    assert mean == pytest.approx(np.mean(gains)) and n == len(gains)
    assert best.keeps_best is kept and best.best_offer == 2
    best.restore(model)
    assert all(torch.all(p == (2.0 if kept else 0.0)) for p in _residual(model).values())
    summary = best.summary()
    assert summary["kept"] is kept and summary["epochs_offered"] == 3
    assert json.loads(json.dumps(summary)) == summary  # JSON without NaN


def test_point_prediction_scores_one_per_subject_of_each_site(small_fmri_windows):
    from fedneurogen.shared.model import NeuroGenModel

    split = split_sites(small_fmri_windows, 0, 0.34, 0.0)
    torch.manual_seed(0)
    model = NeuroGenModel("tiny", device="cpu")
    with torch.no_grad():  # a residual that varies with the EEG (an untrained model predicts a constant)
        for p in _residual(model).values():
            p.normal_(0.0, 0.1)
    scores = point_prediction_scores(model, split.val)
    expected = {f"{i}:{s}" for i, site in enumerate(split.val) for s in set(site.subjects.tolist())}
    assert set(scores) == expected and all(np.isfinite(v) for v in scores.values())
    assert subject_pcc(scores) == pytest.approx(np.tanh(np.mean(list(scores.values()))))
    assert np.isnan(subject_pcc({}))
