"""One batch of paired windows from one site, as tensors on a device: what the model reads.

``Batch.from_windows`` cuts it from ``PairedWindows``; ``NeuroGenModel.layout`` checks it against
the model's config. ``MODALITIES`` names the target modalities a batch may carry.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import numpy as np
import torch

from fedneurogen.shared.recording import PairedWindows

MODALITIES = ("fmri", "fnirs")


def default_device() -> torch.device:
    """CUDA when available, else the CPU.

    Returns
    -------
    torch.device
        ``cuda`` or ``cpu``.
    """
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class Batch:
    """One batch of paired windows from one site (one montage, one target layout).

    Build one from ``PairedWindows`` with ``Batch.from_windows``.

    Attributes
    ----------
    modality : {"fmri", "fnirs"}
        The target modality.
    eeg : torch.Tensor
        ``[B, C, T]`` at ``eeg_sfreq``, units of 100 uV.
    eeg_channel_names : list of str
        One name per EEG channel.
    eeg_positions : torch.Tensor
        ``[C, 3]`` electrode positions, mm.
    target_sfreq : float
        Target frame rate, Hz.
    lag : float
        The EEG window starts this many seconds before the target window.
    target : torch.Tensor | None
        ``[B, N, F]``; None when only sampling.
    target_positions : torch.Tensor | None
        ``[N, 3]`` mm (fNIRS: needed; fMRI: ico4 is fixed).
    target_names : list of str | None
        One name per target point (fNIRS: needed).
    target_point_types : list of str | None
        fNIRS: ``'hbo'``/``'hbr'`` per point.
    labels : torch.Tensor | None
        long ``[B]`` class index, -1 = unlabelled (the null label); None = no labels.
    eeg_sfreq : float
        EEG sampling rate, Hz.
    design : torch.Tensor | None
        ``[B, F, D]`` hemodynamic design per target frame (needed by the point prediction).
    """

    modality: str
    eeg: torch.Tensor  # [B, C, T] at eeg_sfreq, units of 100 uV
    eeg_channel_names: list[str]
    eeg_positions: torch.Tensor  # [C, 3] mm
    target_sfreq: float
    lag: float  # the EEG window starts this many seconds before the target window
    target: torch.Tensor | None = None  # [B, N, F]; None when only sampling
    target_positions: torch.Tensor | None = None  # [N, 3] mm (fNIRS: needed; fMRI: ico4 is fixed)
    target_names: list[str] | None = None
    target_point_types: list[str] | None = None  # fNIRS: 'hbo'/'hbr' per point
    labels: torch.Tensor | None = None  # [B] class index, -1 = unlabelled; None = no labels
    eeg_sfreq: float = 200.0
    design: torch.Tensor | None = None  # [B, F, D] hemodynamic design per target frame

    @property
    def batch_size(self) -> int:
        """Number of windows ``B``."""
        return int(self.eeg.shape[0])

    def to(self, device: torch.device | str) -> "Batch":
        """The batch with every tensor on ``device``.

        Parameters
        ----------
        device : torch.device | str
            The target device.

        Returns
        -------
        Batch
            A new batch (names and scalars shared).
        """
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return replace(
            self,
            eeg=move(self.eeg),
            eeg_positions=move(self.eeg_positions),
            target=move(self.target),
            target_positions=move(self.target_positions),
            labels=move(self.labels),
            design=move(self.design),
        )

    def select(self, index: torch.Tensor | Sequence[int] | slice) -> "Batch":
        """The windows at ``index`` (layout, montage and positions are shared).

        Parameters
        ----------
        index : torch.Tensor | sequence of int | slice
            Windows to keep.

        Returns
        -------
        Batch
            A new batch with ``eeg``, ``target``, ``labels`` and ``design`` indexed.
        """
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return replace(
            self, eeg=pick(self.eeg), target=pick(self.target), labels=pick(self.labels), design=pick(self.design)
        )

    @classmethod
    def from_windows(
        cls,
        windows: PairedWindows,
        index: np.ndarray | Sequence[int] | slice | None = None,
        class_to_index: Mapping[str, int] | None = None,
        device: torch.device | str | None = None,
    ) -> "Batch":
        """Windows of ``PairedWindows`` as float32 tensors on a device.

        Parameters
        ----------
        windows : PairedWindows
            The site's windows.
        index : np.ndarray | sequence of int | slice | None
            Windows to take; None: all.
        class_to_index : mapping of str to int | None
            Label index of each class name; labels it does not list become -1, the null label.
            None: the batch is unlabelled.
        device : torch.device | str | None
            Where the tensors go; None: ``default_device()`` (CUDA when available).

        Returns
        -------
        Batch
            The batch.
        """
        device = torch.device(device) if device is not None else default_device()
        index = slice(None) if index is None else index
        labels = None
        if class_to_index is not None:
            names = np.asarray(windows.labels)[index]
            labels = torch.tensor([class_to_index.get(str(n), -1) for n in names], dtype=torch.long, device=device)
        as_tensor = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32, device=device)  # noqa: E731
        return cls(
            modality=windows.target_modality,
            eeg=as_tensor(windows.eeg[index]),
            eeg_channel_names=list(windows.eeg_channel_names),
            eeg_positions=as_tensor(windows.eeg_positions),
            target_sfreq=float(windows.target_sfreq),
            lag=float(windows.lag),
            target=as_tensor(windows.target[index]),
            target_positions=as_tensor(windows.target_positions),
            target_names=list(windows.target_names),
            target_point_types=None if windows.target_point_types is None else list(windows.target_point_types),
            labels=labels,
            eeg_sfreq=float(windows.eeg_sfreq),
            design=None if windows.design is None else as_tensor(windows.design[index]),
        )
