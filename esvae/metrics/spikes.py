"""Spike statistics and operation counts per image (docs/metrics.md section 2).

For every spiking layer (conv, transposed conv or linear, each followed by tdBN and LIF) one
forward pass records its input and output over the T steps:

* firing rate  -- the mean of the layer's output spikes;
* synaptic operations (adds) -- for a layer whose input is spikes: every input spike costs its
  fan-out (the number of outputs it connects to, border effects included), plus one bias add per
  output neuron and step;
* MACs -- for a layer whose input is not binary (the first encoder layer reads the analog image at
  every step; FSVAE's MLPs read spikes): the dense count, i.e. the sum of all fan-outs per step;
  likewise for plain conv / linear layers (ESVAE's prior bottleneck, the whole ANN VAE), so the ANN
  baseline gets a MAC count to compare with.

The fan-out of each input element is computed exactly as the gradient of ``sum(layer(x))`` with
all-ones weights. The readout (a non-spiking weighted sum over T) is counted as MACs. Costs are
per image, averaged over the batch; modules are grouped by the model's top-level children, and the
reconstruction path (everything but the prior) is totalled separately from the prior.

Energy per image: :func:`esvae.metrics.energy.energy_pj` of the counts (45 nm estimate; assumptions there).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Dict, List, Optional, Tuple, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..models.backbone import SpikingConvBackbone
from ..spiking import SpikingConv2d, SpikingConvTranspose2d, SpikingLinear
from .energy import ENERGY_ASSUMPTIONS, energy_pj

SPIKING_LAYERS = (SpikingConv2d, SpikingConvTranspose2d, SpikingLinear)
PRIOR_MODULES = ("prior", "prior_bottleneck")


def _dense_op(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, nn.Conv2d):
        return F.conv2d(x, weight, None, layer.stride, layer.padding, layer.dilation, layer.groups)
    if isinstance(layer, nn.ConvTranspose2d):
        return F.conv_transpose2d(
            x,
            weight,
            None,
            layer.stride,
            cast(Tuple[int, ...], layer.padding),  # a transposed convolution's padding is never a string
            layer.output_padding,
            layer.groups,
            layer.dilation,
        )
    return F.linear(x, weight)


def fan_out(layer: nn.Module, input_shape) -> torch.Tensor:
    """Outputs each input element of one step connects to; ``input_shape`` is one image's ``(C, ...)``.
    Computed on the layer's device, in float64."""
    weight = layer.weight
    assert isinstance(weight, torch.Tensor)
    with torch.enable_grad():
        x = torch.ones(1, *input_shape, dtype=torch.float64, device=weight.device, requires_grad=True)
        _dense_op(layer, x, torch.ones_like(weight, dtype=torch.float64)).sum().backward()
    assert x.grad is not None
    return x.grad[0]


def _is_binary(x: torch.Tensor) -> bool:
    return bool(((x == 0) | (x == 1)).all())


@torch.no_grad()
def _readout_macs(model, y_shape) -> float:
    """MACs per image of the readout on the last layer's ``(T, C, H, W)`` outputs."""
    T, rest = y_shape[0], int(torch.tensor(y_shape[1:]).prod())
    macs = T * rest  # sum_t w_t y_t
    attention = getattr(model.readout, "attention", None)
    if attention is not None:  # TAID: spatial means, the T x T 1x1 conv per channel
        channels = y_shape[1]
        macs += T * rest + T * T * channels
    return float(macs)


def spike_costs(model: nn.Module, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> Dict:
    """Firing rates, synaptic operations and MACs per image for one forward pass over ``images``."""
    spiking, dense, readout_shape = _record_layers(model, images, generator)
    n = images.shape[0]
    layers = [_spiking_layer_entry(name, module, x, y, n) for name, module, x, y in spiking]
    layers += [_dense_layer_entry(name, module, in_shape, out_shape, n) for name, module, in_shape, out_shape in dense]
    if readout_shape is not None:
        layers.append(_entry("readout", "analog", 0, None, 0.0, _readout_macs(model, readout_shape)))
    return _summary(model, layers, n)


def _record_layers(model: nn.Module, images: torch.Tensor, generator: Optional[torch.Generator]):
    """One eval-mode forward pass with hooks: each spiking layer's input and output, each plain
    layer's shapes, and the readout's input shape (a backbone's), the model left as it was."""
    names = {m: n for n, m in model.named_modules()}
    spiking: List[Tuple[str, nn.Module, torch.Tensor, torch.Tensor]] = []
    dense: List[Tuple[str, nn.Module, torch.Size, torch.Size]] = []
    readout: Dict[str, tuple] = {}
    handles = [
        m.register_forward_hook(lambda m, i, o: spiking.append((names[m], m, i[0].detach(), o.detach())))
        for m in model.modules()
        if isinstance(m, SPIKING_LAYERS)
    ]
    # Plain (non-spiking) layers: ESVAE's prior bottleneck, every layer of the ANN VAE. MACs.
    handles += [
        m.register_forward_hook(lambda m, i, o: dense.append((names[m], m, i[0].shape, o.shape)))
        for m in model.modules()
        if type(m) in (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)
    ]
    backbone = model if isinstance(model, SpikingConvBackbone) else None  # has a readout after final_layer
    if backbone is not None:
        handles.append(
            backbone.final_layer.register_forward_hook(
                lambda m, i, o: readout.__setitem__("shape", (o.shape[0], *o.shape[2:]))
            )
        )
    was_training = model.training
    requires = [p.requires_grad for p in model.parameters()]
    readout_first = backbone.readout_first if backbone is not None else None
    if backbone is not None:
        backbone.readout_first = False  # count the network's own layer-by-layer operations
    model.eval()
    model.requires_grad_(False)  # no autograd graph is kept
    try:
        # Grad mode makes FSVAE's eval posterior take its single full pass (its stepwise shortcut
        # bypasses the layers' forward); with no parameter requiring grad, nothing is recorded.
        with torch.enable_grad():
            model(images, generator=generator)
    finally:
        for h in handles:
            h.remove()
        for p, r in zip(model.parameters(), requires):
            p.requires_grad_(r)
        model.train(was_training)
        if backbone is not None and readout_first is not None:
            backbone.readout_first = readout_first
    return spiking, dense, readout.get("shape")


def _entry(name: str, kind: str, neurons: int, firing_rate: Optional[float], synops: float, macs: float) -> Dict:
    group = "readout" if name == "readout" else name.split(".")[0]
    return {
        "layer": name,
        "group": group,
        "input": kind,
        "neurons": neurons,
        "firing_rate": firing_rate,
        "synops": synops,
        "macs": macs,
    }


def _spiking_layer_entry(name: str, module, x: torch.Tensor, y: torch.Tensor, n: int) -> Dict:
    """A spiking layer: synaptic operations when its input is spikes, dense MACs when analog."""
    T = x.shape[0]
    fan = fan_out(module, tuple(x.shape[2:]))
    outputs_per_step = y[0, 0].numel()
    bias_adds = float(outputs_per_step * T) if module.bias is not None else 0.0
    rate = float(y.float().mean()) if module.lif is not None else None
    if _is_binary(x):
        adds = float((x.double() * fan.to(x.device)).sum()) / n
        return {
            **_entry(name, "spikes", outputs_per_step, rate, adds + bias_adds, 0.0),
            "input_rate": float(x.float().mean()),
        }
    connections = float(fan.sum()) * T  # dense MACs for one image over T steps
    return _entry(name, "analog", outputs_per_step, rate, 0.0, connections + bias_adds)


def _dense_layer_entry(name: str, module, in_shape, out_shape, n: int) -> Dict:
    if isinstance(module, nn.Linear):
        rows = int(torch.tensor(in_shape[:-1]).prod()) / n  # input rows per image (e.g. 1, or T)
        macs = rows * (module.in_features * module.out_features + module.out_features)
        neurons = module.out_features
    else:  # (N, C, H, W): connections + bias adds
        neurons = int(torch.tensor(out_shape[1:]).prod())
        macs = float(fan_out(module, tuple(in_shape[1:])).sum()) + (neurons if module.bias is not None else 0)
    return _entry(name, "analog", neurons, None, 0.0, macs)


def _summary(model: nn.Module, layers: List[Dict], n: int) -> Dict:
    """Per-module totals with their energy, the reconstruction path's (the prior excluded) and the
    mean firing rate over spiking neurons."""
    groups: Dict[str, Dict[str, float]] = defaultdict(lambda: {"synops": 0.0, "macs": 0.0})
    for entry in layers:
        groups[entry["group"]]["synops"] += entry["synops"]
        groups[entry["group"]]["macs"] += entry["macs"]
    for totals in groups.values():
        totals["energy_pj"] = energy_pj(totals["synops"], totals["macs"])
    recon = [g for g in groups if g not in PRIOR_MODULES]
    recon_synops, recon_macs = sum(groups[g]["synops"] for g in recon), sum(groups[g]["macs"] for g in recon)
    spiking = [e for e in layers if e["firing_rate"] is not None]
    return {
        "layers": layers,
        "groups": dict(groups),
        "reconstruction_path": {
            "modules": recon,
            "synops": recon_synops,
            "macs": recon_macs,
            "energy_pj": energy_pj(recon_synops, recon_macs),
        },
        "energy_assumptions": ENERGY_ASSUMPTIONS,
        "mean_firing_rate": (
            sum(e["firing_rate"] * e["neurons"] for e in spiking) / sum(e["neurons"] for e in spiking)
            if spiking
            else None
        ),
        "n_images": n,
        "timesteps": getattr(getattr(model, "config", None), "timesteps", None),
        "what": "per image; synops = input spikes x fan-out + bias adds (spiking inputs); MACs = dense count "
        "(analog inputs, the readout); one forward pass in eval mode",
    }
