"""Preprocessing a user can change (``PreprocessConfig.from_overrides``): on the command line
(``train --preprocess``), in a federation's run config (``preprocess``), checked against the
model before any data is read, and the same settings on every site and in the checkpoint."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from fedneurogen.cli import app
from fedneurogen.client import site
from fedneurogen.server.app import checkpoint_extra
from fedneurogen.shared.config import PreprocessConfig
from fedneurogen.shared.errors import ConfigError
from fedneurogen.shared.model import get_preset, read_checkpoint_config
from fedneurogen.shared.run_config import RunConfig, validate_run_config
from fedneurogen.shared.workflows.centralized import train_centralized
from fedneurogen.shared.workflows.training import TRAIN_PRESETS

runner = CliRunner()
ONE_EPOCH = TRAIN_PRESETS["tiny"].model_copy(update={"epochs": 1, "batch_size": 8})


def _words(text: str) -> str:
    return " ".join(text.split())


def test_overrides_change_only_the_named_fields():
    assert PreprocessConfig.from_overrides("") == PreprocessConfig()
    changed = PreprocessConfig.from_overrides("eeg_ica=false; eeg-line-freq=60;lag_seconds=5.5")
    assert (changed.eeg_ica, changed.eeg_line_freq, changed.lag_seconds) == (False, 60.0, 5.5)
    assert changed.model_copy(update={"eeg_ica": True, "eeg_line_freq": 50.0, "lag_seconds": 6.0}) == PreprocessConfig()
    assert PreprocessConfig.from_overrides(["eeg_line_freq=none"]).eeg_line_freq is None
    assert changed.cache_key() != PreprocessConfig().cache_key()  # cached windows are not mixed up


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ("eeg_ica", "'eeg_ica' is not KEY=VALUE"),
        ("eeg_icaa=false", "unknown key 'eeg_icaa'; the keys are eeg_l_freq"),
        ("window_seconds=long", "window_seconds = 'long'"),
        ("hrf_basis=boxcar", "hrf_basis = 'boxcar'"),
    ],
)
def test_bad_overrides_name_the_setting(overrides, message):
    with pytest.raises(ConfigError, match="preprocessing: ") as err:
        PreprocessConfig.from_overrides(overrides)
    assert message in str(err.value)


def test_settings_that_change_the_models_inputs_are_refused_for_that_model():
    tiny = get_preset("tiny")
    tiny.check_preprocess(PreprocessConfig.from_overrides("eeg_ica=false;fnirs_short_channel_regression=false"))
    for overrides, message in (
        ("eeg_sfreq=250", "eeg_sfreq = 250 (the model takes EEG at 200 Hz)"),
        ("fmri_sfreq=1.0", "fmri_sfreq = 1 (the model takes fmri at 0.5 Hz)"),
        ("window_seconds=20", "window_seconds = 20 gives 10 fmri frames per window (the model takes 8: 16 s)"),
        ("hrf_basis=canonical", "hrf_basis = 'canonical' gives 360 design features (the model takes 680)"),
        (
            "alpha_gating=false",
            "hrf_basis = 'canonical+derivative' without alpha_gating gives 640 design features (the model takes 680)",
        ),
    ):
        with pytest.raises(ConfigError, match="does not fit the tiny model") as err:
            tiny.check_preprocess(PreprocessConfig.from_overrides(overrides))
        assert message in str(err.value)


def test_train_takes_preprocess_and_refuses_a_misfit_before_reading_data(small_fmri_sites, tmp_path):
    missing = tmp_path / "no-such-site"  # never read: the settings are refused first
    bad = runner.invoke(
        app, ["train", "--data", str(missing), "--out", str(tmp_path / "r"), "--preprocess", "eeg_sfreq=250"]
    )
    assert bad.exit_code == 2 and "eeg_sfreq = 250" in _words(bad.output)
    bad = runner.invoke(app, ["train", "--data", str(missing), "--out", str(tmp_path / "r"), "--preprocess", "nope=1"])
    assert bad.exit_code == 2 and "unknown key 'nope'" in _words(bad.output)
    run = tmp_path / "run"
    args = ["-q", "train", "--data", str(small_fmri_sites[0]), "--out", str(run), "--max-minutes", "0.000001"]
    made = runner.invoke(app, [*args, "--preprocess", "lag_seconds=5", "--preprocess", "eeg_ica=false"])
    assert made.exit_code == 0, made.output
    meta = read_checkpoint_config(run / "checkpoint")
    assert meta["preprocess"] == PreprocessConfig(lag_seconds=5.0, eeg_ica=False).model_dump()


def test_resume_refuses_other_preprocessing(small_fmri_windows, tmp_path):
    run = tmp_path / "run"
    first = PreprocessConfig(lag_seconds=5.0).model_dump()
    kwargs = dict(preset="tiny", seed=0, train_config=ONE_EPOCH, device="cpu", progress=False, max_minutes=1e-6)
    train_centralized(small_fmri_windows, run, preprocess=first, **kwargs)
    with pytest.raises(ConfigError, match=r"other preprocessing \(lag_seconds\)"):
        train_centralized(small_fmri_windows, run, resume=True, preprocess=PreprocessConfig().model_dump(), **kwargs)
    train_centralized(small_fmri_windows, run, resume=True, preprocess=first, **kwargs)  # the same: resumes


def test_a_federation_applies_one_preprocessing_on_every_site_and_records_it(small_fmri_sites):
    run = validate_run_config({"preprocess": "lag_seconds=5;eeg_ica=false"})
    assert run.preprocess_config() == PreprocessConfig(lag_seconds=5.0, eeg_ica=False)
    with pytest.raises(ConfigError, match="preprocess = 'window_seconds=20': preprocessing does not fit the tiny"):
        validate_run_config({"preprocess": "window_seconds=20"})
    with pytest.raises(ConfigError, match="preprocess = 'x=1'"):
        validate_run_config({"preprocess": "x=1"})
    # the server's checkpoints say what the sites applied
    assert checkpoint_extra(run, ["rest"], 1, 2)["preprocess"] == run.preprocess_config().model_dump(mode="json")
    assert checkpoint_extra(RunConfig(), ["rest"], 1, 2)["preprocess"] == PreprocessConfig().model_dump(mode="json")
    # a site loads its windows with the run's settings: the lag shifts the EEG each target window pairs with
    default = site.load(small_fmri_sites[0], seed=0)
    shifted = site.load(small_fmri_sites[0], seed=0, preprocess=run.preprocess_config())
    assert shifted is not default
    assert len(shifted.train) and not (shifted.train.eeg[0] == default.train.eeg[0]).all()


def test_a_resumed_federation_refuses_other_preprocessing(tmp_path):
    """The coordinator restarts with resume=true: the run config's preprocess must be the one
    its rounds were trained with (the sites would otherwise load other windows), checked before
    any site is asked anything."""
    import torch
    from flwr.app import Context, RecordDict

    from fedneurogen.server import app as server_app
    from fedneurogen.server.checkpointing import RunStore
    from fedneurogen.server.strategy import make_strategy
    from fedneurogen.shared.model import NeuroGenModel

    first = validate_run_config({"run-dir": str(tmp_path / "run"), "preprocess": "lag_seconds=5"})
    torch.manual_seed(0)
    model = NeuroGenModel("tiny", device="cpu")
    store = RunStore(first.run_dir)
    store.save_round(
        1, model, make_strategy(first).state_dict(), [{"round": 1}], checkpoint_extra(first, ["rest"], 1, 2)
    )

    class NoSites:  # the check comes before the server talks to any site
        def __getattr__(self, name):
            raise AssertionError(f"the server used the grid ({name}) before refusing")

    def resume(preprocess: str) -> None:
        config = {"run-dir": first.run_dir, "resume": True, "num-server-rounds": 1, "preprocess": preprocess}
        server_app.main(NoSites(), Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=config))

    with pytest.raises(ConfigError, match=r"trained with other preprocessing \(lag_seconds\)"):
        resume("")
    with pytest.raises(ConfigError, match=r"other preprocessing \(eeg_ica\)"):
        resume("lag_seconds=5;eeg_ica=false")
