"""The learned residual's EEG branch (``shared/model/eeg_residual.py``, ``--residual-eeg``): it
adds nothing until trained, learns from the point prediction's loss alone, is chosen, reset and
aggregated with the rest of the residual, fits DP-SGD, and is refused where it cannot be explained
or resumed."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from test_model import FMRI_POSITIONS, make_batch, make_windows, perturb, tiny_model

from fedneurogen.shared.errors import ConfigError
from fedneurogen.shared.model import NeuroGenModel, load_checkpoint, save_checkpoint
from fedneurogen.shared.model.mean import is_residual_parameter
from fedneurogen.shared.run_config import RunConfig


@pytest.mark.parametrize("modality", ["fmri", "fnirs"])
def test_the_branch_adds_nothing_until_trained_then_learns_from_the_point_predictions_loss(modality):
    model = tiny_model(mean_eeg_features=True, mean_dropout=0.0)
    branch = model.modality_heads[modality].mean.eeg
    batch = make_batch(modality, n_windows=3, n_eeg=4)
    with torch.no_grad():
        linear = model.point_prediction(batch, use_labels=False, residual=False)
        torch.testing.assert_close(model.point_prediction(batch, use_labels=False), linear)  # zero gains

    mean = model.point_prediction(batch, use_labels=False)
    (mean - batch.target).pow(2).mean().backward()
    assert float(branch.gains.weight.grad.abs().sum()) > 0  # the gains learn first
    with torch.no_grad():
        branch.gains.weight.normal_(0.0, 0.1)
        changed = model.point_prediction(batch, use_labels=False)
        assert changed.shape == linear.shape and not torch.allclose(changed, linear)
        other = make_batch(modality, n_windows=3, n_eeg=4, seed=1)  # another EEG, the same design
        other.design = batch.design
        assert not torch.allclose(model.point_prediction(other, use_labels=False), changed)  # reads the EEG
    model.zero_grad()
    (model.point_prediction(batch, use_labels=False) - batch.target).pow(2).mean().backward()
    assert any(float(p.grad.abs().sum()) > 0 for p in branch.encoder.parameters() if p.grad is not None)
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in model.eeg_encoder.parameters())

    model.modality_heads[modality].mean.reset_residual()
    with torch.no_grad():
        torch.testing.assert_close(model.point_prediction(batch, use_labels=False), linear)


def test_the_branch_is_part_of_the_residual_and_off_by_default():
    model = tiny_model(mean_eeg_features=True)
    names = [n for n, _ in model.named_parameters() if ".mean.eeg." in n]
    assert names and all(is_residual_parameter(n) for n in names)  # snapshotted, restored and stopped with it
    assert {n.split(".")[1] for n in names} == {"fmri", "fnirs"}  # aggregated per modality, with its head
    assert all(head.mean.eeg is None for head in tiny_model().modality_heads.values())
    assert RunConfig().preset_config().mean_eeg_features is False
    assert RunConfig(residual_eeg=True).preset_config().mean_eeg_features is True


def test_opacus_per_sample_gradients_of_the_branch_match_single_window_gradients():
    import opacus
    from opacus.validators import ModuleValidator

    model = tiny_model(mean_eeg_features=True, label_dropout=0.0, mean_dropout=0.0)
    assert ModuleValidator.validate(model, strict=True) == []  # every layer of the branch supported
    perturb(model)
    model.prepare_for_dp("fmri")
    batch = make_batch("fmri", n_windows=3, n_eeg=4)
    t, noise = torch.tensor([20, 500, 980]), torch.randn(batch.target.shape, generator=torch.Generator().manual_seed(0))
    reference = copy.deepcopy(model)
    dp_model = opacus.GradSampleModule(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dp_model(batch, t=t, noise=noise)[0].backward()
    branch = {n: p.grad_sample for n, p in model.named_parameters() if ".mean.eeg." in n and p.requires_grad}
    assert branch and all(g.shape[0] == 3 for g in branch.values())
    scale = max(float(g.abs().max()) for g in branch.values())
    for i in range(3):
        reference.zero_grad(set_to_none=True)
        reference.loss(batch.select([i]), t=t[[i]], noise=noise[[i]])[0].backward()
        for name, p in reference.named_parameters():
            if name in branch:
                torch.testing.assert_close(branch[name][i], p.grad, rtol=1e-3, atol=1e-5 * scale)


def test_a_checkpoint_keeps_the_branch_and_explain_refuses_what_it_cannot_attribute(tmp_path):
    from fedneurogen.shared.workflows.explain_attribution import decompose

    model = tiny_model(mean_eeg_features=True)
    perturb(model)
    save_checkpoint(tmp_path / "checkpoint", model)
    loaded, _ = load_checkpoint(tmp_path / "checkpoint", device="cpu")
    assert loaded.config.mean_eeg_features
    batch = make_batch("fmri", n_windows=2, n_eeg=4)
    with torch.no_grad():
        torch.testing.assert_close(loaded.point_prediction(batch), model.point_prediction(batch))
    with pytest.raises(ConfigError, match="residual-eeg"):
        decompose(model, make_windows("fmri", n_windows=2, n_eeg=4))


def test_resume_refuses_another_residual_setting(tmp_path):
    from fedneurogen.shared.workflows.centralized import _check_same_residual

    save_checkpoint(tmp_path / "checkpoint", tiny_model())
    _check_same_residual(tmp_path, NeuroGenModel("tiny", fmri_positions=FMRI_POSITIONS, device="cpu"))  # same: fine
    with pytest.raises(ConfigError, match="trained without --residual-eeg"):
        _check_same_residual(tmp_path, tiny_model(mean_eeg_features=True))


def test_a_labram_checkpoint_starts_both_encoders_and_is_recorded(tmp_path):
    from test_model import _labram_layout

    from fedneurogen.shared.workflows.centralized import _pretrained_encoder

    source = tiny_model(seed=3).eeg_encoder
    perturb(source, scale=0.1)
    path = tmp_path / "labram-base.pth"
    torch.save({"model": {"student." + k: v for k, v in _labram_layout(source).items()}}, path)
    model = tiny_model(mean_eeg_features=True)
    record = _pretrained_encoder(model, path, "tiny", resume=False, run_dir=tmp_path / "run")
    assert record["file"] == "labram-base.pth" and record["loaded"] > 0 and len(record["sha256"]) == 64
    for encoder in [model.eeg_encoder] + [h.mean.eeg.encoder for h in model.modality_heads.values()]:
        torch.testing.assert_close(encoder.patch_embed.state_dict(), source.patch_embed.state_dict())
    assert _pretrained_encoder(model, None, "tiny", resume=False, run_dir=tmp_path / "run") is None

    wrong = tmp_path / "other-width.pth"  # nothing of it fits: refused, not a silent random start
    torch.save({"model": {"student.norm.weight": torch.randn(source.norm.weight.shape[0] + 1)}}, wrong)
    with pytest.raises(ConfigError, match="none of its tensors fits the 'tiny' preset"):
        _pretrained_encoder(tiny_model(), wrong, "tiny", resume=False, run_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match="a resumed run keeps the encoder"):
        _pretrained_encoder(tiny_model(), path, "tiny", resume=True, run_dir=tmp_path / "run")
    save_checkpoint(tmp_path / "run" / "checkpoint", model, extra={"provenance": {"eeg_encoder": record}})
    assert _pretrained_encoder(tiny_model(), None, "tiny", resume=True, run_dir=tmp_path / "run") == record
