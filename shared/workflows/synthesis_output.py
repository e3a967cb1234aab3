"""Writing generated runs as a BIDS derivatives dataset (``synthesize``'s output).

``stitch_run`` puts one run's overlapping windows back on the run's own time grid (frame ``j``
at ``j / sfreq`` s from the start of the EEG run, like the site's real recording); frames no
window covers (the first ``lag`` seconds, gaps between windows) are the baseline (zero in model
units) and are listed in ``UncoveredSeconds``. The files written:

    OUT/dataset_description.json                               derivative, GeneratedBy FedNeuroGen
    OUT/sub-01/func/sub-01_task-visual_run-1_hemi-{L,R}_space-fsaverage5_desc-generated_bold.func.gii
    OUT/sub-01/func/sub-01_task-visual_run-1_space-fsaverage5_desc-generated_bold.json
    OUT/sub-01/nirs/sub-01_task-motor_run-1_desc-generated_nirs.snirf    (HbO/HbR, the site's probe)
    OUT/sub-01/nirs/sub-01_task-motor_run-1_desc-generated_nirs.json

fMRI is generated on ico4 (2562 vertices per hemisphere) and upsampled to fsaverage5 (10242) by
``upsample_ico4`` (``write_fmri_run``); fNIRS is written as SNIRF with the site's probe where it is
usable (``write_fnirs_run``).

Units: generated data is written in the units of the site's data, declared in the sidecar
(``Units``, ``Normalization``: ``units_sidecar``). The model works on BOLD z-scored per vertex per
run (``fmri_zscore``); each generated fMRI run is de-normalised with the subject's own real run
(its per-vertex mean and SD after the same resampling, read once, ``target_scale``), or, for a
run without a real target (EEG only), with the site's real runs pooled (``site_scale``;
``run_scales`` picks one per run). fNIRS is written in umol/L (the loader's ``fnirs_scale``
undone), band-passed as the loader does; no z-score is involved.

The ``desc`` entity says what was generated (``desc_label``): ``generated``, plus the class with
``label`` (``generatedFaces``), plus the sample number when several samples are drawn per window
(``generated1``, ``generated2``, ...).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from fedneurogen import __version__
from fedneurogen.shared.config import PreprocessConfig
from fedneurogen.shared.data import read_fmri
from fedneurogen.shared.data.bids import read_events
from fedneurogen.shared.data.fmri import repetition_time
from fedneurogen.shared.errors import ConfigError, DataError
from fedneurogen.shared.formats import (
    SURFACE_BOLD_BIDSIGNORE,
    FSAVERAGE5_SPATIAL_REFERENCE,
    SnirfProbe,
    bids_name,
    haemoglobin_measurements,
    read_snirf_probe,
    write_bidsignore,
    write_dataset_description,
    write_gifti_timeseries,
    write_snirf,
)
from fedneurogen.shared.io import write_json_atomic
from fedneurogen.shared.metrics import stitch_windows
from fedneurogen.shared.recording import PairedWindows
from fedneurogen.shared.surface import FSAVERAGE5_PER_HEMI, upsample_ico4

GENERATOR = "FedNeuroGen"
DEFAULT_WAVELENGTHS = (760.0, 850.0)  # nm; SNIRF needs wavelengths even for HbO/HbR data

#: What the BIDS schema has no rule for in generated derivatives (the validator leaves it out):
#: surface BOLD as GIFTI, and ``desc-`` (sample or mean) on SNIRF files (the validator still
#: reports ENTITY_NOT_IN_RULE for those: the one deviation, named in tests/test_synthesis.py).
GENERATED_BIDSIGNORE = SURFACE_BOLD_BIDSIGNORE + (
    "# Generated fNIRS: desc-sample / desc-mean name the estimate; the schema has no desc- for _nirs.snirf.",
    "*_desc-*_nirs.*",
)


# ----------------------------------------------------------------------------------------------
# Stitching windows into runs


@dataclass
class StitchedRun:
    """One run's generated series on the run's own time grid.

    Frame ``j`` is at ``j / sfreq`` s from the start of the run, as in the site's real recording.

    Parameters
    ----------
    data : numpy.ndarray
        ``[n_points, n_times]``; zeros where no window covers a frame.
    covered : numpy.ndarray
        ``[n_times]`` bool: the frames some window generated.
    """

    data: np.ndarray  # [n_points, n_times]; zeros where no window covers a frame
    covered: np.ndarray  # [n_times] bool: frames some window generated


def stitch_run(values: np.ndarray, onsets: np.ndarray, sfreq: float) -> StitchedRun:
    """Stitch one run's windows into its series, overlapping frames averaged.

    ``metrics.stitch_windows`` averages the overlaps but keeps only covered frames (what metrics
    need); here they are put back in place, so that a frame's index is its time in the run for
    any reader of the file. The first frames (before the first window: the EEG must lead by the
    hemodynamic lag) and any gap between windows are zeros.

    Parameters
    ----------
    values : numpy.ndarray
        ``[n_windows, n_points, n_frames]``: the run's windows.
    onsets : numpy.ndarray
        Each window's onset (s from the start of the run).
    sfreq : float
        Target sampling rate (Hz).

    Returns
    -------
    StitchedRun
        The series and which frames are covered.
    """
    n_frames = values.shape[-1]
    starts = np.round(np.asarray(onsets) * sfreq).astype(int)
    covered = np.zeros(int(starts.max()) + n_frames, dtype=bool)
    for s in starts:
        covered[s : s + n_frames] = True
    (averaged,) = stitch_windows(values, np.zeros(len(values)), np.asarray(onsets), sfreq).values()
    data = np.zeros((values.shape[1], len(covered)), dtype=np.float32)
    data[:, covered] = averaged
    return StitchedRun(data=data, covered=covered)


def uncovered_seconds(run: StitchedRun, sfreq: float) -> list[list[float]]:
    """List the stretches of a stitched run that no window covers.

    Parameters
    ----------
    run : StitchedRun
        The stitched run.
    sfreq : float
        Target sampling rate (Hz).

    Returns
    -------
    list of [float, float]
        ``[[start, end], ...]`` in seconds from the run start.
    """
    edges = np.diff(np.concatenate([[0], (~run.covered).astype(int), [0]]))
    return [[a / sfreq, b / sfreq] for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1))]


# ----------------------------------------------------------------------------------------------
# Writing BIDS derivatives


def desc_label(label: str | None, sample: int | None, kind: str = "generated") -> str:
    """Build the ``desc`` entity of a generated file: ``kind`` [+ Class] [+ sample number].

    Parameters
    ----------
    label : str or None
        The class generation was conditioned on; non-alphanumeric characters are dropped (BIDS
        labels are alphanumeric) and the first letter is capitalised.
    sample : int or None
        The sample number, when several samples are drawn per window.
    kind : str
        ``generated`` or ``mean``.

    Returns
    -------
    str
        E.g. ``generated``, ``generatedFaces2``, ``mean``.
    """
    desc = kind
    if label is not None:
        clean = re.sub(r"[^0-9A-Za-z]", "", label)
        desc += clean[:1].upper() + clean[1:]
    if sample is not None:
        desc += str(sample)
    return desc


def run_entities(run_key: str) -> dict[str, str]:
    """Split a run key into its BIDS entities.

    Parameters
    ----------
    run_key : str
        E.g. ``sub-01_ses-1_task-visual_run-1``.

    Returns
    -------
    dict of str to str
        E.g. ``{'sub': '01', 'ses': '1', 'task': 'visual', 'run': '1'}``.
    """
    return dict(part.split("-", 1) for part in run_key.split("_"))


def run_folder(out_dir: Path, entities: dict[str, str], datatype: str) -> Path:
    """Return the folder of a run's files: ``out_dir/sub-<sub>[/ses-<ses>]/<datatype>``.

    Parameters
    ----------
    out_dir : Path
        Root of the derivatives dataset.
    entities : dict of str to str
        The run's entities (``sub``, optionally ``ses``).
    datatype : str
        ``func`` or ``nirs``.

    Returns
    -------
    Path
        The folder (not created).
    """
    folder = out_dir / f"sub-{entities['sub']}"
    if "ses" in entities:
        folder = folder / f"ses-{entities['ses']}"
    return folder / datatype


@dataclass
class TargetScale:
    """Per-point mean and SD that turn model units back into the data's units.

    Parameters
    ----------
    mean, sd : numpy.ndarray
        ``[n_points]`` in the data's units.
    source : str
        Where they come from (written in the sidecar).
    """

    mean: np.ndarray
    sd: np.ndarray
    source: str

    def apply(self, run: StitchedRun) -> StitchedRun:
        """A run in model (z) units -> data units (uncovered frames become the mean).

        Parameters
        ----------
        run : StitchedRun
            The run in model units.

        Returns
        -------
        StitchedRun
            ``data * sd + mean`` per point, computed in float64 (BOLD sits on a large offset).
        """
        data = run.data.astype(np.float64) * self.sd[:, None] + self.mean[:, None]
        return replace(run, data=data.astype(np.float32))


def target_scale(run_files: Any, names: Sequence[str], preprocess: PreprocessConfig) -> TargetScale | None:
    """The per-vertex mean and SD of a run's real BOLD, read as the loader reads it but not z-scored.

    Parameters
    ----------
    run_files : RunFiles
        The run (its ``target`` files and sidecars).
    names : sequence of str
        The points, in the order of the generated data (``windows.target_names``).
    preprocess : PreprocessConfig
        The checkpoint's preprocessing (the common time grid).

    Returns
    -------
    TargetScale or None
        None when the run has no fMRI target.
    """
    if run_files is None or run_files.target_modality != "fmri" or not run_files.target:
        return None
    tr = repetition_time(run_files.target[0], run_files.target_sidecars)
    raw = read_fmri(run_files.target, preprocess.model_copy(update={"fmri_zscore": False}), tr=tr)
    rows = [raw.names.index(name) for name in names]
    data = raw.data[rows].astype(np.float64)
    return TargetScale(data.mean(axis=1), data.std(axis=1), "this run's real recording (per-vertex mean and SD)")


def site_scale(scales: Sequence[TargetScale]) -> TargetScale:
    """The site's distribution for a run without a real target: its real runs' scales averaged.

    Parameters
    ----------
    scales : sequence of TargetScale
        The real runs' scales (at least one).

    Returns
    -------
    TargetScale
        Mean of the per-vertex means and of the per-vertex SDs.
    """
    return TargetScale(
        np.mean([sc.mean for sc in scales], axis=0),
        np.mean([sc.sd for sc in scales], axis=0),
        f"the site's {len(scales)} real run(s) pooled (no real target for this run)",
    )


def units_sidecar(modality: str, zscore: bool, scale: TargetScale | None) -> dict[str, Any]:
    """The sidecar fields that say what the values are.

    Parameters
    ----------
    modality : str
        ``fmri`` or ``fnirs``.
    zscore : bool
        Whether the model works on z-scored BOLD (``fmri_zscore``).
    scale : TargetScale or None
        The de-normalisation applied (fMRI with ``zscore``).

    Returns
    -------
    dict
        ``Units`` and ``Normalization``.
    """
    if modality == "fnirs":
        return {
            "Units": "umol/L",
            "Normalization": "none: concentration changes band-passed like the site's data by the loader",
        }
    if not zscore:
        return {"Units": "the site's BOLD units", "Normalization": "none: the model works on unscaled BOLD"}
    if scale is None:
        return {"Units": "z (per vertex)", "Normalization": "z-scored per vertex; no real run to de-normalise with"}
    return {
        "Units": "the site's BOLD units (arbitrary scanner units, as its real runs)",
        "Normalization": f"model output (z-scored per vertex per run) x SD + mean, from {scale.source}",
    }


def write_fmri_run(
    folder: Path, entities: dict[str, str], run: StitchedRun, sfreq: float, sidecar: dict[str, Any]
) -> list[Path]:
    """Write a generated fMRI run: both hemispheres on fsaverage5 (GIFTI) and the JSON sidecar.

    Parameters
    ----------
    folder : Path
        The run's ``func`` folder.
    entities : dict of str to str
        The file's BIDS entities (``desc`` included).
    run : StitchedRun
        The run on ico4; it is upsampled to fsaverage5.
    sfreq : float
        Frame rate (Hz); the repetition time is ``1 / sfreq``.
    sidecar : dict
        More fields of the JSON sidecar.

    Returns
    -------
    list of Path
        The files written (left and right GIFTI, then the sidecar).
    """
    surface = upsample_ico4(run.data)
    tr = 1.0 / sfreq
    written = []
    for i, hemi in enumerate(("L", "R")):
        name = bids_name({**entities, "hemi": hemi, "space": "fsaverage5"}, "bold", ".func.gii")
        rows = slice(i * FSAVERAGE5_PER_HEMI, (i + 1) * FSAVERAGE5_PER_HEMI)
        written.append(write_gifti_timeseries(folder / name, surface[rows], hemi, tr))
    fields = {
        "RepetitionTime": tr,
        "StartTime": 0.0,
        "TaskName": entities.get("task"),
        "SpatialReference": FSAVERAGE5_SPATIAL_REFERENCE,
        **sidecar,
    }
    written.append(write_json_atomic(folder / bids_name({**entities, "space": "fsaverage5"}, "bold", ".json"), fields))
    return written


_CHANNEL = re.compile(r"^S(\d+)_D(\d+)\b")


def _channels(windows: PairedWindows) -> tuple[list[tuple[int, int]], np.ndarray]:
    """fNIRS channels as 1-based ``(source, detector)`` pairs and the rows of their HbO and HbR."""
    if windows.target_point_types is None:
        raise ConfigError("fNIRS windows without point types (hbo/hbr) cannot be written as SNIRF")
    pairs: dict[tuple[int, int], dict[str, int]] = {}
    for i, (name, kind) in enumerate(zip(windows.target_names, windows.target_point_types)):
        match = _CHANNEL.match(name)
        if match is None or kind not in ("hbo", "hbr"):
            raise ConfigError(
                f"fNIRS point {name!r} ({kind}): SNIRF output needs MNE's channel names, 'S<i>_D<j> hbo|hbr'"
            )
        pairs.setdefault((int(match[1]), int(match[2])), {})[kind] = i
    incomplete = [p for p, rows in pairs.items() if len(rows) != 2]
    if incomplete:
        raise ConfigError(f"fNIRS channel S{incomplete[0][0]}_D{incomplete[0][1]} lacks HbO or HbR")
    return list(pairs), np.array([[rows["hbo"], rows["hbr"]] for rows in pairs.values()])


def _probe(site_snirf: Path | None, pairs: list[tuple[int, int]], midpoints: np.ndarray) -> tuple[SnirfProbe, str]:
    """The optodes to write, and where they came from: the site's own SNIRF file where it is
    usable, else each optode at the mean midpoint of its channels (``midpoints [n_pairs, 3]``),
    so that MNE still places the channels right (though not their source-detector distances)."""
    pairs_arr = np.array(pairs)
    n_src, n_det = int(pairs_arr[:, 0].max()), int(pairs_arr[:, 1].max())
    if site_snirf is not None:
        try:
            probe = read_snirf_probe(site_snirf)
            if len(probe.source_pos_mm) >= n_src and len(probe.detector_pos_mm) >= n_det:
                return replace(probe, wavelengths=probe.wavelengths or list(DEFAULT_WAVELENGTHS)), str(site_snirf)
        except (OSError, KeyError, ValueError):
            pass  # an unreadable probe only costs the optode positions

    def centres(column: int, n: int) -> np.ndarray:
        """Optode ``i`` (1-based) at the mean midpoint of its channels (origin when it has none)."""
        owned = [pairs_arr[:, column] == i for i in range(1, n + 1)]
        return np.array([midpoints[mask].mean(axis=0) if mask.any() else np.zeros(3) for mask in owned])

    probe = SnirfProbe(
        source_pos_mm=centres(0, n_src),
        detector_pos_mm=centres(1, n_det),
        source_labels=[f"S{i}" for i in range(1, n_src + 1)],
        detector_labels=[f"D{j}" for j in range(1, n_det + 1)],
        wavelengths=list(DEFAULT_WAVELENGTHS),
    )
    return probe, "channel midpoints"


def write_fnirs_run(
    folder: Path,
    entities: dict[str, str],
    run: StitchedRun,
    windows: PairedWindows,
    preprocess: PreprocessConfig,
    site_snirf: Path | None,
    events: Sequence[Any],
    sidecar: dict[str, Any],
) -> list[Path]:
    """Write a generated fNIRS run: SNIRF with processed HbO/HbR in umol/L, and the JSON sidecar.

    Parameters
    ----------
    folder : Path
        The run's ``nirs`` folder.
    entities : dict of str to str
        The file's BIDS entities (``desc`` included).
    run : StitchedRun
        The generated run (model units).
    windows : PairedWindows
        The run's windows: channel names, point types and positions.
    preprocess : PreprocessConfig
        The loader's settings (``fnirs_scale`` is undone).
    site_snirf : Path or None
        The site's own SNIRF file, whose probe is used where it is usable; otherwise each
        optode is placed at the mean midpoint of its channels.
    events : sequence
        Events (``onset``, ``duration``, ``trial_type``) written into the SNIRF file.
    sidecar : dict
        More fields of the JSON sidecar.

    Returns
    -------
    list of Path
        The SNIRF file and the sidecar.

    Raises
    ------
    ConfigError
        When the channels are not MNE's ``S<i>_D<j> hbo|hbr`` pairs.
    """
    pairs, rows = _channels(windows)
    midpoints = np.asarray(windows.target_positions)[rows[:, 0]]
    probe, probe_origin = _probe(site_snirf, pairs, midpoints)
    # model units -> mol/L (undo the loader's scale) -> umol/L, the unit written in the file
    hb = run.data[rows.reshape(-1)] / preprocess.fnirs_scale * 1e6
    path = folder / bids_name(entities, "nirs", ".snirf")
    write_snirf(
        path, hb.T, windows.target_sfreq, haemoglobin_measurements(pairs), probe.wavelengths, probe.source_pos_mm,
        probe.detector_pos_mm, probe.source_labels, probe.detector_labels, events, subject_id=f"sub-{entities['sub']}",
    )  # fmt: skip
    fields = {
        "TaskName": entities.get("task"),
        "SamplingFrequency": windows.target_sfreq,
        "StartTime": 0.0,
        "NIRSChannelCount": 2 * len(pairs),
        "NIRSSourceOptodeCount": len(probe.source_labels),  # BIDS requires both counts
        "NIRSDetectorOptodeCount": len(probe.detector_labels),
        "ProbeFrom": probe_origin,
        **sidecar,
    }
    return [path, write_json_atomic(folder / bids_name(entities, "nirs", ".json"), fields)]


@dataclass
class _Event:
    onset: float
    duration: float
    trial_type: str


def _run_events(run_files) -> list[_Event]:
    if run_files is None or run_files.events is None:
        return []
    try:
        table = read_events(run_files.events, run_files.task)
    except DataError:
        return []  # events only annotate the output; the loader already reported a broken file
    return [_Event(float(r.onset), float(r.duration), str(r.trial_type)) for r in table.itertuples()]


def generated_by(
    checkpoint: Path, meta: dict[str, Any], *, steps: int, guidance_scale: float, seed: int, label: str | None
) -> dict[str, Any]:
    """Describe the provenance of generated data (the sidecars' ``GeneratedBy``).

    Parameters
    ----------
    checkpoint : Path
        The checkpoint directory.
    meta : dict
        The checkpoint's metadata (``preset``, ``content_hash``).
    steps : int
        Sampling steps (0 for the point prediction).
    guidance_scale : float
        Classifier-free guidance scale.
    seed : int
        Seed of the sample.
    label : str or None
        The class generation was conditioned on.

    Returns
    -------
    dict
        ``Name``, ``Version``, ``Model``, ``Checkpoint``, ``CheckpointHash``, ``Steps``,
        ``GuidanceScale``, ``Seed``, ``Label``.
    """
    return {
        "Name": GENERATOR,
        "Version": __version__,
        "Model": f"NeuroGenModel (preset {meta.get('preset')}, EMA weights)",
        "Checkpoint": str(checkpoint),
        "CheckpointHash": meta.get("content_hash"),
        "Steps": steps,
        "GuidanceScale": guidance_scale,
        "Seed": seed,
        "Label": label,
    }


def start_derivatives(out_dir: Path, site_dir: Path, modality: str) -> list[Path]:
    """Write the files at the root of a generated derivatives dataset.

    Parameters
    ----------
    out_dir : Path
        Root of the derivatives dataset.
    site_dir : Path
        The BIDS site whose EEG drives generation (named as the source dataset).
    modality : str
        The generated modality, ``fmri`` or ``fnirs``.

    Returns
    -------
    list of Path
        ``dataset_description.json`` and ``.bidsignore``.
    """
    software = {
        "Name": GENERATOR,
        "Version": __version__,
        "Description": f"EEG -> {modality} by a diffusion transformer",
    }
    return [
        write_dataset_description(
            out_dir, f"{GENERATOR} synthesis from {site_dir.name}", derivative=True, generated_by=[software],
            SourceDatasets=[{"URL": site_dir.resolve().as_uri()}],
        ),
        write_bidsignore(out_dir, GENERATED_BIDSIGNORE),
    ]  # fmt: skip


def run_scales(windows: PairedWindows, run_files: dict[str, Any], preprocess: PreprocessConfig) -> dict[str, Any]:
    """Choose the de-normalisation of every generated run (see the module docstring).

    Parameters
    ----------
    windows : PairedWindows
        The generated windows (their runs, points and modality).
    run_files : dict of str to RunFiles
        The site's runs by key (``find_runs``).
    preprocess : PreprocessConfig
        The checkpoint's preprocessing.

    Returns
    -------
    dict of str to TargetScale or None
        Run key -> its own real run's scale, else the site's real runs pooled (None: none to
        use); empty unless the model works on z-scored fMRI.
    """
    scales: dict[str, TargetScale | None] = {}
    if windows.target_modality == "fmri" and preprocess.fmri_zscore:
        keys = sorted(set(windows.runs.tolist()))
        scales = {key: target_scale(run_files.get(key), windows.target_names, preprocess) for key in keys}
        if any(sc is None for sc in scales.values()):  # a run without its real target: the site's real runs
            real = [sc for sc in scales.values() if sc is not None] or [
                sc for f in run_files.values() if (sc := target_scale(f, windows.target_names, preprocess)) is not None
            ]
            pooled = site_scale(real) if real else None
            scales = {key: sc or pooled for key, sc in scales.items()}
    return scales


def write_run(
    out_dir: Path,
    entities: dict[str, str],
    run: StitchedRun,
    windows: PairedWindows,
    preprocess: PreprocessConfig,
    run_files: Any,
    sidecar: dict[str, Any],
) -> list[Path]:
    """Write one generated run where its modality goes (``write_fmri_run`` or ``write_fnirs_run``).

    Parameters
    ----------
    out_dir : Path
        Root of the derivatives dataset.
    entities : dict of str to str
        The file's BIDS entities (``desc`` included).
    run : StitchedRun
        The generated run, in the data's units for fMRI, in model units for fNIRS.
    windows : PairedWindows
        The site's windows (target modality, rate, channels).
    preprocess : PreprocessConfig
        The checkpoint's preprocessing.
    run_files : RunFiles or None
        The site's run (its SNIRF probe and events for fNIRS).
    sidecar : dict
        More fields of the JSON sidecar.

    Returns
    -------
    list of Path
        The files written.
    """
    if windows.target_modality == "fmri":
        return write_fmri_run(run_folder(out_dir, entities, "func"), entities, run, windows.target_sfreq, sidecar)
    site_snirf = run_files.target[0] if run_files is not None and run_files.target else None
    folder = run_folder(out_dir, entities, "nirs")
    return write_fnirs_run(folder, entities, run, windows, preprocess, site_snirf, _run_events(run_files), sidecar)
