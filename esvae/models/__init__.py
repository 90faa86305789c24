"""Registered models. ``build_model(name, setting, **overrides)`` is the entry point."""

from .backbone import SpikingConvBackbone
from .esvae import ESVAE, ESVAEOutput
from .registry import MODELS, build_model, count_parameters, model_entry, register_model, resolve_config

__all__ = [
    "SpikingConvBackbone",
    "ESVAE",
    "ESVAEOutput",
    "MODELS",
    "build_model",
    "count_parameters",
    "model_entry",
    "register_model",
    "resolve_config",
]
