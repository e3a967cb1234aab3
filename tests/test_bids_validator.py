"""BIDS validity of simulated sites (the official validator), SNIRF validity of their fNIRS files
(the format's own validator), and fNIRS short-separation channels.

The validator test runs the schema-based BIDS validator, ``bids-validator-deno`` (PyPI, pinned in
the ``test`` extra; Deno comes with it as a wheel, no Node.js): the path in ``$BIDS_VALIDATOR``,
else the one installed next to this Python, else ``bids-validator-deno`` on PATH; without any it
fails, saying how to get it. It checks each site and each of its derivative datasets: every
derivative on its own, because the validator's ``--recursive`` mode does not read a derivative's
``.bidsignore`` (it prunes dot files below the root; bids-validator-deno 3.0.2), and the
simulator's derivatives list there what the BIDS schema has no rule for yet (surface BOLD as
GIFTI, the EEG's expected band power: ``simulations/bids_writer.DERIVATIVE_BIDSIGNORE``).
SNIRF files are checked with ``snirf.validateSnirf`` (the ``snirf_problems`` fixture). The other
tests need nothing outside the project.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mne
import numpy as np
import pytest

from fedneurogen.simulations import bids_factory as bf
from fedneurogen.shared.config import PreprocessConfig
from fedneurogen.shared.data import read_fnirs, validate_dataset
from fedneurogen.shared.data.fnirs import SHORT_CHANNEL_MAX_MM, regress_short_channels
from fedneurogen.shared.errors import DataError

# --- a small simulated consortium -----------------------------------------------------------------


@pytest.fixture(scope="module")
def mixed_sites(tmp_path_factory) -> list[Path]:
    """An EEG-fMRI site and an EEG-fNIRS site, one subject each, 60 s runs (the smallest); the
    fMRI site also has an EEG-only subject, as in ``make demo``."""
    from fedneurogen.simulations.simulator import simulate_dataset

    out = tmp_path_factory.mktemp("sim-bids")
    return simulate_dataset(
        out, n_sites=2, subjects_per_site=1, modality="mixed", seed=3, run_seconds=60.0, progress=False, n_jobs=1,
        eeg_only_sessions={"B": 1},
    )  # fmt: skip


def _validator() -> str:
    """``$BIDS_VALIDATOR``, else ``bids-validator-deno`` next to this Python (the test extra's),
    else on PATH."""
    beside = Path(sys.executable).with_name("bids-validator-deno")
    found = os.environ.get("BIDS_VALIDATOR") or (
        str(beside) if beside.is_file() else shutil.which("bids-validator-deno")
    )
    assert found and Path(found).is_file() and os.access(found, os.X_OK), (
        f"no BIDS validator at {found!r}: install the test extra (`pip install -e '.[test]'`, which pins "
        "bids-validator-deno), or set BIDS_VALIDATOR to a bids-validator-deno executable"
    )
    return found


def _validate(validator: str, dataset: Path) -> dict:
    """The validator's JSON report on one dataset (raw or derivative)."""
    done = subprocess.run(
        [validator, "--format", "json", "--no-color", str(dataset)], capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError:
        pytest.fail(
            f"{validator} gave no JSON report for {dataset} (exit {done.returncode}): {done.stdout[-2000:]}{done.stderr[-2000:]}"
        )


def test_simulated_sites_and_their_derivatives_pass_the_bids_validator(mixed_sites):
    validator = _validator()
    datatypes = {}
    for site in mixed_sites:
        derivatives = sorted(p for p in (site / "derivatives").iterdir() if p.is_dir())
        assert derivatives
        for dataset in [site, *derivatives]:
            report = _validate(validator, dataset)
            name = str(dataset.relative_to(site.parent))
            issues = report["issues"]["issues"]
            for issue in issues:
                if issue["severity"] == "warning":
                    print(f"{name}: warning {issue['code']} {issue.get('subCode') or ''} {issue.get('location', '')}")
            errors = [
                f"{i['code']} {i.get('subCode') or ''} {i.get('location', '')}: {(i.get('issueMessage') or '')[:200]}"
                for i in issues
                if i["severity"] == "error"
            ]
            assert not errors, f"{name}: {errors}"
            # what the simulator fixed once the schema validator saw it stays fixed
            codes = {(i["code"], i.get("subCode")) for i in issues}
            assert ("README_FILE_MISSING", None) not in codes, name
            assert ("SIDECAR_KEY_RECOMMENDED", "MISCChannelCount") not in codes, name
            datatypes[name] = set(report["summary"]["dataTypes"])
    # each site was checked as what it is; the fNIRS ground truth is validated too
    assert datatypes[f"{mixed_sites[0].name}"] == {"eeg", "func"}
    assert datatypes[f"{mixed_sites[1].name}"] == {"eeg", "nirs"}
    assert datatypes[f"{mixed_sites[1].name}/derivatives/ground_truth"] == {"nirs"}


def test_the_bids_validator_reports_what_is_not_bids(mixed_sites, tmp_path):
    """The control: the same site with a misnamed file and a required sidecar key removed fails."""
    site = shutil.copytree(mixed_sites[1], tmp_path / mixed_sites[1].name)
    (site / "sub-01" / "eeg" / "sub-01_task-motor_eeg.txt").write_text("not BIDS")
    sidecar = site / "sub-01" / "nirs" / "sub-01_task-motor_run-1_nirs.json"
    fields = json.loads(sidecar.read_text())
    del fields["NIRSSourceOptodeCount"]
    sidecar.write_text(json.dumps(fields))
    issues = _validate(_validator(), site)["issues"]["issues"]
    errors = {(i["code"], i.get("subCode")) for i in issues if i["severity"] == "error"}
    assert ("SIDECAR_KEY_REQUIRED", "NIRSSourceOptodeCount") in errors, errors
    assert any(i["location"].endswith("_eeg.txt") for i in issues if i["severity"] == "error"), errors


def test_every_simulated_snirf_file_passes_the_snirf_validator(mixed_sites, snirf_problems):
    files = sorted(mixed_sites[1].rglob("*.snirf"))
    assert len(files) == 2  # the recording and the ground truth
    for path in files:
        assert snirf_problems(path) == [], path


def test_simulated_sites_describe_themselves(mixed_sites):
    """README and Authors at the root; every derivatives folder is a derivative dataset."""
    for site in mixed_sites:
        assert (site / "README").read_text(encoding="utf-8").startswith(f"{site.name}: a simulated paired EEG-")
        description = json.loads((site / "dataset_description.json").read_text())
        assert description["DatasetType"] == "raw" and description["Authors"]
        derivatives = sorted((site / "derivatives").glob("*/dataset_description.json"))
        assert derivatives
        for path in derivatives:
            derived = json.loads(path.read_text())
            assert derived["DatasetType"] == "derivative" and derived["GeneratedBy"][0]["Name"], path
            assert (path.parent / "README").read_text(encoding="utf-8").startswith(derived["Name"])
            assert "*_space-fsaverage5_*" in (path.parent / ".bidsignore").read_text(encoding="utf-8").splitlines()


def _tsv(path: Path) -> list[dict[str, str]]:
    header, *rows = path.read_text(encoding="utf-8").strip().split("\n")
    return [dict(zip(header.split("\t"), row.split("\t"))) for row in rows]


def test_simulated_fnirs_short_channels_are_described_and_not_targets(mixed_sites):
    site = mixed_sites[1]
    nirs = site / "sub-01" / "nirs"
    stem = "sub-01_task-motor_run-1"
    sidecar = json.loads((nirs / f"{stem}_nirs.json").read_text())
    channels = _tsv(nirs / f"{stem}_channels.tsv")
    short = [c for c in channels if c["short_channel"] == "true"]
    assert sidecar["ShortChannelCount"] == len(short) == 16 and sidecar["NIRSChannelCount"] == len(channels) == 48
    optodes = {o["name"] for o in _tsv(nirs / "sub-01_optodes.tsv")}
    assert {c["source"] for c in channels} | {c["detector"] for c in channels} <= optodes

    raw = mne.io.read_raw_snirf(nirs / f"{stem}_nirs.snirf", verbose="error")
    distance_mm = dict(zip(raw.ch_names, mne.preprocessing.nirs.source_detector_distances(raw.info) * 1000))
    for c in channels:
        assert (distance_mm[c["name"]] < SHORT_CHANNEL_MAX_MM) == (c["short_channel"] == "true"), c

    # The target is the 16 long channels x HbO/HbR, the ground truth's point set.
    rec = read_fnirs(nirs / f"{stem}_nirs.snirf")
    truth = read_fnirs(site / "derivatives" / "ground_truth" / "sub-01" / "nirs" / f"{stem}_nirs.snirf")
    assert rec.n_points == truth.n_points == 32 and rec.names == truth.names
    assert validate_dataset(site).summary["channels"]["target_points"] == [32]


# --- short-channel regression in the reader --------------------------------------------------------

SFREQ, N_TIMES = 10.0, 3000
#: One short detector 8 mm from each factory source (the factory's long channels are ~30 mm).
SHORT_DETECTORS = bf.SOURCES + np.array([[0.0, 8.0, 0.0], [0.0, 8.0, 0.0]])
DETECTORS = np.vstack([bf.DETECTORS, SHORT_DETECTORS])
LONG_PAIRS = list(bf.PAIRS)
SHORT_PAIRS = [(1, 5), (2, 6)]


def _intensity(hb: np.ndarray, pairs: list[tuple[int, int]]) -> np.ndarray:
    """Rows (pair, HbO/HbR) in M -> rows (pair, wavelength): the modified Beer-Lambert law."""
    out = np.empty_like(hb)
    for p, (src, det) in enumerate(pairs):
        distance_m = np.linalg.norm(bf.SOURCES[src - 1] - DETECTORS[det - 1]) / 1000.0
        out[2 * p : 2 * p + 2] = np.exp(-(bf.ABSORPTION * distance_m * 6.0) @ hb[2 * p : 2 * p + 2] * 1e3)
    return out


def _signals() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cortical HbO/HbR of the long channels, the systemic HbO waveform, and the short channels'
    HbO/HbR (systemic only), in M."""
    rng = np.random.default_rng(5)
    t = np.arange(N_TIMES) / SFREQ
    cortex = np.empty((2 * len(LONG_PAIRS), N_TIMES))
    cortex[0::2] = 0.5e-6 * bf.slow_signal(t, rng, n=len(LONG_PAIRS))
    cortex[1::2] = -0.3 * cortex[0::2]
    systemic = 1e-6 * bf.slow_signal(t, rng, n=1)[0]
    short = np.empty((2 * len(SHORT_PAIRS), N_TIMES))
    short[0::2] = rng.uniform(0.8, 1.2, size=(len(SHORT_PAIRS), 1)) * systemic + 0.02e-6 * rng.standard_normal(
        (len(SHORT_PAIRS), N_TIMES)
    )
    short[1::2] = 0.35 * short[0::2]
    return cortex, systemic, short


def _write(path: Path, with_short: bool) -> tuple[Path, np.ndarray, np.ndarray]:
    cortex, systemic, short = _signals()
    gains = np.repeat(np.array([1.0, 0.7, 1.3, 0.9]), 2)[:, None] * np.tile([1.0, 0.35], len(LONG_PAIRS))[:, None]
    long = cortex + gains * systemic
    pairs = LONG_PAIRS + (SHORT_PAIRS if with_short else [])
    hb = np.vstack([long, short]) if with_short else long
    return bf.write_snirf(path, _intensity(hb, pairs), SFREQ, detectors=DETECTORS, pairs=pairs), cortex, systemic


def _r(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    return np.sum(a * b, axis=-1) / np.sqrt(np.sum(a * a, axis=-1) * np.sum(b * b, axis=-1))


def test_reader_drops_short_channels_and_regresses_out_the_systemic_signal(tmp_path):
    from scipy import signal

    with_short, cortex, systemic = _write(tmp_path / "short_nirs.snirf", with_short=True)
    without_short, _, _ = _write(tmp_path / "long_nirs.snirf", with_short=False)
    off = PreprocessConfig(fnirs_short_channel_regression=False)
    plain = read_fnirs(without_short)  # old data: no short channels, nothing to regress
    np.testing.assert_array_equal(plain.data, read_fnirs(without_short, off).data)

    regressed = read_fnirs(with_short)
    kept = read_fnirs(with_short, off)
    for rec in (regressed, kept):  # the target point set is the long channels, as without short channels
        assert rec.names == plain.names and rec.point_types == plain.point_types and rec.n_points == 2 * len(LONG_PAIRS)
        np.testing.assert_allclose(rec.positions, plain.positions)
    # Off: short channels are dropped, the long channels are untouched.
    np.testing.assert_allclose(kept.data, plain.data, atol=1e-9 * np.abs(plain.data).max())

    # On: the systemic component is gone from HbO, the cortical signal is what is left.
    sos = signal.butter(3, [0.01, 0.1], btype="bandpass", fs=SFREQ, output="sos")
    decimate = lambda x: signal.resample_poly(signal.sosfiltfilt(sos, x, axis=-1, padlen=1000), 1, 10, axis=-1)  # noqa: E731
    core = slice(30, -30)
    hbo = np.array([t == "hbo" for t in regressed.point_types])
    sys_wave = decimate(systemic)[core]
    assert np.all(np.abs(_r(kept.data[hbo, core], sys_wave)) > 0.6)
    assert np.all(np.abs(_r(regressed.data[hbo, core], sys_wave)) < 0.3)
    truth = decimate(cortex)[:, core]
    assert np.all(_r(regressed.data[:, core], truth) > 0.9)
    assert np.mean(_r(regressed.data[:, core], truth)) > np.mean(_r(kept.data[:, core], truth)) + 0.2


def test_regression_uses_the_nearest_short_channel():
    rng = np.random.default_rng(0)
    a, b, own = rng.standard_normal((3, 2, 500))
    short = np.array([a[0], b[0]])
    long = np.array([own[0] + 2.0 * a[0], own[1] - 0.5 * b[0]])
    cleaned = regress_short_channels(
        long, short, np.array([[0.0, 0, 0], [50, 0, 0]]), np.array([[2.0, 0, 0], [48, 0, 0]])
    )
    assert np.all(_r(cleaned, np.array([own[0], own[1]])) > 0.99)
    assert np.abs(_r(cleaned[0], a[0])) < 0.1 and np.abs(_r(cleaned[1], b[0])) < 0.1
    np.testing.assert_array_equal(regress_short_channels(long, short[:0], np.zeros((2, 3)), np.zeros((0, 3))), long)


def test_file_with_short_channels_only_is_a_data_error(tmp_path):
    _, _, short = _signals()
    path = bf.write_snirf(
        tmp_path / "short_only_nirs.snirf",
        _intensity(short, SHORT_PAIRS),
        SFREQ,
        detectors=DETECTORS,
        pairs=SHORT_PAIRS,
    )
    with pytest.raises(DataError, match="only short-separation channels"):
        read_fnirs(path)
