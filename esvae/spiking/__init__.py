"""Spiking building blocks: LIF neuron, surrogate gradients, time-folded layers, readout."""

from . import spike_conv
from .layers import (
    MembraneReadout,
    SpikingConv2d,
    SpikingConvTranspose2d,
    SpikingLinear,
    TDBatchNorm,
    fold_time,
    tdbn_lif_step,
    unfold_time,
)
from .neuron import LIF, TAU, V_THRESHOLD, lif_multistep, lif_multistep_reference, lif_step, lif_step_inference
from .surrogate import SURROGATES, get_surrogate, rectangle

__all__ = [
    "LIF",
    "TAU",
    "V_THRESHOLD",
    "lif_step",
    "lif_step_inference",
    "lif_multistep",
    "lif_multistep_reference",
    "SURROGATES",
    "get_surrogate",
    "rectangle",
    "TDBatchNorm",
    "SpikingConv2d",
    "SpikingConvTranspose2d",
    "SpikingLinear",
    "MembraneReadout",
    "fold_time",
    "unfold_time",
    "tdbn_lif_step",
    "spike_conv",
]
