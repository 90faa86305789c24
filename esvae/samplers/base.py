"""The latent-sampler interface shared by every spiking VAE (docs/method.md section 5).

A sampler turns per-unit firing rates ``(N, L)`` in [0, 1] into a latent spike train
``(T, N, L)`` of 0/1 values. The model receives its sampler and never branches on its name.
Randomness comes only from the explicit ``torch.Generator`` (or the global RNG when it is None).
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import torch

from ..errors import ConfigError


class RateOutOfRangeError(ValueError):
    """A firing rate outside [0, 1] or NaN reached a sampler (during training: divergence)."""


def check_rates(rate: torch.Tensor) -> None:
    """Raise :class:`RateOutOfRangeError` unless every rate lies in [0, 1] (NaN included)."""
    if rate.numel() == 0:
        return
    low, high = torch.aminmax(rate)  # one pass; a NaN makes both NaN, which fails the test below
    if not (bool(low >= 0) and bool(high <= 1)):
        bad = rate[~((rate >= 0) & (rate <= 1))]
        raise RateOutOfRangeError(
            f"firing rates must lie in [0, 1]; got {bad.numel()} value(s) outside, e.g. {bad.flatten()[0].item()}"
        )


def uniform_noise(shape, like: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """U(0, 1) draws of ``shape`` on ``like``'s device and dtype, from ``generator``."""
    return torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype)


class LatentSampler:
    """Interface: ``sampler(rate (N, L), timesteps, generator=None) -> spikes (T, N, L)``.

    Class attributes state the contract that the shared sampler test checks:
    ``stochastic`` (draws from the generator) and ``gradient`` -- the estimator of dz_t/dr:
    ``"rectangle"`` (1[|r - u_t| < 0.5] around the step's uniform draw u_t), ``"straight_through"``
    (1 for every step) or ``"none"``.
    """

    name: str = ""
    stochastic: bool = True
    gradient: str = "none"

    def __call__(self, rate: torch.Tensor, timesteps: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


SAMPLERS: Dict[str, Callable[[], LatentSampler]] = {}


def register_sampler(name: str):
    """Class decorator adding a sampler to the registry under ``name``."""

    def decorator(cls):
        cls.name = name
        SAMPLERS[name] = cls
        return cls

    return decorator


def build_sampler(name: str) -> LatentSampler:
    """Construct a registered sampler; an unknown name lists the valid ones."""
    try:
        return SAMPLERS[name]()
    except KeyError:
        raise ConfigError(f"unknown latent sampler {name!r}; expected one of: {', '.join(sorted(SAMPLERS))}") from None
