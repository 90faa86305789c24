"""Pluggable latent samplers: a small interface and a name -> constructor registry."""

from .ablation import BernoulliStraightThroughSampler, RateRepeatSampler, evenly_spaced_spikes
from .autoregressive import VoteSelectionSampler
from .base import SAMPLERS, LatentSampler, RateOutOfRangeError, build_sampler, check_rates, register_sampler
from .poisson import PoissonSampler

__all__ = [
    "SAMPLERS",
    "LatentSampler",
    "RateOutOfRangeError",
    "build_sampler",
    "check_rates",
    "register_sampler",
    "PoissonSampler",
    "BernoulliStraightThroughSampler",
    "RateRepeatSampler",
    "VoteSelectionSampler",
    "evenly_spaced_spikes",
]
