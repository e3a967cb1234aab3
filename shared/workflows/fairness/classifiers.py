"""The downstream classifiers (docs/architecture.md §6): ``make_classifier`` -> a scikit-learn
``Pipeline`` (``logreg``, shrinkage ``lda``, ``riemann`` = tangent space of EEG covariances
[+ target features] + logistic regression), over the feature blocks it reads (``blocks_for``,
``window_features.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from .window_features import Features

CLASSIFIERS = ("logreg", "lda", "riemann")


def blocks_for(classifier: str, use_eeg: bool = True, use_target: bool = True) -> tuple[str, ...]:
    """Feature blocks a classifier reads.

    Band power for the linear models, covariances for the Riemannian one (always); the target
    block for all when ``use_target``.

    Parameters
    ----------
    classifier : str
        ``logreg``, ``lda`` or ``riemann``.
    use_eeg : bool
        Use EEG features (ignored by ``riemann``, which always does).
    use_target : bool
        Use target features.

    Returns
    -------
    tuple of str
        Block names, EEG first.

    Raises
    ------
    ValueError
        An unknown classifier, or no block at all.
    """
    if classifier not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {classifier!r}; choose one of {CLASSIFIERS}")
    eeg = ("eeg_cov",) if classifier == "riemann" else ("eeg",)
    blocks = (eeg if use_eeg or classifier == "riemann" else ()) + (("target",) if use_target else ())
    if not blocks:
        raise ValueError("no features: use EEG, target features or both")
    return blocks


def _as_matrices(x: np.ndarray) -> np.ndarray:
    """Flattened ``[n, C * C]`` covariances back to ``[n, C, C]`` for pyriemann."""
    c = math.isqrt(x.shape[1])
    return np.asarray(x, dtype=np.float64).reshape(len(x), c, c)


def make_classifier(
    kind: str,
    features: Features,
    classes: Sequence[str],
    *,
    class_weight: str | None = None,
    C: float = 1.0,
    seed: int = 0,
) -> Pipeline:
    """A fresh, unfitted scikit-learn pipeline over ``features``' blocks.

    Parameters
    ----------
    kind : str
        ``logreg`` (standardised features, logistic regression), ``lda`` (shrinkage LDA) or
        ``riemann`` (tangent space of the EEG covariances [+ target features], logistic regression).
    features : Features
        The features the pipeline selects its columns from.
    classes : sequence of str
        The task's classes (LDA's priors).
    class_weight : str | None
        ``'balanced'`` reweights the classes (logistic regression) or sets equal priors (LDA):
        the class-weight baseline.
    C : float
        Inverse regularisation of the logistic regression.
    seed : int
        Random state of the logistic regression.

    Returns
    -------
    Pipeline
        Column selection, scaling and the classifier.

    Raises
    ------
    ValueError
        An unknown kind, or ``riemann`` without the ``eeg_cov`` block.
    """
    linear = features.columns(["eeg", "target"])
    if kind == "logreg":
        select = ColumnTransformer([("features", "passthrough", linear)])
        clf = LogisticRegression(C=C, class_weight=class_weight, max_iter=2000, random_state=seed)
        return Pipeline([("select", select), ("scale", StandardScaler()), ("clf", clf)])
    if kind == "lda":
        priors = np.full(len(classes), 1.0 / len(classes)) if class_weight == "balanced" else None
        select = ColumnTransformer([("features", "passthrough", linear)])
        clf = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto", priors=priors)
        return Pipeline([("select", select), ("scale", StandardScaler()), ("clf", clf)])
    if kind == "riemann":
        from pyriemann.tangentspace import TangentSpace  # imported here: it takes seconds

        if "eeg_cov" not in features.blocks:
            raise ValueError("the riemann classifier needs the 'eeg_cov' feature block")
        tangent = Pipeline(
            [("matrices", FunctionTransformer(_as_matrices)), ("tangent", TangentSpace(metric="riemann"))]
        )
        parts = [("eeg", tangent, features.columns(["eeg_cov"]))]
        if "target" in features.blocks:
            parts.append(("target", "passthrough", features.columns(["target"])))
        clf = LogisticRegression(C=C, class_weight=class_weight, max_iter=2000, random_state=seed)
        return Pipeline([("select", ColumnTransformer(parts)), ("scale", StandardScaler()), ("clf", clf)])
    raise ValueError(f"unknown classifier {kind!r}; choose one of {CLASSIFIERS}")
