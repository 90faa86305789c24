"""Evaluation metrics. For now: the cost of generating images (:func:`time_sampling`)."""
from .sampling_cost import SamplingCost, time_sampling

__all__ = ["SamplingCost", "time_sampling"]
