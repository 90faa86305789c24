"""Spike-driven convolutions (esvae/spiking/spike_conv.py) against torch's dense convolutions:
the spike index, the forward and the weight gradient for ordinary and transposed convolutions of
several geometries, the autograd op's three gradients, the fallbacks and thread independence."""

from __future__ import annotations

import pytest
import torch

from esvae.spiking import SpikingConv2d, SpikingConvTranspose2d, spike_conv
from esvae.spiking.layers import _SpikeConvolution

# (transposed, in channels, out channels, kernel, stride, padding, output padding, height, width);
# a pair is (along H, along W)
GEOMETRIES = [
    (False, 3, 5, 3, 2, 1, 0, 9, 8),  # the encoder's convolutions (odd size: a partial last window)
    (False, 4, 6, 3, 1, 1, 0, 7, 7),
    (False, 2, 3, 3, 2, 0, 0, 8, 9),  # no padding
    (False, 3, 4, 2, 2, 0, 0, 6, 6),  # even kernel
    (False, 3, 4, (3, 2), (2, 1), (1, 0), 0, 7, 6),  # axes differ: kernel, stride, padding
    (False, 300, 2, 3, 2, 1, 0, 4, 4),  # channel numbers past a byte (two-byte index)
    (True, 4, 6, 3, 2, 1, 1, 5, 6),  # the decoder's transposed convolutions
    (True, 3, 2, 3, 1, 1, 0, 6, 7),  # the last layer's
    (True, 5, 3, 3, 2, 0, 1, 4, 4),
    (True, 2, 3, 4, 2, 1, 0, 3, 5),
    (True, 3, 4, (2, 3), (1, 2), (0, 1), (0, 1), 5, 4),  # axes differ
    (True, 256, 1, 3, 2, 1, 1, 3, 3),  # channel 255 (the largest byte), one output channel
]


def _pair(v):
    return list(v) if isinstance(v, tuple) else [v, v]


def _spikes(shape, density=0.25, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) < density).to(dtype).contiguous(memory_format=torch.channels_last)


def _weights(transposed, cin, cout, k, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    k = tuple(_pair(k))
    shape = (cin, cout, *k) if transposed else (cout, cin, *k)
    return torch.randn(shape, generator=g, dtype=dtype), torch.randn(cout, generator=g, dtype=dtype)


def test_the_index_lists_each_pixels_fired_channels():
    x = torch.zeros(1, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    x[0, 0, 0, 0] = x[0, 2, 0, 0] = x[0, 1, 0, 1] = 1.0
    index = spike_conv.spike_index(x, max_density=1.0)
    assert index.count.tolist() == [[[2, 1]]] and index.fired == 3
    assert index.idx[0, 0, 0, :2].tolist() == [0, 2] and index.idx[0, 0, 1, 0].item() == 1


def test_non_binary_or_dense_input_is_left_to_the_dense_kernels():
    x = _spikes((2, 3, 4, 4), density=0.2)
    assert spike_conv.spike_index(x, max_density=1.0) is not None
    y = x.clone()
    y[0, 0, 0, 0] = 0.5
    assert spike_conv.spike_index(y, max_density=1.0) is None  # not spikes
    assert spike_conv.spike_index(_spikes((2, 3, 4, 4), density=0.9)) is None  # above MAX_DENSITY
    assert spike_conv.spike_index(x, max_density=0.0) is None  # switched off


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_forward_and_weight_gradient_equal_the_dense_convolution(geometry, dtype):
    transposed, cin, cout, k, s, p, op, h, w = geometry
    s, p, op = _pair(s), _pair(p), _pair(op)
    x = _spikes((3, cin, h, w), dtype=dtype)
    weight, bias = _weights(transposed, cin, cout, k, dtype=dtype)
    index = spike_conv.spike_index(x, max_density=1.0)
    assert index is not None and index.fired == int(x.sum())
    ref = torch.ops.aten.convolution(x, weight, bias, s, p, [1, 1], transposed, op, 1)
    out = spike_conv.forward(index, weight, bias, transposed, s, p, op)
    assert out.shape == ref.shape and out.is_contiguous(memory_format=torch.channels_last)
    tol = dict(rtol=0, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out, ref, **tol)
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2)).to(dtype)
    want = torch.ops.aten.convolution_backward(
        grad, x, weight, None, s, p, [1, 1], transposed, op, 1, [False, True, False]
    )[1]
    got = spike_conv.weight_grad(index, grad, weight.shape, transposed, s, p)
    torch.testing.assert_close(got, want, **tol)


@pytest.mark.parametrize("geometry", [GEOMETRIES[0], GEOMETRIES[4], GEOMETRIES[6], GEOMETRIES[10]])
def test_the_autograd_op_gives_the_dense_gradients(geometry):
    """_SpikeConvolution (spike-driven: no input kept, the input gradient from the output
    gradient alone, the size restored by the output padding) against aten's autograd; a retained
    graph gives the same gradients a second time."""
    transposed, cin, cout, k, s, p, op, h, w = geometry
    s, p, op = _pair(s), _pair(p), _pair(op)
    x = _spikes((2, cin, h, w)).requires_grad_()
    weight, bias = (t.requires_grad_() for t in _weights(transposed, cin, cout, k))
    args = (transposed, s, p, op if transposed else [0, 0], [1, 1], 1)
    spike_conv.reset_stats()
    out = _SpikeConvolution.apply(x, weight, bias, *args)
    assert spike_conv.STATS["spike_driven"] == 1 and spike_conv.STATS["fired"] == int(x.sum())
    ref = torch.ops.aten.convolution(x, weight, bias, s, p, [1, 1], transposed, args[3], 1)
    grad = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    got = torch.autograd.grad(out, (x, weight, bias), grad, retain_graph=True)
    again = torch.autograd.grad(out, (x, weight, bias), grad)
    want = torch.autograd.grad(ref, (x, weight, bias), grad)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    for a, b, c in zip(got, want, again):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
        assert torch.equal(a, c)


def test_only_the_gradients_asked_for_are_formed():
    """Input without gradient (a frozen encoder's spikes) or weights frozen: the other gradients
    are still the dense ones."""
    transposed, cin, cout, k, s, p, op, h, w = GEOMETRIES[6]
    weight, bias = _weights(transposed, cin, cout, k)
    args = (transposed, [s, s], [p, p], [op, op], [1, 1], 1)
    grad = torch.randn(2, cout, (h - 1) * s - 2 * p + k + op, (w - 1) * s - 2 * p + k + op, dtype=torch.float64)
    x = _spikes((2, cin, h, w))
    for need_x, need_w in ((False, True), (True, False)):
        xi, wi = x.clone().requires_grad_(need_x), weight.clone().requires_grad_(need_w)
        wanted = [t for t in (xi, wi) if t.requires_grad]
        got = torch.autograd.grad(_SpikeConvolution.apply(xi, wi, bias, *args), wanted, grad)
        ref = torch.autograd.grad(
            torch.ops.aten.convolution(xi, wi, bias, [s, s], [p, p], [1, 1], True, [op, op], 1), wanted, grad
        )
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_mixed_precision_input_is_left_to_the_dense_kernels():
    """Spikes in float64 into float32 weights: aten refuses it, and so must this op (no silent cast)."""
    transposed, cin, cout, k, s, p, op, h, w = GEOMETRIES[6]
    weight, bias = _weights(transposed, cin, cout, k, dtype=torch.float32)
    with pytest.raises(RuntimeError):
        _SpikeConvolution.apply(_spikes((2, cin, h, w)), weight, bias, transposed, [s, s], [p, p], [op, op], [1, 1], 1)


def test_weight_gradient_does_not_depend_on_the_thread_count():
    """Per-chunk partial sums over a fixed number of chunks, added in a fixed order: the same
    float32 bits on 1 and 2 threads."""
    x = _spikes((40, 8, 8, 8), density=0.2, dtype=torch.float32)
    index = spike_conv.spike_index(x)
    grad = torch.randn(40, 8, 16, 16).contiguous(memory_format=torch.channels_last)
    import numba

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has one thread here (NUMBA_NUM_THREADS): nothing to compare")
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(spike_conv.weight_grad(index, grad, (8, 8, 3, 3), True, [2, 2], [1, 1]))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0], results[1])


@pytest.mark.parametrize(
    "layer",
    [
        SpikingConv2d(4, 6, 3, stride=2, padding=1, bn_alpha=None),
        SpikingConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, bn_alpha=None),
    ],
)
def test_spiking_layers_give_the_same_result_with_and_without_the_spike_path(layer, monkeypatch):
    """A layer on spike trains: spike-driven and dense (MAX_DENSITY 0) runs agree in float64, forward
    and every gradient."""
    layer = layer.double()
    x = _spikes((3 * 2, 4, 6, 6)).unflatten(0, (3, 2))  # (T, N, C, H, W)
    results = []
    spike_conv.reset_stats()
    for density in (1.0, 0.0):
        monkeypatch.setattr(spike_conv, "MAX_DENSITY", density)
        xi = x.clone().requires_grad_()
        layer.zero_grad()
        y = layer(xi)
        y.pow(2).sum().backward()
        results.append((y.detach(), xi.grad, layer.weight.grad.clone(), layer.bias.grad.clone()))
        results[-1] += (spike_conv.STATS["spike_driven"],)
        spike_conv.reset_stats()
    assert results[0][-1] == 1 and results[1][-1] == 0  # the spike path ran, then the dense one
    results = [r[:-1] for r in results]
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)


def test_wide_layers_use_fewer_partial_sums_with_the_same_result(monkeypatch):
    """A layer whose 16 partial weight gradients would pass PART_BYTES uses fewer (never under 2);
    the gradient stays the dense one."""
    assert spike_conv.partial_sums(4 * 512 * 512 * 9) == 7 and spike_conv.partial_sums(4 * 128 * 256 * 9) == 16
    assert spike_conv.partial_sums(10 * spike_conv.PART_BYTES) == 2
    transposed, cin, cout, k, s, p, op, h, w = GEOMETRIES[6]
    x = _spikes((5, cin, h, w))
    weight, _ = _weights(transposed, cin, cout, k)
    index = spike_conv.spike_index(x, max_density=1.0)
    grad = torch.randn(5, cout, (h - 1) * s - 2 * p + k + op, (w - 1) * s - 2 * p + k + op, dtype=torch.float64)
    want = torch.ops.aten.convolution_backward(
        grad, x, weight, None, [s, s], [p, p], [1, 1], True, [op, op], 1, [False, True, False]
    )[1]
    monkeypatch.setattr(spike_conv, "PART_BYTES", 3 * weight.numel() * 8)  # 3 partial sums
    assert spike_conv.partial_sums(weight.numel() * 8) == 3
    torch.testing.assert_close(
        spike_conv.weight_grad(index, grad, weight.shape, True, [s, s], [p, p]), want, rtol=0, atol=1e-12
    )


def test_the_per_pixel_formulation_is_chosen_by_the_share_of_taps_that_feed_an_output():
    """Golden shares: a 3x3 stride-2 convolution with padding 1 on 16 pixels uses 23 of the 48
    (input, tap) pairs per axis (even inputs one tap, odd ones two, the last odd one's first tap
    falls off): (23/48)^2 = 0.23; the decoder's stride-2 transposed convolution (output padding 1)
    loses only input 0's first tap: (47/48)^2 = 0.96; a stride-1 convolution on 7: (19/21)^2."""
    conv = [spike_conv.taps(8, 16, 3, 2, 1, False)] * 2
    tconv = [spike_conv.taps(32, 16, 3, 2, 1, True)] * 2
    same = [spike_conv.taps(7, 7, 3, 1, 1, False)] * 2
    assert [int((t >= 0).sum()) for t in (conv[0], tconv[0], same[0])] == [23, 47, 19]
    assert not spike_conv.by_pixel(*conv) and spike_conv.by_pixel(*tconv) and spike_conv.by_pixel(*same)


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_both_formulations_give_the_same_forward_and_weight_gradient(geometry, monkeypatch):
    """Per spike and tap, or per pixel (all taps' rows summed first), forced either way: the same
    values to float64 rounding, on every geometry."""
    transposed, cin, cout, k, s, p, op, h, w = geometry
    s, p, op = _pair(s), _pair(p), _pair(op)
    x = _spikes((3, cin, h, w), density=0.4, seed=4)
    weight, bias = _weights(transposed, cin, cout, k, seed=5)
    index = spike_conv.spike_index(x, max_density=1.0)
    out_shape = torch.ops.aten.convolution(x, weight, bias, s, p, [1, 1], transposed, op, 1).shape
    grad = torch.randn(out_shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    results = []
    for share in (0.0, 2.0):  # every layer per pixel; none
        monkeypatch.setattr(spike_conv, "PIXEL_MIN_TAPS", share)
        results.append(
            (
                spike_conv.forward(index, weight, bias, transposed, s, p, op),
                spike_conv.weight_grad(index, grad, weight.shape, transposed, s, p),
            )
        )
    for a, b in zip(*results):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
