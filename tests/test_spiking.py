"""Spiking building blocks against hand-computed values and direct re-implementations."""

import pytest
import torch
import torch.nn.functional as F

from esvae.errors import ConfigError
from esvae.spiking import (
    LIF,
    MembraneReadout,
    SpikingConv2d,
    SpikingConvTranspose2d,
    SpikingLinear,
    TDBatchNorm,
    get_surrogate,
    lif_multistep,
    lif_multistep_reference,
)

# Two neurons over five steps (columns). B differs from A only at t=3, where u = 0.64375 fires but
# lies outside the surrogate window |u| < 0.5 (a threshold-centred window |u - 0.2| < 0.5 would not).
CURRENTS = torch.tensor([[0.1, 0.15, 0.3, 0.05, 0.2], [0.1, 0.15, 0.6, 0.05, 0.2]]).T  # (T=5, 2)
# u_t = 0.25 u_{t-1} (1 - o_{t-1}) + I_t, worked by hand:
MEMBRANE = torch.tensor([[0.1, 0.175, 0.34375, 0.05, 0.2125], [0.1, 0.175, 0.64375, 0.05, 0.2125]]).T
SPIKES = torch.tensor([[0.0, 0.0, 1.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0, 1.0]]).T
# dL/dI for L = sum_t (t+1) o_t, by the reverse recursion with the reset path not detached
# (g_o = dL/do_t - 0.25 u_t g_u(t+1); g_u = g_o * 1[|u_t| < 0.5] + 0.25 (1 - o_t) g_u(t+1)):
GRAD_CURRENT = torch.tensor([[1.568530807, 2.526803589, 2.554199219, 5.1875, 5.0], [1.45, 2.0, 0.0, 5.1875, 5.0]]).T


@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_lif_hand_computed_trajectory_and_gradient(backend):
    current = CURRENTS.clone().requires_grad_(True)
    spikes = LIF(backend=backend)(current)
    assert torch.equal(spikes, SPIKES)
    weights = torch.arange(1.0, 6.0).unsqueeze(1)  # (T, 1)
    (spikes * weights).sum().backward()
    torch.testing.assert_close(current.grad, GRAD_CURRENT, rtol=0, atol=1e-6)


def test_lif_membrane_trajectory():
    _, membrane = lif_multistep(CURRENTS, return_membrane=True)
    torch.testing.assert_close(membrane, MEMBRANE, rtol=0, atol=1e-7)


def test_surrogate_window_is_centred_at_zero_not_threshold():
    current = torch.tensor([[-0.4, 0.6, 0.45, 0.1]], requires_grad=True)  # T = 1
    lif_multistep(current).sum().backward()
    # u = I: |u| < 0.5 -> 1; a window around V_th = 0.2 would give [0, 1, 1, 1].
    assert current.grad.tolist() == [[1.0, 0.0, 1.0, 1.0]]


@pytest.mark.parametrize("T", [1, 3, 7, 16])
def test_fused_lif_equals_step_loop_on_random_input(T):
    g = torch.Generator().manual_seed(3)
    current = (torch.randn(T, 3, 4, 5, generator=g) * 0.4).requires_grad_(True)
    upstream = torch.randn(T, 3, 4, 5, generator=g)
    fused = lif_multistep(current)
    (fused * upstream).sum().backward()
    grad_fused = current.grad.clone()
    current.grad = None
    ref = lif_multistep_reference(current)
    (ref * upstream).sum().backward()
    assert torch.equal(fused, ref)
    assert 0 < fused.mean() < 1  # the input exercises both firing and silence
    torch.testing.assert_close(grad_fused, current.grad, rtol=1e-5, atol=1e-6)


def test_unknown_surrogate_lists_valid_names():
    with pytest.raises(ConfigError, match="rectangle"):
        get_surrogate("sigmoid-ish")


def _tdbn_by_formula(x_seq, weight, bias, alpha, vth=0.2, eps=1e-5):
    """x_seq (T, N, C, H, W): statistics per channel over T, N, H, W; biased variance."""
    dims = [0, 1, 3, 4]
    mean = x_seq.mean(dims, keepdim=True)
    var = x_seq.var(dims, unbiased=False, keepdim=True)
    shape = (1, 1, -1, 1, 1)
    return alpha * vth * (x_seq - mean) / torch.sqrt(var + eps) * weight.view(shape) + bias.view(shape)


@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_tdbn_equals_formula_and_scaled_batchnorm(alpha):
    g = torch.Generator().manual_seed(0)
    tdbn = TDBatchNorm(3, alpha=alpha)
    bn = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        tdbn.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
        tdbn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
        bn.weight.copy_(tdbn.weight * alpha * 0.2)
        bn.bias.copy_(tdbn.bias)
    for _ in range(3):  # train mode: batch statistics over time and batch together
        x_seq = torch.randn(4, 5, 3, 6, 6, generator=g) * 2 + 1  # (T, N, C, H, W)
        out = tdbn(x_seq.flatten(0, 1)).unflatten(0, (4, 5))
        torch.testing.assert_close(out, _tdbn_by_formula(x_seq, tdbn.weight, tdbn.bias, alpha), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.flatten(0, 1), bn(x_seq.flatten(0, 1)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tdbn.running_mean, bn.running_mean)
    torch.testing.assert_close(tdbn.running_var, bn.running_var)
    assert int(tdbn.num_batches_tracked) == 3
    tdbn.eval(), bn.eval()  # eval mode: running statistics
    x = torch.randn(8, 3, 6, 6, generator=g)
    expected = alpha * 0.2 * (x - tdbn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(
        tdbn.running_var.view(1, -1, 1, 1) + 1e-5
    ) * tdbn.weight.view(1, -1, 1, 1) + tdbn.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(tdbn(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tdbn(x), bn(x), rtol=1e-5, atol=1e-5)


def test_time_folded_layers_equal_step_by_step_application():
    g = torch.Generator().manual_seed(1)
    conv = SpikingConv2d(2, 4, 3, stride=2, padding=1, bn_alpha=None)
    tconv = SpikingConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1, bn_alpha=None)
    lin = SpikingLinear(6, 5, bn_alpha=None)
    x_seq = torch.randn(5, 3, 2, 8, 8, generator=g)
    y_seq = conv(x_seq)
    for t in range(5):
        torch.testing.assert_close(y_seq[t], F.conv2d(x_seq[t], conv.weight, conv.bias, stride=2, padding=1))
    z_seq = tconv(y_seq)
    for t in range(5):
        torch.testing.assert_close(
            z_seq[t], F.conv_transpose2d(y_seq[t], tconv.weight, tconv.bias, stride=2, padding=1, output_padding=1)
        )
    v_seq = torch.randn(5, 3, 6, generator=g)
    out = lin(v_seq)
    for t in range(5):
        torch.testing.assert_close(out[t], F.linear(v_seq[t], lin.weight, lin.bias))
    assert z_seq.shape == x_seq.shape


def test_spiking_layer_is_weights_then_tdbn_then_lif():
    g = torch.Generator().manual_seed(2)
    layer = SpikingLinear(6, 5, lif=LIF())
    x_seq = torch.randn(4, 8, 6, generator=g)
    pre = F.linear(x_seq, layer.weight, layer.bias)  # (T, N, F)
    normed = (
        _tdbn_by_formula(pre.unsqueeze(-1).unsqueeze(-1), layer.bn.weight, layer.bn.bias, 1.0).squeeze(-1).squeeze(-1)
    )
    expected = lif_multistep_reference(normed)
    assert torch.equal(layer(x_seq), expected)


def test_membrane_readout_uses_decay_powers():
    readout = MembraneReadout(0.8)
    torch.testing.assert_close(readout.weights(4), torch.tensor([0.512, 0.64, 0.8, 1.0]))
    y_seq = torch.zeros(4, 1, 2)
    y_seq[0, 0, 0] = 1.0  # earliest step decays most
    y_seq[3, 0, 1] = 2.0
    torch.testing.assert_close(readout(y_seq), torch.tensor([[0.512, 2.0]]))
    y_seq = torch.arange(1.0, 5.0).view(4, 1, 1)
    torch.testing.assert_close(readout(y_seq), torch.tensor([[1 * 0.512 + 2 * 0.64 + 3 * 0.8 + 4.0]]))


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_stepping_tdbn_lif_gives_the_whole_sequence_spikes_bit_for_bit(compiled, dtype, monkeypatch):
    """tdbn_lif_step, one call per step with its state carried, against the fused op on the whole
    sequence in eval mode: the same spikes and membrane potentials, exactly (float32 included),
    both with the compiled step kernel and with the torch-op fallback. Currents near the threshold
    (0.2) and the reset make a wrong keep or a wrong affine flip spikes."""
    from esvae.spiking import tdbn_lif_step
    from esvae.spiking.layers import tdbn_lif

    if not compiled:
        monkeypatch.setenv("ESVAE_NO_NUMBA", "1")
    g = torch.Generator().manual_seed(5)
    bn, lif = TDBatchNorm(7, alpha=2.0), LIF()
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(7, generator=g) * 0.1)
        bn.running_var.copy_(torch.rand(7, generator=g) + 0.5)
        bn.weight.copy_(torch.rand(7, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(7, generator=g) * 0.1 + 0.15)
    bn, lif = bn.to(dtype).eval(), lif
    T, N = 6, 9
    y = (torch.randn(T * N, 7, generator=g) * 0.3).to(dtype)
    with torch.no_grad():
        whole = tdbn_lif(y.clone(), bn, lif, T)  # (T, N, 7)
        state, spikes = None, []
        for t in range(T):
            state = tdbn_lif_step(y[t * N : (t + 1) * N], bn, lif, state)
            spikes.append(state.spikes)
    assert (state.scale is not None) == compiled
    assert torch.equal(torch.stack(spikes), whole)
    assert 0.2 < float(whole.mean()) < 0.8 and bool(whole[1:].ne(whole[:-1]).any())
    u = bn(y).view(T, N, 7)  # the reference membrane recursion, by the formula
    m = torch.zeros_like(u[0])
    for t in range(T):
        m = u[t] + 0.25 * m * (m <= 0.2).to(dtype) if t else u[t]
    torch.testing.assert_close(state.membrane, m, rtol=0, atol=1e-6 if dtype == torch.float32 else 1e-14)
    bn.train()
    with pytest.raises(RuntimeError, match="needs eval mode"):
        tdbn_lif_step(y[:N], bn, lif)
