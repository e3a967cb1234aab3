"""The command line as a user runs it."""

import shutil

from typer.testing import CliRunner

from fedneurogen.cli import app

runner = CliRunner()


def test_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("simulate", "validate", "info", "train"):
        assert command in result.output


def _help_pages(command, path=()):
    """``(path, command)`` of the command line and of every command and subcommand under it."""
    import click

    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _help_pages(sub, (*path, name))


def test_help_fits_80_columns_with_room_for_the_descriptions():
    """With COLUMNS=80 every ``--help`` line fits, and the option descriptions keep a column of at
    least 30 characters (it was about 22 where a long metavar or a ``--no-`` flag took the room:
    a word or two a line)."""
    import re
    from collections import Counter

    import typer.main

    for path, _ in _help_pages(typer.main.get_command(app)):
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
        assert result.exit_code == 0, (path, result.output)
        lines = result.output.splitlines()
        too_long = [line for line in lines if len(line) > 80]
        assert not too_long, (path, too_long)
        # where the last cell of each panel line starts (after two spaces): the descriptions' column
        cells = [re.search(r"(?:^|\s\s)(\S(?:\S| (?=\S))*)$", line[1:-1].rstrip()) for line in lines if line[:1] == "│"]
        starts = Counter(1 + m.start(1) for m in cells if m)
        if starts:
            start = starts.most_common(1)[0][0]
            assert 79 - start >= 30, (path, 79 - start, result.output)


def test_info_prints_parameter_counts():
    result = runner.invoke(app, ["info", "--preset", "tiny"])
    assert result.exit_code == 0
    assert "parameters" in result.output and "dit" in result.output


def test_validate_ok_and_broken_site(small_fmri_sites, tmp_path):
    ok = runner.invoke(app, ["validate", str(small_fmri_sites[0])])
    assert ok.exit_code == 0, ok.output
    assert "OK" in ok.output

    broken = tmp_path / "broken"
    shutil.copytree(small_fmri_sites[0], broken)
    gifti = next((broken / "derivatives" / "fmriprep").rglob("*hemi-L*bold.func.gii"))
    gifti.write_bytes(gifti.read_bytes()[:200])  # truncated file
    result = runner.invoke(app, ["validate", str(broken)])
    assert result.exit_code == 0  # usable: the broken run is skipped, the others are used
    assert "USABLE: 1 of 3 run(s) will be skipped" in result.output
    assert gifti.name in result.output.replace("\n", "")


def test_validate_empty_folder_fails(tmp_path):
    result = runner.invoke(app, ["validate", str(tmp_path)])
    assert result.exit_code == 1
    assert f"{tmp_path}:emptydataset" in "".join(result.output.split())  # the folder given is named, not "."


def test_train_on_an_empty_folder_is_one_clear_line(tmp_path):
    (tmp_path / "site").mkdir()
    result = runner.invoke(app, ["train", "--data", str(tmp_path / "site"), "--out", str(tmp_path / "run")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)  # not an uncaught exception
    text = "".join(result.output.split())
    assert (
        "error:" in text
        and "emptydataset:noEEGrunsfound" in text
        and "sub-*/[ses-*/]eeg/" in text
        and "Traceback" not in text
    )


def test_privacy_budget_reports_each_run_ledger(tmp_path):
    from fedneurogen.client.privacy import PrivacyLedger, ledger_path, save_ledger

    ledger = PrivacyLedger("rdp", 1.1, [(1.1, 0.05, 120)])
    save_ledger(ledger_path(tmp_path, "/runs/one"), ledger)
    result = runner.invoke(
        app, ["privacy-budget", "--state-dir", str(tmp_path), "--run-dir", "/runs/one", "--delta", "1e-5"]
    )
    assert result.exit_code == 0, result.output
    assert f"{ledger.epsilon(1e-5):.3f}" in result.output and "120" in result.output
    missing = runner.invoke(app, ["privacy-budget", "--state-dir", str(tmp_path), "--run-dir", "/runs/other"])
    assert missing.exit_code != 0 and "no privacy ledger" in missing.output
    # the same run written another way is the same ledger, not a fresh budget
    assert (
        ledger_path(tmp_path, "/runs/one/")
        == ledger_path(tmp_path, "/runs/./one")
        == ledger_path(tmp_path, "/runs/one")
    )
    save_ledger(ledger_path(tmp_path, "/runs/two"), ledger)
    both = runner.invoke(app, ["privacy-budget", "--state-dir", str(tmp_path), "--delta", "1e-5"])
    assert both.exit_code == 0 and f"epsilon per subject <= {2 * ledger.epsilon(1e-5):.3f}" in both.output.replace(
        "\n", ""
    )


def test_certs_commands_make_a_working_set(tmp_path):
    assert runner.invoke(app, ["certs", "ca", "--out", str(tmp_path)]).exit_code == 0
    made = runner.invoke(app, ["certs", "server", "--ca", str(tmp_path), "--out", str(tmp_path), "--host", "10.1.2.3"])
    assert made.exit_code == 0, made.output
    ok = runner.invoke(
        app,
        [
            "certs",
            "check",
            "--cert",
            str(tmp_path / "superlink.crt"),
            "--ca-cert",
            str(tmp_path / "ca.crt"),
            "--host",
            "10.1.2.3",
        ],
    )
    assert ok.exit_code == 0, ok.output
    wrong = runner.invoke(
        app,
        [
            "certs",
            "check",
            "--cert",
            str(tmp_path / "superlink.crt"),
            "--ca-cert",
            str(tmp_path / "ca.crt"),
            "--host",
            "10.9.9.9",
        ],
    )
    assert wrong.exit_code == 1 and "10.9.9.9" in wrong.output
    again = runner.invoke(app, ["certs", "ca", "--out", str(tmp_path)])
    assert again.exit_code == 2 and "--force" in again.output  # a usage problem (ConfigError): exit 2


def test_federate_shows_each_round_as_it_ends(monkeypatch):
    """What `federate` prints for each round: sites, loss, held-out PCC, epsilon, the residual's
    best round (fed by the run's history.json as rounds end)."""
    import io

    from rich.console import Console

    from fedneurogen.cli import train as cli_train

    out = io.StringIO()
    monkeypatch.setattr(cli_train, "console", Console(file=out, width=200, force_terminal=False))
    entry = {
        "round": 2, "seconds": 12.0,
        "train": {"sites": {"1": {"epsilon": 3.5}, "2": {"epsilon": 3.25}}, "failed": [{"node": 3}], "aggregate": {"loss": 0.51}},
        "evaluate": {"aggregate": {"pcc": 0.1234}}, "early_stopping": {"best_round": 1, "stopped": True, "kept": False},
    }  # fmt: skip
    with cli_train._round_progress(3) as show:
        show(entry)
    text = out.getvalue()
    assert (
        "round 2/3: 2 site(s) answered, 1 failed, train loss 0.510, held-out PCC 0.123, epsilon per subject 3.50"
        in text
    )
    assert "residual best at round 1 (stopped), not kept (gain within one standard error)" in text and "12 s" in text

    private = {
        **entry,
        "train": {**entry["train"], "aggregate": {}},
        "evaluate": {"aggregate": {"num-examples": 8, "withheld": 1}},
    }
    with cli_train._round_progress(3) as show:
        show(private)
    assert "losses and held-out PCC withheld under DP, epsilon per subject 3.50" in out.getvalue()


def test_federate_shows_a_folded_score_with_the_round_after(tmp_path, monkeypatch):
    """A round's model scored in the next round's training replies (folded evaluation) is shown
    on that next round's line, named as the earlier round's."""
    import io
    import json

    from rich.console import Console

    from fedneurogen.cli import train as cli_train
    from fedneurogen.simulations.federated import RoundWatcher

    out = io.StringIO()
    monkeypatch.setattr(cli_train, "console", Console(file=out, width=200, force_terminal=False))
    history = tmp_path / "history.json"
    first = {"round": 1, "seconds": 3.0, "train": {"sites": {"1": {}}, "aggregate": {"loss": 0.6}}, "evaluate": {}}
    with cli_train._round_progress(2) as show:
        watch = RoundWatcher(history, show)
        history.write_text(json.dumps([first]))
        watch()
        scored = {**first, "evaluate": {"aggregate": {"pcc": 0.25}, "folded": True}}
        second = {"round": 2, "seconds": 3.0, "train": {"sites": {"1": {}}, "aggregate": {"loss": 0.5}}, "evaluate": {}}
        history.write_text(json.dumps([scored, second]))
        watch()
    text = out.getvalue()
    assert "round 1/2: 1 site(s) answered, train loss 0.600, held-out PCC -" in text
    assert "round 2/2: 1 site(s) answered, train loss 0.500, held-out PCC of round 1's model 0.250" in text


def test_version_names_the_release_and_its_pins():
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert (
        result.exit_code == 0
        and f"fedneurogen {version('fedneurogen')}" in result.output
        and "flwr 1.42.0" in result.output
    )


def test_warnings_print_as_one_readable_line(monkeypatch):
    """A skipped run's DataWarning reaches the user as ``warning: <file>: <problem>``, without
    Python's ``file:line: Category`` form and source line."""
    import io
    import warnings

    from rich.console import Console

    from fedneurogen.cli import common
    from fedneurogen.shared.data.problems import DataWarning

    out = io.StringIO()
    monkeypatch.setattr(common, "err_console", Console(file=out, width=300, force_terminal=False))
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # restored after the test
    assert runner.invoke(app, ["info", "--preset", "tiny"]).exit_code == 0  # the callback installs the formatter
    assert warnings.showwarning is common._show_warning
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("sub-02/eeg/sub-02_task-visual_eeg.edf: run [1] skipped: truncated", DataWarning, stacklevel=1)
    assert out.getvalue() == "warning: sub-02/eeg/sub-02_task-visual_eeg.edf: run [1] skipped: truncated\n"


def test_validate_json_is_machine_readable(tmp_path):
    import json

    result = runner.invoke(app, ["validate", str(tmp_path), "--json"])
    report = json.loads(result.output)
    assert result.exit_code == 1 and report["ok"] is False and report["site_dir"] == str(tmp_path)
    assert any("empty dataset" in e["message"] for e in report["errors"]) and all(
        {"path", "message", "severity"} <= set(e) for e in report["errors"]
    )


def test_exit_codes_tell_data_problems_from_usage_problems(tmp_path):
    """1: the input cannot be used; 2: the command was called wrongly."""
    (tmp_path / "site").mkdir()
    data = runner.invoke(app, ["train", "--data", str(tmp_path / "site"), "--out", str(tmp_path / "run")])
    usage = runner.invoke(app, ["simulate", "--out", str(tmp_path / "sim"), "--eeg-only-sessions", "B-2"])
    assert data.exit_code == 1 and "empty dataset" in data.output
    assert usage.exit_code == 2 and "expected GROUP:N" in usage.output


def test_help_lists_the_former_module_entry_points():
    """Every user-facing program is a `fedneurogen` command (no `python -m` argparse scripts)."""
    result = runner.invoke(app, ["--help"])
    for command in ("audit", "consortium", "fairness-table", "federate"):
        assert command in result.output
    consortium = runner.invoke(app, ["consortium", "--help"])
    assert consortium.exit_code == 0 and all(c in consortium.output for c in ("up", "down", "proxy-config"))


def test_consortium_proxy_config_routes_each_side_to_its_api(tmp_path):
    """`consortium proxy-config` writes nginx.conf from the coordinator's certificates: the sites'
    listener forwards the Fleet API only, the admins' the Control API only; missing certificates
    are named (exit 2) and nothing is written."""
    runner.invoke(app, ["certs", "ca", "--out", str(tmp_path / "certs")])
    runner.invoke(
        app,
        ["certs", "server", "--ca", str(tmp_path / "certs"), "--out", str(tmp_path / "certs"), "--host", "localhost"],
    )
    args = ["consortium", "proxy-config", "--site-listen", "0.0.0.0:8443", "--admin-listen", "10.1.0.5:9443"]
    out = tmp_path / "proxy" / "nginx.conf"
    made = runner.invoke(app, [*args, "--out", str(out), "--certs", str(tmp_path / "certs"), "--state", str(tmp_path)])
    assert made.exit_code == 0, made.output
    text = out.read_text()
    site, admin = text.split("listen 0.0.0.0:8443")[1], text.split("listen 10.1.0.5:9443")[1]
    assert "/v1/fleet/" in site.split("server {")[0] and "/v1/control/" not in site.split("server {")[0]
    assert "/v1/control/" in admin.split("server {")[0] and "/v1/fleet/" not in admin.split("server {")[0]
    missing = runner.invoke(app, [*args, "--out", str(tmp_path / "other.conf"), "--certs", str(tmp_path / "none")])
    assert missing.exit_code == 2 and "superlink.crt not found" in " ".join(missing.output.split())
    assert not (tmp_path / "other.conf").exists()


def test_fairness_table_refuses_inconsistent_options_before_any_work(tmp_path):
    result = runner.invoke(app, ["fairness-table", "--out", str(tmp_path / "t"), "--classifier", "riemann"])
    assert result.exit_code == 2 and "add --with-eeg" in " ".join(result.output.split())
    result = runner.invoke(app, ["fairness-table", "--out", str(tmp_path / "t"), "--classifier", "svm"])
    assert result.exit_code == 2 and "choose one of logreg, lda, riemann" in " ".join(result.output.split())
    assert not (tmp_path / "t").exists()
