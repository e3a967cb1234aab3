"""A user's data is read-only to every command: nothing is written into it, simulated over it or
deleted from it, whether it is a folder or a symbolic link, and whatever it is called."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedneurogen.cli import app
from fedneurogen.shared.errors import ConfigError, DataError
from fedneurogen.shared.outputs import check_outside_inputs, prepare_output_folder
from fedneurogen.simulations.federated import ensure_sites
from fedneurogen.simulations.ownership import MARKER, check_writable_by_simulator, made_by_simulator
from fedneurogen.simulations.simulator import SITE_NAME, _remove_stale_sites, simulate_dataset

runner = CliRunner()


def fingerprint(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (through symbolic links) and its SHA-256, and every folder."""
    found: dict[str, str] = {}
    for root, dirs, files in os.walk(folder, followlinks=True):
        rel = Path(root).relative_to(folder)
        found[f"{rel}/"] = "folder"
        for name in files:
            found[str(rel / name)] = hashlib.sha256((Path(root) / name).read_bytes()).hexdigest()
    return found


def make_real_like(simulated_site: Path, dest: Path) -> Path:
    """A copy of a simulated site that reads like a lab's own: no simulator marker, its own name and
    an extra participants column."""
    shutil.copytree(simulated_site, dest, symlinks=False)
    (dest / MARKER).unlink()
    desc = json.loads((dest / "dataset_description.json").read_text())
    desc.update(Name="My Hospital EEG-fMRI study", Authors=["A. Clinician"])
    (dest / "dataset_description.json").write_text(json.dumps(desc, indent=2))
    lines = (dest / "participants.tsv").read_text().splitlines()
    lines = [lines[0] + "\thandedness"] + [line + "\tR" for line in lines[1:]]
    (dest / "participants.tsv").write_text("\n".join(lines) + "\n")
    return dest


def make_read_only(folder: Path) -> None:
    """File modes as a lab sets them on an archive (root ignores them: the checksums are the test)."""
    for root, dirs, files in os.walk(folder):
        for name in files:
            os.chmod(Path(root) / name, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        os.chmod(root, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)


def make_writable(folder: Path) -> None:
    for root, dirs, files in os.walk(folder):
        os.chmod(root, 0o755)
        for name in files:
            os.chmod(Path(root) / name, 0o644)


@pytest.fixture(scope="module")
def one_site(tmp_path_factory) -> Path:
    """One simulated EEG-fMRI site, 1 subject of 60 s (the simulator's shortest run)."""
    (site,) = simulate_dataset(
        tmp_path_factory.mktemp("safety-sim"), n_sites=1, subjects_per_site=1, seed=5, run_seconds=60.0, progress=False
    )
    return site


# ----------------------------------------------------------------------------------------------
# The simulator writes only into folders it made


def test_the_simulator_marks_what_it_made(one_site):
    assert made_by_simulator(one_site) and made_by_simulator(one_site.parent)
    assert json.loads((one_site / "dataset_description.json").read_text())["Name"].startswith(SITE_NAME)


def test_simulate_refuses_a_foreign_folder_before_writing(tmp_path):
    theirs = tmp_path / "lab-data"
    (theirs / "notes").mkdir(parents=True)
    (theirs / "README").write_text("our study")
    before = fingerprint(theirs)
    result = runner.invoke(app, ["simulate", "--out", str(theirs), "--sites", "1", "--subjects-per-site", "1"])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "not made by the simulator" in text and "README" in text and str(theirs) in text.replace(" ", "")
    assert fingerprint(theirs) == before


def test_a_site_named_like_a_simulation_but_without_the_marker_is_never_touched(one_site, tmp_path):
    """The simulator's name in the description is not ownership: only its marker is."""
    root = tmp_path / "root"
    shutil.copytree(one_site.parent, root)
    lookalike = root / "site-01"
    (lookalike / MARKER).unlink()
    before = fingerprint(lookalike)
    with pytest.raises(ConfigError, match="not made by the simulator"):
        simulate_dataset(root, n_sites=1, subjects_per_site=1, seed=5, run_seconds=60.0, progress=False)
    stale = root / "site-07"
    shutil.copytree(lookalike, stale)  # an unmarked "stale" site, as an earlier bigger run would leave
    _remove_stale_sites(root, {"site-01"})
    assert stale.is_dir() and fingerprint(lookalike) == before


def test_the_simulator_never_writes_through_a_symbolic_link(one_site, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(one_site.parent, root)
    kept = tmp_path / "storage" / "site-01"
    shutil.move(str(root / "site-01"), kept)
    (root / "site-01").symlink_to(kept, target_is_directory=True)
    before = fingerprint(kept)
    with pytest.raises(ConfigError, match="symbolic link"):
        check_writable_by_simulator(root, ["site-01"])
    with pytest.raises(ConfigError, match="symbolic link"):
        simulate_dataset(root, n_sites=1, subjects_per_site=1, seed=5, run_seconds=60.0, progress=False)
    assert not made_by_simulator(root / "site-01")  # a link is never the simulator's to remove
    _remove_stale_sites(root, set())
    assert (root / "site-01").is_symlink() and fingerprint(kept) == before


def test_the_simulator_rewrites_its_own_output(one_site):
    """An earlier simulation's folder is the simulator's own: simulating again is allowed."""
    again = simulate_dataset(one_site.parent, n_sites=1, subjects_per_site=1, seed=5, run_seconds=60.0, progress=False)
    assert again == [one_site] and made_by_simulator(one_site)


# ----------------------------------------------------------------------------------------------
# federate / consortium: existing sites are used as they are


def test_a_users_sites_are_used_as_they_are_never_simulated_over(one_site, tmp_path):
    """The user's scenario: BIDS site folders site-01..03 under one folder, no simulation.json."""
    root = tmp_path / "my-consortium"
    sites = [make_real_like(one_site, root / f"site-{i:02d}") for i in (1, 2, 3)]
    before = fingerprint(root)
    assert ensure_sites(root, 3, "fmri", 4, 0) == sites
    assert fingerprint(root) == before
    assert json.loads((sites[0] / "dataset_description.json").read_text())["Name"] == "My Hospital EEG-fMRI study"

    with pytest.raises(ConfigError, match="no site folder site-04") as err:
        ensure_sites(root, 4, "fmri", 4, 0)
    assert "--simulate" in str(err.value) and "site-01" in str(err.value)
    with pytest.raises(ConfigError, match="not made by the simulator"):
        ensure_sites(root, 4, "fmri", 4, 0, simulate=True)  # never into a folder the simulator did not make
    assert fingerprint(root) == before


def test_symbolic_link_sites_are_used(one_site, tmp_path):
    storage = make_real_like(one_site, tmp_path / "archive" / "study-a")
    root = tmp_path / "root"
    root.mkdir()
    (root / "site-01").symlink_to(storage, target_is_directory=True)
    before = fingerprint(storage)
    assert ensure_sites(root, 1, "fmri", 4, 0) == [root / "site-01"]
    assert fingerprint(storage) == before


def test_missing_sites_are_simulated_only_into_an_absent_root_or_the_simulators_own(tmp_path):
    root = tmp_path / "fresh"
    (site,) = ensure_sites(root, 1, "fmri", 1, 2, run_seconds=60.0)  # absent: simulated
    assert made_by_simulator(site)
    with pytest.raises(ConfigError, match="site-02"):
        ensure_sites(root, 2, "fmri", 1, 2, run_seconds=60.0)  # a missing site needs --simulate
    first = fingerprint(site)
    sites = ensure_sites(root, 2, "fmri", 1, 2, run_seconds=60.0, simulate=True)
    assert [s.name for s in sites] == ["site-01", "site-02"] and fingerprint(site) == first  # deterministic
    with pytest.raises(ConfigError, match="another simulation"):
        ensure_sites(root, 3, "fmri", 1, 9, run_seconds=60.0, simulate=True)


def test_federate_refuses_a_run_folder_inside_a_site(one_site, tmp_path):
    root = tmp_path / "root"
    make_real_like(one_site, root / "site-01")
    before = fingerprint(root)
    result = runner.invoke(
        app, ["federate", "--run-dir", str(root / "site-01" / "run"), "--data-root", str(root), "--sites", "1"]
    )
    assert result.exit_code == 2, result.output
    assert "read-only" in " ".join(result.output.split())
    assert fingerprint(root) == before


# ----------------------------------------------------------------------------------------------
# Outputs never land inside inputs, and an unwritable output is one line


def test_outputs_inside_or_around_a_dataset_are_refused(tmp_path):
    site = tmp_path / "data" / "site-01"
    site.mkdir(parents=True)
    link = tmp_path / "linked"
    link.symlink_to(site, target_is_directory=True)
    for out in (site, site / "derivatives" / "fedneurogen", link / "out", tmp_path / "data"):
        with pytest.raises(ConfigError, match="read-only"):
            check_outside_inputs(out, [site])
    check_outside_inputs(tmp_path / "reports", [site])  # beside it: fine
    assert prepare_output_folder(tmp_path / "reports" / "a", [site]).is_dir()


def test_an_output_that_cannot_be_created_is_a_data_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(DataError, match="cannot be written"):
        prepare_output_folder(blocker / "out")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny checkpoint of tests/test_synthesis.py's consortium (built once per session)."""
    from test_synthesis import trained_consortium

    root = tmp_path_factory.getbasetemp() / "synthesis-consortium"
    return trained_consortium(root)


@pytest.fixture(scope="module")
def archived_site(trained, tmp_path_factory) -> Path:
    """A read-only, real-like copy of the consortium's fMRI site, under a name with spaces and
    non-ASCII characters (a lab's archive)."""
    checkpoint, fmri_site, fnirs_site = trained
    site = make_real_like(fmri_site, tmp_path_factory.mktemp("archive") / "Site Zürich – 01")
    make_read_only(site)
    yield site
    make_writable(site)


def _commands(checkpoint: Path, site: Path, out: Path) -> dict[str, list[str]]:
    ck, data = str(checkpoint), str(site)
    return {
        "train": ["train", "--data", data, "--out", str(out / "train"), "--preset", "tiny", "--max-minutes", "0.02"],
        "synthesize": ["synthesize", "--checkpoint", ck, "--data", data, "--out", str(out / "synth"), "--subjects",
                       "sub-01", "--estimate", "mean"],
        "evaluate": ["evaluate", "--checkpoint", ck, "--data", data, "--out", str(out / "eval"), "--n-samples", "0",
                     "--baseline-epochs", "0", "--max-windows", "8", "--allow-seen"],
        "augment": ["augment", "--data", data, "--out", str(out / "augment"), "--strategy", "oversample",
                    "--folds", "2", "--features", "target", "--classes", "tools,motion"],
        "explain": ["explain", "--checkpoint", ck, "--data", data, "--out", str(out / "explain"), "--steps", "2",
                    "--max-frames", "12"],
    }  # fmt: skip


def test_every_command_leaves_a_read_only_site_unchanged(trained, archived_site, tmp_path):
    """The read-only sweep: every command that reads a site runs on it; not one byte changes and
    no file appears in it (the federation over linked sites: tests/test_raw_data_stays_on_site.py)."""
    before = fingerprint(archived_site)
    assert runner.invoke(app, ["validate", str(archived_site)]).exit_code == 0
    for name, args in _commands(trained[0], archived_site, tmp_path).items():
        result = runner.invoke(app, args)
        assert result.exit_code == 0, f"{name}: {result.output}"
        assert fingerprint(archived_site) == before, f"{name} changed the dataset"


@pytest.mark.parametrize("command", ["train", "synthesize", "evaluate", "augment", "explain"])
def test_an_output_inside_the_dataset_is_refused_before_reading(command, trained, archived_site, tmp_path):
    before = fingerprint(archived_site)
    args = _commands(trained[0], archived_site, archived_site / "derivatives" / "fedneurogen")[command]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "read-only" in text and "Traceback" not in text
    assert fingerprint(archived_site) == before


def _unwritable(tmp_path: Path) -> Path:
    """A folder this process cannot create: /sys refuses even root; otherwise a read-only parent."""
    if os.geteuid() == 0:
        return Path("/sys/fedneurogen-test-output")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    return locked / "out"


@pytest.mark.parametrize("command", ["synthesize", "evaluate", "explain"])
def test_an_unwritable_output_is_one_line_exit_1(command, trained, tmp_path):
    checkpoint, fmri_site, _ = trained
    out = _unwritable(tmp_path)
    args = _commands(checkpoint, fmri_site, tmp_path)[command]
    args[args.index("--out") + 1] = str(out)
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert "cannot be written" in " ".join(result.output.split()) and "Traceback" not in result.output
    assert len(lines) <= 2  # one message (soft-wrapped at most once by a narrow terminal)


def test_a_cache_inside_a_site_is_refused_before_anything_is_written(one_site, tmp_path):
    from fedneurogen.shared.data import load_site

    site = make_real_like(one_site, tmp_path / "site")
    before = fingerprint(site)
    with pytest.raises(ConfigError, match="the cache folder lies inside the dataset"):
        load_site(site, cache_dir=site / "derivatives" / "cache", progress=False)
    assert fingerprint(site) == before


def test_an_output_folder_with_files_no_command_wrote_is_never_written(tmp_path):
    """Outputs go to a new or empty folder, or one a command made (and may write again)."""
    theirs = tmp_path / "my-notes"
    theirs.mkdir()
    (theirs / "dataset_description.json").write_text('{"Name": "my own derivatives"}')
    before = fingerprint(theirs)
    with pytest.raises(ConfigError, match="no fedneurogen command wrote"):
        prepare_output_folder(theirs)
    assert fingerprint(theirs) == before
    ours = prepare_output_folder(tmp_path / "generated")
    (ours / "report.json").write_text("{}")
    assert prepare_output_folder(ours) == ours  # written again by the next command
    run = tmp_path / "run"
    (run / "checkpoint").mkdir(parents=True)
    assert prepare_output_folder(run, own=False) == run  # a run folder that --resume continues
