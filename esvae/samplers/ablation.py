"""Samplers for the sampler ablation (docs/method.md section 5): same forward or no sampling at all,
different gradient estimators, all behind the same interface as ESVAE's Poisson sampler."""

from __future__ import annotations

from typing import Optional

import torch

from .base import LatentSampler, check_rates, register_sampler, uniform_noise


class _StraightThrough(torch.autograd.Function):
    """Forward: the given spikes ``(T, N, L)``; backward: ``dz_t/dr = 1``, summed over T."""

    @staticmethod
    def forward(ctx, rate, spikes):
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes):
        return grad_spikes.sum(0), None


@register_sampler("bernoulli_st")
class BernoulliStraightThroughSampler(LatentSampler):
    """Bernoulli per step with a straight-through gradient (``bernoulli_st``).

    Forward: ``z_t = 1[r > u_t]`` with ``u_t ~ U(0, 1)`` -- the same draws as ``poisson``.
    Gradient estimator: ``dz_t/dr = 1`` for every step (plain straight-through), so the ablation
    against ``poisson`` isolates the rectangular window ``1[|r - u_t| < 0.5]``.
    """

    stochastic = True
    gradient = "straight_through"

    def __call__(self, rate: torch.Tensor, timesteps: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        check_rates(rate)
        noise = uniform_noise((timesteps, *rate.shape), rate, generator)  # (T, N, L)
        spikes = (rate.detach() > noise).to(rate.dtype)
        return _StraightThrough.apply(rate, spikes)


def evenly_spaced_spikes(rate: torch.Tensor, timesteps: int) -> torch.Tensor:
    """Deterministic rate code: ``k = floor(r T)`` spikes spread evenly over the T steps,
    ``z_t = floor((t + 1) k / T) - floor(t k / T)`` for t = 0..T-1 (a small epsilon guards the
    floors against rounding). ``(N, L) -> (T, N, L)``; the count over T is exactly k.
    """
    count = torch.floor(rate.detach() * timesteps + 1e-6)  # (N, L) spikes to emit
    steps = torch.arange(timesteps + 1, device=rate.device, dtype=rate.dtype).view(-1, *([1] * rate.dim()))
    cumulative = torch.floor(steps * count / timesteps + 1e-6)  # (T + 1, N, L)
    return (cumulative[1:] - cumulative[:-1]).to(rate.dtype)


@register_sampler("rate_repeat")
class RateRepeatSampler(LatentSampler):
    """No sampling (``rate_repeat``): the rate re-encoded deterministically.

    Forward: ``floor(r T)`` spikes spread evenly over T (:func:`evenly_spaced_spikes`); for
    ESVAE's posterior, whose rates are multiples of 1/T, the count equals the encoder's count
    exactly and only the spike timing is regularised. The generator is not used.
    Gradient estimator: straight-through, ``dz_t/dr = 1``, so the encoder still learns from the
    reconstruction; the model is then a spiking autoencoder whose MMD-matched prior generates.
    """

    stochastic = False
    gradient = "straight_through"

    def __call__(self, rate: torch.Tensor, timesteps: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        check_rates(rate)
        return _StraightThrough.apply(rate, evenly_spaced_spikes(rate, timesteps))
