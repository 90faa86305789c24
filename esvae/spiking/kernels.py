"""Compiled CPU kernels for the multi-step LIF (numba), one pass over memory per direction.

The torch-op sweeps of :mod:`esvae.spiking.neuron` run 2 elementwise ops per time step forward and
5 backward, each reading and writing whole ``(N, ...)`` slices; on CPU those sweeps are bound by
memory traffic. These kernels keep each neuron's state in registers while they walk its T steps:

* forward reads the input currents once and writes the spikes once;
* backward is given the currents again (recomputed by the caller), replays the forward recurrence
  for a block of neurons, storing ``u_t`` in place of ``I_t`` while the block's T rows are in
  cache, then runs the reverse-time recursion of :func:`esvae.spiking.neuron.lif_backward_sweep`
  over those values, overwriting them with ``dL/dI_t``. No buffer of size T is allocated.

Work is split over blocks of neurons (threads: torch's thread count); within a block the loop over
neurons is innermost, so it vectorises.

The arithmetic is the reference's, in the input's precision (float32 or float64):
``u_t = I_t + tau * (u_{t-1} * keep_{t-1})`` with ``keep = 1[u <= V_th]``, ``o_t = 1 - keep_t``,
the rectangle surrogate ``1[|u| < 0.5]``; the tests compare spikes and gradients with the
step-by-step autograd reference. Used for CPU tensors with the rectangle surrogate when numba is
installed (``ESVAE_NO_NUMBA=1`` turns them off); otherwise the torch-op sweeps run.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

try:  # optional: the torch-op sweeps are the fallback
    import numba
    import numpy as np
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None


BLOCK = 2048  # neurons per work item: the inner loop over them vectorises; T rows of a block stay in cache


def _compile():
    jit = numba.njit(parallel=True, cache=True, nogil=True)

    @jit
    def forward(current, params, spikes):  # (T, M) -> spikes (T, M)
        tau, threshold = params[0], params[1]
        one, zero = params[2], params[3]
        steps, width = current.shape
        for block in numba.prange((width + BLOCK - 1) // BLOCK):
            lo = block * BLOCK
            hi = min(lo + BLOCK, width)
            membrane = current[0, lo:hi].copy()
            for j in range(hi - lo):
                spikes[0, lo + j] = zero if membrane[j] <= threshold else one
            for t in range(1, steps):
                for j in range(hi - lo):
                    u = membrane[j]
                    keep = one if u <= threshold else zero
                    u = current[t, lo + j] + tau * (u * keep)
                    membrane[j] = u
                    spikes[t, lo + j] = zero if u <= threshold else one

    @jit
    def backward(buffer, grad_spikes, params):  # buffer: currents in, dL/dI out; (T, M)
        tau, threshold = params[0], params[1]
        one, zero, half = params[2], params[3], params[4]
        steps, width = buffer.shape
        for block in numba.prange((width + BLOCK - 1) // BLOCK):
            lo = block * BLOCK
            hi = min(lo + BLOCK, width)
            for t in range(1, steps):  # replay the forward, storing u_t over I_t
                for j in range(lo, hi):
                    u = buffer[t - 1, j]
                    keep = one if u <= threshold else zero
                    buffer[t, j] = buffer[t, j] + tau * (u * keep)
            grad_next = np.zeros(hi - lo, dtype=buffer.dtype)
            for t in range(steps - 1, -1, -1):
                for j in range(hi - lo):
                    u = buffer[t, lo + j]
                    keep = one if u <= threshold else zero
                    grad_spike = grad_spikes[t, lo + j] - (tau * u) * grad_next[j]
                    window = one if abs(u) < half else zero
                    grad = grad_spike * window + tau * (keep * grad_next[j])
                    buffer[t, lo + j] = grad
                    grad_next[j] = grad

    return forward, backward


_KERNELS = None


def _kernels():
    global _KERNELS
    if _KERNELS is None:
        _KERNELS = _compile()
    return _KERNELS


def usable(x: torch.Tensor, surrogate) -> bool:
    """Whether the compiled kernels handle ``x`` (CPU, float32/float64, rectangle surrogate)."""
    from .surrogate import rectangle
    return (numba is not None and os.environ.get("ESVAE_NO_NUMBA") != "1" and surrogate is rectangle
            and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64))


def _params(dtype: torch.dtype, tau: float, v_threshold: float):
    return np.array([tau, v_threshold, 1.0, 0.0, 0.5], dtype=np.float32 if dtype == torch.float32 else np.float64)


def _threads() -> None:
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


def lif_forward(current_seq: torch.Tensor, tau: float, v_threshold: float,
                out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Spikes ``(T, ...)`` of the LIF driven by ``current_seq`` (contiguous is fastest)."""
    steps = current_seq.shape[0]
    current = current_seq.detach().reshape(steps, -1)
    spikes = torch.empty_like(current, memory_format=torch.contiguous_format) if out is None else out.view(steps, -1)
    _threads()
    _kernels()[0](current.numpy(), _params(current.dtype, tau, v_threshold), spikes.numpy())
    return spikes.view(current_seq.shape)


def lif_backward(current_seq: torch.Tensor, grad_spikes_seq: torch.Tensor, tau: float, v_threshold: float) -> torch.Tensor:
    """dL/dI for the LIF driven by ``current_seq`` given dL/do; ``current_seq`` (contiguous, owned
    by the caller) is overwritten with the result, which is returned."""
    steps = current_seq.shape[0]
    if not current_seq.is_contiguous():
        raise ValueError("lif_backward overwrites the currents in place: pass a contiguous tensor")
    buffer = current_seq.detach().view(steps, -1)
    grad = grad_spikes_seq.detach().reshape(steps, -1)
    _threads()
    _kernels()[1](buffer.numpy(), grad.numpy(), _params(buffer.dtype, tau, v_threshold))
    return current_seq
