"""Synthesis: a site's EEG -> the target modality, written back as a BIDS derivatives dataset.

``synthesize`` loads a checkpoint with its EMA weights, cuts the site's EEG into windows with the
checkpoint's own preprocessing, samples the target for every window (``generate``), stitches
overlapping windows back into one time series per run (``stitch_run``) and writes:

    OUT/dataset_description.json                               derivative, GeneratedBy FedNeuroGen
    OUT/sub-01/func/sub-01_task-visual_run-1_hemi-{L,R}_space-fsaverage5_desc-generated_bold.func.gii
    OUT/sub-01/func/sub-01_task-visual_run-1_space-fsaverage5_desc-generated_bold.json
    OUT/sub-01/nirs/sub-01_task-motor_run-1_desc-generated_nirs.snirf    (HbO/HbR, the site's probe)
    OUT/sub-01/nirs/sub-01_task-motor_run-1_desc-generated_nirs.json

fMRI is generated on ico4 (2562 vertices per hemisphere) and upsampled to fsaverage5 (10242) by
``upsample_ico4``. A generated run is on the run's own time grid (frame ``j`` at ``j / sfreq`` s
from the start of the EEG run, like the site's real recording); frames no window covers (the
first ``lag`` seconds, gaps between windows) are the baseline (zero in model units) and are listed
in ``UncoveredSeconds``.

Units: generated data is written in the units of the site's data, declared in the sidecar
(``Units``, ``Normalization``). The model works on BOLD z-scored per vertex per run
(``fmri_zscore``); each generated fMRI run is de-normalised with the subject's own real run
(its per-vertex mean and SD after the same resampling, read once, ``target_scale``), or, for a
run without a real target (EEG only), with the site's real runs pooled (mean of their per-vertex
means and SDs). fNIRS is written in umol/L (the loader's ``fnirs_scale`` undone), band-passed as
the loader does; no z-score is involved.

The ``desc`` entity says what was generated: ``generated``, plus the class with ``label``
(``generatedFaces``), plus the sample number when several samples are drawn per window
(``generated1``, ``generated2``, ...; sample ``k`` uses seed ``seed + k - 1``).
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedneurogen import __version__
from fedneurogen.shared.config import PreprocessConfig
from fedneurogen.shared.data.problems import DataWarning
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
from fedneurogen.shared.model import Batch, NeuroGenModel, load_checkpoint
from fedneurogen.shared.recording import PairedWindows
from fedneurogen.shared.surface import FSAVERAGE5_PER_HEMI, upsample_ico4
from fedneurogen.shared.data import find_runs, load_site, read_fmri
from fedneurogen.shared.data.bids import read_events
from fedneurogen.shared.data.fmri import repetition_time
from fedneurogen.shared.model.checkpoint import read_checkpoint_config

log = logging.getLogger(__name__)

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
# Generation


def label_indices(windows: PairedWindows, class_names: Sequence[str] | None, label: str | None = None) -> np.ndarray:
    """Return the label index each window is conditioned on.

    Parameters
    ----------
    windows : PairedWindows
        The windows (their ``labels``).
    class_names : sequence of str or None
        The checkpoint's classes, in label-index order.
    label : str, optional
        Condition every window on this class; by default each window on its own class.

    Returns
    -------
    numpy.ndarray
        ``[n_windows]`` int64 label indices; -1 (the null label) for classes the model was not
        trained on.

    Raises
    ------
    ConfigError
        When ``label`` is not one of ``class_names``.
    """
    names = list(class_names or [])
    if label is not None:
        check_label(label, names)
        return np.full(len(windows), names.index(label), dtype=np.int64)
    index = {name: i for i, name in enumerate(names)}
    return np.array([index.get(str(name), -1) for name in windows.labels], dtype=np.int64)


def check_label(label: str | None, class_names: Sequence[str] | None, checkpoint: str | Path | None = None) -> None:
    """Refuse a ``--label`` the model was not trained on (before any data is loaded).

    Parameters
    ----------
    label : str or None
        The class to condition on; None: nothing to check.
    class_names : sequence of str or None
        The checkpoint's classes.
    checkpoint : path-like, optional
        The checkpoint (named in the message).

    Raises
    ------
    ConfigError
        When ``label`` is not one of ``class_names``.
    """
    names = list(class_names or [])
    if label is not None and label not in names:
        where = f"checkpoint {checkpoint}" if checkpoint is not None else "the checkpoint"
        have = ", ".join(names) if names else "none: it was trained without labels"
        raise ConfigError(f"label {label!r} is not a class of {where} (its classes: {have})")


def unconditioned_classes(windows: PairedWindows, labels: np.ndarray) -> dict[str, int]:
    """The windows' classes that the model has no label for (they get the null label).

    Parameters
    ----------
    windows : PairedWindows
        The windows.
    labels : numpy.ndarray
        Their label indices (``label_indices``; -1: the null label).

    Returns
    -------
    dict of str to int
        Class -> windows of it generated with the null label (unconditionally).
    """
    null = np.asarray(labels) < 0
    names, counts = np.unique(np.asarray(windows.labels)[null].astype(str), return_counts=True)
    return {str(n): int(c) for n, c in zip(names, counts)}


def sample_seed(seed: int, sample: int) -> int:
    """Return the seed of sample ``sample`` (0-based) of a run seeded with ``seed``.

    Parameters
    ----------
    seed : int
        The run's seed.
    sample : int
        The sample number, from 0.

    Returns
    -------
    int
        ``seed + sample``.
    """
    return seed + sample


@torch.no_grad()
def generate(
    model: NeuroGenModel,
    windows: PairedWindows,
    labels: np.ndarray | None = None,
    *,
    n_samples: int = 1,
    steps: int | None = None,
    guidance_scale: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = False,
) -> np.ndarray:
    """Sample the target of every window.

    Sample ``k`` draws its noise from a CPU generator seeded with ``sample_seed(seed, k)``, batch
    after batch, so the same seed and batch size give the same arrays on any device.

    Parameters
    ----------
    model : NeuroGenModel
        The generator (put in eval mode).
    windows : PairedWindows
        The windows whose EEG conditions generation.
    labels : numpy.ndarray, optional
        Label index per window (-1: the null label); None: unconditional.
    n_samples : int
        Samples per window.
    steps : int, optional
        DDIM steps (default: the model's ``sampling_steps``).
    guidance_scale : float
        Classifier-free guidance scale (1: the plain conditional model).
    seed : int
        Seed of the sampling noise.
    batch_size : int
        Windows sampled together.
    progress : bool
        Show a progress bar on stderr.

    Returns
    -------
    numpy.ndarray
        ``[n_samples, n_windows, n_points, n_frames]`` float32.

    Raises
    ------
    ConfigError
        When ``n_samples`` is below 1.
    """
    if n_samples < 1:
        raise ConfigError(f"n_samples must be at least 1, got {n_samples}")
    model.eval()
    out = np.zeros((n_samples, len(windows), *windows.target.shape[1:]), dtype=np.float32)
    starts = range(0, len(windows), batch_size)
    with _progress(progress) as bar:
        task = bar.add_task("generating", total=n_samples * len(starts))
        for k in range(n_samples):
            generator = torch.Generator().manual_seed(sample_seed(seed, k))  # CPU: same noise on any device
            for start in starts:
                index = np.arange(start, min(start + batch_size, len(windows)))
                batch = Batch.from_windows(windows, index, device=model.device)
                if labels is not None:
                    batch.labels = torch.as_tensor(labels[index], dtype=torch.long, device=model.device)
                sampled = model.sample(batch, steps=steps, guidance_scale=guidance_scale, generator=generator)
                out[k, index] = sampled.float().cpu().numpy()
                bar.advance(task)
    return out


@torch.no_grad()
def point_predictions(
    model: NeuroGenModel,
    windows: PairedWindows,
    labels: np.ndarray | None = None,
    *,
    batch_size: int = 64,
    residual: bool = True,
) -> np.ndarray:
    """Compute the point prediction (conditional mean) of every window, without sampling.

    Parameters
    ----------
    model : NeuroGenModel
        The generator (put in eval mode).
    windows : PairedWindows
        The windows whose EEG conditions the prediction.
    labels : numpy.ndarray, optional
        Label index per window (-1: the null label); None: label-free.
    batch_size : int
        Windows per batch.
    residual : bool
        With the learned residual; False: the model's linear paths alone.

    Returns
    -------
    numpy.ndarray
        ``[n_windows, n_points, n_frames]`` float32; deterministic.
    """
    model.eval()
    out = np.zeros((len(windows), *windows.target.shape[1:]), dtype=np.float32)
    for start in range(0, len(windows), batch_size):
        index = np.arange(start, min(start + batch_size, len(windows)))
        batch = Batch.from_windows(windows, index, device=model.device)
        if labels is not None:
            batch.labels = torch.as_tensor(labels[index], dtype=torch.long, device=model.device)
        out[index] = model.point_prediction(batch, residual=residual).float().cpu().numpy()
    return out


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    return Progress(*columns, console=Console(stderr=True), transient=True, disable=not enabled)


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
        DDIM steps (0 for the point prediction).
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


def select_subjects(windows: PairedWindows, subjects: Sequence[str] | None) -> PairedWindows:
    """Keep the windows of some subjects.

    Parameters
    ----------
    windows : PairedWindows
        A site's windows.
    subjects : sequence of str or None
        Subjects (``sub-01`` or ``01``); None or empty keeps all windows.

    Returns
    -------
    PairedWindows
        The subjects' windows.

    Raises
    ------
    ConfigError
        When a subject has no usable window in the site.
    """
    if not subjects:
        return windows
    wanted = {s if s.startswith("sub-") else f"sub-{s}" for s in subjects}
    missing = wanted - set(windows.subjects.tolist())
    if missing:
        have = sorted(set(windows.subjects.tolist()))
        raise ConfigError(f"subjects {sorted(missing)} have no usable windows in this site (it has {have})")
    return windows.subset(np.isin(windows.subjects, sorted(wanted)))


def synthesize(
    checkpoint: str | Path,
    site_dir: str | Path,
    out_dir: str | Path,
    *,
    subjects: Sequence[str] | None = None,
    label: str | None = None,
    estimate: str = "sample",
    n_samples: int = 1,
    steps: int | None = None,
    guidance_scale: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
    device: str | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> list[Path]:
    """Generate the target modality from a site's EEG and write it as BIDS derivatives.

    Parameters
    ----------
    checkpoint : path-like
        A checkpoint directory; its EMA weights, ``preprocess`` and ``class_names`` are used.
    site_dir : path-like
        The BIDS site whose EEG drives generation (its windows, as ``load_site`` cuts them).
    out_dir : path-like
        Root of the derivatives dataset written (see the module docstring for the layout).
    subjects : sequence of str, optional
        Only these participants (``sub-01`` or ``01``).
    label : str, optional
        Condition every window on this class (one of the checkpoint's ``class_names``); by
        default each window on its own class, or the null label where the model lacks it.
    estimate : ``"sample"`` or ``"mean"``
        ``sample`` draws from the model (realistic variability: what augmentation wants);
        ``mean`` writes the deterministic point prediction, the conditional mean given the EEG
        (and label), as ``desc-mean`` (what fidelity is scored on; best PCC with the real signal).
    n_samples : int
        Samples per window; each is written as its own ``desc-generated<k>`` file.
    steps : int, optional
        DDIM steps (default: the model's ``sampling_steps``).
    guidance_scale : float
        Classifier-free guidance scale (1: the plain conditional model).
    seed : int
        Seed of the sampling noise; sample ``k`` uses ``seed + k - 1``.
    batch_size : int
        Windows sampled together.
    device : str, optional
        ``cpu`` or ``cuda`` (default: CUDA when available).
    cache_dir : path-like, optional
        Cache of preprocessed windows (see ``load_site``).
    progress : bool
        Show progress bars on stderr (loading and sampling).

    Returns
    -------
    list of Path
        Every file written, ``dataset_description.json`` first.

    Raises
    ------
    ConfigError
        For an unknown ``estimate`` or ``label`` (refused before the site is read), subjects
        without runs or windows, or an unusable checkpoint.
    DataError
        When the site has no usable run.
    """
    checkpoint, site_dir, out_dir = Path(checkpoint), Path(site_dir), Path(out_dir)
    if estimate not in ("sample", "mean"):
        raise ConfigError(f"estimate must be 'sample' or 'mean', got {estimate!r}")
    # what the options ask of the model is checked before its weights or the site are read
    check_label(label, read_checkpoint_config(checkpoint).get("class_names"), checkpoint)
    model, meta = load_checkpoint(checkpoint, device=device, use_ema=True)
    preprocess = PreprocessConfig(**(meta.get("preprocess") or {}))
    # only the named subjects are read and preprocessed
    loaded = load_site(site_dir, preprocess, cache_dir=cache_dir, progress=progress, subjects=subjects or None)
    windows = select_subjects(loaded, subjects)
    labels = label_indices(windows, meta.get("class_names"), label)
    if label is None:
        unknown = unconditioned_classes(windows, labels)
        if unknown:
            listed = ", ".join(f"{name!r} ({n} windows)" for name, n in unknown.items())
            warnings.warn(
                f"{site_dir}: class(es) {listed} are not among the model's classes {list(meta.get('class_names') or [])}: "
                "generated with the null label (unconditionally); --label conditions every window on one class",
                DataWarning,
                stacklevel=2,
            )
    steps = steps or model.config.sampling_steps
    if estimate == "mean":
        n_samples, steps = 1, 0
        samples = point_predictions(model, windows, labels if label is not None else None, batch_size=batch_size)[None]
    else:
        samples = generate(
            model, windows, labels, n_samples=n_samples, steps=steps, guidance_scale=guidance_scale, seed=seed,
            batch_size=batch_size, progress=progress,
        )  # fmt: skip

    software = {
        "Name": GENERATOR,
        "Version": __version__,
        "Description": f"EEG -> {windows.target_modality} by a diffusion transformer",
    }
    written = [
        write_dataset_description(
            out_dir, f"{GENERATOR} synthesis from {site_dir.name}", derivative=True, generated_by=[software],
            SourceDatasets=[{"URL": site_dir.resolve().as_uri()}],
        ),
        write_bidsignore(out_dir, GENERATED_BIDSIGNORE),
    ]  # fmt: skip
    run_files = {run.key: run for run in find_runs(site_dir)}
    sfreq = windows.target_sfreq
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
    for key in sorted(set(windows.runs.tolist())):
        in_run = np.flatnonzero(windows.runs == key)
        files = run_files.get(key)
        sources = [str(files.eeg.relative_to(site_dir))] if files is not None else []
        for k in range(n_samples):
            run = stitch_run(samples[k, in_run], windows.onsets[in_run], sfreq)
            scale = scales.get(key)
            run = scale.apply(run) if scale is not None else run
            kind = "generated" if estimate == "sample" else "mean"
            entities = {**run_entities(key), "desc": desc_label(label, k + 1 if n_samples > 1 else None, kind)}
            provenance = generated_by(
                checkpoint, meta, steps=steps, guidance_scale=guidance_scale, seed=sample_seed(seed, k), label=label
            )
            provenance["Estimate"] = "point prediction (conditional mean)" if estimate == "mean" else "sample"
            sidecar = {
                "Description": f"{windows.target_modality} generated from the EEG of this run",
                "Sources": sources,
                "UncoveredSeconds": uncovered_seconds(run, sfreq),
                **units_sidecar(windows.target_modality, preprocess.fmri_zscore, scale),
                "GeneratedBy": provenance,
            }
            if windows.target_modality == "fmri":
                written += write_fmri_run(run_folder(out_dir, entities, "func"), entities, run, sfreq, sidecar)
            else:
                site_snirf = files.target[0] if files is not None and files.target else None
                folder = run_folder(out_dir, entities, "nirs")
                written += write_fnirs_run(
                    folder, entities, run, windows, preprocess, site_snirf, _run_events(files), sidecar
                )
    log.debug("wrote %d files under %s", len(written), out_dir)
    return written
