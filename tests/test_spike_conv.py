"""Spike-driven convolutions (esvae/spiking/spike_conv.py) against torch's dense convolutions:
the spike index, the forward and the weight gradient for ordinary and transposed convolutions of
several geometries, the autograd op's three gradients, the fallbacks and thread independence."""
from __future__ import annotations

import pytest
import torch

from esvae.spiking import SpikingConv2d, SpikingConvTranspose2d, spike_conv
from esvae.spiking.layers import _SpikeConvolution

# (transposed, in channels, out channels, kernel, stride, padding, output padding, height, width)
GEOMETRIES = [
    (False, 3, 5, 3, 2, 1, 0, 9, 8),     # the encoder's convolutions (odd size: a partial last window)
    (False, 4, 6, 3, 1, 1, 0, 7, 7),
    (False, 2, 3, 3, 2, 0, 0, 8, 9),     # no padding
    (False, 3, 4, 2, 2, 0, 0, 6, 6),     # even kernel
    (True, 4, 6, 3, 2, 1, 1, 5, 6),      # the decoder's transposed convolutions
    (True, 3, 2, 3, 1, 1, 0, 6, 7),      # the last layer's
    (True, 5, 3, 3, 2, 0, 1, 4, 4),
    (True, 2, 3, 4, 2, 1, 0, 3, 5),
]


def _spikes(shape, density=0.25, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) < density).to(dtype).contiguous(memory_format=torch.channels_last)


def _weights(transposed, cin, cout, k, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    shape = (cin, cout, k, k) if transposed else (cout, cin, k, k)
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
    assert spike_conv.spike_index(y, max_density=1.0) is None                # not spikes
    assert spike_conv.spike_index(_spikes((2, 3, 4, 4), density=0.9)) is None  # above MAX_DENSITY
    assert spike_conv.spike_index(x, max_density=0.0) is None                # switched off


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_forward_and_weight_gradient_equal_the_dense_convolution(geometry):
    transposed, cin, cout, k, s, p, op, h, w = geometry
    x = _spikes((3, cin, h, w))
    weight, bias = _weights(transposed, cin, cout, k)
    index = spike_conv.spike_index(x, max_density=1.0)
    ref = torch.ops.aten.convolution(x, weight, bias, [s, s], [p, p], [1, 1], transposed, [op, op], 1)
    out = spike_conv.forward(index, weight, bias, transposed, [s, s], [p, p], [op, op])
    assert out.shape == ref.shape and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    grad = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    want = torch.ops.aten.convolution_backward(grad, x, weight, None, [s, s], [p, p], [1, 1], transposed,
                                               [op, op], 1, [False, True, False])[1]
    got = spike_conv.weight_grad(index, grad, weight.shape, transposed, [s, s], [p, p])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("geometry", [GEOMETRIES[0], GEOMETRIES[4], GEOMETRIES[7]])
def test_the_autograd_op_gives_the_dense_gradients(geometry):
    """_SpikeConvolution (spike-driven: no input kept, the input gradient from the output
    gradient alone, the size restored by the output padding) against F.conv2d's autograd."""
    transposed, cin, cout, k, s, p, op, h, w = geometry
    x = _spikes((2, cin, h, w)).requires_grad_()
    weight, bias = (t.requires_grad_() for t in _weights(transposed, cin, cout, k))
    args = (transposed, [s, s], [p, p], [op, op] if transposed else [0, 0], [1, 1], 1)
    spike_conv.reset_stats()
    out = _SpikeConvolution.apply(x, weight, bias, *args)
    assert spike_conv.STATS["spike_driven"] == 1 and spike_conv.STATS["fired"] == int(x.sum())
    ref = torch.ops.aten.convolution(x, weight, bias, [s, s], [p, p], [1, 1], transposed, args[3], 1)
    grad = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    got = torch.autograd.grad(out, (x, weight, bias), grad)
    want = torch.autograd.grad(ref, (x, weight, bias), grad)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_weight_gradient_does_not_depend_on_the_thread_count():
    """Per-chunk partial sums over a fixed number of chunks, added in a fixed order: the same
    float32 bits on 1 and 2 threads."""
    x = _spikes((40, 8, 8, 8), density=0.2, dtype=torch.float32)
    index = spike_conv.spike_index(x)
    grad = torch.randn(40, 8, 16, 16).contiguous(memory_format=torch.channels_last)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(spike_conv.weight_grad(index, grad, (8, 8, 3, 3), True, [2, 2], [1, 1]))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0], results[1])


@pytest.mark.parametrize("layer", [
    SpikingConv2d(4, 6, 3, stride=2, padding=1, bn_alpha=None),
    SpikingConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, bn_alpha=None),
])
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
