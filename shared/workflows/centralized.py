"""Centralized training (``fedneurogen train``): one model on the pooled training subjects of every site.

``train_centralized`` runs these steps, each a function below:

1. data and split: each site's windows cut by subject (``split_sites``), the classes, the model
   (``_model_for``);
2. the closed-form parts: the ridge paths (``_ridge_paths``), the cross-fitted training targets
   and the class offsets (``_closed_form_parts``);
3. the run's state, new or resumed from its folder (``_start_run``), and its provenance
   (``_provenance``, ``subject_record``);
4. the training loop, with validation and a checkpoint after every epoch (``_train_loop``).

The loop itself (``train_epochs``) is shared with federated training (``training.py``); what the
run folder keeps beside the checkpoint is ``run_state.py``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedneurogen.shared.errors import ConfigError
from fedneurogen.shared.io import file_sha256
from fedneurogen.shared.model import (
    EMA,
    NeuroGenModel,
    get_preset,
    load_checkpoint_into,
    load_ema,
    read_checkpoint_config,
    save_checkpoint,
)
from fedneurogen.shared.recording import PairedWindows
from fedneurogen.shared.splits import (
    PROVENANCE_KEY,
    SubjectSplit,
    seen_record,
    split_record,
    split_subjects,
    subject_keys,
)
from fedneurogen.shared.workflows.run_state import (
    CHECKPOINT_DIR,
    STATE_FILE,
    JsonlLogger,
    load_training_state,
    save_training_state,
    write_run_config,
)
from fedneurogen.shared.workflows.training import (
    TRAIN_PRESETS,
    BestMean,
    TrainConfig,
    class_index,
    make_optimizer,
    point_prediction_scores,
    subject_pcc,
    train_epochs,
    validation_loss,
)
from fedneurogen.shared.model.eeg_encoder import load_labram_checkpoint
from fedneurogen.shared.model.mean import fit_ridge_paths
from fedneurogen.shared.config import PreprocessConfig
from fedneurogen.shared.model.crossfit import cross_fitted_training, fit_class_offsets
from fedneurogen.shared.model.noise import fit_noise
from fedneurogen.shared.workflows.departure import choose_departure

log = logging.getLogger(__name__)


@dataclass
class SplitSites:
    """Each site's windows cut by subject into train / validation / test.

    Parameters
    ----------
    train : list of PairedWindows
        Every site's training windows (possibly empty).
    val, test : list of PairedWindows
        The validation and test windows of the sites that have any.
    subjects : list of SubjectSplit
        Each site's subject split, in the order of the sites.
    """

    train: list[PairedWindows]
    val: list[PairedWindows]
    test: list[PairedWindows]
    subjects: list[SubjectSplit] = field(default_factory=list)


def split_sites(sites: Sequence[PairedWindows], seed: int, val_fraction: float, test_fraction: float) -> SplitSites:
    """Cut each site's windows by subject into train / validation / test.

    Parameters
    ----------
    sites : sequence of PairedWindows
        The sites' windows.
    seed : int
        Seed of the subject split (``splits.split_subjects``).
    val_fraction, test_fraction : float
        Shares of each site's subjects held out.

    Returns
    -------
    SplitSites
        The windows of each part; a subject's windows are all in one part.
    """
    out = SplitSites([], [], [])
    for site in sites:
        split = split_subjects(site.subjects, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)
        out.subjects.append(split)
        train, val, test = split.masks(site.subjects)
        out.train.append(site.subset(train))
        if val.any():
            out.val.append(site.subset(val))
        if test.any():
            out.test.append(site.subset(test))
    return out


def subject_record(
    sites: Sequence[PairedWindows],
    site_dirs: Sequence[str | Path],
    splits: Sequence[SubjectSplit],
    names: Sequence[str],
) -> dict[str, Any]:
    """What a centralized checkpoint saw: each site's split by the content of its subjects' files.

    Parameters
    ----------
    sites : sequence of PairedWindows
        The sites' windows.
    site_dirs : sequence of path-like
        Their folders, in the same order.
    splits : sequence of SubjectSplit
        Each site's subject split (``SplitSites.subjects``).
    names : sequence of str
        The sites' names (display only).

    Returns
    -------
    dict
        The record for the provenance (``splits.seen_record``).

    Raises
    ------
    ValueError
        ``site_dirs`` and ``sites`` differ in length.
    DataError
        A file of a run cannot be read to hash it.
    """
    if len(site_dirs) != len(sites):
        raise ValueError(f"{len(site_dirs)} site folders for {len(sites)} sites")
    entries = []
    for windows, folder, split, name in zip(sites, site_dirs, splits, names):
        keys = subject_keys(folder, windows.runs, windows.subjects)
        entries.append(split_record(split, keys, name))
    return seen_record(entries)


def train_centralized(
    sites: Sequence[PairedWindows],
    run_dir: Path,
    *,
    preset: str = "tiny",
    seed: int = 0,
    max_minutes: float | None = None,
    resume: bool = False,
    device: str | None = None,
    train_config: TrainConfig | None = None,
    preprocess: dict[str, Any] | None = None,
    site_names: Sequence[str] | None = None,
    site_dirs: Sequence[str | Path] | None = None,
    progress: bool = True,
    residual_eeg: bool = False,
    eeg_encoder: str | Path | None = None,
) -> Path:
    """Train one model on the pooled training subjects of ``sites``.

    Writes ``run_dir/checkpoint/`` (after every epoch and at the end), ``train_state.pt``
    (optimiser and counters for ``resume``), ``log.jsonl``, ``tensorboard/`` and ``run.json``.
    When ``max_minutes`` runs out, training stops after a checkpoint and logs it (INFO).

    Parameters
    ----------
    sites : sequence of PairedWindows
        Each site's windows; they are split by subject (``split_sites``).
    run_dir : Path
        The run directory (created if needed).
    preset : str
        Model preset (``tiny``, ``small``, ``base``); also picks the ``TRAIN_PRESETS`` entry.
    seed : int
        Seed of the subject split, the initialisation and the batches.
    max_minutes : float, optional
        Stop (and checkpoint) after this many minutes.
    resume : bool
        Continue from the checkpoint and training state in ``run_dir``.
    device : str, optional
        ``cpu`` or ``cuda`` (default: CUDA when available).
    train_config : TrainConfig, optional
        Overrides the preset's training settings.
    preprocess : dict, optional
        Preprocessing settings of the windows, stored with the checkpoint.
    site_names : sequence of str, optional
        Names of the sites for the provenance (default ``site-01``, ``site-02``, ...), for display.
    site_dirs : sequence of path-like, optional
        The sites' folders, in the order of ``sites``: the checkpoint then records the content
        hashes of each split's subjects (``splits.split_record``), which ``evaluate`` needs to
        score only subjects the model never saw. Without them the record is left out and
        ``evaluate`` refuses the checkpoint unless told ``--allow-seen``.
    progress : bool
        Show a progress bar on stderr.
    residual_eeg : bool
        The learned residual also reads EEG through an encoder of its own
        (``ModelConfig.mean_eeg_features``); False: the design alone.
    eeg_encoder : path-like, optional
        A LaBraM checkpoint (``load_labram_checkpoint``) for the EEG encoders of a new run: the
        DiT's and the residual's branch's start from its weights (``--eeg-encoder``).

    Returns
    -------
    Path
        The checkpoint directory, ``run_dir/checkpoint``.

    Raises
    ------
    ConfigError
        When the data has more classes than the preset has label slots, or ``resume`` finds no
        checkpoint or an unusable training state; ``eeg_encoder`` with ``resume``, or a file of
        which no tensor fits the preset's encoder.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = train_config or TRAIN_PRESETS.get(preset, TrainConfig())
    torch.manual_seed(seed)
    # 1. data and split
    split = split_sites(sites, seed, config.val_fraction, config.test_fraction)
    classes = class_index(sites)
    model = _model_for(preset, classes, preprocess, device, residual_eeg)
    if resume:
        _check_same_preprocess(run_dir, preprocess)
        _check_same_residual(run_dir, model)
    pretrained = _pretrained_encoder(model, eeg_encoder, preset, resume, run_dir)
    # 2. closed-form parts (the ridge paths before the EMA copies the weights), 3. the run's state
    ridge_choice = _ridge_paths(model, split, run_dir, resume)
    run = _start_run(model, run_dir, config, resume)
    train_sites, cross_fit, class_offsets = _closed_form_parts(
        model, run.ema, split, classes, config, ridge_choice, resume, seed
    )
    names = list(site_names or [f"site-{i + 1:02d}" for i in range(len(sites))])
    provenance = {
        **_provenance(preset, seed, config, names, split),
        "ridge_path": ridge_choice,
        "cross_fit": cross_fit,
        "class_offsets": class_offsets,
        **({"eeg_encoder": pretrained} if pretrained else {}),
    }
    if site_dirs is not None:
        provenance[PROVENANCE_KEY] = subject_record(sites, site_dirs, split.subjects, names)
    write_run_config(run_dir, {"provenance": provenance, "classes": list(classes)})
    run.extra = {"class_names": list(classes), "preprocess": preprocess or {}, "provenance": provenance}
    # 4. the training loop
    logger = JsonlLogger(run_dir)
    deadline = time.time() + 60 * max_minutes if max_minutes else None
    selection_sites = split.val or train_sites  # validation subjects; the training ones only when there are none
    finished, best = _train_loop(
        run, train_sites, selection_sites, classes, config, seed, deadline, max_minutes, logger, progress
    )
    # the point prediction keeps the residual validation supports (``BestMean``: the best epoch's
    # only where its gain exceeds one standard error; the diffusion keeps its last weights), and
    # the samples the share of the DiT's departure from its Gaussian that validation supports
    best.restore(model, run.ema)
    run.extra["provenance"]["residual"] = residual = best.summary()
    log.info(
        "learned residual %s: best at epoch %d of %d, gain in Fisher z %s (one standard error %s) over %d "
        "validation subjects",
        "kept" if residual["kept"] else "not kept (the start's stays)", residual["best_epoch"],
        residual["epochs_offered"],
        *(f"{v:.4f}" if v is not None else "n/a" for v in (residual["gain_z"], residual["gain_standard_error"])),
        residual["validation_subjects"],
    )  # fmt: skip
    if split.val and config.departure_windows:
        with run.ema.average_parameters(model):
            departure = choose_departure(model, split.val, classes, config.departure_windows, seed, config.batch_size)
            chosen = {m: (d["chosen"], d.get("spread", 1.0)) for m, d in departure.items()}
        for modality, (share, spread) in chosen.items():  # into the weights as well as the averages
            model.modality_heads[modality].noise.departure.data.fill_(share)
            model.modality_heads[modality].noise.spread.data.fill_(spread)
        run.ema.reset_frozen(model)
        run.extra["provenance"]["departure"] = departure
    run.save(finished)
    logger.close()
    return run.checkpoint_dir


@dataclass
class _Run:
    """A centralized run's model and optimiser state, which every checkpoint saves.

    ``step`` counts optimiser steps; ``epoch`` is the first epoch still to train; ``extra`` is
    what the checkpoint stores beside the weights (class names, preprocessing, provenance).
    """

    run_dir: Path
    model: NeuroGenModel
    ema: EMA
    optimizer: torch.optim.Optimizer
    step: int = 0
    epoch: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / CHECKPOINT_DIR

    def save(self, epoch: int) -> None:
        """Write the checkpoint (after ``epoch`` epochs) and the training state beside it."""
        provenance = {**self.extra.get("provenance", {}), "epochs": epoch, "steps": self.step}
        save_checkpoint(self.checkpoint_dir, self.model, ema=self.ema, extra={**self.extra, "provenance": provenance})
        save_training_state(self.run_dir / STATE_FILE, self.optimizer, self.step, epoch)


def _model_for(
    preset: str, classes: dict[str, int], preprocess: dict[str, Any] | None, device: str | None, residual_eeg: bool
) -> NeuroGenModel:
    """The preset's model, fitted to the data's preprocessing; refused when the classes do not fit."""
    model_config = get_preset(preset).model_copy(update={"mean_eeg_features": residual_eeg})
    if len(classes) > model_config.num_classes:
        raise ConfigError(
            f"the data has {len(classes)} classes {sorted(classes)} but preset {preset!r} has {model_config.num_classes} label slots"
        )
    if preprocess:
        model_config = model_config.for_preprocess(PreprocessConfig(**preprocess))
        model_config.check_preprocess(PreprocessConfig(**preprocess))
    return NeuroGenModel(model_config, device=device)


def _check_same_preprocess(run_dir: Path, preprocess: dict[str, Any] | None) -> None:
    """``--resume`` refuses a run folder whose checkpoint was trained with other preprocessing."""
    checkpoint_dir = run_dir / CHECKPOINT_DIR
    if not preprocess or not (checkpoint_dir / "config.json").exists():
        return
    before = PreprocessConfig.from_stored(read_checkpoint_config(checkpoint_dir).get("preprocess"))
    changed = PreprocessConfig(**preprocess).changed_fields(before)
    if changed:
        raise ConfigError(
            f"--resume: {run_dir} was trained with other preprocessing ({', '.join(changed)}); "
            "resume with the same --preprocess settings"
        )


def _check_same_residual(run_dir: Path, model: NeuroGenModel) -> None:
    """``--resume`` refuses a run folder whose residual read EEG where this one does not, or the reverse."""
    checkpoint_dir = run_dir / CHECKPOINT_DIR
    if not (checkpoint_dir / "config.json").exists():
        return
    before = bool(read_checkpoint_config(checkpoint_dir).get("model_config", {}).get("mean_eeg_features", False))
    if before != model.config.mean_eeg_features:
        said = "with" if before else "without"
        raise ConfigError(f"--resume: {run_dir} was trained {said} --residual-eeg; resume {said} it")


def _pretrained_encoder(
    model: NeuroGenModel, path: str | Path | None, preset: str, resume: bool, run_dir: Path
) -> dict[str, Any] | None:
    """Start the EEG encoders (the DiT's, and the residual's branch's with ``--residual-eeg``) from
    a LaBraM checkpoint (``--eeg-encoder``); what was loaded, for the provenance (a resumed run:
    what its first part recorded). Nothing is downloaded: the file is the user's."""
    if resume:
        if path is not None:
            raise ConfigError("--eeg-encoder starts a new run; a resumed run keeps the encoder its checkpoint holds")
        stored = run_dir / CHECKPOINT_DIR
        if not (stored / "config.json").exists():
            return None
        return (read_checkpoint_config(stored).get("provenance") or {}).get("eeg_encoder")
    if path is None:
        return None
    report = load_labram_checkpoint(model.eeg_encoder, path)
    if not report.loaded:
        raise ConfigError(
            f"--eeg-encoder {path}: none of its tensors fits the {preset!r} preset's EEG encoder "
            f"({len(report.skipped_shape)} of another shape; LaBraM-Base fits --preset base)"
        )
    for head in model.modality_heads.values():
        if head.mean.eeg is not None:  # the branch's own encoder starts from the same weights
            head.mean.eeg.encoder.load_state_dict(model.eeg_encoder.state_dict())
    return {
        "file": Path(path).name, "sha256": file_sha256(path), "loaded": len(report.loaded),
        "skipped_shape": len(report.skipped_shape), "left_at_initialisation": len(report.missing),
    }  # fmt: skip


def _ridge_paths(model: NeuroGenModel, split: SplitSites, run_dir: Path, resume: bool) -> Any:
    """Solve the ridge paths in closed form (a new run), or read how they were solved (a resumed one).

    Returns the choice the provenance records (``mean.fit_ridge_paths``), None when unknown.
    """
    if not resume:
        return fit_ridge_paths(model, split.train, split.val)
    checkpoint_dir = run_dir / CHECKPOINT_DIR
    saved = read_checkpoint_config(checkpoint_dir) if (checkpoint_dir / "config.json").exists() else {}
    return (saved.get("provenance") or {}).get("ridge_path")


def _start_run(model: NeuroGenModel, run_dir: Path, config: TrainConfig, resume: bool) -> _Run:
    """The EMA and optimiser of a new run, or those of the run in ``run_dir`` with its counters."""
    ema = EMA(model, decay=model.config.ema_decay)
    run = _Run(run_dir, model, ema, make_optimizer(model.parameters(), config))
    if not resume:
        return run
    if not (run.checkpoint_dir / "config.json").exists():
        raise ConfigError(f"--resume: no checkpoint in {run.checkpoint_dir}")
    load_checkpoint_into(model, run.checkpoint_dir)
    run.ema = load_ema(run.checkpoint_dir, model) or ema
    state = load_training_state(run_dir / STATE_FILE, run.optimizer)
    run.step, run.epoch = int(state["step"]), int(state["epoch"])
    log.info("resuming %s at epoch %d, step %d", run_dir, run.epoch, run.step)
    return run


def _closed_form_parts(
    model: NeuroGenModel,
    ema: EMA,
    split: SplitSites,
    classes: dict[str, int],
    config: TrainConfig,
    ridge_choice: Any,
    resume: bool,
    seed: int,
) -> tuple[list[PairedWindows], dict[str, Any] | None, dict[str, Any]]:
    """The training windows the residual learns from, the class offsets and the noise model.

    With ``cross_fit_folds`` the training targets are cross-fitted (the residual learns the
    ridge path's error on new subjects); a new run then fits each class's mean residual in
    closed form, and the residual's noise model (the diffusion's coordinates) on what is left.
    Returns the training windows, the cross-fit record and the offsets per modality (with the
    noise model's record under ``noise_model``).
    """
    train_sites, cross_fit, class_offsets = list(split.train), None, {}
    if config.cross_fit_folds and ridge_choice:
        train_sites, cross_fit = cross_fitted_training(model, split.train, ridge_choice, config.cross_fit_folds)
    if not resume:
        for modality in sorted({w.target_modality for w in train_sites}):
            of = lambda ws: [w for w in ws if w.target_modality == modality]  # noqa: E731
            class_offsets[modality] = fit_class_offsets(model, modality, of(train_sites), of(split.val), classes)
            class_offsets[modality]["noise_model"] = fit_noise(model, modality, of(train_sites), classes, seed)
        ema.reset_frozen(model)  # the closed-form parts were set after the average started
    return train_sites, cross_fit, class_offsets


def _provenance(preset: str, seed: int, config: TrainConfig, names: list[str], split: SplitSites) -> dict[str, Any]:
    """The run's settings and data as the checkpoint records them (``mode: centralized``)."""
    return {
        "mode": "centralized",
        "preset": preset,
        "seed": seed,
        "split_seed": seed,
        "val_fraction": config.val_fraction,
        "test_fraction": config.test_fraction,
        "train_config": config.model_dump(),
        "sites": names,
        "train_windows": int(sum(len(s) for s in split.train)),
    }


def _progress_bar(enabled: bool):
    """The epoch's progress bar on stderr (epoch, steps, loss, times); a no-op when not ``enabled``."""
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
        TextColumn("[bold]train[/] epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    return Progress(*columns, console=Console(stderr=True), disable=not enabled, transient=False)


def _train_loop(
    run: _Run,
    train_sites: list[PairedWindows],
    selection_sites: list[PairedWindows],
    classes: dict[str, int],
    config: TrainConfig,
    seed: int,
    deadline: float | None,
    max_minutes: float | None,
    logger: JsonlLogger,
    progress: bool,
) -> tuple[int, BestMean]:
    """Train the epochs left, validating (with the EMA weights) and checkpointing after each.

    Stops early at ``deadline``. Returns the epochs finished and the best point prediction on
    ``selection_sites`` (``BestMean``), for the caller to restore.
    """
    model, ema = run.model, run.ema
    with ema.average_parameters(model):
        best = BestMean(model, point_prediction_scores(model, selection_sites))
    logger.log(run.step, **{"val/pcc_point": best.score})
    per_epoch = sum(max(0, len(s) // config.batch_size + (len(s) % config.batch_size >= 2)) for s in train_sites)
    finished = run.epoch
    with _progress_bar(progress) as bar:
        task = bar.add_task(
            "train", total=per_epoch * (config.epochs - run.epoch), epoch=run.epoch + 1, loss=float("nan")
        )
        for epoch in range(run.epoch, config.epochs):
            bar.update(task, epoch=epoch + 1)
            stats, run.step = train_epochs(
                model,
                run.optimizer,
                train_sites,
                epochs=1,
                config=config,
                class_to_index=classes,
                seed=seed * 1000 + epoch,
                ema=ema,
                start_step=run.step,
                deadline=deadline,
                on_step=lambda s, parts: logger.log(s, **{f"train/{k}": v for k, v in parts.items()}),
                progress=lambda parts: bar.update(task, advance=1, loss=parts["total"]),
            )
            with ema.average_parameters(model):
                val = validation_loss(model, selection_sites, classes, config.batch_size, seed=seed)
                scores = point_prediction_scores(model, selection_sites)
                best.offer(model, scores)
            val_pcc = subject_pcc(scores)
            finished = epoch + 1 if not stats.stopped_early else epoch
            train_loss = stats.summary()["loss"]
            logger.log(
                run.step, epoch=finished, **{"val/loss": val, "val/pcc_point": val_pcc, "train/epoch_loss": train_loss}
            )
            run.save(finished)
            log.debug(
                "epoch %d: step %d, train loss %.4f, validation loss %.4f, validation point PCC %.3f",
                finished, run.step, train_loss, val, val_pcc,
            )  # fmt: skip
            if stats.stopped_early:
                log.info("stopped after %s min (--max-minutes) at step %d", max_minutes, run.step)
                break
    return finished, best
