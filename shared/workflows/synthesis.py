"""Synthesis: a site's EEG -> the target modality, written back as a BIDS derivatives dataset.

``synthesize`` loads a checkpoint with its EMA weights, cuts the site's EEG into windows with the
checkpoint's own preprocessing, samples the target for every window (``generate``) or takes its
point prediction (``point_predictions``), and writes each run through
``fedneurogen.shared.workflows.synthesis_output``: the windows stitched back into one time series
per run on the run's own time grid, de-normalised to the site's units, as GIFTI (fMRI, upsampled
to fsaverage5) or SNIRF (fNIRS) with JSON sidecars (that module's docstring gives the layout and
the units). Its public names are importable from here too.

The ``desc`` entity says what was generated: ``generated``, plus the class with ``label``
(``generatedFaces``), plus the sample number when several samples are drawn per window
(``generated1``, ``generated2``, ...; sample ``k`` uses seed ``seed + k - 1``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedneurogen.shared.config import PreprocessConfig
from fedneurogen.shared.data import find_runs, load_site
from fedneurogen.shared.data.problems import DataWarning
from fedneurogen.shared.errors import ConfigError
from fedneurogen.shared.model import Batch, NeuroGenModel, load_checkpoint
from fedneurogen.shared.model.checkpoint import read_checkpoint_config
from fedneurogen.shared.recording import PairedWindows
from fedneurogen.shared.workflows.synthesis_output import (
    DEFAULT_WAVELENGTHS,
    GENERATED_BIDSIGNORE,
    GENERATOR,
    StitchedRun,
    TargetScale,
    desc_label,
    generated_by,
    run_entities,
    run_folder,
    run_scales,
    site_scale,
    start_derivatives,
    stitch_run,
    target_scale,
    uncovered_seconds,
    units_sidecar,
    write_fmri_run,
    write_fnirs_run,
    write_run,
)

__all__ = [
    "DEFAULT_WAVELENGTHS", "GENERATED_BIDSIGNORE", "GENERATOR", "StitchedRun", "TargetScale", "check_label",
    "desc_label", "generate", "generated_by", "label_indices", "point_predictions", "run_entities", "run_folder",
    "run_scales", "sample_seed", "select_subjects", "site_scale", "start_derivatives", "stitch_run", "synthesize",
    "target_scale", "uncovered_seconds", "unconditioned_classes", "units_sidecar", "write_fmri_run",
    "write_fnirs_run", "write_run",
]  # fmt: skip

log = logging.getLogger(__name__)


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
        Sampling steps (default: the model's ``sampling_steps``).
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
        Sampling steps (default: the model's ``sampling_steps``).
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
    preprocess = PreprocessConfig.from_stored(meta.get("preprocess"))
    # only the named subjects are read and preprocessed
    loaded = load_site(site_dir, preprocess, cache_dir=cache_dir, progress=progress, subjects=subjects or None)
    windows = select_subjects(loaded, subjects)
    labels = label_indices(windows, meta.get("class_names"), label)
    if label is None:
        _warn_unconditioned(site_dir, windows, labels, meta.get("class_names"))
    steps = steps or model.config.sampling_steps
    if estimate == "mean":
        n_samples, steps = 1, 0
    samples = _draw(
        model, windows, labels if estimate == "sample" or label is not None else None, estimate=estimate,
        n_samples=n_samples, steps=steps, guidance_scale=guidance_scale, seed=seed, batch_size=batch_size,
        progress=progress,
    )  # fmt: skip

    written = _write_derivatives(
        out_dir, site_dir, samples, windows, preprocess, checkpoint, meta, estimate=estimate, steps=steps,
        guidance_scale=guidance_scale, seed=seed, label=label,
    )  # fmt: skip
    log.debug("wrote %d files under %s", len(written), out_dir)
    return written


def _write_derivatives(
    out_dir: Path,
    site_dir: Path,
    samples: np.ndarray,
    windows: PairedWindows,
    preprocess: PreprocessConfig,
    checkpoint: Path,
    meta: dict[str, Any],
    *,
    estimate: str,
    steps: int,
    guidance_scale: float,
    seed: int,
    label: str | None,
) -> list[Path]:
    """Write ``samples [n_samples, n_windows, ...]`` as the derivatives dataset: its root files,
    then every run's samples (``_write_run_samples``)."""
    written = start_derivatives(out_dir, site_dir, windows.target_modality)
    run_files = {run.key: run for run in find_runs(site_dir)}
    scales = run_scales(windows, run_files, preprocess)
    provenance = [  # sample k's GeneratedBy
        generated_by(
            checkpoint, meta, steps=steps, guidance_scale=guidance_scale, seed=sample_seed(seed, k), label=label
        )
        | {"Estimate": "point prediction (conditional mean)" if estimate == "mean" else "sample"}
        for k in range(len(samples))
    ]
    kind = "generated" if estimate == "sample" else "mean"
    for key in sorted(set(windows.runs.tolist())):
        in_run = np.flatnonzero(windows.runs == key)
        written += _write_run_samples(
            out_dir, site_dir, key, samples[:, in_run], windows, preprocess, run_files.get(key), scales.get(key),
            provenance, kind=kind, label=label,
        )  # fmt: skip
    return written


def _draw(
    model: NeuroGenModel, windows: PairedWindows, labels: np.ndarray | None, *, estimate: str, **options
) -> np.ndarray:
    """``[n_samples, n_windows, n_points, n_frames]``: ``generate``'s samples, or for ``estimate``
    ``"mean"`` the point prediction as one sample (``options``: ``generate``'s)."""
    if estimate == "mean":
        return point_predictions(model, windows, labels, batch_size=options["batch_size"])[None]
    return generate(model, windows, labels, **options)


def _warn_unconditioned(
    site_dir: Path, windows: PairedWindows, labels: np.ndarray, class_names: Sequence[str] | None
) -> None:
    """Warn about the windows whose class the model lacks: they are generated with the null label."""
    unknown = unconditioned_classes(windows, labels)
    if unknown:
        listed = ", ".join(f"{name!r} ({n} windows)" for name, n in unknown.items())
        warnings.warn(
            f"{site_dir}: class(es) {listed} are not among the model's classes {list(class_names or [])}: "
            "generated with the null label (unconditionally); --label conditions every window on one class",
            DataWarning,
            stacklevel=3,  # synthesize's caller
        )


def _write_run_samples(
    out_dir: Path,
    site_dir: Path,
    key: str,
    run_samples: np.ndarray,
    windows: PairedWindows,
    preprocess: PreprocessConfig,
    files: Any,
    scale: TargetScale | None,
    provenance: list[dict[str, Any]],
    *,
    kind: str,
    label: str | None,
) -> list[Path]:
    """Write every sample of one run (``run_samples [n_samples, n_windows_of_run, ...]``, its
    windows in ``windows`` order): stitched, de-normalised with ``scale``, each with its sidecar
    (``provenance[k]`` is sample ``k``'s ``GeneratedBy``)."""
    in_run = np.flatnonzero(windows.runs == key)
    sfreq = windows.target_sfreq
    sources = [str(files.eeg.relative_to(site_dir))] if files is not None else []
    n_samples = len(run_samples)
    written: list[Path] = []
    for k in range(n_samples):
        run = stitch_run(run_samples[k], windows.onsets[in_run], sfreq)
        run = scale.apply(run) if scale is not None else run
        entities = {**run_entities(key), "desc": desc_label(label, k + 1 if n_samples > 1 else None, kind)}
        sidecar = {
            "Description": f"{windows.target_modality} generated from the EEG of this run",
            "Sources": sources,
            "UncoveredSeconds": uncovered_seconds(run, sfreq),
            **units_sidecar(windows.target_modality, preprocess.fmri_zscore, scale),
            "GeneratedBy": provenance[k],
        }
        written += write_run(out_dir, entities, run, windows, preprocess, files, sidecar)
    return written
