"""Conventional (non-spiking) conv stacks with ESVAE's shapes: BatchNorm + LeakyReLU.

Shared by the ANN VAE baseline and the FAD autoencoder (docs/metrics.md section 2)::

    encoder      len(dims) x [conv 3x3 s2 -> BN -> LeakyReLU]        (N, C, S, S) -> (N, dims[-1], 2, 2)
    decoder      len(dims)-1 x [tconv 3x3 s2 -> BN -> LeakyReLU]      -> (N, dims[0], S/2, S/2)
    final_layer  tconv s2 -> BN -> LeakyReLU -> conv 3x3 (dims[0] -> C) -> tanh   -> (N, C, S, S)
"""

from __future__ import annotations

from typing import Sequence

from torch import nn


def _block(layer: nn.Module, channels: int, slope: float) -> nn.Sequential:
    return nn.Sequential(layer, nn.BatchNorm2d(channels), nn.LeakyReLU(slope))


def ann_encoder(in_channels: int, dims: Sequence[int], slope: float = 0.01) -> nn.Sequential:
    layers, channels = [], in_channels
    for width in dims:
        layers.append(_block(nn.Conv2d(channels, width, 3, stride=2, padding=1), width, slope))
        channels = width
    return nn.Sequential(*layers)


def ann_decoder(dims: Sequence[int], slope: float = 0.01) -> nn.Sequential:
    rev = list(dims)[::-1]
    return nn.Sequential(
        *[
            _block(nn.ConvTranspose2d(rev[i], rev[i + 1], 3, stride=2, padding=1, output_padding=1), rev[i + 1], slope)
            for i in range(len(rev) - 1)
        ]
    )


def ann_final_layer(dims: Sequence[int], out_channels: int, slope: float = 0.01) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(dims[0], dims[0], 3, stride=2, padding=1, output_padding=1),
        nn.BatchNorm2d(dims[0]),
        nn.LeakyReLU(slope),
        nn.Conv2d(dims[0], out_channels, 3, padding=1),
        nn.Tanh(),
    )
