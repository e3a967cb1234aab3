"""One convention for what the user sees: the library logs through ``logging`` (loggers under
``fedneurogen``) and draws progress bars on stderr only when asked; the command line shows the
records on stderr (INFO by default, DEBUG with -v, WARNING with -q) and -q turns bars off."""

from __future__ import annotations

import logging

import pytest
from typer.testing import CliRunner

from fedneurogen.cli import app
from fedneurogen.cli.common import LOGGER

runner = CliRunner()

STOP_MESSAGE = "stopped after 1e-06 min (--max-minutes) at step 0"


@pytest.fixture(scope="module")
def one_site(tmp_path_factory):
    """One simulated EEG-fMRI site, one subject, a 60 s run (a second or two to write)."""
    from fedneurogen.simulations.simulator import simulate_dataset

    (site,) = simulate_dataset(
        tmp_path_factory.mktemp("verbosity-sim"), n_sites=1, subjects_per_site=1, run_seconds=60.0, progress=False
    )
    return site


def _words(text: str) -> str:
    """``text`` with all whitespace removed (rich pads and wraps lines to the console width)."""
    return "".join(text.split())


def test_verbose_and_quiet_together_are_a_usage_error():
    result = runner.invoke(app, ["-v", "-q", "info", "--preset", "tiny"])
    assert result.exit_code == 2
    assert "--verbose and --quiet cannot be used together" in result.output
    assert "parameters" not in result.output  # the command did not run


def test_verbose_shows_the_library_debug_lines(tmp_path):
    """``validate`` logs how many runs it found at DEBUG: shown with -v only, on stderr."""
    line = _words(f"{tmp_path}: 0 EEG run(s) found")
    plain = runner.invoke(app, ["validate", str(tmp_path)])
    verbose = runner.invoke(app, ["--verbose", "validate", str(tmp_path)])
    assert plain.exit_code == verbose.exit_code == 1  # an empty folder is not a dataset
    assert "DEBUG" not in plain.output and line not in _words(plain.output)
    assert "DEBUG" in verbose.stderr and line in _words(verbose.stderr)
    assert "DEBUG" not in verbose.stdout  # logs never mix with the report on stdout
    assert "emptydataset" in _words(verbose.stdout)


def test_the_cli_restores_the_logger_after_each_command(tmp_path):
    """Each command adds one handler and sets the level; both are undone when it ends, so
    commands run one after the other in a process do not stack handlers."""
    logger = logging.getLogger(LOGGER)
    before = (list(logger.handlers), logger.level)
    for args in (["-v", "validate", str(tmp_path)], ["-q", "info"], ["info"]):
        runner.invoke(app, args)
        assert (list(logger.handlers), logger.level) == before


def test_quiet_hides_progress_bars_but_not_the_results(tmp_path):
    """The simulator's bar goes to stderr, never to stdout, and -q turns it off; the
    noise-ceiling table (printed by the command, not the library) stays on stdout."""
    args = ["simulate", "--sites", "1", "--subjects-per-site", "1", "--run-seconds", "60"]
    plain = runner.invoke(app, [*args, "--out", str(tmp_path / "a")])
    quiet = runner.invoke(app, ["-q", *args, "--out", str(tmp_path / "b")])
    assert plain.exit_code == quiet.exit_code == 0, plain.output + quiet.output
    assert "simulating" in plain.stderr and "simulating" not in plain.stdout
    assert "simulating" not in quiet.output
    for result in (plain, quiet):
        assert result.stdout.count("Noise ceiling") == 1 and "Wrote 1 site datasets" in result.stdout


def test_quiet_hides_info_lines_and_the_training_bar(one_site, tmp_path):
    """``train --max-minutes`` reports its early stop as an INFO record: shown by default on
    stderr with the training bar; -q shows neither, and the checkpoint line stays."""
    args = ["train", "--data", str(one_site), "--max-minutes", "0.000001", "--device", "cpu"]
    plain = runner.invoke(app, [*args, "--out", str(tmp_path / "plain")])
    quiet = runner.invoke(app, ["--quiet", *args, "--out", str(tmp_path / "quiet")])
    assert plain.exit_code == quiet.exit_code == 0, plain.output + quiet.output
    assert "INFO" in plain.stderr and STOP_MESSAGE in plain.stderr
    assert "train epoch" in plain.stderr and "train epoch" not in plain.stdout
    assert STOP_MESSAGE not in quiet.output and "INFO" not in quiet.output and "train epoch" not in quiet.output
    assert "checkpoint:" in quiet.stdout


def test_the_time_limit_stop_is_a_log_record_not_a_print(one_site, tmp_path, caplog, capsys):
    from fedneurogen.shared.data import load_site
    from fedneurogen.shared.workflows.centralized import train_centralized
    from fedneurogen.shared.workflows.training import TRAIN_PRESETS

    windows = load_site(one_site, progress=False)
    config = TRAIN_PRESETS["tiny"].model_copy(update={"epochs": 2})
    capsys.readouterr()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        train_centralized(
            [windows],
            tmp_path / "run",
            preset="tiny",
            train_config=config,
            max_minutes=1e-6,
            device="cpu",
            progress=False,
        )
    (record,) = [r for r in caplog.records if "stopped after" in r.getMessage()]
    assert record.name == "fedneurogen.shared.workflows.centralized" and record.levelno == logging.INFO
    assert record.getMessage() == STOP_MESSAGE
    printed = capsys.readouterr()
    assert printed.out == "" and "stopped after" not in printed.err


def test_report_renderables_are_built_not_printed(capsys):
    """The evaluation table is a renderable the caller prints; ``render_report`` prints it on
    the caller's console only."""
    import io

    from rich.console import Console

    from fedneurogen.shared.workflows.evaluation_report import render_report, report_table

    scores = {"pcc_temporal": 0.41, "pcc_temporal_top10": 0.6, "pcc_spatial": 0.2, "ssim": 0.1}
    report = {
        "modality": "fmri", "n_test_windows": 8, "test_subjects_count": 1, "point_prediction": scores,
        "baselines": {"ridge_hrf": scores}, "noise_baseline": 0.01, "relative": {"over_ridge_hrf": 1.0},
        "split": {"note": "site in training"},
    }  # fmt: skip
    renderable = report_table(report)
    assert capsys.readouterr().out == ""
    built, rendered = io.StringIO(), io.StringIO()
    Console(file=built, width=120).print(renderable)
    render_report(report, Console(file=rendered, width=120))
    assert built.getvalue() == rendered.getvalue()
    assert "0.410" in built.getvalue() and "point prediction / ridge-HRF: 1.000" in built.getvalue()
    assert "site in training" in built.getvalue() and capsys.readouterr().out == ""
