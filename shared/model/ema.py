"""Exponential moving average of model weights; diffusion models sample from the EMA weights."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside an Opacus ``GradSampleModule`` (which keeps it as ``_module``).

    Parameters
    ----------
    model : nn.Module
        A model, wrapped or not.

    Returns
    -------
    nn.Module
        The innermost model (``model`` itself when it is not wrapped).
    """
    while hasattr(model, "_module") and isinstance(model._module, nn.Module):
        model = model._module
    return model


class EMA:
    """``shadow = decay * shadow + (1 - decay) * weights`` after every optimiser step.

    With ``warmup`` the decay starts low, ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates,
    so that the average of a short run is not dominated by the random initialisation. The shadow
    copy starts as the model's current parameters (buffers are not averaged).

    Parameters
    ----------
    model : nn.Module
        The model whose parameters are averaged (an Opacus wrapper is unwrapped).
    decay : float
        The decay once warmed up.
    warmup : bool
        Start with a low decay.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.shadow = {name: p.detach().clone() for name, p in unwrap_model(model).named_parameters()}

    def current_decay(self) -> float:
        """The decay the next update uses.

        Returns
        -------
        float
            ``decay``, or with ``warmup`` ``min(decay, (1 + n) / (10 + n))``.
        """
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current parameters into the average (after an optimiser step).

        Parameters
        ----------
        model : nn.Module
            The model being trained (same parameter names as at construction).
        """
        self.num_updates += 1
        decay = self.current_decay()
        for name, p in unwrap_model(model).named_parameters():
            self.shadow[name].lerp_(p.detach().to(self.shadow[name].dtype), 1.0 - decay)

    @torch.no_grad()
    def reset_frozen(self, model: nn.Module) -> None:
        """Take the model's frozen parameters (set in closed form, never trained) as they are now.

        Parameters
        ----------
        model : nn.Module
            The model (same parameter names as at construction).
        """
        for name, p in unwrap_model(model).named_parameters():
            if not p.requires_grad:
                self.shadow[name].copy_(p.detach())

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the model's parameters with the averages.

        Parameters
        ----------
        model : nn.Module
            The model (same parameter names as at construction).
        """
        for name, p in unwrap_model(model).named_parameters():
            p.copy_(self.shadow[name])

    @contextlib.contextmanager
    def average_parameters(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily put the EMA weights into ``model`` (e.g. to sample), then restore.

        Parameters
        ----------
        model : nn.Module
            The model (an Opacus wrapper is unwrapped).

        Yields
        ------
        nn.Module
            The unwrapped model, holding the EMA weights until the block ends.
        """
        model = unwrap_model(model)
        backup = {name: p.detach().clone() for name, p in model.named_parameters()}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    p.copy_(backup[name])

    def to(self, device: torch.device | str) -> "EMA":
        """Move the averages to ``device``.

        Parameters
        ----------
        device : torch.device | str
            The target device.

        Returns
        -------
        EMA
            ``self``.
        """
        self.shadow = {name: t.to(device) for name, t in self.shadow.items()}
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averages by parameter name (the tensors themselves, not copies).

        Returns
        -------
        dict of str to torch.Tensor
            ``{parameter name: average}``.
        """
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the averages with copies of ``state`` (kept on their device and dtype).

        Parameters
        ----------
        state : dict of str to torch.Tensor
            Averages by parameter name, as ``state_dict`` gives them.

        Raises
        ------
        KeyError
            ``state`` misses or adds a parameter, or a tensor's shape differs.
        """
        missing = set(self.shadow) - set(state)
        unexpected = set(state) - set(self.shadow)
        if missing or unexpected:
            raise KeyError(
                f"EMA state does not match the model: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
            )
        for name, tensor in state.items():
            if tensor.shape != self.shadow[name].shape:
                raise KeyError(
                    f"EMA tensor {name} has shape {list(tensor.shape)}, the model {list(self.shadow[name].shape)}"
                )
            self.shadow[name] = tensor.to(self.shadow[name].device, self.shadow[name].dtype).clone()
