"""TAID: the temporal-attention readout by hand, and the claim that it differs from FSVAE only there."""

import pytest
import torch

import esvae
from baselines.taid import TemporalAttentionReadout


def test_parameter_count_is_fsvae_plus_t_squared():
    assert esvae.count_parameters(esvae.build_model("taid", "fashion")) == 4_053_601 + 16 * 16
    assert (
        esvae.count_parameters(esvae.build_model("taid", "cifar10", timesteps=8))
        == esvae.count_parameters(esvae.build_model("fsvae", "cifar10", timesteps=8)) + 64
    )


def test_readout_by_hand():
    readout = TemporalAttentionReadout(2)
    with torch.no_grad():
        readout.attention.weight.copy_(torch.tensor([[1.0, 0.0], [2.0, -1.0]]).view(2, 2, 1))
    # T=2, N=1, C=2 channels of 1x2 pixels; spatial means s_t = [[1, 0], [0.5, 1]] (rows: steps).
    y = torch.tensor([[[[[1.0, 1.0]], [[0.0, 0.0]]]], [[[[0.0, 1.0]], [[2.0, 0.0]]]]])  # (T, N, C, H=1, W=2)
    s = [[1.0, 0.0], [0.5, 1.0]]
    a = [[s[0][c] for c in range(2)], [2 * s[0][c] - s[1][c] for c in range(2)]]  # conv over the step axis
    w = torch.sigmoid(torch.tensor(a))  # (T, C)
    expected = w[0].view(2, 1, 1) * y[0, 0] + w[1].view(2, 1, 1) * y[1, 0]
    torch.testing.assert_close(readout.weights(y)[:, 0], w)
    torch.testing.assert_close(readout(y)[0], expected)
    with pytest.raises(ValueError, match="built for T=2 steps; got 3"):
        readout(torch.zeros(3, 1, 2, 1, 2))


def test_taid_differs_from_fsvae_only_in_the_readout():
    torch.manual_seed(0)
    fsvae = esvae.build_model("fsvae", "fashion", timesteps=4, latent_dim=8, votes=3)
    taid = esvae.build_model("taid", "fashion", timesteps=4, latent_dim=8, votes=3)
    missing, unexpected = taid.load_state_dict(fsvae.state_dict(), strict=False)
    assert missing == ["readout.attention.weight"] and unexpected == []
    fsvae.eval(), taid.eval()
    fsvae.readout_first = False  # run final_layer as a module, so the hook sees its per-step outputs
    captured = {}
    for name, model in (("fsvae", fsvae), ("taid", taid)):
        model.final_layer.register_forward_hook(lambda m, i, o, name=name: captured.__setitem__(name, o))
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        a = fsvae(x, torch.Generator().manual_seed(2))
        b = taid(x, torch.Generator().manual_seed(2))
    for field in ("latent_spikes", "sampled_spikes", "posterior_votes", "prior_votes"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    y = captured["taid"]  # (T, N, C, H, W), last layer per step
    assert torch.equal(y, captured["fsvae"])  # same hidden spikes and outputs
    w = taid.readout.weights(y)
    assert w.shape == (4, 3, 1) and ((w > 0) & (w < 1)).all()
    torch.testing.assert_close(b.reconstruction, torch.tanh((w[..., None, None] * y).sum(0)))
    fixed = torch.tensor([0.8 ** (3 - t) for t in range(4)]).view(4, 1, 1, 1, 1)
    torch.testing.assert_close(a.reconstruction, torch.tanh((fixed * y).sum(0)))
    assert not torch.allclose(a.reconstruction, b.reconstruction)


def test_taid_readout_is_trained():
    torch.manual_seed(0)
    taid = esvae.build_model("taid", "fashion", timesteps=4, latent_dim=8, votes=3).train()
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    out = taid(x, torch.Generator().manual_seed(0))
    taid.loss(x, out)["loss"].backward()
    grad = taid.readout.attention.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert any(taid.readout.attention.weight is p for p in taid.parameters())


def test_settings_taid_and_fsvae_do_not_use_are_refused():
    with pytest.raises(esvae.ConfigError, match="readout_decay is not used by TAID: it sets the fixed 0.8"):
        esvae.build_model("taid", "fashion", readout_decay=0.9)
    for name in ("fsvae", "taid"):
        with pytest.raises(
            esvae.ConfigError, match=f"mmd_kernel is not used by {name.upper()}: it is ESVAE's rate-MMD"
        ):
            esvae.build_model(name, "fashion", mmd_kernel="linear")
