"""TAID (Qiu et al., ICLR 2023 Tiny Papers): FSVAE with temporal-attention image decoding
(docs/method.md section 4).

Only the readout changes. FSVAE (like ESVAE) reads the image out of the last layer's per-step
outputs ``y_t (T, N, C, H, W)`` with fixed weights ``0.8^(T-1-t)``; TAID learns them per image and
channel::

    s      = mean over (H, W) of y           (T, N, C) -> (N, T, C)
    w      = sigmoid(Conv1d(T -> T, kernel 1, no bias)(s))       (N, T, C), each in (0, 1)
    image  = tanh(sum_t w_{t,c} y_t)

so the readout adds T*T parameters. The paper's adaptive-threshold LIF neuron is not implemented
(docs/method.md makes it optional); ``neuron`` is not a config field, so nobody can ask for it by mistake.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Dict, Optional

import torch
from torch import nn

from esvae.config import TrainConfig, hidden_dims_for, paper_setting
from esvae.models.base import OriginalLayout

from .fsvae import FSVAE, FSVAEConfig, fsvae_paper_train


class TemporalAttentionReadout(nn.Module):
    """``y_seq (T, N, C, ...) -> sum_t w_t * y_t`` with ``w = sigmoid(Conv1d_TxT(spatial mean of y))``."""

    def __init__(self, timesteps: int):
        super().__init__()
        self.timesteps = timesteps
        self.attention = nn.Conv1d(timesteps, timesteps, kernel_size=1, bias=False)

    def weights(self, y_seq: torch.Tensor) -> torch.Tensor:
        """The attention weights ``(T, N, C)``, each in (0, 1)."""
        if y_seq.shape[0] != self.timesteps:
            raise ValueError(f"TAID's temporal attention was built for T={self.timesteps} steps; got {y_seq.shape[0]}")
        summary = y_seq.flatten(3).mean(-1).transpose(0, 1)  # (N, T, C): Conv1d channels = steps
        return torch.sigmoid(self.attention(summary)).transpose(0, 1)  # (T, N, C)

    def forward(self, y_seq: torch.Tensor) -> torch.Tensor:
        w = self.weights(y_seq)
        return (w.reshape(*w.shape, *([1] * (y_seq.dim() - 3))) * y_seq).sum(0)

    def extra_repr(self) -> str:
        return f"timesteps={self.timesteps}"


@dataclass
class TAIDConfig(FSVAEConfig):
    """FSVAE's configuration; TAID changes the readout only, so the fixed readout's decay is unused."""

    UNUSED_FIELDS: ClassVar[Dict[str, object]] = {**FSVAEConfig.UNUSED_FIELDS, "readout_decay": 0.8}


class TAID(FSVAE):
    original_layout: Optional[OriginalLayout] = (
        None  # docs/method.md specifies no layout for TAID's checkpoints: refused, not guessed
    )

    def __init__(self, config: TAIDConfig, sampler=None):
        super().__init__(config, sampler)
        self.readout = TemporalAttentionReadout(config.timesteps)


def taid_paper_config(setting: str) -> TAIDConfig:
    spec = paper_setting(setting)
    return TAIDConfig(
        in_channels=spec.in_channels,
        image_size=spec.image_size,
        latent_dim=128,
        timesteps=16,
        hidden_dims=hidden_dims_for(spec.image_size),
    )


def taid_paper_train(setting: str) -> TrainConfig:
    """FSVAE's settings (TAID is built on FSVAE's code; docs/method.md gives no separate recipe)."""
    cfg = fsvae_paper_train(setting)
    cfg.lr_derivation = "FSVAE's setting (lr 0.001, batch 250), which TAID builds on"
    return cfg
