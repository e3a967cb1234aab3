"""The training objective of ``NeuroGenModel`` (docs/architecture.md §4.5), and DP-SGD's version of it.

``TrainingLosses`` is mixed into ``NeuroGenModel`` (``shared/model/generator.py``), which holds the
network; the methods here combine its parts into losses:

- ``loss``: diffusion loss (8) on the residual ``x0 - mean`` + the point prediction's MSE +
  the InfoNCE alignment (``alignment_loss``); ``per_sample`` gives each window's loss for DP-SGD;
- ``prepare_for_dp``: what DP-SGD may train (per-window losses only: the InfoNCE term off, the
  parts it cannot clip per window frozen).

``model(batch)`` (``NeuroGenModel.forward``) calls ``loss``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from fedneurogen.shared.errors import ConfigError
from fedneurogen.shared.model.batch import MODALITIES, Batch
from fedneurogen.shared.model.diffusion import random_normal
from fedneurogen.shared.model.tokens import TokenLayout, patchify

if TYPE_CHECKING:
    from fedneurogen.shared.model.generator import NeuroGenModel


class TrainingLosses:
    """The losses of ``NeuroGenModel``: mixed into it, they read its network (``encode_eeg``,
    ``condition_tokens``, ``point_prediction``, ``denoise``) and its ``diffusion`` schedule."""

    def alignment_loss(
        self: NeuroGenModel, batch: Batch, features: torch.Tensor | None = None, layout: TokenLayout | None = None
    ) -> torch.Tensor:
        """CLIP-style InfoNCE between pooled EEG and target window embeddings (needs B >= 2).

        Parameters
        ----------
        batch : Batch
            A batch with targets.
        features : torch.Tensor | None
            ``[B, C, P, De]`` EEG features already computed; None: ``encode_eeg(batch)``.
        layout : TokenLayout | None
            The batch's layout; None: ``layout(batch)``.

        Returns
        -------
        torch.Tensor
            Scalar loss.
        """
        layout = layout if layout is not None else self.layout(batch)
        features = features if features is not None else self.encode_eeg(batch)
        target_embedding = self.modality_heads[batch.modality].target_encoder(
            patchify(batch.target, layout), layout.centroids
        )
        return self.alignment(features, target_embedding)

    def loss(
        self: NeuroGenModel,
        batch: Batch,
        *,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        per_sample: bool = False,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss of a batch, and its parts.

        Total loss = diffusion loss (8) on the residual ``x0 - mean`` + ``mean_loss_weight`` x
        the point prediction's MSE + ``alignment_weight`` x InfoNCE (the mean is detached in the
        diffusion target, so each loss trains its own part). Labels are replaced by the null
        label with probability ``label_dropout`` in training mode.

        Parameters
        ----------
        batch : Batch
            A batch with targets and a design.
        t : torch.Tensor | None
            long ``[B]`` diffusion steps; None: uniformly random.
        noise : torch.Tensor | None
            ``[B, N, F]`` noise; None: standard normal.
        generator : torch.Generator | None
            Source of the random draws (steps, noise, label dropout).
        per_sample : bool
            Return each window's total loss ``[B]`` (their mean is the usual loss), for DP-SGD's
            fast/ghost clipping; it needs the InfoNCE term off (``prepare_for_dp``), which
            compares windows with each other.

        Returns
        -------
        loss : torch.Tensor
            Scalar total loss (``[B]`` with ``per_sample``).
        parts : dict of str to float
            ``diffusion``, ``mean``, ``alignment`` (when computed) and ``total``, batch means.

        Raises
        ------
        ConfigError
            The batch has no targets, or ``per_sample`` with the alignment loss on; and as
            ``layout`` and ``point_prediction``.
        """
        if batch.target is None:
            raise ConfigError("loss() needs a batch with targets")
        layout = self.layout(batch)
        target = batch.target.float()
        t = t if t is not None else self.diffusion.sample_timesteps(target.shape[0], target.device, generator)
        noise = noise if noise is not None else random_normal(tuple(target.shape), generator, target.device)
        mean_labels = batch.labels
        if (
            self.training and mean_labels is not None and self.config.label_dropout > 0
        ):  # so the label-free mean is trained too
            drop = torch.rand(
                mean_labels.shape, generator=generator, device=generator.device if generator is not None else None
            )
            mean_labels = torch.where(
                drop.to(mean_labels.device) < self.config.label_dropout, torch.full_like(mean_labels, -1), mean_labels
            )
        with self._autocast():
            features = self.encode_eeg(batch)
            condition = self.condition_tokens(batch, features, layout)
            mean = self.point_prediction(batch, labels=mean_labels, train=self.training).float()
            with torch.no_grad():  # the mean a sample is drawn about: no dropout, the class offsets whole
                sample_mean = self.point_prediction(batch, labels=mean_labels, whole_class_offset=True).float()
            x0 = self.whiten(target - sample_mean, batch)  # the noise model's coordinates
            x_t = self.diffusion.q_sample(x0, t, noise)
            output = self.denoise(x_t, t, condition, layout, batch.modality, batch.labels, drop_labels=self.training)
            # per window first (DP clipping may want them), then their mean: the usual MSE
            diffusion_each = (output.float() - self.diffusion.training_target(x0, t, noise)).pow(2).mean(dim=(1, 2))
            mean_each = (mean - target).pow(2).mean(dim=(1, 2))
            total = diffusion_each + self.config.mean_loss_weight * mean_each
            parts = {"diffusion": float(diffusion_each.detach().mean()), "mean": float(mean_each.detach().mean())}
            if per_sample:
                if self.alignment_enabled and self.config.alignment_weight > 0:
                    raise ConfigError("per-sample losses need the alignment loss off (prepare_for_dp)")
                parts["total"] = float(total.detach().mean())
                return total, parts
            total = total.mean()
            if self.alignment_enabled and self.config.alignment_weight > 0 and x0.shape[0] > 1:
                alignment = self.alignment_loss(batch, features, layout)
                total = total + self.config.alignment_weight * alignment
                parts["alignment"] = float(alignment.detach())
        parts["total"] = float(total.detach())
        return total, parts

    def prepare_for_dp(self: NeuroGenModel, modality: str) -> list[nn.Parameter]:
        """Make the model fit Opacus DP-SGD for batches of ``modality``.

        DP-SGD clips each window's own gradient, so only per-window losses may be trained:
        - the InfoNCE alignment compares the windows of a batch with each other: it is switched
          off and the target encoders and alignment projection are frozen;
        - the other modality's head gets no gradient from this site: frozen;
        - tau and sigma of the temporal alignment take the time grids as extra inputs, which
          Opacus' per-layer hooks cannot pass on: frozen at their current values;
        - the ridge path of the point prediction is solved in closed form: stays frozen.
        Everything else is made trainable (freeze more afterwards if wanted).

        Parameters
        ----------
        modality : {"fmri", "fnirs"}
            The site's target modality.

        Returns
        -------
        list of nn.Parameter
            The parameters left trainable.

        Raises
        ------
        ConfigError
            An unknown modality.
        """
        if modality not in MODALITIES:
            raise ConfigError(f"unknown target modality {modality!r}; expected one of {MODALITIES}")
        self.requires_grad_(True)
        for name, head in self.modality_heads.items():
            head.requires_grad_(name == modality)
            head.target_encoder.requires_grad_(False)
        self.alignment.requires_grad_(False)
        self.integration.temporal.requires_grad_(False)
        for head in self.modality_heads.values():
            head.mean.ridge.requires_grad_(False)  # closed-form, never trained by SGD
            head.noise.requires_grad_(False)  # closed-form too
            if head.mean.local is not None:
                head.mean.local.requires_grad_(False)
        self.alignment_enabled = False
        return [p for p in self.parameters() if p.requires_grad]
