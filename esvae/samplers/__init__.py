"""Pluggable latent samplers: a small interface and a name -> constructor registry."""
from .base import SAMPLERS, LatentSampler, RateOutOfRangeError, build_sampler, check_rates, register_sampler
from .ablation import BernoulliStraightThroughSampler, RateRepeatSampler, evenly_spaced_spikes
from .poisson import PoissonSampler
from .autoregressive import VoteSelectionSampler

__all__ = ["SAMPLERS", "LatentSampler", "RateOutOfRangeError", "build_sampler", "check_rates", "register_sampler", "PoissonSampler",
           "BernoulliStraightThroughSampler", "RateRepeatSampler", "VoteSelectionSampler", "evenly_spaced_spikes"]
