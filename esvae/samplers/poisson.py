"""ESVAE's reparameterizable Poisson spike sampling (docs/method.md section 3)."""

from __future__ import annotations

from typing import Optional

import torch

from .base import LatentSampler, check_rates, register_sampler, uniform_noise


class _ThresholdAtNoise(torch.autograd.Function):
    """Forward ``z = 1[r > u]``; backward ``dz/dr = 1[|r - u| < 0.5]`` (rectangle, height 1).

    ``rate`` is ``(N, L)``, ``noise`` is ``(T, N, L)``; the rate's gradient sums over T.
    """

    @staticmethod
    def forward(ctx, rate, noise):
        ctx.save_for_backward(rate, noise)
        return (rate > noise).to(rate.dtype)

    @staticmethod
    def backward(ctx, grad_spikes):
        rate, noise = ctx.saved_tensors
        window = ((rate - noise).abs() < 0.5).to(grad_spikes.dtype)
        return (grad_spikes * window).sum(0), None


@register_sampler("poisson")
class PoissonSampler(LatentSampler):
    """Reparameterizable Poisson spiking sampling (``poisson``).

    Forward: for every unit and step draw ``u ~ U(0, 1)`` and emit ``z_t = 1[r > u]``, i.e. i.i.d.
    Bernoulli(r) per step (the spike count over T is Binomial(T, r)).
    Gradient estimator: ``dz_t/dr = 1[|r - u_t| < 0.5]``, a rectangle of height 1 around the random
    threshold. The rate is the parameter and the uniform draw the noise, which is what makes the
    sampling reparameterizable.
    """

    stochastic = True
    gradient = "rectangle"

    def __call__(self, rate: torch.Tensor, timesteps: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        check_rates(rate)
        noise = uniform_noise((timesteps, *rate.shape), rate, generator)  # (T, N, L)
        return _ThresholdAtNoise.apply(rate, noise)
