"""Stateless layers on time-first spike trains, with time folded into the batch.

Every hidden layer of the spiking models is ``weights -> tdBN -> LIF`` (docs/method.md section 1).
Convolutions, transposed convolutions, linear maps and batch norm do not depend on time, so they
run once on ``(T * N, ...)``; only the neuron dynamics are sequential. The layers subclass the
``torch.nn`` weight layers and keep their batch norm as ``.bn``, so state-dict keys read
``encoder.0.weight``, ``encoder.0.bn.running_mean``, ... like the original code's modules (whose
3-D ``(k, k, 1)`` weights differ only by a trailing singleton dimension; see ``checkpoints.py``).
"""

from __future__ import annotations

from collections import namedtuple
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels, spike_conv
from .neuron import LIF, V_THRESHOLD, lif_backward_sweep, lif_forward_sweep, lif_step_inference


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

    momentum: float  # always a number here (checked below); BatchNorm's own may be None
    num_batches_tracked: torch.Tensor  # running statistics are always tracked

    def __init__(
        self,
        num_features: int,
        alpha: float = 1.0,
        v_threshold: float = V_THRESHOLD,
        eps: float = 1e-5,
        momentum: float = 0.1,
    ):
        if not isinstance(momentum, (int, float)) or isinstance(momentum, bool):
            raise ValueError(f"TDBatchNorm needs a numeric momentum (exponential running statistics), got {momentum!r}")
        super().__init__(num_features, eps=eps, momentum=momentum, affine=True, track_running_stats=True)
        self.alpha = float(alpha)
        self.v_threshold = float(v_threshold)

    @property
    def gain(self) -> float:
        """``alpha * V_th``: the effective weight is ``gain * weight``."""
        return self.alpha * self.v_threshold

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() not in (2, 4):
            raise ValueError(f"TDBatchNorm expects (T*N, C) or (T*N, C, H, W) input, got shape {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if self.training:
            self.num_batches_tracked.add_(1)
        return F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight * self.gain,
            self.bias,
            training=self.training,
            momentum=self.momentum,
            eps=self.eps,
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + f", alpha={self.alpha}, v_threshold={self.v_threshold}"


class _TDBNThenLIF(torch.autograd.Function):
    """tdBN followed by the multi-step LIF as one op, on time-folded input ``(T*N, C, ...)``.

    Only the batch norm's input ``x`` and its per-channel statistics are kept for backward, which
    recomputes the currents and replays the membrane potentials (bit for bit: the same code on the
    same values) instead of storing them: one tensor per layer instead of three. Two paths:

    * compiled CPU kernels (:mod:`esvae.spiking.kernels`): batch statistics in float64, the
      currents ``x * scale + shift`` formed on the fly inside the LIF kernels, batch norm's
      backward from two per-channel sums;
    * torch ops (GPU, or without numba): native batch norm (in training, the currents are
      ``x * scale + shift`` from its batch statistics, see :meth:`_currents`), the LIF sweeps of
      :mod:`esvae.spiking.neuron`, native batch-norm backward.

    In both, training uses the batch statistics (biased variance) and updates the running ones
    (momentum, unbiased variance), eval uses the running ones, as PyTorch's batch norm does.
    """

    @staticmethod
    def _normalise(x, weight, bias, bn, training, update):
        running = (bn.running_mean, bn.running_var) if (update or not training) else (None, None)
        return torch.ops.aten.native_batch_norm(
            x, weight * bn.gain, bias, *running, training, bn.momentum if update else 0.0, bn.eps
        )

    @staticmethod
    def _affine(weight, bias, bn, mean, invstd):
        """Per-channel ``(scale, shift)`` with batch norm's output ``x * scale + shift``. Forward and
        backward both take them from here, so the replayed currents are the forward's bits."""
        scale = weight * bn.gain * invstd
        return scale, bias - mean * scale

    @staticmethod
    def _currents(x, weight, bn, mean, invstd, bias, out=None):
        """Batch-norm output from the statistics: ``x * scale + shift`` per channel."""
        scale, shift = _TDBNThenLIF._affine(weight, bias, bn, mean, invstd)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return torch.addcmul(shift.view(shape), x, scale.view(shape), out=out)

    @staticmethod
    def _kernel_statistics(x, bn, training, repeats=1):
        """(mean, invstd) for the compiled path; in training from float64 batch sums, updating the
        running statistics like PyTorch's batch norm. ``repeats``: ``x`` stands for itself repeated
        that many times (the same mean and variance; the running variance's n - 1 counts them)."""
        if not training:  # copies: backward must see these values even if the buffers change meanwhile
            return bn.running_mean.to(x.dtype, copy=True), torch.rsqrt(bn.running_var.to(x.dtype) + bn.eps)
        n0 = x.numel() // x.shape[1]
        n = n0 * repeats
        sums = kernels.channel_sums(x, x)  # (C, 2): sum x, sum x^2
        mean64 = sums[:, 0] / n0
        var64 = (sums[:, 1] / n0 - mean64 * mean64).clamp_min(0.0)  # biased, as batch norm normalises
        with torch.no_grad():
            m = bn.momentum
            bn.running_mean.copy_((1 - m) * bn.running_mean.double() + m * mean64)
            bn.running_var.copy_((1 - m) * bn.running_var.double() + m * var64 * (n / max(n - 1, 1)))
        return mean64.to(x.dtype), torch.rsqrt(var64 + bn.eps).to(x.dtype)

    @staticmethod
    def forward(ctx, x, weight, bias, bn, lif, timesteps, readout=None, consume_input=False, repeated=False):
        training = bn.training
        if training:
            bn.num_batches_tracked.add_(1)
        ctx.bn, ctx.lif, ctx.timesteps, ctx.training = bn, lif, timesteps, training
        ctx.compiled = kernels.usable(x, lif.surrogate)
        ctx.readout, ctx.consume_input, ctx.repeated = readout, consume_input, repeated
        if ctx.compiled:
            mean, invstd = _TDBNThenLIF._kernel_statistics(x, bn, training, timesteps if repeated else 1)
            ctx.save_for_backward(x, weight, bias, mean, invstd)
            scale, shift = _TDBNThenLIF._affine(weight, bias, bn, mean, invstd)
            if readout is not None:
                return kernels.lif_forward_readout(
                    x, scale, shift, readout, timesteps, lif.tau, lif.v_threshold, repeated
                )
            return kernels.lif_forward(x, scale, shift, timesteps, lif.tau, lif.v_threshold, repeated)
        if readout is not None or repeated:
            raise RuntimeError("the fused readout and repeated input need the compiled kernels (see tdbn_lif)")
        out, mean, invstd = _TDBNThenLIF._normalise(x, weight, bias, bn, training, update=training)
        if training:  # the currents from the formula backward recomputes them with (see _currents)
            _TDBNThenLIF._currents(x, weight, bn, mean, invstd, bias, out=out)
        current = out.unflatten(0, (timesteps, -1))
        ctx.save_for_backward(x, weight, bias, mean, invstd)
        keep = torch.empty_like(current)
        lif_forward_sweep(current, lif.tau, lif.v_threshold, keep, membrane_seq=current)
        return keep.neg_().add_(1.0)  # spikes o_t = 1 - keep_t, in place

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_spikes):
        # One function on purpose: the compiled and torch-op paths share the batch-norm gradient
        # and differ in buffers reused in place; split, the reuse rules would be spread over helpers.
        x, weight, bias, mean, invstd = ctx.saved_tensors
        bn, lif, training = ctx.bn, ctx.lif, ctx.training
        factor = bn.gain
        if ctx.compiled:
            scale, shift = _TDBNThenLIF._affine(weight, bias, bn, mean, invstd)
            in_place = (ctx.consume_input or ctx.repeated) and ctx.needs_input_grad[0]
            if in_place or ctx.repeated:  # dL/dx written over x in a second pass: no buffer of x's size
                passes = kernels.InPlaceBackward(
                    x,
                    grad_spikes,
                    scale,
                    shift,
                    ctx.timesteps,
                    lif.tau,
                    lif.v_threshold,
                    readout=ctx.readout,
                    repeated=ctx.repeated,
                )
                sums = passes.sums()
            else:
                grad, sums = kernels.lif_backward(
                    x,
                    grad_spikes,
                    scale,
                    shift,
                    ctx.timesteps,
                    lif.tau,
                    lif.v_threshold,
                    readout=ctx.readout,
                    sums=True,
                )
            # grad: dL/dI (T*N, C, ...); sums: sum g, sum g x per channel (float64), from the same pass
            sum_g, sum_gx = sums[:, 0], sums[:, 1]
            mean64, invstd64 = mean.double(), invstd.double()
            sum_g_xhat = (sum_gx - mean64 * sum_g) * invstd64  # sum g * (x - mean) * invstd
            grad_w = (sum_g_xhat * factor).to(x.dtype) if ctx.needs_input_grad[1] else None
            grad_b = sum_g.to(x.dtype) if ctx.needs_input_grad[2] else None
            if not ctx.needs_input_grad[0]:
                return None, grad_w, grad_b, None, None, None, None, None, None
            if training:  # dx = w invstd (g - mean(g) - xhat mean(g xhat))
                n = x.numel() // x.shape[1] * (ctx.timesteps if ctx.repeated else 1)
                coef = torch.stack(
                    [sum_g / n, mean64, invstd64 * sum_g_xhat / n, (weight.double() * factor) * invstd64], 1
                )
                if in_place:
                    return passes.apply(coef), grad_w, grad_b, None, None, None, None, None, None
                return kernels.batch_norm_grad_(grad, x, coef), grad_w, grad_b, None, None, None, None, None, None
            if in_place:  # (g - 0 - x * 0) * scale = g * scale, the same bits
                zero = torch.zeros_like(mean64)
                return (
                    passes.apply(torch.stack([zero, zero, zero, scale.double()], 1)),
                    grad_w,
                    grad_b,
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                )
            shape = (1, -1) + (1,) * (x.dim() - 2)
            return grad.mul_(scale.view(shape)), grad_w, grad_b, None, None, None, None, None, None
        if training:
            out = _TDBNThenLIF._currents(x, weight, bn, mean, invstd, bias)
        else:
            out = _TDBNThenLIF._normalise(x, weight, bias, bn, training, update=False)[0]
        membrane = out.unflatten(0, (ctx.timesteps, -1))
        keep = torch.empty_like(membrane)
        lif_forward_sweep(membrane, lif.tau, lif.v_threshold, keep, membrane_seq=membrane)
        grad_current = lif_backward_sweep(grad_spikes, membrane, keep, lif.tau, lif.surrogate)
        del keep
        running = (None, None) if training else (bn.running_mean, bn.running_var)
        grad_x, grad_w, grad_b = torch.ops.aten.native_batch_norm_backward(
            grad_current.flatten(0, 1),
            x,
            weight * factor,
            *running,
            mean,
            invstd,
            training,
            bn.eps,
            list(ctx.needs_input_grad[:3]),
        )
        return grad_x, (grad_w * factor if grad_w is not None else None), grad_b, None, None, None, None, None, None


def _repeat(y: torch.Tensor, timesteps: int) -> torch.Tensor:
    """``(N, ...) -> (T*N, ...)``, ``y`` at every step, stored like ``y`` (one copy)."""
    if kernels.channels_last(y):
        z = y.permute(0, 2, 3, 1)
        return z.unsqueeze(0).expand(timesteps, *z.shape).flatten(0, 1).permute(0, 3, 1, 2)
    return y.unsqueeze(0).expand(timesteps, *y.shape).flatten(0, 1)


def tdbn_lif(
    y: torch.Tensor, bn: TDBatchNorm, lif: LIF, timesteps: int, consume_input: bool = False, repeated: bool = False
) -> torch.Tensor:
    """``lif(unfold_time(bn(y)))`` as one op (:class:`_TDBNThenLIF`); ``(T*N, ...) -> (T, N, ...)``.

    ``consume_input=True`` lets backward (compiled kernels) write the input gradient over ``y``
    instead of a new buffer: for a ``y`` nobody else reads, such as the output of the layer's own
    weights, it saves a buffer of ``y``'s size. The graph can then be run backward once only
    (a second pass fails with autograd's in-place error instead of giving wrong gradients).

    ``repeated=True``: ``y`` is ``(N, ...)``, the input of every step (the first layer's, whose
    input images are the same at each step); with the compiled kernels it is read T times and
    never copied (its gradient is the sum over the steps, formed in the kernel), else repeated."""
    bn._check_input_dim(y)
    repeated = repeated and timesteps > 1  # one step: y already is the (T*N, ...) input
    if repeated and not kernels.usable(y, lif.surrogate):
        return _TDBNThenLIF.apply(_repeat(y, timesteps), bn.weight, bn.bias, bn, lif, timesteps, None, consume_input)
    return _TDBNThenLIF.apply(y, bn.weight, bn.bias, bn, lif, timesteps, None, consume_input, repeated)


StepState = namedtuple("StepState", "membrane spikes scale shift")


def tdbn_lif_step(y: torch.Tensor, bn: TDBatchNorm, lif: LIF, state: Optional[StepState] = None) -> StepState:
    """One time step of :func:`tdbn_lif` in evaluation mode (running statistics) on ``y (N, C)``:
    pass the returned state (``spikes``: this step's ``o_t``) to the next step's call, None at
    t = 0. With the compiled kernels it is one pass (:func:`esvae.spiking.kernels.lif_step`, the
    fused op's arithmetic; the per-channel affine is formed once, at t = 0), else batch norm and
    :func:`esvae.spiking.neuron.lif_step_inference`. Either way the spikes equal step t of
    ``tdbn_lif`` on the whole sequence given the same ``y``."""
    if bn.training:
        raise RuntimeError("tdbn_lif_step needs eval mode: in training tdBN uses the statistics of the whole sequence")
    if kernels.usable(y, lif.surrogate) and y.dim() == 2 and (state is None or state.scale is not None):
        if state is None:
            mean, invstd = _TDBNThenLIF._kernel_statistics(y, bn, training=False)
            scale, shift = _TDBNThenLIF._affine(bn.weight.detach(), bn.bias.detach(), bn, mean, invstd)
            membrane = None
        else:
            membrane, scale, shift = state.membrane, state.scale, state.shift
        membrane, spikes = kernels.lif_step(y.contiguous(), scale, shift, lif.tau, lif.v_threshold, membrane)
        return StepState(membrane, spikes, scale, shift)
    previous = None if state is None else (state.membrane, state.spikes)
    membrane, spikes = lif_step_inference(bn(y), previous, lif.tau, lif.v_threshold)
    return StepState(membrane, spikes, None, None)


def tdbn_lif_readout(
    y: torch.Tensor,
    bn: TDBatchNorm,
    lif: LIF,
    timesteps: int,
    weights: torch.Tensor,
    consume_input: bool = False,
    repeated: bool = False,
) -> torch.Tensor:
    """``sum_t weights[t] * lif(unfold_time(bn(y)))_t``: ``(T*N, ...) -> (N, ...)``.

    With the compiled kernels one op that never stores the spikes (the sum is taken as they are
    made, and backward forms dL/do_t = w_t dL/dsum inside the LIF kernel): for the decoder's
    last spiking layer, the largest, that saves writing and re-reading its spikes and their
    gradient, and holding them. Otherwise :func:`tdbn_lif`, then :func:`weighted_time_sum`."""
    bn._check_input_dim(y)
    repeated = repeated and timesteps > 1
    if kernels.usable(y, lif.surrogate):
        return _TDBNThenLIF.apply(y, bn.weight, bn.bias, bn, lif, timesteps, weights.detach(), consume_input, repeated)
    return weighted_time_sum(weights, tdbn_lif(y, bn, lif, timesteps, consume_input, repeated))


def _conv_layout(x: torch.Tensor) -> torch.Tensor:
    """Image tensors go to the convolutions channels last (NHWC): oneDNN's fast layout on CPU (about
    twice the speed of NCHW for these layers' shapes, forward and backward) and cuDNN's for tensor
    cores. Everything downstream (tdBN + LIF, their kernels, the readout) keeps that order, so a
    layer's spikes feed the next convolution without a copy. Other tensors pass unchanged."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


class _SpikeConvolution(torch.autograd.Function):
    """A convolution or transposed convolution of (channels-last, CPU) spike trains.

    * Spike-driven (:mod:`esvae.spiking.spike_conv`): where the input is 0/1 and at most
      ``spike_conv.MAX_DENSITY`` of it fired, the forward and the weight gradient are computed from
      the spikes that fired (each output is its bias plus the weight rows of the spikes it sees),
      and the backward keeps that spike index instead of the input. The input gradient is the
      dense convolution of the output gradient (it needs no input).
    * Otherwise oneDNN runs. A 0/1 input is saved as uint8 (exact; a quarter of float32) and
      rebuilt for the weight gradient. A *transposed* convolution's weight gradient with NHWC
      tensors is several times slower in oneDNN than NCHW (about 170 ms against 60 for the 32 -> 32
      layer at 32x32, 1024 images); the same numbers come from the weight gradient of the ordinary
      convolution that maps the output gradient back to the input grid:
      ``dL/dW[i, o, k] = sum x[i, p] dL/dy[o, 2p - 1 + k]`` is the weight gradient of
      ``conv2d(dL/dy) -> x`` with weight shape ``(in, out, k, k)``, which runs fast in NHWC (about
      40 ms, equal bits)."""

    @staticmethod
    def forward(ctx, x, weight, bias, transposed, stride, padding, output_padding, dilation, groups):
        ctx.conf = (transposed, stride, padding, output_padding, dilation, groups)
        ctx.has_bias, ctx.dtype, ctx.input_shape = bias is not None, x.dtype, tuple(x.shape)
        wanted = any(ctx.needs_input_grad[:2])
        simple = list(dilation) == [1, 1] and groups == 1 and x.dtype == weight.dtype
        index = spike_conv.spike_index(x) if simple else None
        ctx.spike_driven = index is not None
        if index is not None:
            if ctx.needs_input_grad[1]:  # saved tensors: kept for a retained graph, freed after backward
                ctx.save_for_backward(weight, index.idx, index.count)
                ctx.index_shape, ctx.fired = index.shape, index.fired
            else:
                ctx.save_for_backward(weight)
            return spike_conv.forward(index, weight, bias, transposed, stride, padding, output_padding)
        packed = kernels.pack_binary(x) if wanted else None  # nothing to keep otherwise
        ctx.save_for_backward(weight, packed if packed is not None else x)
        ctx.packed = packed is not None
        return torch.ops.aten.convolution(
            x, weight, bias, stride, padding, dilation, transposed, output_padding, groups
        )

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        weight, *saved = ctx.saved_tensors
        transposed, stride, padding, output_padding, dilation, groups = ctx.conf
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_out = grad_out.contiguous(memory_format=torch.channels_last)
        grad_x = grad_w = grad_b = None
        if ctx.spike_driven:  # the index of the fired channels for the weight gradient, no input
            if need_x:
                grad_x = _input_grad(grad_out, weight, ctx.input_shape, transposed, stride, padding)
            if need_w:
                index = spike_conv.SpikeIndex(saved[0], saved[1], ctx.index_shape, ctx.fired)
                grad_w = spike_conv.weight_grad(index, grad_out, weight.shape, transposed, stride, padding)
        else:
            x = saved[0].to(ctx.dtype) if ctx.packed else saved[0]  # keeps the channels-last strides
            if need_x:
                grad_x = torch.ops.aten.convolution_backward(
                    grad_out,
                    x,
                    weight,
                    None,
                    stride,
                    padding,
                    dilation,
                    transposed,
                    output_padding,
                    groups,
                    [True, False, False],
                )[0]
            if need_w:
                if transposed:
                    grad_w = torch.ops.aten.convolution_backward(
                        x,
                        grad_out,
                        weight,
                        None,
                        stride,
                        padding,
                        dilation,
                        False,
                        [0, 0],
                        groups,
                        [False, True, False],
                    )[1]
                else:
                    grad_w = torch.ops.aten.convolution_backward(
                        grad_out,
                        x,
                        weight,
                        None,
                        stride,
                        padding,
                        dilation,
                        False,
                        output_padding,
                        groups,
                        [False, True, False],
                    )[1]
        if need_b and ctx.has_bias:
            grad_b = grad_out.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None, None, None, None, None


def _input_grad(grad_out: torch.Tensor, weight: torch.Tensor, input_shape, transposed: bool, stride, padding):
    """dL/dx of a (transposed) convolution with dilation 1 and one group: the adjoint operation on
    the output gradient, the input's size restored through the output padding."""
    if transposed:
        return torch.nn.functional.conv2d(grad_out, weight, None, stride, padding)
    extra = [
        input_shape[2 + d]
        - spike_conv.output_size(grad_out.shape[2 + d], weight.shape[2 + d], stride[d], padding[d], 0, True)
        for d in range(2)
    ]
    return torch.nn.functional.conv_transpose2d(grad_out, weight, None, stride, padding, extra)


def _spike_convolution(layer, x: torch.Tensor, transposed: bool) -> Optional[torch.Tensor]:
    """``layer``'s convolution through :class:`_SpikeConvolution` where it applies (CPU, 4-D
    channels-last input with the compiled kernels, zero padding, no groups), else None."""
    if not (
        x.device.type == "cpu"
        and x.dim() == 4
        and kernels.channels_last(x)
        and layer.groups == 1
        and layer.padding_mode == "zeros"
        and isinstance(layer.padding, tuple)
        and kernels.usable(x, kernels.rectangle_surrogate())
    ):
        return None
    output_padding = list(layer.output_padding) if transposed else [0, 0]
    return _SpikeConvolution.apply(
        x,
        layer.weight,
        layer.bias,
        transposed,
        list(layer.stride),
        list(layer.padding),
        output_padding,
        list(layer.dilation),
        layer.groups,
    )


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

    def _weights_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The weight layer on time-folded input (the torch layer's own forward unless overridden)."""
        return super().forward(x)  # type: ignore[misc]

    def forward_readout(self, x_seq: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``sum_t weights[t] * self(x_seq)[t]``, ``(T, N, ...) -> (N, ...)``; with the fused LIF
        through :func:`tdbn_lif_readout` (the spikes are not stored)."""
        if self.bn is None or self.lif is None or self.lif.backend != "fused":
            return weighted_time_sum(weights, self.forward(x_seq))
        timesteps = x_seq.shape[0]
        if timesteps > 1 and x_seq.stride(0) == 0:
            return tdbn_lif_readout(
                self._step_weights(x_seq[0]), self.bn, self.lif, timesteps, weights, consume_input=True, repeated=True
            )
        return tdbn_lif_readout(
            self._weights_before_bn(x_seq), self.bn, self.lif, timesteps, weights, consume_input=True
        )  # the weights' output: read by nothing else

    def _step_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The weight layer on one step's input ``(N, ...)``, its output channels last (a 4-D input
        with one channel, such as Fashion-MNIST's images, is both NCHW and NHWC, and oneDNN then
        answers in NCHW; converting these N images here saves converting the T x N spikes the LIF
        makes from them before the next convolution, and their gradient back)."""
        return _conv_layout(self._weights_forward(_conv_layout(x)))

    def _weights_before_bn(self, x_seq: torch.Tensor) -> torch.Tensor:
        """The weight layer on ``(T, N, ...)``, time folded: ``(T*N, ...)``."""
        timesteps = x_seq.shape[0]
        if timesteps > 1 and x_seq.stride(0) == 0:
            return _repeat(self._step_weights(x_seq[0]), timesteps)
        return self._weights_forward(_conv_layout(fold_time(x_seq)))

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:  # (T, N, ...) -> (T, N, ...)
        timesteps = x_seq.shape[0]
        bn, lif = self.bn, self.lif
        if bn is not None and lif is not None and lif.backend == "fused":
            if timesteps > 1 and x_seq.stride(0) == 0:  # the same input at every step: not copied
                return tdbn_lif(self._step_weights(x_seq[0]), bn, lif, timesteps, consume_input=True, repeated=True)
            y = self._weights_before_bn(x_seq)
            return tdbn_lif(y, bn, lif, timesteps, consume_input=True)  # y: read by nothing else
        y = self._weights_before_bn(x_seq)
        if bn is not None:
            y = bn(y)
        y = unfold_time(y, timesteps)
        return lif(y) if lif is not None else y


class SpikingConv2d(_TimeFolded, nn.Conv2d):
    """Conv2d applied at every step -> optional tdBN -> optional LIF; ``(T, N, C, H, W)``."""

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size=3,
        stride=1,
        padding=1,
        *,
        bn_alpha: Optional[float] = 1.0,
        lif: Optional[LIF] = None,
    ):
        nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=True)
        self._attach(out_channels, bn_alpha, lif)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return _TimeFolded.forward(self, x_seq)

    def _weights_forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _spike_convolution(self, x, transposed=False)
        return out if out is not None else nn.Conv2d.forward(self, x)


class SpikingConvTranspose2d(_TimeFolded, nn.ConvTranspose2d):
    """ConvTranspose2d at every step -> optional tdBN -> optional LIF; ``(T, N, C, H, W)``."""

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size=3,
        stride=1,
        padding=1,
        output_padding=0,
        *,
        bn_alpha: Optional[float] = 1.0,
        lif: Optional[LIF] = None,
    ):
        nn.ConvTranspose2d.__init__(
            self,
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            output_padding=output_padding,
            bias=True,
        )
        self._attach(out_channels, bn_alpha, lif)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _TimeFolded.forward(self, x_seq)

    def _weights_forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _spike_convolution(self, x, transposed=True)
        return out if out is not None else nn.ConvTranspose2d.forward(self, x)


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
        return (self.decay**exponents).to(dtype or torch.get_default_dtype())

    def forward(self, y_seq: torch.Tensor) -> torch.Tensor:
        w = self.weights(y_seq.shape[0], y_seq.device, y_seq.dtype)
        return weighted_time_sum(w, y_seq)

    def extra_repr(self) -> str:
        return f"decay={self.decay}"


def weighted_time_sum(w: torch.Tensor, y_seq: torch.Tensor) -> torch.Tensor:
    """``sum_t w_t y_t`` over the leading axis of ``(T, N, C, H, W)`` (or any ``(T, ...)``), read in
    its memory order: a channels-last sequence is summed without first being copied to NCHW, and
    the result ``(N, C, H, W)`` is channels last too."""
    if y_seq.dim() == 5 and not y_seq.is_contiguous() and y_seq.permute(0, 1, 3, 4, 2).is_contiguous():
        return torch.tensordot(w, y_seq.permute(0, 1, 3, 4, 2), dims=([0], [0])).permute(0, 3, 1, 2)
    return torch.tensordot(w, y_seq, dims=([0], [0]))
