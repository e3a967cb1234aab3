"""Scoring an evaluation's predictions and samples against the real held-out windows.

Point predictions (``scores``): temporal PCC (per point over each stitched run, Fisher-z
averaged; also over the top-10 % points), spatial PCC and SSIM (per frame) from
``fedneurogen.shared.metrics``; the samples' spread against the point prediction's error
(``calibration``). Samples as data (``samples_as_data``), the model's and linear-Gaussian's, on
the same held-out windows with the same K: interval coverage and CRPS, spectrum distance, coarse
FC similarity, a classifier two-sample test and train-on-synthetic-test-on-real (``tstr_scores``:
the fairness protocol's target features and logistic regression trained on each window's first
sample, labelled with the class it was conditioned on, tested on the real windows; next to the
same classifier trained on real windows), and what the spectra/FC figure shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fedneurogen.shared.metrics import (
    BOLD_BAND,
    NO_LABEL,
    coarse_parcels,
    connectivity,
    generation_metrics,
    log_spectra,
    sample_metrics,
    temporal_pcc,
    tiled_series,
    train_synthetic_test_real,
)
from fedneurogen.shared.recording import PairedWindows
from fedneurogen.shared.workflows.fairness.classifiers import make_classifier
from fedneurogen.shared.workflows.fairness.window_features import Features, target_features, target_parcellation


def conditioned_classes(labels: np.ndarray, class_names: Sequence[str] | None) -> np.ndarray:
    """The class each window's samples were conditioned on, by name.

    Parameters
    ----------
    labels : numpy.ndarray
        Label indices (``label_indices``; -1: the null label).
    class_names : sequence of str or None
        The checkpoint's classes, in label-index order.

    Returns
    -------
    numpy.ndarray
        object ``[n_windows]``: the class name, or None for a window sampled with the null label.
    """
    names = list(class_names or [])
    return np.array([names[i] if 0 <= i < len(names) else None for i in np.asarray(labels)], dtype=object)


def tstr_scores(
    generators: dict[str, np.ndarray | None], test: PairedWindows, labels: np.ndarray, seed: int = 0
) -> tuple[dict[str, dict[str, float | None]], dict[str, Any]]:  # fmt: skip
    """Train on synthetic, test on real, for each generator, and the train-on-real reference.

    The classifier is the fairness protocol's default downstream one: target features
    (``target_features``: mean and slope per ROI of ``target_parcellation`` for fMRI, per
    channel for fNIRS) and standardised logistic regression (``make_classifier("logreg")``).
    Each of a generator's K samples of every window trains one classifier on as many windows as
    the real set has, so TSTR and TRTR train on the same number of windows and their gap measures
    the data, not the size of the training set; the K scores are averaged. The folds
    (``train_synthetic_test_real``) are the same for every generator and the reference.

    Parameters
    ----------
    generators : dict of str to numpy.ndarray or None
        Name -> ``[K, *test.target.shape]`` samples (None: not drawn).
    test : PairedWindows
        The held-out (real) windows; their subjects group the folds.
    labels : numpy.ndarray
        The class every window's samples were conditioned on (``conditioned_classes``); windows
        with None (sampled with the null label: no class, or one the model lacks) are left out.
    seed : int
        Random state of the logistic regression.

    Returns
    -------
    scores : dict
        Name -> ``tstr_balanced_accuracy`` and ``tstr_macro_f1`` (None where not drawn).
    reference : dict
        ``trtr_balanced_accuracy``, ``trtr_macro_f1``, ``tstr_chance`` (1 / number of classes),
        ``classes``, ``windows`` (labelled ones) and ``classifier``; the scores are None with fewer
        than 2 classes or 2 subjects.
    """
    modality = test.target_modality
    rois = target_parcellation(test.target_positions, 64, seed=0) if modality == "fmri" else None
    real = target_features(test.target, modality, rois)
    columns = Features(real[:0], {"target": (0, real.shape[1])})
    labelled = np.array([c is not None and str(c).strip().lower() not in NO_LABEL for c in labels], dtype=bool)
    classes = sorted({str(c) for c in labels[labelled]})

    def score(generated: np.ndarray) -> dict[str, float | None]:
        return train_synthetic_test_real(
            generated, real, labels, test.subjects, lambda: make_classifier("logreg", columns, classes, seed=seed)
        )  # fmt: skip

    reference = score(real)

    def averaged(samples: np.ndarray) -> dict[str, float | None]:  # each sample set trains its own classifier
        each = [score(target_features(x, modality, rois)) for x in samples]
        return {
            f"tstr_{key}": None if any(e[key] is None for e in each) else float(np.mean([e[key] for e in each]))
            for key in each[0] if key != "chance"
        }  # fmt: skip

    scores = {name: None if samples is None else averaged(samples) for name, samples in generators.items()}
    return scores, {
        "trtr_balanced_accuracy": reference["balanced_accuracy"],
        "trtr_macro_f1": reference["macro_f1"],
        "tstr_chance": reference["chance"],
        "classes": classes,
        "windows": int(labelled.sum()),
        "classifier": "fairness protocol: target features (mean and slope per ROI/channel), logistic regression; "
        "trained on one sample of each window with its conditioning class, tested on the real windows, "
        "GroupKFold by subject; averaged over the samples",
    }


def samples_as_data(
    generators: dict[str, np.ndarray | None], test: PairedWindows, seed: int, labels: np.ndarray | None = None,
    tstr_only: dict[str, np.ndarray] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """Score each generator's samples as data, and what the spectra/FC figure shows.

    Parameters
    ----------
    generators : dict of str to numpy.ndarray or None
        Name -> ``[K, *test.target.shape]`` samples (None: not drawn).
    test : PairedWindows
        The held-out windows.
    seed : int
        Seed of the two-sample test and the TSTR classifier.
    labels : numpy.ndarray, optional
        The class each window's samples were conditioned on (``conditioned_classes``); None: no
        TSTR.
    tstr_only : dict of str to numpy.ndarray, optional
        More "generators" (name -> ``[K, *test.target.shape]``) scored by TSTR alone, in the same
        folds (e.g. the labelled point prediction).

    Returns
    -------
    metrics : dict
        Name -> ``sample_metrics`` plus, with ``labels``, ``tstr_balanced_accuracy`` and
        ``tstr_macro_f1`` (None where not drawn); ``real_reference`` (``tstr_scores``' train-on-real
        reference and chance; with ``labels``), ``parcels`` and ``band``.
    figure : dict
        ``freqs``, ``spectra`` and ``fcs`` of the real data and each generator's first sample.
    """
    real = np.asarray(test.target)
    parcels = coarse_parcels(test.target_positions, n_parcels=20)
    args = (test.runs, test.onsets, test.target_sfreq)
    metrics: dict[str, Any] = {
        name: None if samples is None else sample_metrics(samples, real, *args, test.subjects, parcels, seed=seed)
        for name, samples in generators.items()
    }
    if labels is not None:  # one reference and one set of folds for every generator
        tstr, metrics["real_reference"] = tstr_scores({**generators, **(tstr_only or {})}, test, labels, seed)
        for name, row in tstr.items():
            if row is not None:
                metrics[name] = row if metrics.get(name) is None else {**metrics[name], **row}
    metrics["parcels"] = f"{len(np.unique(parcels))} k-means parcels of the target points' positions (fixed seed)"
    metrics["band_hz"] = list(BOLD_BAND)
    shown = {"real": real, **{name: s[0] for name, s in generators.items() if s is not None}}
    spectra, fcs, freqs = {}, {}, np.zeros(0)
    for name, values in shown.items():
        series = tiled_series(values, *args)
        freqs, power = log_spectra(series, test.target_sfreq)
        spectra[name], fcs[name] = power.mean(axis=0), connectivity(series, parcels)
    return metrics, {"freqs": freqs, "spectra": spectra, "fcs": fcs}


def scores(pred: np.ndarray | None, real: PairedWindows, top: np.ndarray | None = None) -> dict[str, float] | None:
    """Score predictions against the real windows.

    Parameters
    ----------
    pred : numpy.ndarray or None
        Predictions shaped like ``real.target``.
    real : PairedWindows
        The real windows.
    top : numpy.ndarray, optional
        Point indices of the top-10 % set.

    Returns
    -------
    dict of str to float or None
        ``pcc_temporal``, ``pcc_spatial``, ``ssim`` (and ``pcc_temporal_top10`` with ``top``);
        None when ``pred`` is None.
    """
    if pred is None:
        return None
    out = {
        k: float(v) for k, v in generation_metrics(pred, real.target, real.runs, real.onsets, real.target_sfreq).items()
    }
    if top is not None:
        out["pcc_temporal_top10"] = float(
            temporal_pcc(pred, real.target, real.runs, real.onsets, real.target_sfreq, points=top)
        )
    return out


def calibration(samples: np.ndarray, mean: np.ndarray, real: np.ndarray) -> float:
    """Compare the samples' spread with the point prediction's actual error.

    Parameters
    ----------
    samples : numpy.ndarray
        ``[n_samples, ...]`` samples.
    mean : numpy.ndarray
        The point prediction, shaped like one sample.
    real : numpy.ndarray
        The real values, shaped like ``mean``.

    Returns
    -------
    float
        ``var(sample - mean) / var(real - mean)`` over all held-out values (1: calibrated; aim
        for 0.8-1.25); NaN when the error is zero.
    """
    spread = float(np.mean((samples - mean[None]) ** 2))
    error = float(np.mean((real - mean) ** 2))
    return spread / error if error > 0 else float("nan")
