"""ESVAE: a reference benchmark for spiking variational autoencoders.

Public API::

    esvae.build_model(name, dataset, **overrides)        # registered model, paper config
    model.encode(x) -> (T, N, L); model.decode(z) -> (N, C, H, W); model.sample(n, generator)
    esvae.load_original_checkpoint(path, name, dataset, **overrides)
"""

__version__ = "0.1.0"

import baselines as _baselines  # noqa: E402,F401  (registers the baseline models)

from .checkpoints import load_checkpoint, load_original_checkpoint, save_checkpoint
from .errors import CheckpointError, ConfigError, DatasetNotFoundError, EsvaeError
from .models import MODELS, build_model, count_parameters

__all__ = [
    "__version__",
    "build_model",
    "count_parameters",
    "MODELS",
    "load_original_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
    "EsvaeError",
    "ConfigError",
    "DatasetNotFoundError",
    "CheckpointError",
]
