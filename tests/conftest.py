"""Fixtures shared across test files: small simulated datasets, made once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# pytest-xdist's workers set COLUMNS=80 and LINES=24. The CLI's output that is not a terminal is
# not wrapped unless COLUMNS says so (fedneurogen/cli/common.py), and the tests read it as a pipe
# would: cleared before any test module makes a console.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.pop("COLUMNS", None)
    os.environ.pop("LINES", None)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Keep the preprocessing cache of the test session out of the user's ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("FEDNEUROGEN_CACHE", str(tmp_path_factory.mktemp("fedneurogen-cache")))
    mp.setenv("MPLBACKEND", "Agg")
    yield
    mp.undo()


@pytest.fixture(scope="session", autouse=True)
def _isolated_keys(tmp_path_factory):
    """Checkpoints are signed with the user's key (shared/signing.py): the test session has its own
    key folder (FEDNEUROGEN_HOME, inherited by the Flower processes tests start), never the user's
    ~/.fedneurogen, so no test depends on a home folder or leaves a key in it."""
    mp = pytest.MonkeyPatch()
    mp.setenv("FEDNEUROGEN_HOME", str(tmp_path_factory.mktemp("fedneurogen-home")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def small_fmri_sites(tmp_path_factory) -> list[Path]:
    """Two simulated EEG-fMRI sites (64 ch EDF / 32 ch BrainVision), 3 subjects, 200 s runs."""
    from fedneurogen.simulations.simulator import simulate_dataset

    out = tmp_path_factory.mktemp("sim-fmri")
    return simulate_dataset(
        out, n_sites=2, subjects_per_site=3, modality="fmri", seed=11, run_seconds=200.0, progress=False
    )


@pytest.fixture(scope="session")
def small_fmri_windows(small_fmri_sites):
    """The paired windows of ``small_fmri_sites`` (loaded through the cache)."""
    from fedneurogen.shared.data import load_site

    return [load_site(site, progress=False) for site in small_fmri_sites]


@pytest.fixture(scope="session")
def federation_sites(tmp_path_factory) -> Path:
    """Three simulated sites for the federation tests: site-01 and site-02 EEG-fMRI, site-03
    EEG-fNIRS, three subjects each, 200 s runs; simulated once per session."""
    from fedneurogen.simulations.federated import ensure_sites

    root = tmp_path_factory.getbasetemp() / "federation-sites"
    ensure_sites(root, 3, "mixed", subjects_per_site=3, seed=0, run_seconds=200)
    return root


@pytest.fixture
def task_identity():
    """Flower stamps outgoing messages with the running task's identity; fake one for tests
    that build messages outside a Flower process."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


@pytest.fixture(scope="session")
def snirf_problems(tmp_path_factory):
    """The fNIRS community's SNIRF validator (``snirf.validateSnirf``, the test extra) as a function:
    a file's path -> its WARNING and FATAL issues, ``"<location>: <code>"`` each (empty: valid, no
    warning). ``snirf`` opens ./pysnirf2.log when first imported, so it is imported from a
    temporary folder."""

    here = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("pysnirf2"))
    try:
        import snirf
    finally:
        os.chdir(here)

    def problems(path: Path) -> list[str]:
        result = snirf.validateSnirf(str(path))
        return [f"{issue.location}: {issue.name}" for issue in result.issues if issue.severity >= 2]

    return problems
