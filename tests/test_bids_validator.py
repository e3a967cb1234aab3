"""BIDS validity of simulated sites (the official validator) and fNIRS short-separation channels.

The validator test runs the npm ``bids-validator`` 1.x CLI: the path in ``$BIDS_VALIDATOR``
(``make test`` installs it into ``.venv/bids-validator`` and passes it), else ``bids-validator``
on PATH; without either it fails, saying how to get it. The other tests need nothing outside the
project.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
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
    """An EEG-fMRI site and an EEG-fNIRS site, one subject each, 60 s runs (the smallest)."""
    from fedneurogen.simulations.simulator import simulate_dataset

    out = tmp_path_factory.mktemp("sim-bids")
    return simulate_dataset(
        out, n_sites=2, subjects_per_site=1, modality="mixed", seed=3, run_seconds=60.0, progress=False, n_jobs=1
    )


def _validator() -> str:
    """The validator ``make test`` installs (``$BIDS_VALIDATOR``), else ``bids-validator`` on PATH."""
    found = os.environ.get("BIDS_VALIDATOR") or shutil.which("bids-validator")
    assert found and Path(found).is_file() and os.access(found, os.X_OK), (
        f"no BIDS validator at {found!r}: run the tests with `make test` (it installs bids-validator@1.15.0 "
        "with npm), or set BIDS_VALIDATOR to the bids-validator executable"
    )
    return found


def test_simulated_sites_pass_the_bids_validator(mixed_sites):
    validator = _validator()
    for site in mixed_sites:
        done = subprocess.run(
            [validator, "--json", "--ignoreNiftiHeaders", str(site)], capture_output=True, text=True, timeout=300, check=False
        )  # fmt: skip
        try:
            report = json.loads(done.stdout)
        except json.JSONDecodeError:
            pytest.fail(
                f"{validator} gave no JSON report for {site.name} (exit {done.returncode}): {done.stdout[-2000:]}{done.stderr[-2000:]}"
            )
        issues = report["issues"]
        for warning in issues["warnings"]:
            print(f"{site.name}: warning {warning['key']}: {warning['reason']}")
        errors = [f"{e['key']}: {e['reason']} (files: {_files(e)})" for e in issues["errors"]]
        assert not errors, f"{site.name}: {errors}"
    assert set(report["summary"]["modalities"]) == {"EEG", "NIRS"}  # the fNIRS site was checked as such


def _files(issue: dict) -> list[str]:
    """Up to three files an issue of the validator's JSON report names."""
    return [(f.get("file") or {}).get("relativePath", "?") for f in issue.get("files", [])][:3]


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
