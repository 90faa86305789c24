"""What the training loop, evaluation and checkpoints need from every registered model.

A model is an ``nn.Module`` with ``config`` (a dataclass with ``to_dict``), and:

* ``forward(images, generator=None) -> out`` where ``out.reconstruction`` is ``(N, C, H, W)``;
* ``loss(images, out) -> {"loss", "mse", ...}`` (batch means; names listed in ``loss_terms``);
* ``batch_stats(out) -> {...}`` (batch means of diagnostics; names listed in ``stat_names``);
* ``sample(n, generator=None) -> (n, C, H, W)``;
* ``param_groups(lr, prior_lr_multiplier)``, ``configure_training(steps_per_epoch)`` (returns
  the quantities it derived from the data, for the log and ``config.json``) and
  ``start_epoch(epoch_index, total_epochs)`` (per-epoch schedules, logged);
* ``latent_description``: how the latent is drawn, for labels on reported numbers;
* ``original_layout``: how the original authors' checkpoints map onto it (None: no known layout);
* for the probes: ``latent_code(images, generator) -> (N, L)`` (the encoder's deterministic
  summary: posterior firing rates, or the ANN's mu), ``decode_code(code)`` (decode it without
  sampling noise) and ``spiking_latent`` (the decoder reads a spike train ``out.sampled_spikes``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import torch
from torch import nn


@dataclass(frozen=True)
class OriginalLayout:
    """How a checkpoint of the original authors' code maps onto a model (docs/method.md section 6).

    Beyond the shared rules (time-last kernels squeezed, ``.bn`` kept, the readout's
    ``membrane_output_layer.coef`` buffer checked then dropped):
    ``renames`` original key prefix -> ours; ``unused_prefixes`` modules the original builds but
    this model does not use (ignored with a note); ``zero_buffers`` constant all-zero buffers of
    the original (e.g. FSVAE's ``initial_input``), checked to be zero when present, then dropped.
    """

    renames: Dict[str, str] = field(default_factory=dict)
    unused_prefixes: Tuple[str, ...] = ()
    zero_buffers: Tuple[str, ...] = ()


class VAEModel(nn.Module):
    """The base of every registered model (listed first among its bases, so that its defaults
    below apply unless the model defines its own). The block under ``TYPE_CHECKING`` states, for
    the type checker only, the members every model provides itself; it defines nothing at run time,
    so it never shadows a shared backbone's methods."""

    if TYPE_CHECKING:
        config: Any  # the model's configuration dataclass (``to_dict()``)
        model_name: str  # set by build_model: the registry name
        setting: str  # set by build_model: the paper setting it was built with (esvae.config.SETTINGS)
        checkpoint_notes: List[str]  # set by load_original_checkpoint: what the conversion ignored

        def __call__(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> Any: ...
        def loss(self, images: torch.Tensor, out: Any) -> Dict[str, torch.Tensor]: ...
        def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor: ...
        def encode(self, images: torch.Tensor) -> torch.Tensor: ...
        def decode(self, latent: torch.Tensor) -> torch.Tensor: ...
        def latent_code(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor: ...
        def decode_code(self, code: torch.Tensor) -> torch.Tensor: ...

    loss_terms: Tuple[str, ...] = ("loss", "mse")
    stat_names: Tuple[str, ...] = ()
    original_layout: Optional[OriginalLayout] = None
    spiking_latent: bool = True  # the decoder reads a (T, N, L) spike train (robustness probe applies)
    generative: bool = True  # sample() draws from a prior (False: an autoencoder a metric uses)

    def batch_stats(self, out) -> Dict[str, torch.Tensor]:
        return {}

    def configure_training(self, steps_per_epoch: int) -> Dict[str, float]:
        return {}

    def start_epoch(self, epoch_index: int, total_epochs: int) -> Dict[str, float]:
        """Per-epoch schedules (e.g. FSVAE's scheduled-sampling p); returns what it set, for the log."""
        return {}

    def param_groups(self, lr: float, prior_lr_multiplier: float = 1.0) -> List[dict]:
        return [{"name": "network", "params": list(self.parameters()), "lr": lr}]

    @property
    def latent_description(self) -> str:
        return "latent"
