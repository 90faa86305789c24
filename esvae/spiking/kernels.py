"""Compiled CPU kernels for tdBN + the multi-step LIF (numba): few passes over memory per direction.

The torch-op path (native batch norm, then the sweeps of :mod:`esvae.spiking.neuron`, 2 elementwise
ops per time step forward and 5 backward) reads and writes whole tensors many times; on CPU it is
bound by memory traffic. These kernels implement tdBN + LIF (:class:`esvae.spiking.layers._TDBNThenLIF`)
in few passes, working image by image (threads over images) with each image's state in cache:

* :func:`lif_forward` reads the batch norm's input once, forms the currents ``x * scale + shift``
  on the fly and writes the spikes once (the currents are never stored);
* :func:`lif_backward` replays that forward from ``x`` (the same bits), storing ``u_t``, then runs
  the reverse-time recursion of :func:`esvae.spiking.neuron.lif_backward_sweep`, writing dL/dI;
* :func:`channel_sums` (batch statistics, and the two sums batch norm's backward needs, in
  float64) and :func:`batch_norm_grad_` (batch norm's input gradient, in place) finish the op.

The LIF arithmetic is the reference's, in the input's precision (float32 or float64):
``u_t = I_t + tau * (u_{t-1} * keep_{t-1})`` with ``keep = 1[u <= V_th]``, ``o_t = 1 - keep_t``,
the rectangle surrogate ``1[|u| < 0.5]``; the tests compare spikes and gradients with the
step-by-step autograd reference. Used for CPU tensors with the rectangle surrogate when numba is
installed (``ESVAE_NO_NUMBA=1`` turns them off); otherwise the torch-op sweeps run.
"""
from __future__ import annotations

import logging
import os
from collections import namedtuple

import torch

try:  # optional: the torch-op sweeps are the fallback
    import numba
    import numpy as np
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None


def _compile(cache: bool = True):
    jit = numba.njit(parallel=True, cache=cache, nogil=True)

    @jit
    def forward(x, scale, shift, params, spikes):  # x, spikes (T, N, K); scale, shift (K,)
        tau, threshold, one, zero = params[0], params[1], params[2], params[3]
        steps, images, width = x.shape
        for p in numba.prange(images):
            membrane = np.empty(width, dtype=x.dtype)
            for k in range(width):
                u = x[0, p, k] * scale[k] + shift[k]
                membrane[k] = u
                spikes[0, p, k] = zero if u <= threshold else one
            for t in range(1, steps):
                for k in range(width):
                    previous = membrane[k]
                    keep = one if previous <= threshold else zero
                    u = (x[t, p, k] * scale[k] + shift[k]) + tau * (previous * keep)
                    membrane[k] = u
                    spikes[t, p, k] = zero if u <= threshold else one

    @jit
    def backward(x, grad_spikes, scale, shift, params, out):  # (T, N, K); out: dL/dI
        tau, threshold, one, zero, half = params[0], params[1], params[2], params[3], params[4]
        steps, images, width = x.shape
        for p in numba.prange(images):
            for k in range(width):  # replay the forward, u_t into out
                out[0, p, k] = x[0, p, k] * scale[k] + shift[k]
            for t in range(1, steps):
                for k in range(width):
                    previous = out[t - 1, p, k]
                    keep = one if previous <= threshold else zero
                    out[t, p, k] = (x[t, p, k] * scale[k] + shift[k]) + tau * (previous * keep)
            grad_next = np.zeros(width, dtype=x.dtype)
            for t in range(steps - 1, -1, -1):
                for k in range(width):
                    u = out[t, p, k]
                    keep = one if u <= threshold else zero
                    grad_spike = grad_spikes[t, p, k] - (tau * u) * grad_next[k]
                    window = one if abs(u) < half else zero
                    grad = grad_spike * window + tau * (keep * grad_next[k])
                    out[t, p, k] = grad
                    grad_next[k] = grad

    @jit
    def channel_sums(a, b, out):  # a, b (R, C, Q) -> out[c] = (sum a, sum a*b) in float64
        rows, channels, inner = a.shape
        for c in numba.prange(channels):
            s0 = s1 = s2 = s3 = 0.0
            p0 = p1 = p2 = p3 = 0.0
            for r in range(rows):
                q = 0
                while q + 4 <= inner:  # four accumulators: independent add chains
                    v0, v1, v2, v3 = np.float64(a[r, c, q]), np.float64(a[r, c, q + 1]), np.float64(a[r, c, q + 2]), np.float64(a[r, c, q + 3])
                    s0 += v0
                    s1 += v1
                    s2 += v2
                    s3 += v3
                    p0 += v0 * np.float64(b[r, c, q])
                    p1 += v1 * np.float64(b[r, c, q + 1])
                    p2 += v2 * np.float64(b[r, c, q + 2])
                    p3 += v3 * np.float64(b[r, c, q + 3])
                    q += 4
                while q < inner:
                    v0 = np.float64(a[r, c, q])
                    s0 += v0
                    p0 += v0 * np.float64(b[r, c, q])
                    q += 1
            out[c, 0] = (s0 + s1) + (s2 + s3)
            out[c, 1] = (p0 + p1) + (p2 + p3)

    @jit
    def column_sums(a, b, out):  # a, b (R, C) -> out[c] = (sum a, sum a*b) in float64
        rows, channels = a.shape
        block = 256
        for cb in numba.prange((channels + block - 1) // block):
            lo = cb * block
            hi = min(lo + block, channels)
            s = np.zeros(hi - lo)
            prod = np.zeros(hi - lo)
            for r in range(rows):
                for c in range(lo, hi):
                    v = np.float64(a[r, c])
                    s[c - lo] += v
                    prod[c - lo] += v * np.float64(b[r, c])
            for c in range(lo, hi):
                out[c, 0] = s[c - lo]
                out[c, 1] = prod[c - lo]

    @jit
    def batch_norm_grad(g, x, coef):  # in place: g = (g - coef0 - (x - coef1) * coef2) * coef3, per channel
        rows, channels, inner = g.shape
        for r in numba.prange(rows):
            for c in range(channels):
                a, m, b, k = coef[c, 0], coef[c, 1], coef[c, 2], coef[c, 3]
                for q in range(inner):
                    g[r, c, q] = (g[r, c, q] - a - (x[r, c, q] - m) * b) * k

    return _Kernels(forward, backward, channel_sums, column_sums, batch_norm_grad)


_Kernels = namedtuple("_Kernels", "forward backward channel_sums column_sums batch_norm_grad")
_KERNELS = None
_TRIED = False


def _kernels():
    """The compiled kernels, cached on disk next to this file (or numba's user cache). Where no
    cache location is writable they compile in memory each process; where even that fails the
    process uses the torch-op path and says so once (None)."""
    global _KERNELS, _TRIED
    if not _TRIED:
        _TRIED = True
        errors = []
        for cache in (True, False):
            try:
                _KERNELS = _compile(cache)
                break
            except Exception as exc:  # e.g. "cannot cache function ...: no locator available"
                errors.append(f"{type(exc).__name__}: {exc}")
        else:
            logging.getLogger(__name__).warning("compiled LIF kernels unavailable (%s); using torch ops", errors[-1])
    return _KERNELS


def usable(x: torch.Tensor, surrogate) -> bool:
    """Whether the compiled kernels handle ``x`` (CPU, float32/float64, rectangle surrogate)."""
    from .surrogate import rectangle
    return (numba is not None and os.environ.get("ESVAE_NO_NUMBA") != "1" and surrogate is rectangle
            and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and _kernels() is not None)


def _params(dtype: torch.dtype, tau: float, v_threshold: float):
    return np.array([tau, v_threshold, 1.0, 0.0, 0.5], dtype=np.float32 if dtype == torch.float32 else np.float64)


def _threads() -> None:
    """Run the kernels on torch's thread count. Numba's OpenMP layer shares libgomp with torch and,
    when it starts its pool, sets the process's OpenMP thread count to its own maximum: torch's
    (e.g. a job's ``--threads 1``) is put back."""
    wanted = torch.get_num_threads()
    numba.set_num_threads(max(1, min(wanted, numba.config.NUMBA_NUM_THREADS)))
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)


def _per_element(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-channel values ``(C,)`` spread over one image's ``(C, ...)`` elements, flattened."""
    return values.to(like.dtype).view(-1, *([1] * (like.dim() - 2))).expand(like.shape[1:]).reshape(-1).contiguous()


def _rows(x: torch.Tensor, timesteps: int) -> torch.Tensor:
    """``(T*N, C, ...)`` -> ``(T, N, C*...)`` as a numpy view (x contiguous)."""
    return x.detach().view(timesteps, -1, x[0].numel()).numpy()


def lif_forward(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, timesteps: int,
                tau: float, v_threshold: float) -> torch.Tensor:
    """Spikes of the LIF driven by the currents ``x * scale + shift`` (per channel, axis 1).

    ``x`` is ``(T*N, C, ...)`` with time folded into the batch, contiguous; the currents are
    computed on the fly and never stored. Returns spikes ``(T, N, C, ...)``."""
    spikes = torch.empty((timesteps, x.shape[0] // timesteps, *x.shape[1:]), dtype=x.dtype)
    _threads()
    _kernels().forward(_rows(x, timesteps), _per_element(scale, x).numpy(), _per_element(shift, x).numpy(),
                  _params(x.dtype, tau, v_threshold), spikes.view(timesteps, -1, x[0].numel()).numpy())
    return spikes


def lif_backward(x: torch.Tensor, grad_spikes: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                 timesteps: int, tau: float, v_threshold: float) -> torch.Tensor:
    """dL/dI ``(T*N, C, ...)`` for the LIF driven by ``x * scale + shift``, given dL/do ``(T, N, C, ...)``
    (any strides): the forward is replayed from ``x``, bit for bit, then swept back in time."""
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    grad = grad_spikes.detach().reshape(timesteps, -1, x[0].numel())
    _threads()
    _kernels().backward(_rows(x, timesteps), grad.numpy(), _per_element(scale, x).numpy(), _per_element(shift, x).numpy(),
                  _params(x.dtype, tau, v_threshold), out.view(timesteps, -1, x[0].numel()).numpy())
    return out


def channel_sums(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per channel (axis 1) of ``(R, C, ...)`` tensors: ``[sum a, sum a * b]`` in float64, ``(C, 2)``."""
    out = torch.empty(a.shape[1], 2, dtype=torch.float64)
    _threads()
    if a.dim() == 2:
        _kernels().column_sums(a.detach().contiguous().numpy(), b.detach().contiguous().numpy(), out.numpy())
        return out
    _kernels().channel_sums(a.detach().reshape(a.shape[0], a.shape[1], -1).numpy(),
                  b.detach().reshape(b.shape[0], b.shape[1], -1).numpy(), out.numpy())
    return out


def batch_norm_grad_(g: torch.Tensor, x: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """In place over ``g`` (contiguous ``(R, C, ...)``): ``(g - c0 - (x - c1) * c2) * c3`` with
    ``coef`` ``(C, 4)`` per channel; returns ``g``."""
    _threads()
    _kernels().batch_norm_grad(g.view(g.shape[0], g.shape[1], -1).numpy(), x.detach().reshape(x.shape[0], x.shape[1], -1).numpy(),
                  coef.to(g.dtype).contiguous().numpy())
    return g
