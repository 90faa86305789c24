"""FSVAE's latent sampling step (docs/method.md sections 4-5): one of k binary votes chosen uniformly."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from .base import LatentSampler, check_rates, register_sampler, uniform_noise


@register_sampler("fsvae_autoregressive")
class VoteSelectionSampler(LatentSampler):
    """FSVAE's learned autoregressive Bernoulli latent (``fsvae_autoregressive``).

    The autoregression lives in the model: a spiking MLP (posterior or prior) emits k binary votes
    per latent unit at step t from the inputs up to t and the z already drawn, and z_t is fed back
    as the next step's input. This sampler is the per-step draw the model delegates to.

    Forward: ``select(votes, choice)`` returns the vote at index ``c = min(floor(u k), k - 1)``,
    ``u ~ U(0, 1)`` (:meth:`choices`), so given the votes z_t ~ Bernoulli(r_t) with r_t the
    fraction of the k votes that fired.
    Gradient estimator: ``dz/dvote_j = 1[j = c]`` -- the gradient reaches only the chosen vote (a
    LIF output, whose surrogate carries it on); nothing flows to the vote fraction.

    Rate interface (``__call__``, shared by every sampler): ``z_t = 1[u_t < r]`` with the same
    ``u_t``. When ``r k`` is an integer j this is exactly :meth:`select` on k votes of which the first
    j fired (``floor(u k) < j  <=>  u < j / k``). There is no gradient to the rate (``"none"``): the
    output does not require grad.
    """

    stochastic = True
    gradient = "none"

    def choices(
        self, shape: Sequence[int], votes: int, like: torch.Tensor, generator: Optional[torch.Generator] = None
    ) -> torch.Tensor:
        """Uniform vote indices in ``[0, votes)`` of ``shape``: ``min(floor(u * votes), votes - 1)``."""
        u = uniform_noise(tuple(shape), like, generator)
        return (u * votes).long().clamp_max(votes - 1)

    def select(self, votes: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
        """``votes (..., L, k)`` in [0, 1], ``choice (..., L)`` -> the chosen vote ``(..., L)``."""
        check_rates(votes.detach())
        return votes.gather(-1, choice.unsqueeze(-1)).squeeze(-1)

    def draw(self, votes: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """One fresh choice per unit: ``select(votes, choices(votes.shape[:-1], k))``."""
        return self.select(votes, self.choices(votes.shape[:-1], votes.shape[-1], votes, generator))

    def __call__(self, rate: torch.Tensor, timesteps: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        check_rates(rate)
        u = uniform_noise((timesteps, *rate.shape), rate, generator)  # (T, N, L)
        return (u < rate.detach()).to(rate.dtype)
