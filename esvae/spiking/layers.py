"""Stateless layers on time-first spike trains, with time folded into the batch.

Every hidden layer of the spiking models is ``weights -> tdBN -> LIF`` (method.md section 1).
Convolutions, transposed convolutions, linear maps and batch norm do not depend on time, so they
run once on ``(T * N, ...)``; only the neuron dynamics are sequential. The layers subclass the
``torch.nn`` weight layers and keep their batch norm as ``.bn``, so state-dict keys read
``encoder.0.weight``, ``encoder.0.bn.running_mean``, ... like the original code's modules (whose
3-D ``(k, k, 1)`` weights differ only by a trailing singleton dimension; see ``checkpoints.py``).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .neuron import LIF, V_THRESHOLD


def fold_time(x: torch.Tensor) -> torch.Tensor:
    """``(T, N, ...) -> (T * N, ...)`` (a view)."""
    return x.flatten(0, 1)


def unfold_time(x: torch.Tensor, timesteps: int) -> torch.Tensor:
    """``(T * N, ...) -> (T, N, ...)`` (a view)."""
    return x.unflatten(0, (timesteps, -1))


class TDBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Threshold-dependent batch norm (tdBN, Zheng et al. 2021) on time-folded input.

    Per channel, statistics over batch, time and space together; output
    ``alpha * V_th * (x - mean) / sqrt(var + eps) * weight + bias``. On input with time folded
    into the batch, that is exactly ``BatchNorm`` with the effective weight
    ``alpha * V_th * weight``; running statistics (momentum 0.1, unbiased running variance) are
    PyTorch's. Accepts ``(T*N, C)`` or ``(T*N, C, H, W)``.
    """

    def __init__(self, num_features: int, alpha: float = 1.0, v_threshold: float = V_THRESHOLD,
                 eps: float = 1e-5, momentum: float = 0.1):
        super().__init__(num_features, eps=eps, momentum=momentum, affine=True, track_running_stats=True)
        self.alpha = float(alpha)
        self.v_threshold = float(v_threshold)

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() not in (2, 4):
            raise ValueError(f"TDBatchNorm expects (T*N, C) or (T*N, C, H, W) input, got shape {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if self.training:
            self.num_batches_tracked.add_(1)
        return F.batch_norm(
            x, self.running_mean, self.running_var,
            self.weight * (self.alpha * self.v_threshold), self.bias,
            training=self.training, momentum=self.momentum, eps=self.eps,
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + f", alpha={self.alpha}, v_threshold={self.v_threshold}"


class _TimeFolded:
    """Mixin: run the weight layer (and tdBN) once on folded time, then the LIF over time."""

    bn: Optional[TDBatchNorm]
    lif: Optional[LIF]

    def _attach(self, out_features: int, bn_alpha: Optional[float], lif: Optional[LIF]) -> None:
        self.bn = TDBatchNorm(out_features, alpha=bn_alpha) if bn_alpha is not None else None
        self.lif = lif

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:  # (T, N, ...) -> (T, N, ...)
        timesteps = x_seq.shape[0]
        y = super().forward(fold_time(x_seq))  # type: ignore[misc]
        if self.bn is not None:
            y = self.bn(y)
        y = unfold_time(y, timesteps)
        return self.lif(y) if self.lif is not None else y


class SpikingConv2d(_TimeFolded, nn.Conv2d):
    """Conv2d applied at every step -> optional tdBN -> optional LIF; ``(T, N, C, H, W)``."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=1, *,
                 bn_alpha: Optional[float] = 1.0, lif: Optional[LIF] = None):
        nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=True)
        self._attach(out_channels, bn_alpha, lif)


class SpikingConvTranspose2d(_TimeFolded, nn.ConvTranspose2d):
    """ConvTranspose2d at every step -> optional tdBN -> optional LIF; ``(T, N, C, H, W)``."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=1, output_padding=0, *,
                 bn_alpha: Optional[float] = 1.0, lif: Optional[LIF] = None):
        nn.ConvTranspose2d.__init__(self, in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                                    output_padding=output_padding, bias=True)
        self._attach(out_channels, bn_alpha, lif)


class SpikingLinear(_TimeFolded, nn.Linear):
    """Linear map at every step -> optional tdBN -> optional LIF; ``(T, N, F)``."""

    def __init__(self, in_features, out_features, *, bn_alpha: Optional[float] = 1.0, lif: Optional[LIF] = None):
        nn.Linear.__init__(self, in_features, out_features, bias=True)
        self._attach(out_features, bn_alpha, lif)


class MembraneReadout(nn.Module):
    """Final potential of a non-firing leaky integrator: ``sum_t y_t * decay^(T-1-t)``.

    ``(T, N, ...) -> (N, ...)``. With ``decay = 0.8`` this is the original "membrane output layer".
    """

    def __init__(self, decay: float = 0.8):
        super().__init__()
        self.decay = float(decay)

    def weights(self, timesteps: int, device=None, dtype=None) -> torch.Tensor:
        """Per-step weights ``decay^(T-1-t)`` for t = 0..T-1, shape ``(T,)``."""
        exponents = torch.arange(timesteps - 1, -1, -1, device=device, dtype=torch.float64)
        return (self.decay ** exponents).to(dtype or torch.get_default_dtype())

    def forward(self, y_seq: torch.Tensor) -> torch.Tensor:
        w = self.weights(y_seq.shape[0], y_seq.device, y_seq.dtype)
        return torch.tensordot(w, y_seq, dims=([0], [0]))

    def extra_repr(self) -> str:
        return f"decay={self.decay}"
