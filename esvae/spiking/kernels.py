"""Compiled CPU kernels for tdBN + the multi-step LIF (numba): few passes over memory per direction.

The torch-op path (native batch norm, then the sweeps of :mod:`esvae.spiking.neuron`, 2 elementwise
ops per time step forward and 5 backward) reads and writes whole tensors many times; on CPU it is
bound by memory traffic. These kernels implement tdBN + LIF (:class:`esvae.spiking.layers._TDBNThenLIF`)
in few passes, working image by image (threads over images) with each image's state in cache (the
backward kernels take an image :data:`BLOCK` elements at a time, so the block's T membranes stay in
cache between the replay and the sweep back; the result does not depend on the block size):

* :func:`lif_forward` reads the batch norm's input once, forms the currents ``x * scale + shift``
  on the fly and writes the spikes once (the currents are never stored); :func:`lif_forward_readout`
  instead sums ``w_t o_t`` over time as the spikes are made (the decoder's last spiking layer,
  whose spikes only feed the membrane readout, so they are never stored); :func:`lif_step` is one
  step of it, for networks stepped one time step at a time (FSVAE's voting MLPs in evaluation);
* :func:`lif_backward` replays that forward from ``x`` (the same bits), then runs the reverse-time
  recursion of :func:`esvae.spiking.neuron.lif_backward_sweep`, writing dL/dI and accumulating the
  two per-channel sums batch norm's backward needs in the same pass; :class:`InPlaceBackward` does
  it in two passes that write batch norm's input gradient over ``x`` itself (no buffer of its size);
* :func:`channel_sums` (batch statistics in float64) and :func:`batch_norm_grad_` (batch norm's
  input gradient, in place) finish the op; :func:`pack_binary` stores spikes as bytes.

Tensors are read in their memory order: contiguous ``(T*N, C, ...)`` or, for images, channels last
(NHWC, the layout the convolutions run in); an input that is the same at every step (the first
layer's) may be passed once and is read T times. Sums run over a fixed number of chunks in a fixed
order, so results do not depend on the thread count.

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
from typing import Optional, Tuple

import torch

try:  # optional: the torch-op sweeps are the fallback
    import numba
    import numpy as np
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None  # type: ignore[assignment]


def _compile(cache: bool = True):
    """Every numba kernel of the fused neuron, defined here rather than at module level so that
    importing the library never starts numba's compiler (one long function: a list of small kernels).

    The helpers the kernels call (``_replay``, ``_sweep_back``) are module globals, not closure
    variables: numba keys its on-disk cache on the pickled closure, and a compiled function pickles
    with an id that is new in every process, so a kernel calling a helper from its closure missed
    the cache and was compiled again by every process (about 9 s each, and a cache file more)."""
    global _replay, _sweep_back
    jit = numba.njit(parallel=True, cache=cache, nogil=True)

    @jit
    def forward(x, scale, shift, params, spikes):  # x, spikes (T, N, K); scale, shift (K,)
        # x may also be (1, N, K): the same input at every step (the first layer's), read T times.
        tau, threshold, one, zero = params[0], params[1], params[2], params[3]
        steps, images, width = spikes.shape
        tx = 1 if x.shape[0] == steps else 0
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
                    u = (x[t * tx, p, k] * scale[k] + shift[k]) + tau * (previous * keep)
                    membrane[k] = u
                    spikes[t, p, k] = zero if u <= threshold else one

    @jit
    def step(x, scale, shift, params, membrane, spikes, first):  # x, membrane, spikes (N, K): one step of forward
        # The same arithmetic as forward's step t (first: t = 0); membrane is read, then overwritten.
        tau, threshold, one, zero = params[0], params[1], params[2], params[3]
        rows, width = x.shape
        for p in numba.prange(rows):
            for k in range(width):
                u = x[p, k] * scale[k] + shift[k]
                if not first:
                    previous = membrane[p, k]
                    keep = one if previous <= threshold else zero
                    u = u + tau * (previous * keep)
                membrane[p, k] = u
                spikes[p, k] = zero if u <= threshold else one

    @jit
    def forward_readout(x, scale, shift, params, weights, mixed):  # x (T or 1, N, K); mixed (N, K)
        # The forward above with the spikes summed over time as they are made, sum_t w_t o_t,
        # instead of stored: the membrane readout of the last spiking layer.
        tau, threshold, one, zero = params[0], params[1], params[2], params[3]
        steps = weights.shape[0]
        images, width = mixed.shape
        tx = 1 if x.shape[0] == steps else 0
        for p in numba.prange(images):
            membrane = np.empty(width, dtype=x.dtype)
            for k in range(width):
                u = x[0, p, k] * scale[k] + shift[k]
                membrane[k] = u
                mixed[p, k] = zero if u <= threshold else weights[0]
            for t in range(1, steps):
                w = weights[t]
                for k in range(width):
                    previous = membrane[k]
                    keep = one if previous <= threshold else zero
                    u = (x[t * tx, p, k] * scale[k] + shift[k]) + tau * (previous * keep)
                    membrane[k] = u
                    mixed[p, k] += zero if u <= threshold else w

    @numba.njit(cache=cache, nogil=True, inline="always")
    def _replay(x, p, k0, n, tx, scale, shift, tau, threshold, one, zero, u):
        # u[t, :n] = u_t of elements k0 .. k0 + n of image p, as forward computes them (the same bits)
        sc, sh = scale[k0 : k0 + n], shift[k0 : k0 + n]
        xr, u0 = x[0, p, k0 : k0 + n], u[0]
        for k in range(n):
            u0[k] = xr[k] * sc[k] + sh[k]
        for t in range(1, u.shape[0]):
            xr, ut, up = x[t * tx, p, k0 : k0 + n], u[t], u[t - 1]
            for k in range(n):
                previous = up[k]
                keep = one if previous <= threshold else zero
                ut[k] = (xr[k] * sc[k] + sh[k]) + tau * (previous * keep)

    @numba.njit(cache=cache, nogil=True, inline="always")
    def _sweep_back(v, grad_out, grad_next, tau, threshold, one, zero, half):
        # dL/dI_t from u_t = v, dL/do_t = grad_out and dL/dI_{t+1} = grad_next: the reverse-time
        # step of the reference's sweep, with the rectangle surrogate 1[|u| < 0.5]
        keep = one if v <= threshold else zero
        window = one if abs(v) < half else zero
        return (grad_out - (tau * v) * grad_next) * window + tau * (keep * grad_next)

    @jit
    def backward(x, grad_spikes, weights, params, scale, shift, chunks, out, part, block):
        # x (T, N, K); out: dL/dI (T, N, K). dL/do_t = weights[t] * grad_spikes[t] with a grad_spikes
        # of T steps (weights all 1: exact), or weights[t] * grad_spikes[0] with one step (the
        # readout's gradient, formed on the fly). part (chunks, 2, K) receives per-element sums of
        # dL/dI and dL/dI * x over each chunk of images: batch norm's backward needs no pass of its own.
        # Each image is taken block elements at a time: the block's T membranes, inputs and partial
        # sums stay in cache between the replay and the sweep back (every element still sees its
        # images in order and its steps from last to first: the same sums, bit for bit).
        tau, threshold, one, zero, half = params[0], params[1], params[2], params[3], params[4]
        steps = weights.shape[0]
        images, width = x.shape[1], x.shape[2]
        tx = 1 if x.shape[0] == steps else 0
        step_of_grad = 1 if grad_spikes.shape[0] == steps else 0
        per = (images + chunks - 1) // chunks
        block = max(1, min(block, width))
        for j in numba.prange(chunks):
            u = np.empty((steps, block), dtype=x.dtype)
            grad_next = np.empty(block, dtype=x.dtype)
            for p in range(j * per, min(images, (j + 1) * per)):
                for k0 in range(0, width, block):
                    n = min(block, width - k0)
                    _replay(x, p, k0, n, tx, scale, shift, tau, threshold, one, zero, u)
                    for k in range(n):
                        grad_next[k] = zero
                    for t in range(steps - 1, -1, -1):
                        w = weights[t]
                        gs, ut, o = grad_spikes[t * step_of_grad, p, k0 : k0 + n], u[t], out[t, p, k0 : k0 + n]
                        for k in range(n):
                            grad = _sweep_back(ut[k], w * gs[k], grad_next[k], tau, threshold, one, zero, half)
                            o[k] = grad
                            grad_next[k] = grad
                    # summed apart from the sweep (it vectorises better so), steps from last to first
                    sum_g, sum_gx = part[j, 0, k0 : k0 + n], part[j, 1, k0 : k0 + n]
                    for t in range(steps - 1, -1, -1):
                        xr, o = x[t * tx, p, k0 : k0 + n], out[t, p, k0 : k0 + n]
                        for k in range(n):
                            g64 = np.float64(o[k])
                            sum_g[k] += g64
                            sum_gx[k] += g64 * np.float64(xr[k])

    @jit
    def backward_in_place(x, grad_spikes, weights, params, scale, shift, coef, chunks, part, apply, out, block):
        # The in-place form of backward, run twice by InPlaceBackward. Pass 1 (apply 0) only
        # accumulates part (as backward does); pass 2 (apply 1) recomputes dL/dI, the same bits, and
        # writes batch norm's input gradient (dL/dI - c0 - (x - c1) * c2) * c3 (per element) over x,
        # which nothing needs afterwards: no (T, N, K) buffer besides x (a block's replayed u_t are
        # read before its x is overwritten). With x (1, N, K), the same input at every step, pass 2
        # adds the steps' gradients into out (N, K) instead. Blocks as in backward.
        tau, threshold, one, zero, half = params[0], params[1], params[2], params[3], params[4]
        steps = weights.shape[0]
        images, width = x.shape[1], x.shape[2]
        tx = 1 if x.shape[0] == steps else 0
        step_of_grad = 1 if grad_spikes.shape[0] == steps else 0
        per = (images + chunks - 1) // chunks
        block = max(1, min(block, width))
        for j in numba.prange(chunks):
            u = np.empty((steps, block), dtype=x.dtype)
            grad_next = np.empty(block, dtype=x.dtype)
            for p in range(j * per, min(images, (j + 1) * per)):
                for k0 in range(0, width, block):
                    n = min(block, width - k0)
                    _replay(x, p, k0, n, tx, scale, shift, tau, threshold, one, zero, u)
                    c0, c1, c2, c3 = (
                        coef[0, k0 : k0 + n],
                        coef[1, k0 : k0 + n],
                        coef[2, k0 : k0 + n],
                        coef[3, k0 : k0 + n],
                    )
                    for k in range(n):
                        grad_next[k] = zero
                    if apply and not tx:
                        acc = out[p, k0 : k0 + n]
                        for k in range(n):
                            acc[k] = zero
                    for t in range(steps - 1, -1, -1):
                        w = weights[t]
                        gs, xr, ut = grad_spikes[t * step_of_grad, p, k0 : k0 + n], x[t * tx, p, k0 : k0 + n], u[t]
                        if apply and tx:  # each case its own loop: a branch inside would stop vectorisation
                            for k in range(n):
                                grad = _sweep_back(ut[k], w * gs[k], grad_next[k], tau, threshold, one, zero, half)
                                grad_next[k] = grad
                                xr[k] = (grad - c0[k] - (xr[k] - c1[k]) * c2[k]) * c3[k]
                        elif apply:
                            acc = out[p, k0 : k0 + n]
                            for k in range(n):
                                grad = _sweep_back(ut[k], w * gs[k], grad_next[k], tau, threshold, one, zero, half)
                                grad_next[k] = grad
                                acc[k] += (grad - c0[k] - (xr[k] - c1[k]) * c2[k]) * c3[k]
                        else:  # dL/dI_t over u_t (read first): summed below, apart from the sweep
                            for k in range(n):
                                grad = _sweep_back(ut[k], w * gs[k], grad_next[k], tau, threshold, one, zero, half)
                                grad_next[k] = grad
                                ut[k] = grad
                    if not apply:  # the same order as in backward: steps from last to first
                        sum_g, sum_gx = part[j, 0, k0 : k0 + n], part[j, 1, k0 : k0 + n]
                        for t in range(steps - 1, -1, -1):
                            xr, gt = x[t * tx, p, k0 : k0 + n], u[t]
                            for k in range(n):
                                g64 = np.float64(gt[k])
                                sum_g[k] += g64
                                sum_gx[k] += g64 * np.float64(xr[k])

    @jit
    def pack_binary(x, out, chunks):  # x (M,) float -> out (M,) uint8; False (out partial) unless all in {0, 1}
        size = x.shape[0]
        per = (size + chunks - 1) // chunks
        bad = np.zeros(chunks, dtype=np.int64)
        for j in numba.prange(chunks):
            count = 0
            for i in range(j * per, min(size, (j + 1) * per)):
                v = x[i]
                out[i] = np.uint8(v)
                count += (v != 0.0) & (v != 1.0)
            bad[j] = count
        return bad.sum() == 0

    @jit
    def channel_sums(a, b, out):  # a, b (R, C, Q) -> out[c] = (sum a, sum a*b) in float64
        rows, channels, inner = a.shape
        for c in numba.prange(channels):
            s0 = s1 = s2 = s3 = 0.0
            p0 = p1 = p2 = p3 = 0.0
            for r in range(rows):
                q = 0
                while q + 4 <= inner:  # four accumulators: independent add chains
                    v0, v1, v2, v3 = (
                        np.float64(a[r, c, q]),
                        np.float64(a[r, c, q + 1]),
                        np.float64(a[r, c, q + 2]),
                        np.float64(a[r, c, q + 3]),
                    )
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
    def row_sums(a, b, chunks, out):  # a, b (R, C) -> out[c] = (sum a, sum a*b) in float64
        # Rows split into a fixed number of chunks (not one per thread), each summed in order and the
        # chunk sums added in order: the result does not depend on the thread count.
        rows, channels = a.shape
        part = np.zeros((chunks, 2, channels))
        per = (rows + chunks - 1) // chunks
        for j in numba.prange(chunks):
            s = np.zeros(channels)
            prod = np.zeros(channels)
            for r in range(j * per, min(rows, (j + 1) * per)):
                for c in range(channels):
                    v = np.float64(a[r, c])
                    s[c] += v
                    prod[c] += v * np.float64(b[r, c])
            for c in range(channels):
                part[j, 0, c] = s[c]
                part[j, 1, c] = prod[c]
        for c in range(channels):
            s0 = p0 = 0.0
            for j in range(chunks):
                s0 += part[j, 0, c]
                p0 += part[j, 1, c]
            out[c, 0] = s0
            out[c, 1] = p0

    @jit
    def batch_norm_grad(g, x, coef):  # in place: g = (g - coef0 - (x - coef1) * coef2) * coef3, per channel
        rows, channels, inner = g.shape
        for r in numba.prange(rows):
            for c in range(channels):
                a, m, b, k = coef[c, 0], coef[c, 1], coef[c, 2], coef[c, 3]
                for q in range(inner):
                    g[r, c, q] = (g[r, c, q] - a - (x[r, c, q] - m) * b) * k

    @jit
    def batch_norm_grad_rows(g, x, coef):  # (R, C), channel last: the same formula; coef (4, C)
        rows, channels = g.shape
        a, m, b, k = coef[0], coef[1], coef[2], coef[3]
        for r in numba.prange(rows):
            for c in range(channels):
                g[r, c] = (g[r, c] - a[c] - (x[r, c] - m[c]) * b[c]) * k[c]

    return _Kernels(
        forward,
        step,
        forward_readout,
        backward,
        backward_in_place,
        pack_binary,
        channel_sums,
        row_sums,
        batch_norm_grad,
        batch_norm_grad_rows,
    )


_Kernels = namedtuple(
    "_Kernels",
    "forward step forward_readout backward backward_in_place pack_binary channel_sums row_sums "
    "batch_norm_grad batch_norm_grad_rows",
)
ROW_CHUNKS = 16
BLOCK = 2048  # elements of an image the backward kernels take at a time: T x BLOCK membranes stay in cache
_LOADED: dict = {}


def load_compiled(build, what: str):
    """``build(cache)`` (a module's numba kernels), once per process: cached on disk next to the
    module (or numba's user cache); where no cache location is writable they compile in memory;
    where even that fails the process uses the torch-op path and says so once (None)."""
    if build not in _LOADED:
        _LOADED[build] = None
        errors = []
        for cache in (True, False):
            try:
                _LOADED[build] = build(cache)
                break
            except Exception as exc:  # e.g. "cannot cache function ...: no locator available"
                errors.append(f"{type(exc).__name__}: {exc}")
        else:
            logging.getLogger(__name__).warning("compiled %s unavailable (%s); using torch ops", what, errors[-1])
    return _LOADED[build]


def _kernels():
    """The compiled tdBN + LIF kernels (:func:`load_compiled`), or None."""
    return load_compiled(_compile, "LIF kernels")


def channels_last(x: torch.Tensor) -> bool:
    """Whether a 4-D ``x`` is stored channels last (NHWC) rather than contiguous (NCHW). Where both
    hold (C = 1 or H = W = 1) the two orders are the same memory and the NCHW reading is used."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def rectangle_surrogate():
    """The surrogate the kernels implement (:func:`esvae.spiking.surrogate.rectangle`)."""
    from .surrogate import rectangle

    return rectangle


def usable(x: torch.Tensor, surrogate) -> bool:
    """Whether the compiled kernels handle ``x`` (CPU, float32/float64, rectangle surrogate, stored
    contiguous or, if 4-D, channels last)."""
    from .surrogate import rectangle

    return (
        numba is not None
        and os.environ.get("ESVAE_NO_NUMBA") != "1"
        and surrogate is rectangle
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and (x.is_contiguous() or channels_last(x))
        and _kernels() is not None
    )


def _params(dtype: torch.dtype, tau: float, v_threshold: float):
    return np.array([tau, v_threshold, 1.0, 0.0, 0.5], dtype=np.float32 if dtype == torch.float32 else np.float64)


def _threads() -> None:
    """Run the kernels on torch's thread count. Numba's OpenMP layer shares libgomp with torch and,
    when it starts its pool, sets the process's OpenMP thread count to its own maximum: torch's
    (e.g. a job's ``--threads 1``) is put back."""
    wanted = torch.get_num_threads()
    most = numba.config.NUMBA_NUM_THREADS  # type: ignore[attr-defined]  # numba sets its config at import
    numba.set_num_threads(max(1, min(wanted, most)))
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)


def _memory_order(x: torch.Tensor) -> torch.Tensor:
    """``x`` (``(R, C, ...)``, contiguous or channels last) as the view whose dimensions follow its
    memory: itself, or ``(R, H, W, C)`` for channels last."""
    return x.permute(0, 2, 3, 1) if channels_last(x) else x


def _per_element(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-channel values ``(C,)`` spread over one image's elements in ``like``'s memory order, flattened."""
    values = values.to(like.dtype)
    if channels_last(like):
        return values.repeat(like.shape[2] * like.shape[3]).contiguous()
    return values.view(-1, *([1] * (like.dim() - 2))).expand(like.shape[1:]).reshape(-1).contiguous()


def _rows(x: torch.Tensor, timesteps: int) -> np.ndarray:
    """``(T*N, C, ...)`` -> ``(T, N, C*...)`` in memory order, as a numpy view."""
    return _memory_order(x.detach()).view(timesteps, -1, x[0].numel()).numpy()


def _images(x: torch.Tensor, timesteps: int, repeated: bool) -> int:
    """Images N of ``x``: ``(T*N, ...)``, or ``(N, ...)`` when ``repeated`` (the same input at every step)."""
    return x.shape[0] if repeated else x.shape[0] // timesteps


def _empty_spikes(x: torch.Tensor, timesteps: int, repeated: bool = False) -> torch.Tensor:
    """An uninitialised ``(T, N, C, ...)`` tensor stored in ``x``'s order (``x`` is ``(T*N, C, ...)``,
    or ``(N, C, ...)`` when ``repeated``)."""
    n = _images(x, timesteps, repeated)
    if channels_last(x):
        _, c, h, w = x.shape
        return torch.empty((timesteps, n, h, w, c), dtype=x.dtype).permute(0, 1, 4, 2, 3)
    return torch.empty((timesteps, n, *x.shape[1:]), dtype=x.dtype)


def _time_rows(seq: torch.Tensor, like: torch.Tensor, timesteps: int) -> np.ndarray:
    """``(T, N, C, ...)`` (any strides) as a ``(T, N, C*...)`` numpy array in ``like``'s memory order
    (a view where the strides already match, else a copy)."""
    seq = seq.detach()
    if channels_last(like):
        seq = seq.permute(0, 1, 3, 4, 2)
    return seq.reshape(timesteps, -1, like[0].numel()).numpy()


def lif_forward(
    x: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    timesteps: int,
    tau: float,
    v_threshold: float,
    repeated: bool = False,
) -> torch.Tensor:
    """Spikes of the LIF driven by the currents ``x * scale + shift`` (per channel, axis 1).

    ``x`` is ``(T*N, C, ...)`` with time folded into the batch, contiguous or channels last (with
    ``repeated``, ``(N, C, ...)``: the same input at every step); the currents are computed on the
    fly and never stored. Returns spikes ``(T, N, C, ...)`` stored in the same order as ``x``."""
    spikes = _empty_spikes(x, timesteps, repeated)
    _threads()
    _kernels().forward(
        _rows(x, 1 if repeated else timesteps),
        _per_element(scale, x).numpy(),
        _per_element(shift, x).numpy(),
        _params(x.dtype, tau, v_threshold),
        _time_rows(spikes, x, timesteps),
    )
    return spikes


def lif_step(
    x: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    tau: float,
    v_threshold: float,
    membrane: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One time step of :func:`lif_forward` (the same arithmetic, so the same bits) on ``x (N, K)``,
    contiguous: ``membrane`` is ``u_{t-1}`` (None at t = 0) and is overwritten with ``u_t``;
    returns ``(u_t, o_t)``, ``o_t`` a new tensor. ``scale`` and ``shift`` are per-column ``(K,)``."""
    first = membrane is None
    if membrane is None:
        membrane = torch.empty_like(x)
    spikes = torch.empty_like(x)
    _threads()
    _kernels().step(
        x.detach().numpy(),
        scale.to(x.dtype).contiguous().numpy(),
        shift.to(x.dtype).contiguous().numpy(),
        _params(x.dtype, tau, v_threshold),
        membrane.numpy(),
        spikes.numpy(),
        first,
    )
    return membrane, spikes


def lif_forward_readout(
    x: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    weights: torch.Tensor,
    timesteps: int,
    tau: float,
    v_threshold: float,
    repeated: bool = False,
) -> torch.Tensor:
    """``sum_t weights[t] * o_t`` ``(N, C, ...)`` of the LIF driven by ``x * scale + shift``, stored
    like ``x``; the spikes themselves are never stored. ``repeated`` as in :func:`lif_forward`."""
    n = _images(x, timesteps, repeated)
    if channels_last(x):
        mixed = torch.empty((n, x.shape[2], x.shape[3], x.shape[1]), dtype=x.dtype).permute(0, 3, 1, 2)
    else:
        mixed = torch.empty((n, *x.shape[1:]), dtype=x.dtype)
    _threads()
    _kernels().forward_readout(
        _rows(x, 1 if repeated else timesteps),
        _per_element(scale, x).numpy(),
        _per_element(shift, x).numpy(),
        _params(x.dtype, tau, v_threshold),
        weights.to(x.dtype).contiguous().numpy(),
        _memory_order(mixed).view(n, -1).numpy(),
    )
    return mixed


def _channel_of_elements(part: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-element partial sums ``(chunks, 2, K)`` (K in ``like``'s memory order) -> per channel ``(C, 2)``."""
    total = part.sum(0)  # (2, K), chunks added in a fixed order
    c = like.shape[1]
    if channels_last(like):
        return total.view(2, -1, c).sum(1).t().contiguous()
    return total.view(2, c, -1).sum(2).t().contiguous()


def lif_backward(
    x: torch.Tensor,
    grad_spikes: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    timesteps: int,
    tau: float,
    v_threshold: float,
    readout: Optional[torch.Tensor] = None,
    sums: bool = False,
):
    """dL/dI ``(T*N, C, ...)``, stored like ``x``, for the LIF driven by ``x * scale + shift``: the
    forward is replayed from ``x``, bit for bit, then swept back in time.

    ``grad_spikes`` is dL/do ``(T, N, C, ...)`` (any strides), or, with ``readout`` (weights
    ``(T,)``), dL/d(sum_t w_t o_t) ``(N, C, ...)``, from which dL/do_t = w_t * grad is formed in the
    kernel. With ``sums`` also returns ``(C, 2)`` float64 ``[sum dL/dI, sum dL/dI * x]`` per channel,
    accumulated in the same pass (in a fixed order: independent of the thread count)."""
    out = torch.empty_like(x)  # keeps x's memory order (contiguous or channels last)
    if readout is None:
        grad = _time_rows(grad_spikes, x, timesteps)
        weights = np.ones(timesteps, dtype=grad.dtype.type)
    else:
        grad = _time_rows(grad_spikes.unsqueeze(0), x, 1)
        weights = readout.to(x.dtype).contiguous().numpy()
    images = x.shape[0] // timesteps
    chunks = max(1, min(ROW_CHUNKS, images))
    part = torch.zeros(chunks, 2, x[0].numel(), dtype=torch.float64)
    _threads()
    _kernels().backward(
        _rows(x, timesteps),
        grad,
        weights,
        _params(x.dtype, tau, v_threshold),
        _per_element(scale, x).numpy(),
        _per_element(shift, x).numpy(),
        chunks,
        _rows(out, timesteps),
        part.numpy(),
        BLOCK,
    )
    return (out, _channel_of_elements(part, x)) if sums else out


class InPlaceBackward:
    """dL/dI of the LIF driven by ``x * scale + shift`` in two passes that need no buffer of x's size:
    :meth:`sums` (per channel ``[sum dL/dI, sum dL/dI * x]``, float64, as :func:`lif_backward`
    returns them), then :meth:`apply`, which recomputes dL/dI (the same bits) and overwrites ``x``
    with ``(dL/dI - c0 - (x - c1) * c2) * c3`` for per-channel coefficients ``coef`` ``(C, 4)`` --
    batch norm's input gradient, equal bit for bit to :func:`batch_norm_grad_` over
    :func:`lif_backward`'s output. ``grad_spikes``/``readout`` as in :func:`lif_backward`."""

    def __init__(
        self,
        x: torch.Tensor,
        grad_spikes: torch.Tensor,
        scale: torch.Tensor,
        shift: torch.Tensor,
        timesteps: int,
        tau: float,
        v_threshold: float,
        readout: Optional[torch.Tensor] = None,
        repeated: bool = False,
    ):
        self.x, self.timesteps, self.repeated = x, timesteps, repeated
        if readout is None:
            self.grad = _time_rows(grad_spikes, x, timesteps)
            self.weights = np.ones(timesteps, dtype=self.grad.dtype.type)
        else:
            self.grad = _time_rows(grad_spikes.unsqueeze(0), x, 1)
            self.weights = readout.to(x.dtype).contiguous().numpy()
        self.chunks = max(1, min(ROW_CHUNKS, _images(x, timesteps, repeated)))
        self.scale, self.shift = _per_element(scale, x).numpy(), _per_element(shift, x).numpy()
        self.params = _params(x.dtype, tau, v_threshold)
        _threads()

    def _run(self, coef: np.ndarray, part: np.ndarray, apply: int, out: np.ndarray) -> None:
        _kernels().backward_in_place(
            _rows(self.x, 1 if self.repeated else self.timesteps),
            self.grad,
            self.weights,
            self.params,
            self.scale,
            self.shift,
            coef,
            self.chunks,
            part,
            apply,
            out,
            BLOCK,
        )

    def sums(self) -> torch.Tensor:
        part = torch.zeros(self.chunks, 2, self.x[0].numel(), dtype=torch.float64)
        self._run(
            np.zeros((4, 1), dtype=self.grad.dtype.type), part.numpy(), 0, np.zeros((1, 1), dtype=self.grad.dtype.type)
        )
        return _channel_of_elements(part, self.x)

    def apply(self, coef: torch.Tensor) -> torch.Tensor:
        """The input gradient: over ``x`` (returned), or with ``repeated`` a new ``(N, ...)`` tensor
        stored like ``x`` holding the sum over the steps (the gradient of the repeated input)."""
        per = np.stack([_per_element(coef[:, i], self.x).numpy() for i in range(4)])
        if self.repeated:
            out = torch.empty_like(self.x)
            self._run(per, np.zeros((1, 2, 1)), 1, _memory_order(out).reshape(out.shape[0], -1).numpy())
            return out
        self._run(per, np.zeros((1, 2, 1)), 1, np.zeros((1, 1), dtype=self.grad.dtype.type))
        torch.autograd.graph.increment_version(self.x)  # written through numpy: autograd must know
        return self.x


def pack_binary(x: torch.Tensor) -> Optional[torch.Tensor]:
    """``x`` (CPU, contiguous or channels last) as uint8, stored alike, when every value is 0 or 1
    (spikes: exact in a byte, a quarter of float32's memory); None otherwise."""
    flat = _memory_order(x.detach())
    if not flat.is_contiguous():
        return None
    out = torch.empty(flat.shape, dtype=torch.uint8)
    _threads()
    if not _kernels().pack_binary(flat.reshape(-1).numpy(), out.view(-1).numpy(), ROW_CHUNKS):
        return None
    return out.permute(0, 3, 1, 2) if channels_last(x) else out


def channel_sums(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per channel (axis 1) of ``(R, C, ...)`` tensors stored alike (contiguous, or channels last):
    ``[sum a, sum a * b]`` in float64, ``(C, 2)``."""
    out = torch.empty(a.shape[1], 2, dtype=torch.float64)
    _threads()
    if a.dim() == 2 or channels_last(a):
        rows_a = _memory_order(a.detach()).reshape(-1, a.shape[1])
        rows_b = _memory_order(b.detach()).reshape(-1, a.shape[1])
        _kernels().row_sums(rows_a.numpy(), rows_b.numpy(), ROW_CHUNKS, out.numpy())
        return out
    _kernels().channel_sums(
        a.detach().reshape(a.shape[0], a.shape[1], -1).numpy(),
        b.detach().reshape(b.shape[0], b.shape[1], -1).numpy(),
        out.numpy(),
    )
    return out


def batch_norm_grad_(g: torch.Tensor, x: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """In place over ``g`` (``(R, C, ...)``, stored like ``x``: contiguous or channels last):
    ``(g - c0 - (x - c1) * c2) * c3`` with ``coef`` ``(C, 4)`` per channel; returns ``g``."""
    _threads()
    coef = coef.to(g.dtype)
    if g.dim() == 2 or channels_last(g):
        _kernels().batch_norm_grad_rows(
            _memory_order(g).view(-1, g.shape[1]).numpy(),
            _memory_order(x.detach()).reshape(-1, g.shape[1]).numpy(),
            coef.t().contiguous().numpy(),
        )
        return g
    _kernels().batch_norm_grad(
        g.view(g.shape[0], g.shape[1], -1).numpy(),
        x.detach().reshape(x.shape[0], x.shape[1], -1).numpy(),
        coef.contiguous().numpy(),
    )
    return g
