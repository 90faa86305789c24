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

from . import kernels
from .neuron import LIF, V_THRESHOLD, lif_backward_sweep, lif_forward_sweep


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


class _TDBNThenLIF(torch.autograd.Function):
    """tdBN followed by the multi-step LIF as one op, on time-folded input ``(T*N, C, ...)``.

    Forward: PyTorch's native batch norm (batch statistics and running-statistics update in
    training, running statistics in eval) then :func:`lif_forward_sweep`; only the batch norm's
    input (and its per-channel statistics) is kept for backward. In training the currents are
    ``x * scale + shift`` from the batch statistics (:meth:`_currents`, in forward and backward
    alike); backward recomputes them and the membrane potentials from them, runs
    :func:`lif_backward_sweep` in place over them, then the native batch-norm backward. Compared
    with saving the membrane potentials (and the spikes) this keeps one tensor per layer instead of
    three, at the cost of one elementwise batch-norm pass and one forward sweep in backward.
    """

    @staticmethod
    def _normalise(x, weight, bias, bn, training, update):
        running = (bn.running_mean, bn.running_var) if (update or not training) else (None, None)
        return torch.ops.aten.native_batch_norm(x, weight * (bn.alpha * bn.v_threshold), bias, *running,
                                                training, bn.momentum if update else 0.0, bn.eps)

    @staticmethod
    def _currents(x, weight, bn, mean, invstd, bias, out=None):
        """Training-mode batch-norm output from the batch statistics: ``x * scale + shift``, per
        channel. Forward and backward both take the currents from here, so the membrane potentials
        replayed in backward are bit for bit the forward's (the native kernel's own output can
        differ from this in the last bit)."""
        scale = weight * (bn.alpha * bn.v_threshold) * invstd
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return torch.addcmul((bias - mean * scale).view(shape), x, scale.view(shape), out=out)

    @staticmethod
    def forward(ctx, x, weight, bias, bn, lif, timesteps):
        training = bn.training
        if training:
            bn.num_batches_tracked.add_(1)
        out, mean, invstd = _TDBNThenLIF._normalise(x, weight, bias, bn, training, update=training)
        if training:  # the currents from the formula backward recomputes them with (see _currents)
            _TDBNThenLIF._currents(x, weight, bn, mean, invstd, bias, out=out)
        current = out.unflatten(0, (timesteps, -1))
        ctx.save_for_backward(x, weight, bias, mean, invstd)
        ctx.bn, ctx.lif, ctx.timesteps, ctx.training = bn, lif, timesteps, training
        if kernels.usable(current, lif.surrogate):
            return kernels.lif_forward(current, lif.tau, lif.v_threshold, out=current)  # spikes over the currents
        keep = torch.empty_like(current)
        lif_forward_sweep(current, lif.tau, lif.v_threshold, keep, membrane_seq=current)
        return keep.neg_().add_(1.0)  # spikes o_t = 1 - keep_t, in place

    @staticmethod
    def backward(ctx, grad_spikes):
        x, weight, bias, mean, invstd = ctx.saved_tensors
        bn, lif, training = ctx.bn, ctx.lif, ctx.training
        if training:
            out = _TDBNThenLIF._currents(x, weight, bn, mean, invstd, bias)
        else:
            out = _TDBNThenLIF._normalise(x, weight, bias, bn, training, update=False)[0]
        membrane = out.unflatten(0, (ctx.timesteps, -1))
        if kernels.usable(membrane, lif.surrogate) and membrane.is_contiguous():
            grad_current = kernels.lif_backward(membrane, grad_spikes, lif.tau, lif.v_threshold)
        else:
            keep = torch.empty_like(membrane)
            lif_forward_sweep(membrane, lif.tau, lif.v_threshold, keep, membrane_seq=membrane)
            grad_current = lif_backward_sweep(grad_spikes, membrane, keep, lif.tau, lif.surrogate)
            del keep
        scale = bn.alpha * bn.v_threshold
        running = (None, None) if training else (bn.running_mean, bn.running_var)
        grad_x, grad_w, grad_b = torch.ops.aten.native_batch_norm_backward(
            grad_current.flatten(0, 1), x, weight * scale, *running, mean, invstd, training, bn.eps,
            list(ctx.needs_input_grad[:3]))
        return grad_x, (grad_w * scale if grad_w is not None else None), grad_b, None, None, None


def tdbn_lif(y: torch.Tensor, bn: TDBatchNorm, lif: LIF, timesteps: int) -> torch.Tensor:
    """``lif(unfold_time(bn(y)))`` as one op (:class:`_TDBNThenLIF`); ``(T*N, ...) -> (T, N, ...)``."""
    bn._check_input_dim(y)
    return _TDBNThenLIF.apply(y, bn.weight, bn.bias, bn, lif, timesteps)


class _TimeFolded:
    """Mixin: run the weight layer once on folded time, then tdBN and the LIF.

    When the input is the same at every step (an expanded tensor, stride 0 over time: the direct
    input coding of the first layer), the weight layer runs on one step and its output is repeated,
    which is the same result at 1/T of the cost (its backward sums the gradient over T first).
    With the fused LIF, tdBN and the LIF run as one op (:func:`tdbn_lif`).
    """

    bn: Optional[TDBatchNorm]
    lif: Optional[LIF]

    def _attach(self, out_features: int, bn_alpha: Optional[float], lif: Optional[LIF]) -> None:
        self.bn = TDBatchNorm(out_features, alpha=bn_alpha) if bn_alpha is not None else None
        self.lif = lif

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:  # (T, N, ...) -> (T, N, ...)
        timesteps = x_seq.shape[0]
        if timesteps > 1 and x_seq.stride(0) == 0:
            y = super().forward(x_seq[0])  # type: ignore[misc]
            y = y.unsqueeze(0).expand(timesteps, *y.shape).flatten(0, 1)
        else:
            y = super().forward(fold_time(x_seq))  # type: ignore[misc]
        if self.bn is not None and self.lif is not None and self.lif.backend == "fused":
            return tdbn_lif(y, self.bn, self.lif, timesteps)
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
