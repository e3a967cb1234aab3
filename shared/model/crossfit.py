"""Cross-fitted training targets: what the residual learns is the error on a new subject.

The ridge path is solved on the training subjects, so on those subjects it fits better than it
will on anyone else (in-sample optimism). A residual trained on ``target - ridge(x)`` of the
training windows learns that smaller, partly fitted-away error, and the diffusion learns its
smaller spread: on held-out subjects the residual has nothing to add and the samples are too
narrow. Cross-fitting removes the optimism (stacking, Wolpert 1992; double ML, Chernozhukov et
al. 2018): each training subject's linear prediction comes from a ridge fitted without its fold
of subjects, with the penalty, rank and band weights the full fit chose. The residual and the
diffusion then train on

    target - ridge_without_fold(x) = (target + ridge(x) - ridge_without_fold(x)) - ridge(x),

that is, on the training windows with their targets moved by the optimism, while the model keeps
the full ridge path for prediction. Nothing in the model changes; validation windows are
out-of-sample already and stay as they are.

Of a model with a local path the global part is cross-fitted (its share ``1 - a``); the local
path's per-point fits on a few dozen columns are left in-sample.

The class of a window enters the point prediction in closed form too (``fit_class_offsets``):
each class's mean cross-fitted residual per frame and point, as linear-Gaussian's mean has it, so
the labelled mean carries the class whether or not the learned residual earns its place.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from fedneurogen.shared.design import DESIGN_GROUPS, feature_bands, global_part, iter_subject_statistics, unique_frames
from fedneurogen.shared.recording import PairedWindows, WindowView
from fedneurogen.shared.ridge import RidgeStatistics, fit_ridge, sum_statistics
from fedneurogen.shared.splits import subject_folds

#: Folds of training subjects (at most one per subject).
CROSS_FIT_FOLDS = 5


def _site_subjects(sites: Sequence[PairedWindows]) -> np.ndarray:
    """``site-index/subject`` of every subject of every site, in the order ``iter_subject_statistics``
    yields them (subjects of different sites may share a name)."""
    return np.array([f"{i}/{s}" for i, w in enumerate(sites) for s in sorted(set(w.subjects.tolist()))], dtype=object)


def _band_weights(choice: dict, n_features: int) -> np.ndarray | None:
    weights = choice.get("band_weights")
    if weights is None:
        return None
    return np.array([weights[DESIGN_GROUPS[group]] for group in feature_bands(n_features)], dtype=np.float64)


def cross_fitted_sites(
    model: nn.Module, modality: str, sites: Sequence[PairedWindows], choice: dict, n_folds: int = CROSS_FIT_FOLDS
) -> tuple[list[PairedWindows], dict]:  # fmt: skip
    """The training windows of ``modality`` with their targets moved by the ridge path's optimism.

    Parameters
    ----------
    model : torch.nn.Module
        A ``NeuroGenModel`` whose ridge path of ``modality`` was solved on ``sites``
        (``fit_ridge_paths``).
    modality : str
        ``"fmri"`` or ``"fnirs"``.
    sites : sequence of PairedWindows
        The training windows of ``modality``, one entry per site, as the ridge path was fitted on.
    choice : dict
        What ``solve_ridge_path`` chose (penalty, rank, band weights, switched off).
    n_folds : int
        Folds of subjects, pooled over sites (at most one per subject).

    Returns
    -------
    sites : list of PairedWindows
        The windows with ``target + (1 - a) (ridge(x) - ridge_without_fold(x))``; unchanged when
        there is nothing to cross-fit (fewer than two subjects, or the path switched off).
    summary : dict
        ``folds``, and the summed squared optimism as a share of the targets' summed variance
        (``optimism_share_of_variance``).
    """
    keys = _site_subjects(sites)
    folds = subject_folds(keys, n_folds)
    if len(folds) < 2 or choice.get("switched_off"):
        return list(sites), {"folds": 0, "reason": "one subject" if len(folds) < 2 else "ridge path switched off"}
    fold_of = {key: i for i, fold in enumerate(folds) for key in fold}
    sums: list[RidgeStatistics | None] = [None] * len(folds)
    for key, stats in zip(keys, (s for w in sites for s in iter_subject_statistics(w)), strict=True):
        i = fold_of[key]
        sums[i] = stats if sums[i] is None else sums[i] + stats
    head = model.modality_heads[modality].mean
    n_points = sites[0].target.shape[1]
    full_coef = head.ridge.coef.detach().cpu().double().numpy()[:, :n_points]
    full_intercept = head.ridge.intercept.detach().cpu().double().numpy()[:n_points]
    share = 1.0 - (float(head.local.weight) if head.local is not None else 0.0)
    weights = _band_weights(choice, full_coef.shape[0])
    total = sum_statistics(sums)  # every training frame once: the targets' variance, from its sums
    variance = float(np.sum(total.syy - total.sy**2 / total.n))
    out, optimism = [], 0.0
    solutions = [
        fit_ridge(sum_statistics([s for j, s in enumerate(sums) if j != i]), None, (choice["penalty"],), (choice["rank"],), weights)
        for i in range(len(folds))
    ]  # fmt: skip
    for index, windows in enumerate(sites):
        rows_w, rows_f = unique_frames(windows)  # every run frame once
        design = global_part(np.asarray(windows.design[rows_w, rows_f]))  # [R, D]
        row_keys = np.array([f"{index}/{s}" for s in windows.subjects[rows_w].tolist()], dtype=object)
        shift = np.zeros((len(rows_w), n_points), np.float32)  # [R, N]
        for i, solution in enumerate(solutions):  # ridge(x) - ridge_without_fold(x): one matmul a fold
            held = np.isin(row_keys, folds[i])
            coef = (share * (full_coef - solution.coef)).astype(np.float32)
            intercept = (share * (full_intercept - solution.intercept)).astype(np.float32)
            shift[held] = design[held].astype(np.float32) @ coef + intercept
        optimism += float(np.sum(np.square(shift, dtype=np.float64)))
        out.append(replace(windows, target=_moved(windows, rows_w, rows_f, shift)))
    return out, {"folds": len(folds), "optimism_share_of_variance": optimism / max(variance, 1e-12)}


def _moved(windows: PairedWindows, rows_w: np.ndarray, rows_f: np.ndarray, shift: np.ndarray):
    """The windows' targets with ``shift [R, N]`` added at every run frame (``unique_frames``'s
    rows), in every window that holds the frame: continuous data (``WindowView``) moves once."""
    target = windows.target
    if isinstance(target, WindowView) and target.time_axis == 1:
        data = np.array(target.data, dtype=np.float32)  # a copy: the site's cache stays as it is
        data[:, target.starts[rows_w] + rows_f] += shift.T
        return WindowView(data, target.starts, target.length, target.time_axis)
    target = np.array(target, dtype=np.float32)
    starts = np.round(windows.onsets * windows.target_sfreq).astype(int)
    row_of = {(str(windows.runs[w]), int(starts[w] + f)): r for r, (w, f) in enumerate(zip(rows_w, rows_f))}
    for w in range(len(target)):
        rows = [row_of[(str(windows.runs[w]), int(starts[w] + f))] for f in range(target.shape[2])]
        target[w] += shift[rows].T
    return target


def cross_fitted_training(
    model: nn.Module, sites: Sequence[PairedWindows], choices: dict[str, dict], n_folds: int = CROSS_FIT_FOLDS
) -> tuple[list[PairedWindows], dict[str, dict]]:  # fmt: skip
    """``cross_fitted_sites`` for every modality of ``sites`` (their order kept).

    Parameters
    ----------
    model : torch.nn.Module
        The model, ridge paths solved (``fit_ridge_paths``).
    sites : sequence of PairedWindows
        The training windows, one entry per site.
    choices : dict of str to dict
        ``fit_ridge_paths``'s choice per modality.
    n_folds : int
        Folds of subjects.

    Returns
    -------
    sites : list of PairedWindows
        The training windows to train the residual and the diffusion on.
    summary : dict of str to dict
        Per modality, as ``cross_fitted_sites``.
    """
    out: list[PairedWindows] = list(sites)
    summary = {}
    for modality, choice in choices.items():
        index = [i for i, w in enumerate(sites) if w.target_modality == modality]
        moved, summary[modality] = cross_fitted_sites(model, modality, [sites[i] for i in index], choice, n_folds)
        for i, windows in zip(index, moved, strict=True):
            out[i] = windows
    return out, summary


#: A class gets an offset only with windows of at least this many training subjects.
MIN_CLASS_SUBJECTS = 2
#: A federation's query for a site's ``ClassResiduals`` (``server/class_offsets.py`` reads the reply).
CLASS_RESIDUALS_REQUEST = "class-residuals"


@dataclass
class ClassResiduals:
    """Per-class sums of the residual of the closed-form prediction, additive over sites.

    Attributes
    ----------
    sums : np.ndarray
        ``[C, F, N]`` each class's summed residual (target - linear paths) per frame and point.
    squares : np.ndarray
        ``[C, F, N]`` its summed squares.
    windows : np.ndarray
        ``[C]`` windows of each class.
    subjects : np.ndarray
        ``[C]`` subjects with windows of each class.
    """

    sums: np.ndarray
    squares: np.ndarray
    windows: np.ndarray
    subjects: np.ndarray

    def __add__(self, other: "ClassResiduals") -> "ClassResiduals":
        return ClassResiduals(*(a + b for a, b in zip(self.as_tuple(), other.as_tuple())))

    def as_tuple(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(sums, squares, windows, subjects)``."""
        return self.sums, self.squares, self.windows, self.subjects

    def released(self, min_subjects: int) -> "ClassResiduals":
        """These sums with every class of fewer than ``min_subjects`` subjects left out (zero)."""
        keep = self.subjects >= min_subjects
        return ClassResiduals(*(np.where(keep.reshape(-1, *[1] * (a.ndim - 1)), a, 0) for a in self.as_tuple()))

    def to_arrays(self, part: str) -> dict[str, np.ndarray]:
        """Named float64 arrays for a message: ``<part>.sums``, ``.squares``, ``.windows``, ``.subjects``."""
        names = ("sums", "squares", "windows", "subjects")
        return {f"{part}.{k}": np.ascontiguousarray(v, dtype=np.float64) for k, v in zip(names, self.as_tuple())}

    def offsets(self, min_subjects: int = MIN_CLASS_SUBJECTS) -> np.ndarray:
        """``[C, F, N]`` each class's mean residual; zero for a class of fewer than ``min_subjects``."""
        enough = (self.subjects >= min_subjects) & (self.windows > 0)
        mean = self.sums / np.maximum(self.windows, 1)[:, None, None]
        return np.where(enough[:, None, None], mean, 0.0)

    def error_change(self, offsets: np.ndarray) -> float:
        """Summed squared error of these windows with ``offsets`` minus without: for the windows
        of class c, ``n_c |o_c|^2 - 2 o_c . s_c`` (negative: the offsets help)."""
        return float(np.sum(self.windows * np.sum(offsets**2, axis=(1, 2))) - 2 * np.sum(offsets * self.sums))

    def best_shrinkage(self, offsets: np.ndarray) -> float:
        """The factor ``a`` in [0, 1] that minimises these windows' error with ``a * offsets``
        (closed form: ``sum_c o_c . s_c / sum_c n_c |o_c|^2``, clipped)."""
        energy = float(np.sum(self.windows * np.sum(offsets**2, axis=(1, 2))))
        return 0.0 if energy <= 0 else float(np.clip(np.sum(offsets * self.sums) / energy, 0.0, 1.0))


def closed_form_prediction(
    head: nn.Module, windows: PairedWindows, labels: torch.Tensor | None, chunk: int = 64, whole_class_offset: bool = False
) -> np.ndarray:  # fmt: skip
    """The mean head's closed-form part (linear paths, + class offsets with ``labels``): ``[W, N, F]``.

    Parameters
    ----------
    head : torch.nn.Module
        A modality head's ``MeanHead``.
    windows : PairedWindows
        Windows with a design.
    labels : torch.Tensor | None
        long ``[W]`` class indices (-1: none); None: label-free.
    chunk : int
        Windows per step.
    whole_class_offset : bool
        The class offsets whole (a sample's mean), not shrunk (the point prediction's).

    Returns
    -------
    np.ndarray
        float32 ``[W, N, F]``.
    """
    names = list(windows.target_names) if windows.target_modality == "fnirs" else None
    n_points = windows.target.shape[1]
    device = head.ridge.coef.device
    out = np.empty((len(windows), n_points, windows.target.shape[2]), np.float32)
    with torch.no_grad():
        for start in range(0, len(windows), chunk):
            index = np.arange(start, min(start + chunk, len(windows)))
            design = torch.as_tensor(np.asarray(windows.design[index]), dtype=torch.float32, device=device)
            part = None if labels is None else labels[index].to(device)
            out[index] = (
                head(design, part, names, n_points, residual=False, whole_class_offset=whole_class_offset).cpu().numpy()
            )
    return out


def class_indices(windows: PairedWindows, class_to_index: dict[str, int]) -> np.ndarray:
    """Each window's class index (-1: a class the model has no slot for, or none)."""
    return np.array([class_to_index.get(str(c), -1) for c in windows.labels], dtype=np.int64)


def class_residuals(head: nn.Module, windows: PairedWindows, class_to_index: dict[str, int]) -> ClassResiduals:
    """The per-class residual sums of the windows against the head's label-free linear paths.

    Parameters
    ----------
    head : torch.nn.Module
        A modality head's ``MeanHead`` (its paths solved).
    windows : PairedWindows
        The windows (training ones with cross-fitted targets, or validation ones).
    class_to_index : dict of str to int
        The model's label index of each class.

    Returns
    -------
    ClassResiduals
        Over ``head.num_classes`` classes.
    """
    n_classes = head.num_classes
    labels = class_indices(windows, class_to_index)
    residual = np.asarray(windows.target) - closed_form_prediction(head, windows, None)
    sums = np.zeros((n_classes, windows.target.shape[2], windows.target.shape[1]))
    squares = np.zeros_like(sums)
    counts, subjects = np.zeros(n_classes), np.zeros(n_classes)
    for c in np.unique(labels[(labels >= 0) & (labels < n_classes)]):
        mine = labels == c
        sums[c] = residual[mine].sum(axis=0, dtype=np.float64).T
        squares[c] = np.square(residual[mine], dtype=np.float64).sum(axis=0).T
        counts[c], subjects[c] = mine.sum(), len(set(windows.subjects[mine].tolist()))
    return ClassResiduals(sums, squares, counts, subjects)


def install_class_offsets(
    head: nn.Module, train: ClassResiduals, val: ClassResiduals | None, min_subjects: int = MIN_CLASS_SUBJECTS
) -> dict[str, Any]:  # fmt: skip
    """Set the ridge path's class offsets from summed training residuals: whole for samples, and
    for the point prediction shrunk toward zero by the factor that minimises the validation
    windows' error (a class mean of a few subjects is noisy: a factor of 0 switches them off;
    without validation windows, no shrinkage).

    Parameters
    ----------
    head : torch.nn.Module
        A modality head's ``MeanHead``.
    train : ClassResiduals
        Summed over the training windows (cross-fitted targets).
    val : ClassResiduals | None
        Summed over the validation windows; None: none.
    min_subjects : int
        Training subjects a class needs for an offset.

    Returns
    -------
    dict
        ``classes_with_offset`` (indices), ``shrinkage`` (the factor), ``kept`` (by the point
        prediction), and
        ``validation_error_change`` (summed squared error with minus without, at that factor;
        None without validation windows).
    """
    offsets = train.offsets(min_subjects)
    validated = val is not None and bool(val.windows.any())
    shrinkage = val.best_shrinkage(offsets) if validated else 1.0
    change = val.error_change(shrinkage * offsets) if validated else None
    kept = bool((shrinkage * offsets != 0).any()) and (change is None or change < 0)
    # samples carry the offsets whole whatever the point prediction keeps (``RidgePath``)
    head.ridge.set_class_offsets(offsets, shrinkage if kept else 0.0)
    with_offset = [int(c) for c in np.flatnonzero((offsets != 0).any(axis=(1, 2)))]
    return {"classes_with_offset": with_offset, "shrinkage": shrinkage, "kept": kept, "validation_error_change": change}


def fit_class_offsets(
    model: nn.Module, modality: str, train: Sequence[PairedWindows], val: Sequence[PairedWindows],
    class_to_index: dict[str, int], min_subjects: int = MIN_CLASS_SUBJECTS,
) -> dict[str, Any]:  # fmt: skip
    """Install each class's mean residual per frame and point as the ridge path's class offset.

    The residual is the cross-fitted one (``train`` from ``cross_fitted_sites``): a class offset
    of in-sample residuals would carry the ridge's optimism, not the class. See
    ``install_class_offsets``.

    Parameters
    ----------
    model : torch.nn.Module
        The model, its ridge path of ``modality`` solved.
    modality : str
        ``"fmri"`` or ``"fnirs"``.
    train, val : sequence of PairedWindows
        Training windows (cross-fitted targets) and validation windows of ``modality``.
    class_to_index : dict of str to int
        The model's label index of each class.
    min_subjects : int
        Training subjects a class needs for an offset.

    Returns
    -------
    dict
        As ``install_class_offsets``, with the classes by name.
    """
    head = model.modality_heads[modality].mean

    def summed(sites: Sequence[PairedWindows]) -> ClassResiduals | None:
        parts = [class_residuals(head, w, class_to_index) for w in sites]
        return functools.reduce(operator.add, parts) if parts else None

    report = install_class_offsets(head, summed(train), summed(val), min_subjects)
    names = {i: name for name, i in class_to_index.items()}
    report["classes_with_offset"] = [names.get(i, str(i)) for i in report["classes_with_offset"]]
    return report
