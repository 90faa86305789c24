"""Spike-driven convolutions on CPU: the forward and the weight gradient of a convolution or
transposed convolution whose input is binary spikes, computed from the spikes that fired only.

With a 0/1 input the products of a convolution are selections: each output pixel is its bias plus
the weight rows ``W[kh, kw, ci, :]`` of the input spikes it sees, and the weight gradient row
``dW[kh, kw, ci, :]`` is the sum of the output-gradient rows that spike feeds. At the 13-20% firing
rates of these networks that is 5-8x fewer additions than the dense product (and no
multiplications); oneDNN's dense kernels are well vectorised, so the gain in time is smaller and
depends on the layer and the firing rate (measured in the README, section Performance: about even
near 30% firing, hence :data:`MAX_DENSITY`). The input gradient needs no
input (it is the dense convolution of the output gradient with the weights) and stays with oneDNN.

* :func:`spike_index` turns a channels-last (NHWC) spike tensor into, per pixel, the list of its
  channels that fired (``idx (B, H, W, C)`` bytes, first ``count[b, h, w]`` entries valid) and
  checks that every value is 0 or 1 (None otherwise: the dense path runs). The index is also what
  the backward keeps instead of the spikes (for up to 256 channels about the memory of the uint8
  copy it replaces; twice that above, where channel numbers need two bytes).
* :func:`forward` scatters each spike's weight rows into the outputs it feeds, image by image
  (threads over images, so no two threads write the same output).
* :func:`weight_grad` accumulates the output-gradient rows into per-chunk weight gradients (a
  fixed number of chunks of images, summed in a fixed order: the result does not depend on the
  thread count).
* Both come in two formulations with the same sums: per spike and tap (a row of ``Co`` values at a
  time), or per pixel (:func:`by_pixel`): the fired channels' rows of *all* taps, ``kh kw Co``
  values laid out together, are summed first (one long loop per spike), then added to the outputs
  tap by tap (for the weight gradient: the taps' output-gradient rows gathered once per pixel,
  then added to each fired channel's row). Per pixel wins where most taps feed an output
  (transposed convolutions: the decoder's 32 -> 32 layer at 32x32 about 20% faster); a stride-2
  convolution uses a quarter of them and stays per spike and tap.

Which output a tap feeds is precomputed per row and column (``taps``: ordinary convolution
``o = (i + p - k) / s`` where integral, transposed ``o = i s - p + k``), so the kernels do no
division. Dilation 1 and one group only (the callers check). The sums run in a different order
from the dense kernels': float64 agrees to rounding (the tests and the bench's float64 check),
float32 to float32 rounding.
"""

from __future__ import annotations

from collections import namedtuple
from typing import Optional, Sequence

import numpy as np
import torch

from . import kernels

CHUNKS = 16  # weight-gradient partial sums: fixed, so results do not depend on the thread count
PART_BYTES = 64 * 2**20  # ... fewer (at least 2) where 16 copies of a layer's weights would pass this
MAX_DENSITY = 0.35  # above this firing rate the dense kernels are faster (measured: 14% -> 2x, 50% -> 0.7x)
PIXEL_MIN_TAPS = 0.5  # per-pixel formulation where at least this fraction of the taps feed an output


def _compile(cache: bool = True):
    """The spike-driven convolution's numba kernels, defined on first use for the same reason as
    :func:`esvae.spiking.kernels._compile` (one long function: a list of small kernels; the helper
    ``_fill_bias`` is a module global for the reason given there: numba's cache)."""
    global _fill_bias
    numba = kernels.numba
    jit = numba.njit(parallel=True, cache=cache, nogil=True)

    @jit
    def index(x, idx, count, chunks):  # x (P, C) float; idx (P, C) ints; count (P,) -> fired total, or -1 if not binary
        rows, width = x.shape
        per = (rows + chunks - 1) // chunks
        fired = np.zeros(chunks, dtype=np.int64)
        bad = np.zeros(chunks, dtype=np.int64)
        for j in numba.prange(chunks):
            total = 0
            wrong = 0
            for p in range(j * per, min(rows, (j + 1) * per)):
                for c in range(width):
                    v = x[p, c]
                    wrong += (v != 0.0) & (v != 1.0)
                n = 0
                for c in range(width):  # branch-free: write every channel, keep it if it fired
                    idx[p, n] = c
                    n += x[p, c] != 0.0
                count[p] = n
                total += n
            fired[j] = total
            bad[j] = wrong
        return -1 if bad.sum() > 0 else fired.sum()

    @numba.njit(cache=cache, nogil=True)
    def _fill_bias(image, bias):  # image (OH, OW, Co): every output starts at its channel's bias
        out_h, out_w, channels = image.shape
        for oh in range(out_h):
            for ow in range(out_w):
                for co in range(channels):
                    image[oh, ow, co] = bias[co]

    @jit
    def forward(idx, count, wt, bias, out_row, out_col, out):
        # idx (B, H, W, C), count (B, H, W); wt (KH, KW, Ci, Co); out (B, OH, OW, Co);
        # out_row (H, KH) / out_col (W, KW): the output row / column input i feeds through tap k, or -1.
        # Per pixel, tap by tap: the tap's output row stays in cache while the fired channels' weight
        # rows are added to it. An output sees each input pixel through one tap only, so its sum runs
        # over pixels in order, then fired channels in order, whatever the loop order over taps.
        images, height, width, _ = idx.shape
        taps_h, taps_w, _, channels = wt.shape
        for b in numba.prange(images):
            image = out[b]
            _fill_bias(image, bias)
            for ih in range(height):
                for iw in range(width):
                    n = count[b, ih, iw]
                    if n == 0:
                        continue
                    fired = idx[b, ih, iw]
                    for kh in range(taps_h):
                        oh = out_row[ih, kh]
                        if oh < 0:
                            continue
                        for kw in range(taps_w):
                            ow = out_col[iw, kw]
                            if ow < 0:
                                continue
                            row, tap = image[oh, ow], wt[kh, kw]
                            for j in range(n):
                                w = tap[fired[j]]
                                for co in range(channels):
                                    row[co] += w[co]

    @jit
    def forward_pixels(idx, count, wp, bias, out_row, out_col, out):
        # wp (Ci, KH*KW*Co): input channel ci's row of every tap. Per pixel, the fired channels' rows
        # are summed into s (one long contiguous loop per spike), then s is added tap by tap.
        images, height, width, _ = idx.shape
        taps_h, taps_w = out_row.shape[1], out_col.shape[1]
        channels = out.shape[3]
        span = wp.shape[1]
        for b in numba.prange(images):
            s = np.empty(span, dtype=out.dtype)
            image = out[b]
            _fill_bias(image, bias)
            for ih in range(height):
                for iw in range(width):
                    n = count[b, ih, iw]
                    if n == 0:
                        continue
                    fired = idx[b, ih, iw]
                    w = wp[fired[0]]
                    for c in range(span):
                        s[c] = w[c]
                    for j in range(1, n):
                        w = wp[fired[j]]
                        for c in range(span):
                            s[c] += w[c]
                    for kh in range(taps_h):
                        oh = out_row[ih, kh]
                        if oh < 0:
                            continue
                        for kw in range(taps_w):
                            ow = out_col[iw, kw]
                            if ow < 0:
                                continue
                            base = (kh * taps_w + kw) * channels
                            row, tap = image[oh, ow], s[base : base + channels]  # views: no per-element index checks
                            for co in range(channels):
                                row[co] += tap[co]

    @jit
    def weight_grad_pixels(idx, count, grad, out_row, out_col, part):  # part (chunks, Ci, KH*KW*Co) zeroed
        # Per pixel, the output-gradient rows of its taps (0 where a tap feeds no output) are gathered
        # into g once, then added to the row of every fired channel.
        images, height, width, _ = idx.shape
        channels = grad.shape[3]
        taps_h, taps_w = out_row.shape[1], out_col.shape[1]
        chunks, _, span = part.shape
        per = (images + chunks - 1) // chunks
        for q in numba.prange(chunks):
            g = np.empty(span, dtype=grad.dtype)
            for b in range(q * per, min(images, (q + 1) * per)):
                for ih in range(height):
                    for iw in range(width):
                        n = count[b, ih, iw]
                        if n == 0:
                            continue
                        for kh in range(taps_h):
                            oh = out_row[ih, kh]
                            for kw in range(taps_w):
                                ow = out_col[iw, kw]
                                base = (kh * taps_w + kw) * channels
                                if oh < 0 or ow < 0:
                                    for co in range(channels):
                                        g[base + co] = 0.0
                                else:
                                    for co in range(channels):
                                        g[base + co] = grad[b, oh, ow, co]
                        for j in range(n):
                            ci = idx[b, ih, iw, j]
                            for c in range(span):
                                part[q, ci, c] += g[c]

    @jit
    def weight_grad(
        idx, count, grad, out_row, out_col, part
    ):  # grad (B, OH, OW, Co); part (chunks, KH, KW, Ci, Co) zeroed
        # Per pixel, tap by tap: the tap's output-gradient row is added to each fired channel's row
        # (each weight's sum still runs over the pixels in order).
        images, height, width, _ = idx.shape
        channels = grad.shape[3]
        chunks, taps_h, taps_w, _, _ = part.shape
        per = (images + chunks - 1) // chunks
        for q in numba.prange(chunks):
            for b in range(q * per, min(images, (q + 1) * per)):
                for ih in range(height):
                    for iw in range(width):
                        n = count[b, ih, iw]
                        if n == 0:
                            continue
                        fired = idx[b, ih, iw]
                        for kh in range(taps_h):
                            oh = out_row[ih, kh]
                            if oh < 0:
                                continue
                            for kw in range(taps_w):
                                ow = out_col[iw, kw]
                                if ow < 0:
                                    continue
                                g, tap = grad[b, oh, ow], part[q, kh, kw]
                                for j in range(n):
                                    row = tap[fired[j]]
                                    for co in range(channels):
                                        row[co] += g[co]

    @jit
    def sum_chunks(part, out):  # part (chunks, M) -> out (M,): chunk 0 + chunk 1 + ..., in that order
        chunks, size = part.shape
        block = 4096
        for q in numba.prange((size + block - 1) // block):
            for i in range(q * block, min(size, (q + 1) * block)):
                s = part[0, i]
                for j in range(1, chunks):
                    s += part[j, i]
                out[i] = s

    return _SpikeConvKernels(index, forward, forward_pixels, weight_grad, weight_grad_pixels, sum_chunks)


def _kernels():
    return kernels.load_compiled(_compile, "spike-driven convolution kernels")


# Counters over the process (the bench reads and resets them): spike inputs seen, how many of them
# ran spike-driven, and their fired / total values (the firing rate the speed depends on).
STATS = {"inputs": 0, "spike_driven": 0, "fired": 0, "values": 0}


def reset_stats() -> None:
    for key in STATS:
        STATS[key] = 0


_SpikeConvKernels = namedtuple(
    "_SpikeConvKernels", "index forward forward_pixels weight_grad weight_grad_pixels sum_chunks"
)
SpikeIndex = namedtuple("SpikeIndex", "idx count shape fired")


def spike_index(x: torch.Tensor, max_density: Optional[float] = None) -> Optional[SpikeIndex]:
    """The fired channels of each pixel of a channels-last ``(B, C, H, W)`` CPU tensor, or None when
    a value is not 0/1 or more than ``max_density`` (default :data:`MAX_DENSITY`) of them fired (the
    dense path is faster there)."""
    max_density = MAX_DENSITY if max_density is None else max_density
    if max_density <= 0 or _kernels() is None:
        return None
    rows = x.detach().permute(0, 2, 3, 1)  # (B, H, W, C), contiguous for channels-last x
    if not rows.is_contiguous():
        return None
    b, h, w, c = rows.shape
    idx = torch.empty((b, h, w, c), dtype=torch.uint8 if c <= 256 else torch.int16 if c <= 32768 else torch.int32)
    count = torch.empty((b, h, w), dtype=torch.int32)
    kernels._threads()
    fired = _kernels().index(rows.reshape(-1, c).numpy(), idx.view(-1, c).numpy(), count.view(-1).numpy(), CHUNKS)
    if fired < 0:
        return None
    STATS["inputs"] += 1
    STATS["fired"] += int(fired)
    STATS["values"] += x.numel()
    if fired > max_density * x.numel():
        return None
    STATS["spike_driven"] += 1
    return SpikeIndex(idx, count, tuple(x.shape), int(fired))


def taps(size_out: int, size_in: int, kernel: int, stride: int, padding: int, transposed: bool) -> np.ndarray:
    """``(size_in, kernel)``: the output position input position ``i`` feeds through tap ``k`` along
    one axis, or -1 where it feeds none."""
    out = np.full((size_in, kernel), -1, dtype=np.int64)
    for i in range(size_in):
        for k in range(kernel):
            if transposed:
                o = i * stride - padding + k
            else:
                o, rem = divmod(i + padding - k, stride)
                if rem or i + padding - k < 0:
                    continue
            if 0 <= o < size_out:
                out[i, k] = o
    return out


def output_size(size_in: int, kernel: int, stride: int, padding: int, output_padding: int, transposed: bool) -> int:
    if transposed:
        return (size_in - 1) * stride - 2 * padding + kernel + output_padding
    return (size_in + 2 * padding - kernel) // stride + 1


def _tap_tables(
    index: SpikeIndex,
    kernel: Sequence[int],
    out_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    transposed: bool,
):
    """:func:`taps` along the rows and the columns of the indexed input."""
    return tuple(taps(out_size[d], index.shape[2 + d], kernel[d], stride[d], padding[d], transposed) for d in range(2))


def by_pixel(rows: np.ndarray, cols: np.ndarray) -> bool:
    """Whether the per-pixel formulation is the faster (:data:`PIXEL_MIN_TAPS`): where most taps of
    a pixel feed an output (transposed convolutions, stride-1 convolutions), summing the fired
    channels' rows of all taps at once (one long loop per spike) beats adding each tap's row
    separately; where most do not (a stride-2 convolution: a quarter), it would sum rows for nothing."""
    used = (rows >= 0).sum() * (cols >= 0).sum()
    return used >= PIXEL_MIN_TAPS * rows.size * cols.size


def forward(
    index: SpikeIndex,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    transposed: bool,
    stride: Sequence[int],
    padding: Sequence[int],
    output_padding: Sequence[int],
) -> torch.Tensor:
    """The convolution (``weight (Co, Ci, kh, kw)``) or transposed convolution (``(Ci, Co, kh, kw)``)
    of the indexed spikes: ``(B, Co, OH, OW)``, channels last."""
    kernel = weight.shape[2:]
    oh, ow = (
        output_size(index.shape[2 + d], kernel[d], stride[d], padding[d], output_padding[d], transposed)
        for d in range(2)
    )
    rows, cols = _tap_tables(index, kernel, (oh, ow), stride, padding, transposed)
    w = weight.detach()
    channels = w.shape[1] if transposed else w.shape[0]
    b = bias.detach().contiguous() if bias is not None else torch.zeros(channels, dtype=w.dtype)
    out = torch.empty((index.shape[0], channels, oh, ow), dtype=w.dtype, memory_format=torch.channels_last)
    kernels._threads()
    nhwc = out.permute(0, 2, 3, 1).numpy()  # the NHWC view of out's memory
    if by_pixel(rows, cols):
        wp = (w.permute(0, 2, 3, 1) if transposed else w.permute(1, 2, 3, 0)).contiguous()  # (Ci, kh, kw, Co)
        _kernels().forward_pixels(
            index.idx.numpy(), index.count.numpy(), wp.view(wp.shape[0], -1).numpy(), b.numpy(), rows, cols, nhwc
        )
    else:
        wt = (w.permute(2, 3, 0, 1) if transposed else w.permute(2, 3, 1, 0)).contiguous()  # (kh, kw, Ci, Co)
        _kernels().forward(index.idx.numpy(), index.count.numpy(), wt.numpy(), b.numpy(), rows, cols, nhwc)
    return out


def partial_sums(weight_bytes: int) -> int:
    """How many partial weight gradients the weight gradient accumulates (threads take chunks of
    images): :data:`CHUNKS`, fewer for wide layers so that they hold at most about
    :data:`PART_BYTES` (a 512 x 512 x 3 x 3 layer: 7); it depends on the layer only, never on the
    thread count."""
    return max(2, min(CHUNKS, PART_BYTES // max(weight_bytes, 1)))


def weight_grad(
    index: SpikeIndex,
    grad_out: torch.Tensor,
    weight_shape: Sequence[int],
    transposed: bool,
    stride: Sequence[int],
    padding: Sequence[int],
) -> torch.Tensor:
    """dL/dW of :func:`forward` for the output gradient ``grad_out (B, Co, OH, OW)`` (any layout)."""
    grad = grad_out.permute(0, 2, 3, 1).contiguous()  # (B, OH, OW, Co): free for channels-last grad_out
    kh, kw = weight_shape[2:]
    rows, cols = _tap_tables(index, (kh, kw), grad.shape[1:3], stride, padding, transposed)
    ci, co = index.shape[1], grad.shape[3]
    chunks = partial_sums(kh * kw * ci * co * grad.element_size())
    kernels._threads()
    k = _kernels()
    if by_pixel(rows, cols):  # partial sums (chunks, Ci, kh, kw, Co); the kernel sees (chunks, Ci, kh kw Co)
        part = torch.zeros((chunks, ci, kh, kw, co), dtype=grad.dtype)
        k.weight_grad_pixels(
            index.idx.numpy(), index.count.numpy(), grad.numpy(), rows, cols, part.view(chunks, ci, -1).numpy()
        )
        order = (0, 3, 1, 2) if transposed else (3, 0, 1, 2)
    else:  # partial sums (chunks, kh, kw, Ci, Co)
        part = torch.zeros((chunks, kh, kw, ci, co), dtype=grad.dtype)
        k.weight_grad(index.idx.numpy(), index.count.numpy(), grad.numpy(), rows, cols, part.numpy())
        order = (2, 3, 0, 1) if transposed else (3, 2, 0, 1)
    out = torch.empty(part.shape[1:], dtype=grad.dtype)
    k.sum_chunks(part.view(chunks, -1).numpy(), out.view(-1).numpy())
    return out.permute(*order).contiguous()
