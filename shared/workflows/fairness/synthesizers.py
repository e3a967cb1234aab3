"""What generates the targets of the ``generate`` and ``linear-gaussian`` strategies.

A ``Synthesizer`` turns windows' EEG into targets (``synthesizer(windows, seed)``);
``ModelSynthesizer`` does it with a NeuroGen model, ``LinearGaussianSynthesizer`` with a fitted
``LinearGaussianGenerator``. ``GenerationLog`` records every call (fold, unit, EEG sources) and
``concat_windows`` stacks one site's windows. The strategies themselves are in ``strategies``,
which re-exports these names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from fedneurogen.shared.errors import ConfigError
from fedneurogen.shared.recording import PairedWindows


class Synthesizer(Protocol):
    """Generates the target of each window from its EEG (never reads ``windows.target``).

    Called as ``synthesizer(windows, seed)`` -> ``[n_windows, n_points, n_frames]``.
    """

    def __call__(self, windows: PairedWindows, seed: int) -> np.ndarray: ...


class ModelSynthesizer:
    """Targets from EEG with a NeuroGen model, in batches.

    Each window is conditioned on its trial type where the checkpoint knows it
    (classifier-free guidance ``guidance_scale``), else generated unconditionally. Calling it,
    ``synth(windows, seed)``, returns float32 ``[n_windows, n_points, n_frames]`` and raises
    ``ConfigError`` when the model's target shape differs from the windows'.

    Parameters
    ----------
    model : NeuroGenModel
        The model (put in eval mode when called).
    class_names : sequence of str | None
        The checkpoint's class names (label index -> name).
    steps : int | None
        Sampling steps; None: the model's default.
    guidance_scale : float
        Classifier-free guidance scale.
    batch_size : int
        Windows per model call.
    estimate : str
        ``"sample"``: point prediction + sampled residual; ``"mean"``: the point prediction only
        (deterministic).
    """

    def __init__(
        self,
        model: Any,
        class_names: Sequence[str] | None,
        *,
        steps: int | None = None,
        guidance_scale: float = 2.0,
        batch_size: int = 32,
        estimate: str = "sample",
    ):
        self.model = model
        self.class_names = list(class_names or [])
        self.class_to_index = {str(c): i for i, c in enumerate(self.class_names)}
        self.steps = steps
        self.guidance_scale = guidance_scale
        self.batch_size = batch_size
        self.estimate = estimate  # "sample": point prediction + sampled residual; "mean": point prediction

    @property
    def settings(self) -> tuple[str, float]:
        """``(estimate, guidance_scale)``."""
        return self.estimate, self.guidance_scale

    def with_settings(self, estimate: str, guidance_scale: float) -> "ModelSynthesizer":
        """A synthesizer of the same model with other generation settings.

        Parameters
        ----------
        estimate : str
            ``"sample"`` or ``"mean"``.
        guidance_scale : float
            Classifier-free guidance scale.

        Returns
        -------
        ModelSynthesizer
            A new synthesizer.
        """
        return ModelSynthesizer(
            self.model,
            self.class_names,
            steps=self.steps,
            guidance_scale=guidance_scale,
            batch_size=self.batch_size,
            estimate=estimate,
        )

    def label_index(self, label: str) -> int | None:
        """The model's label index of a class.

        Parameters
        ----------
        label : str
            A class name.

        Returns
        -------
        int | None
            Its index; None when the checkpoint has no such label.
        """
        return self.class_to_index.get(str(label))

    def __call__(self, windows: PairedWindows, seed: int) -> np.ndarray:
        import torch

        from fedneurogen.shared.model import Batch

        self.model.eval()
        if self.estimate == "mean":  # deterministic: the conditional mean given the EEG and the label
            from fedneurogen.shared.workflows.synthesis import point_predictions

            index = (
                np.array([self.class_to_index.get(str(c), -1) for c in windows.labels]) if self.class_to_index else None
            )
            return point_predictions(
                self.model,
                replace(windows, target=np.zeros(windows.target.shape, np.float32)),
                index,
                batch_size=self.batch_size,
            )
        generator = torch.Generator(device=self.model.device).manual_seed(int(seed))
        labels = self.class_to_index or None
        out = []
        for start in range(0, len(windows), self.batch_size):
            index = np.arange(start, min(start + self.batch_size, len(windows)))
            batch = Batch.from_windows(windows, index, labels, self.model.device)
            batch = replace(batch, target=None)  # sampling must not see the real targets
            sample = self.model.sample(batch, steps=self.steps, guidance_scale=self.guidance_scale, generator=generator)
            out.append(sample.float().cpu().numpy())
        generated = np.concatenate(out) if out else np.zeros((0, *windows.target.shape[1:]), np.float32)
        if generated.shape[1:] != windows.target.shape[1:]:
            raise ConfigError(
                f"the model generates targets of shape {list(generated.shape[1:])} but the site's windows are {list(windows.target.shape[1:])}"
            )
        return generated


def concat_windows(parts: Sequence[PairedWindows]) -> PairedWindows:
    """Windows of one site (one montage, one target layout) stacked.

    Parameters
    ----------
    parts : sequence of PairedWindows
        At least one; everything but the per-window arrays is taken from the first.

    Returns
    -------
    PairedWindows
        The first part itself when there is one, else the concatenation (in memory).
    """
    first = parts[0]
    if len(parts) == 1:
        return first
    names = ("eeg", "target", "labels", "subjects", "runs", "onsets") + (
        ("design",) if first.design is not None else ()
    )
    stacked = {name: np.concatenate([getattr(p, name) for p in parts]) for name in names}
    return replace(first, **stacked)


@dataclass
class GenerationLog:
    """Every synthesizer call: fold, unit, and the subject / window id of each EEG source.

    Attributes
    ----------
    calls : list of dict
        ``{"fold", "unit", "subjects", "ids"}`` per call.
    """

    calls: list[dict[str, Any]] = field(default_factory=list)

    def add(self, fold: int, unit: str, windows: PairedWindows, ids: np.ndarray) -> None:
        """Record one call.

        Parameters
        ----------
        fold : int
            The fold.
        unit : str
            The balancing unit generated for.
        windows : PairedWindows
            The EEG sources (their subjects are recorded).
        ids : np.ndarray
            Window id of each source.
        """
        self.calls.append({"fold": fold, "unit": unit, "subjects": windows.subjects.tolist(), "ids": list(ids)})


class LinearGaussianSynthesizer:
    """A fitted ``LinearGaussianGenerator`` as a ``Synthesizer``: one sample per window.

    Parameters
    ----------
    generator : LinearGaussianGenerator
        The fitted generator.
    """

    def __init__(self, generator: Any):
        self.generator = generator

    def __call__(self, windows: PairedWindows, seed: int) -> np.ndarray:
        if windows.design is None:
            raise ConfigError("strategy 'linear-gaussian' needs windows with a hemodynamic design")
        return self.generator.sample(windows, 1, seed)[0]
