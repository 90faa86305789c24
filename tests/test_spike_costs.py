"""Spike statistics and operation counts against hand counts."""

import pytest
import torch
from torch import nn

import esvae
from esvae.metrics.spikes import fan_out, spike_costs
from esvae.spiking import LIF, SpikingConv2d, SpikingLinear


class _Toy(nn.Module):
    """T=2: 3x3 greyscale image -> conv 3x3 pad 1 (no BN) -> spiking conv 3x3 pad 1 -> linear 9 -> 2.

    The first conv's weight is 0 and its bias 0.5 (> V_th 0.2): every output fires at both steps
    except that the image's centre pixel drives the centre output below threshold when it is -1.
    """

    def __init__(self):
        super().__init__()
        self.config = type("C", (), {"timesteps": 2})()
        self.conv = SpikingConv2d(1, 1, 3, stride=1, padding=1, bn_alpha=None, lif=LIF())
        self.conv2 = SpikingConv2d(1, 2, 3, stride=1, padding=1, bn_alpha=None, lif=LIF())
        self.lin = SpikingLinear(18, 2, bn_alpha=None, lif=LIF())
        with torch.no_grad():
            self.conv.weight.zero_(), self.conv.bias.fill_(0.5)
            self.conv.weight[0, 0, 1, 1] = 1.0  # centre output: 0.5 + x_centre
            self.conv2.weight.zero_(), self.conv2.bias.zero_()  # never fires
            self.lin.weight.zero_(), self.lin.bias.zero_()

    def forward(self, x, generator=None):
        return self.lin(self.conv2(self.conv(x.unsqueeze(0).expand(2, *x.shape))).flatten(2))


def test_hand_count_on_a_tiny_network():
    x = torch.zeros(4, 1, 3, 3)
    x[:2, 0, 1, 1] = -1.0  # images 0, 1: the centre unit of conv stays silent (0.5 - 1 < 0.2)
    costs = spike_costs(_Toy(), x)
    conv, conv2, lin = costs["layers"]
    # conv: analog input; fan-outs [[4, 6, 4], [6, 9, 6], [4, 6, 4]] sum to 49 -> 49 MACs per step, + 9 bias adds
    assert conv["input"] == "analog" and conv["macs"] == (49 + 9) * 2 and conv["synops"] == 0
    assert conv["firing_rate"] == pytest.approx((2 * 8 + 2 * 9) / 36)
    # conv2: spiking input. A spike at a corner reaches 4 positions x 2 channels, an edge 6 x 2, the
    # centre 9 x 2. Images 2, 3: all 9 pixels spike (49 x 2 = 98 per step); images 0, 1: all but the
    # centre (98 - 18 = 80). Per image: (2 * 80 + 2 * 98) / 4 = 89 per step, + 18 bias adds per step.
    assert conv2["input"] == "spikes" and conv2["synops"] == pytest.approx((89 + 18) * 2) and conv2["macs"] == 0
    assert conv2["firing_rate"] == 0.0
    # linear: no input spikes, only its 2 bias adds per step
    assert lin["synops"] == 2 * 2 and lin["firing_rate"] == 0.0
    assert costs["mean_firing_rate"] == pytest.approx((9 * conv["firing_rate"]) / (9 + 18 + 2))
    assert fan_out(_Toy().conv, (1, 3, 3))[0].tolist() == [[4, 6, 4], [6, 9, 6], [4, 6, 4]]
    # Energy (45 nm): 0.9 pJ per synaptic op, 4.6 pJ per MAC: (214 + 4) x 0.9 + 116 x 4.6 = 729.8 pJ per image
    assert costs["groups"]["conv"]["energy_pj"] == pytest.approx(116 * 4.6)
    assert costs["reconstruction_path"]["energy_pj"] == pytest.approx(729.8)


def test_esvae_first_layer_and_readout_by_hand_and_synops_track_spikes():
    torch.manual_seed(0)
    model = esvae.build_model("esvae", "fashion", timesteps=3)
    costs = spike_costs(model, torch.rand(4, 1, 32, 32) * 2 - 1, torch.Generator().manual_seed(0))
    first = next(e for e in costs["layers"] if e["layer"] == "encoder.0")
    # 3x3 stride-2 pad-1 conv, 32x32 -> 16x16: per axis 2 + 15 * 3 = 47 in-bounds taps; 1 -> 32 channels
    assert first["macs"] == (47 * 47 * 32 + 32 * 16 * 16) * 3
    readout = next(e for e in costs["layers"] if e["layer"] == "readout")
    assert readout["macs"] == 3 * 1 * 32 * 32  # sum_t w_t y_t over T=3 steps
    spiking = [e for e in costs["layers"] if e["input"] == "spikes"]
    assert spiking and all(e["synops"] > 0 for e in spiking)
    bottleneck = next(e for e in costs["layers"] if e["layer"] == "prior_bottleneck")
    assert bottleneck["macs"] == 32 * 32 + 32 and "prior_bottleneck" not in costs["reconstruction_path"]["modules"]
    assert costs["reconstruction_path"]["synops"] == pytest.approx(sum(e["synops"] for e in costs["layers"]))
    assert all(p.requires_grad for p in model.parameters())  # restored after the counting pass


def test_fsvae_posterior_counted_once_per_step():
    torch.manual_seed(0)
    model = esvae.build_model("fsvae", "fashion", timesteps=3, latent_dim=8, votes=2)
    costs = spike_costs(model, torch.rand(2, 1, 32, 32) * 2 - 1, torch.Generator().manual_seed(0))
    posterior = [e for e in costs["layers"] if e["group"] == "posterior"]
    assert [e["layer"] for e in posterior] == ["posterior.layers.0", "posterior.layers.1", "posterior.layers.2"]
    assert posterior[0]["input"] == "spikes" and "prior" not in costs["reconstruction_path"]["modules"]
    assert "prior" in costs["groups"]


def test_ann_vae_gets_a_mac_count():
    torch.manual_seed(0)
    model = esvae.build_model("ann_vae", "fashion")
    costs = spike_costs(model, torch.rand(3, 1, 32, 32) * 2 - 1, torch.Generator().manual_seed(0))
    assert costs["mean_firing_rate"] is None and all(e["synops"] == 0 for e in costs["layers"])
    first = next(e for e in costs["layers"] if e["layer"] == "encoder.0.0")
    assert first["macs"] == 47 * 47 * 32 + 32 * 16 * 16  # as ESVAE's first layer, one pass
    fc_mu = next(e for e in costs["layers"] if e["layer"] == "fc_mu")
    assert fc_mu["macs"] == 1024 * 128 + 128
    last = next(e for e in costs["layers"] if e["layer"] == "final_layer.3")  # 3x3 conv 32 -> 1, pad 1, 32x32
    assert last["macs"] == 32 * (2 + 30 * 3 + 2) ** 2 + 32 * 32  # per axis: 2, then 30 x 3, then 2 taps
