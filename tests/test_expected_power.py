"""The simulator's expected scalp band power (features of the EEG-informed ceiling): written for
every site, read back, and tracking the band power of the simulated EEG itself."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import mne
import numpy as np
import pytest

from fedneurogen.shared.data.bids import find_runs
from fedneurogen.shared.data.eeg import load_raw_eeg, prepare_channels
from fedneurogen.shared.data.ground_truth_eeg import read_expected_band_power
from fedneurogen.shared.errors import DataError
from fedneurogen.shared.features import band_power_timecourse
from fedneurogen.simulations.eeg import RHYTHMS, expected_band_power
from fedneurogen.simulations.simulator import simulate_dataset

RUN_SECONDS = 120.0
RHYTHM_NAMES = [r.name for r in RHYTHMS]
STEM = "_desc-expectedpower_timeseries"


@pytest.fixture(scope="module")
def sites(tmp_path_factory) -> list[Path]:
    """site-01: EEG-fMRI, 64 ch EDF, 10-05 names; site-02: EEG-fNIRS, 32 ch BrainVision with
    four custom electrodes. One subject each, 120 s runs (a few seconds)."""
    out = tmp_path_factory.mktemp("sim_expected_power")
    return simulate_dataset(
        out, n_sites=2, subjects_per_site=1, modality="mixed", seed=3, run_seconds=RUN_SECONDS, progress=False
    )


def _key(site: Path) -> str:
    (run,) = find_runs(site)
    return run.key


def _files(site: Path) -> tuple[Path, Path]:
    folder = site / "derivatives" / "ground_truth" / "sub-01" / "eeg"
    base = f"{_key(site)}{STEM}"
    return folder / f"{base}.tsv.gz", folder / f"{base}.json"


def test_file_and_sidecar_are_written_for_fmri_and_fnirs_sites(sites):
    for site, task in zip(sites, ("visual", "motor")):
        assert _key(site) == f"sub-01_task-{task}_run-1"
        table, sidecar_path = _files(site)
        with gzip.open(table, "rt", encoding="utf-8") as f:
            lines = f.read().strip().split("\n")
        header = lines[0].split("\t")
        sidecar = json.loads(sidecar_path.read_text())
        assert sidecar["SamplingFrequency"] == 1.0 and sidecar["StartTime"] == 0.5
        assert sidecar["Units"] == "log V^2" and sidecar["Description"]
        assert sidecar["Columns"] == header
        assert len(sidecar["ColumnPositionsMM"]) == len(header)
        assert len(lines) - 1 == int(RUN_SECONDS)  # one row per 1 s bin
        assert all(len(line.split("\t")) == len(header) for line in lines[1:])
        assert header[:3] == [f"{header[0].rsplit('_', 1)[0]}_{r}" for r in RHYTHM_NAMES]


def test_reader_gives_names_shape_and_the_loaders_positions(sites):
    for site in sites:
        key = _key(site)
        rec = read_expected_band_power(site, key)
        (run,) = find_runs(site)
        raw, positions = prepare_channels(load_raw_eeg(run.eeg, preload=False), run)
        assert rec.modality == "eeg" and rec.sfreq == 1.0 and rec.data.dtype == np.float32
        assert rec.data.shape == (len(raw.ch_names) * len(RHYTHMS), int(RUN_SECONDS))
        assert rec.names == [f"{ch}_{r}" for ch in raw.ch_names for r in RHYTHM_NAMES]
        # The sidecar's positions are where the EEG loader places the electrodes (custom E1-E4
        # from sub-01_electrodes.tsv on site-02, MNE's 10-05 montage otherwise).
        expected = np.repeat([positions[ch] for ch in raw.ch_names], len(RHYTHMS), axis=0)
        np.testing.assert_allclose(rec.positions, expected, atol=0.01)
        assert np.all((rec.data > -40) & (rec.data < -15))  # ln V^2: (tens of uV)^2 down to sub-uV
        # The run key's forms that name the same run; other runs and sites without it: None.
        assert read_expected_band_power(site, key.replace("run-1", "run-01")) is not None
        assert read_expected_band_power(site, key.replace("sub-01", "sub-02")) is None
        assert read_expected_band_power(site, key.replace("run-1", "run-2")) is None


def test_expected_alpha_tracks_the_alpha_power_of_the_simulated_eeg(sites):
    """At an occipital electrode, the expected alpha power follows the alpha band power
    estimated from the recorded EEG in 1 s bins (r ~0.6-0.75 over seeds at 120 s), and has its
    level: the rhythm dominates the band, so the means agree within ~20% (ratio 0.9-1.2)."""
    site = sites[0]
    key = _key(site)
    rec = read_expected_band_power(site, key)
    raw = mne.io.read_raw(site / "sub-01" / "eeg" / f"{key}_eeg.edf", preload=True, verbose="error")
    eeg_uv = raw.get_data(picks=["Oz"]) * 1e6  # uV: band_power_timecourse floors power at 1e-12
    measured = band_power_timecourse(eeg_uv, raw.info["sfreq"], bands={"alpha": (8.0, 13.0)})[0, 0]
    expected = rec.data[rec.names.index("Oz_alpha")].astype(np.float64) + np.log(1e12)  # ln uV^2
    assert measured.shape == expected.shape
    assert np.corrcoef(measured, expected)[0, 1] > 0.4
    assert 0.75 < np.exp(measured).mean() / np.exp(expected).mean() < 1.35


def _one_minute():
    """A minute of latent activity, a subject's physiology and the 64-channel parcel lead field."""
    from fedneurogen.simulations.geometry import eeg_lead_field, parcel_lead_field, standard_positions
    from fedneurogen.simulations.latent import block_design, simulate_latent
    from fedneurogen.simulations.physiology import draw_physiology
    from fedneurogen.simulations.scenarios import CAP_64

    rng = np.random.default_rng(0)
    events, duration = block_design(rng, "visual", ("faces", "scenes"), 60.0)
    latent = simulate_latent(rng, "visual", events, duration)
    phys = draw_physiology(rng, "A", "F", 30)
    gain = parcel_lead_field(eeg_lead_field(list(CAP_64), standard_positions(CAP_64)))
    return latent, phys, gain, duration


def test_bins_average_the_latent_rate_power():
    """Bin k of the 1 Hz grid is the mean of the 2 Hz bins 2k and 2k+1 (power, before the log)."""

    latent, phys, gain, duration = _one_minute()
    one_hz, rhythms = expected_band_power(latent, phys, gain)
    two_hz, _ = expected_band_power(latent, phys, gain, sfreq_out=2.0)
    assert rhythms == RHYTHM_NAMES and one_hz.shape == (64, 3, int(duration))
    np.testing.assert_allclose(one_hz, np.log(np.exp(two_hz).reshape(64, 3, -1, 2).mean(-1)), rtol=1e-10)
    with pytest.raises(ValueError):
        expected_band_power(latent, phys, gain, sfreq_out=3.0)  # 20 Hz latent rate: 6.67 samples per bin


def _spoil_gzip(table: Path, sidecar: Path) -> None:
    table.write_bytes(table.read_bytes()[:200])


def _drop_sidecar(table: Path, sidecar: Path) -> None:
    sidecar.unlink()


def _rename_column(table: Path, sidecar: Path) -> None:
    meta = json.loads(sidecar.read_text())
    meta["Columns"][0] = "Xx_alpha"
    sidecar.write_text(json.dumps(meta))


def _nan_value(table: Path, sidecar: Path) -> None:
    lines = gzip.decompress(table.read_bytes()).decode().split("\n")
    cells = lines[1].split("\t")
    lines[1] = "\t".join(["nan", *cells[1:]])
    table.write_bytes(gzip.compress("\n".join(lines).encode()))


def _short_row(table: Path, sidecar: Path) -> None:
    lines = gzip.decompress(table.read_bytes()).decode().split("\n")
    lines[2] = lines[2].rsplit("\t", 1)[0]
    table.write_bytes(gzip.compress("\n".join(lines).encode()))


def _no_positions(table: Path, sidecar: Path) -> None:
    meta = json.loads(sidecar.read_text())
    meta["ColumnPositionsMM"] = meta["ColumnPositionsMM"][:-1]
    sidecar.write_text(json.dumps(meta))


@pytest.mark.parametrize("spoil", [_spoil_gzip, _drop_sidecar, _rename_column, _nan_value, _short_row, _no_positions])
def test_bad_files_are_data_errors_and_sessions_are_found(sites, tmp_path, spoil):
    # A copy under a session folder: ses- in the run key and the path.
    site = tmp_path / "site"
    key = _key(sites[1])
    src_table, src_sidecar = _files(sites[1])
    folder = site / "derivatives" / "ground_truth" / "sub-01" / "ses-1" / "eeg"
    folder.mkdir(parents=True)
    ses_key = key.replace("sub-01_", "sub-01_ses-1_")
    table = shutil.copy(src_table, folder / f"{ses_key}{STEM}.tsv.gz")
    sidecar = shutil.copy(src_sidecar, folder / f"{ses_key}{STEM}.json")
    assert read_expected_band_power(site, ses_key).names == read_expected_band_power(sites[1], key).names
    assert read_expected_band_power(site, key) is None  # the session is part of the run

    spoil(Path(table), Path(sidecar))
    with pytest.raises(DataError) as err:
        read_expected_band_power(site, ses_key)
    assert err.value.path.name.startswith(ses_key)


def test_source_power_is_the_scalp_power_before_the_lead_field(sites):
    """The expected power at the parcels (the source-space ceiling's features) and at the
    electrodes are one quantity seen twice: exp(scalp) = g² @ exp(source), rhythm by rhythm (g the
    average-referenced parcel lead field)."""
    from fedneurogen.shared.data.ground_truth_eeg import read_expected_band_power
    from fedneurogen.simulations.eeg import expected_source_power

    source = read_expected_band_power(sites[0], _key(sites[0]), desc="expectedsourcepower")
    assert source is not None and source.data.shape == (324 * 3, int(RUN_SECONDS))
    assert source.names[:3] == [f"P000_{r}" for r in RHYTHM_NAMES]
    latent, phys, gain, duration = _one_minute()
    scalp, _ = expected_band_power(latent, phys, gain)
    at_parcels = expected_source_power(latent, phys)
    gain_sq = (gain - gain.mean(0, keepdims=True)) ** 2
    for r in range(3):
        np.testing.assert_allclose(np.exp(scalp[:, r]), gain_sq @ np.exp(at_parcels[:, r]), rtol=1e-10)
