"""Generation with ``NeuroGenModel``: classifier-free guidance and DDIM sampling.

``Sampling`` is mixed into ``NeuroGenModel`` (``shared/model/generator.py``), which holds the
network; the solver loops are ``GaussianDiffusion.flow_sample`` and ``ddim_sample``
(``shared/model/diffusion.py``).
A sample is the point prediction plus a residual drawn by the diffusion, in the whitened
coordinates of the residual's noise model (``shared/model/noise.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from fedneurogen.shared.model.batch import Batch
from fedneurogen.shared.model.tokens import TokenLayout

if TYPE_CHECKING:
    from fedneurogen.shared.model.generator import NeuroGenModel


class Sampling:
    """Sampling of ``NeuroGenModel``: mixed into it, it reads its network (``condition_tokens``,
    ``point_prediction``, ``denoise``) and its ``diffusion`` schedule."""

    def guided_denoise(
        self: NeuroGenModel,
        x_t: torch.Tensor,
        t: torch.Tensor,
        condition: torch.Tensor,
        layout: TokenLayout,
        modality: str,
        labels: torch.Tensor | None,
        guidance_scale: float,
        context_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """Classifier-free guidance on the label: ``uncond + s * (cond - uncond)``.

        ``s = 1`` (or no labels) is the plain conditional prediction, ``s = 0`` the null label's.
        With guidance both predictions run as one doubled batch.

        Parameters
        ----------
        x_t : torch.Tensor
            ``[B, N, F]`` noisy targets.
        t : torch.Tensor
            long ``[B]`` diffusion steps.
        condition : torch.Tensor
            ``[B, M, D]`` EEG tokens.
        layout : TokenLayout
            The batch's layout.
        modality : str
            ``"fmri"`` or ``"fnirs"``.
        labels : torch.Tensor | None
            long ``[B]`` labels; None: no guidance.
        guidance_scale : float
            ``s``.
        context_kv : list of (torch.Tensor, torch.Tensor) | None
            Precomputed cross-attention keys and values: of the doubled condition when
            ``uses_guidance``, else of ``condition``.

        Returns
        -------
        torch.Tensor
            ``[B, N, F]`` guided v (or eps).
        """
        if not self.uses_guidance(labels, guidance_scale):
            return self.denoise(x_t, t, condition, layout, modality, labels, context_kv=context_kv)
        null = torch.full_like(labels, -1)
        both = self.denoise(
            torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([condition, condition]), layout, modality, torch.cat([labels, null]),
            context_kv=context_kv,
        )  # fmt: skip
        conditional, unconditional = both.chunk(2)
        return unconditional + guidance_scale * (conditional - unconditional)

    @staticmethod
    def uses_guidance(labels: torch.Tensor | None, guidance_scale: float) -> bool:
        """Whether ``guided_denoise`` evaluates the doubled (conditional + null label) batch.

        Parameters
        ----------
        labels : torch.Tensor | None
            The batch's labels.
        guidance_scale : float
            The guidance scale.

        Returns
        -------
        bool
            True when there are labels and the scale is not 1.
        """
        return labels is not None and guidance_scale != 1.0

    @torch.no_grad()
    def sample(
        self: NeuroGenModel,
        batch: Batch,
        *,
        steps: int | None = None,
        guidance_scale: float = 1.0,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Generate targets ``[B, N, F]`` from the batch's EEG (and labels) by the reverse process.

        The sample is the point prediction plus a residual drawn by the diffusion in the noise
        model's whitened coordinates (``shared/model/noise.py``) and coloured back. Runs without
        gradients. To sample with EMA weights use ``EMA.average_parameters(model)`` or a
        checkpoint loaded with ``use_ema=True``.

        Parameters
        ----------
        batch : Batch
            EEG, design and (optionally) labels; ``target`` is not read.
        steps : int | None
            Solver steps; None: the config's ``sampling_steps``.
        guidance_scale : float
            Classifier-free guidance on the labels (1: none; see ``guided_denoise``).
        eta : float
            DDIM stochasticity; 0 is deterministic given ``generator`` (and solved by the config's
            ``sampler``), above 0 always DDIM.
        generator : torch.Generator | None
            Source of the noise.

        Returns
        -------
        torch.Tensor
            float32 ``[B, N, F]`` generated targets.
        """
        layout = self.layout(batch)
        n_frames = self.config.modality(batch.modality).n_frames
        # The EEG encoding, the EEG tokens and every block's cross-attention keys and values
        # depend on the EEG only, not on the noisy target: computed once here, not every step.
        with self._autocast():
            condition = self.condition_tokens(batch, self.encode_eeg(batch), layout)
            mean = self.point_prediction(batch, whole_class_offset=True).float()
            guided = self.uses_guidance(batch.labels, guidance_scale)
            context_kv = self.dit.context_kv(torch.cat([condition, condition]) if guided else condition)

        # v = 0 is the noise model's Gaussian: scaling v keeps that share of the DiT's departure
        departure = self.modality_heads[batch.modality].noise.departure.float()
        gaussian = bool(departure.item() == 0.0)  # the DiT's output is not used: skip it

        def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            if gaussian:
                return torch.zeros_like(x_t, dtype=torch.float32)
            with self._autocast():
                v = self.guided_denoise(
                    x_t, t, condition, layout, batch.modality, batch.labels, guidance_scale, context_kv
                )
                return departure * v.float()

        shape = (batch.batch_size, layout.n_points, n_frames)
        steps = steps or self.config.sampling_steps
        if self.config.sampler == "flow" and eta == 0.0:
            sample = self.diffusion.flow_sample(model_fn, shape, steps=steps, generator=generator, device=self.device)
        else:  # DDIM (the config's, or any stochastic sampling)
            sample = self.diffusion.ddim_sample(
                model_fn, shape, steps=steps, eta=eta, generator=generator, device=self.device
            )
        spread = self.modality_heads[batch.modality].noise.spread.float()  # calibrated on validation
        return self.colour(sample * spread, batch) + mean
