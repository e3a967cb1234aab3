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
    assert result.exit_code == 1
    assert gifti.name in result.output.replace("\n", "")


def test_validate_empty_folder_fails(tmp_path):
    result = runner.invoke(app, ["validate", str(tmp_path)])
    assert result.exit_code == 1
