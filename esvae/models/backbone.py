"""The spiking convolutional encoder/decoder shared by ESVAE and FSVAE (docs/method.md section 2).

Shapes for the base (32x32) network, time first::

    image (N, C, 32, 32) -> repeated over T (direct input coding) -> (T, N, C, 32, 32)
    encoder: 4 x [conv s2 -> tdBN -> LIF]                        -> (T, N, 256, 2, 2)
    flatten channel-major                                        -> (T, N, 1024)
    before_latent_layer: linear -> tdBN -> LIF                   -> (T, N, L)  latent spikes
    decoder_input: linear -> tdBN -> LIF, reshape                -> (T, N, 256, 2, 2)
    decoder: 3 x [tconv s2 -> tdBN -> LIF]                       -> (T, N, 32, 16, 16)
    final_layer.0: tconv s2 -> tdBN -> LIF                       -> (T, N, 32, 32, 32)
    final_layer.1: tconv s1 (no BN, no LIF)                      -> (T, N, C, 32, 32)
    membrane readout sum_t y_t 0.8^(T-1-t), tanh                 -> (N, C, 32, 32) in [-1, 1]

The large (64x64) network adds a 512-channel stage on both sides. Module names follow the original
code's (``encoder.{i}``, ``before_latent_layer``, ``decoder_input``, ``decoder.{i}``,
``final_layer.{0,1}``) so its checkpoints map key for key.
"""

from __future__ import annotations

from typing import Tuple, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..config import SpikingVAEConfig
from ..spiking import LIF, MembraneReadout, SpikingConv2d, SpikingConvTranspose2d, SpikingLinear


class SpikingConvBackbone(nn.Module):
    """Encoder to a latent spike train and decoder from one, with the membrane readout."""

    def __init__(self, config: SpikingVAEConfig):
        super().__init__()
        self.config = config.validate()
        dims = list(config.hidden_dims)
        self.bottom_channels = dims[-1]
        flat = dims[-1] * 2 * 2  # the encoder always ends at 2x2

        def lif() -> LIF:
            return LIF(config.tau, config.v_threshold, config.surrogate, backend=config.lif_backend)

        encoder, channels = [], config.in_channels
        for width in dims:
            encoder.append(SpikingConv2d(channels, width, 3, stride=2, padding=1, lif=lif()))
            channels = width
        self.encoder = nn.Sequential(*encoder)
        self.before_latent_layer = SpikingLinear(flat, config.latent_dim, lif=lif())

        self.decoder_input = SpikingLinear(config.latent_dim, flat, lif=lif())
        rev = dims[::-1]
        self.decoder = nn.Sequential(
            *[
                SpikingConvTranspose2d(rev[i], rev[i + 1], 3, stride=2, padding=1, output_padding=1, lif=lif())
                for i in range(len(rev) - 1)
            ]
        )
        self.final_layer = nn.Sequential(
            SpikingConvTranspose2d(dims[0], dims[0], 3, stride=2, padding=1, output_padding=1, lif=lif()),
            SpikingConvTranspose2d(dims[0], config.in_channels, 3, stride=1, padding=1, bn_alpha=None, lif=None),
        )
        self.readout: nn.Module = MembraneReadout(config.readout_decay)  # TAID replaces it

    @property
    def timesteps(self) -> int:
        return self.config.timesteps

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(N, C, H, W)`` in [-1, 1] -> latent-layer spikes ``(T, N, L)`` (before sampling)."""
        self._check_images(images)
        x_seq = images.unsqueeze(0).expand(self.timesteps, *images.shape)  # (T, N, C, H, W), direct input
        h_seq = self.encoder(x_seq)  # (T, N, C', 2, 2)
        return self.before_latent_layer(h_seq.flatten(2))  # (T, N, L)

    def decode(self, latent_spikes: torch.Tensor) -> torch.Tensor:
        """Latent spikes ``(T', N, L)`` -> images ``(N, C, H, W)`` in [-1, 1]."""
        if latent_spikes.dim() != 3 or latent_spikes.shape[-1] != self.config.latent_dim:
            raise ValueError(
                f"decode expects latent spikes (T, N, {self.config.latent_dim}), got {tuple(latent_spikes.shape)}"
            )
        h_seq = self.decoder_input(latent_spikes)  # (T, N, 4 C')
        h_seq = h_seq.unflatten(2, (self.bottom_channels, 2, 2))  # (T, N, C', 2, 2)
        readout = self.readout
        if self.readout_first and type(readout) is MembraneReadout:
            return torch.tanh(self._last_layer_after_readout(self.decoder(h_seq), readout))  # (N, C, H, W)
        y_seq = self.final_layer(self.decoder(h_seq))  # (T, N, C, H, W)
        return torch.tanh(self.readout(y_seq))  # (N, C, H, W)

    # The last layer is linear (no tdBN, no LIF) and the membrane readout is a fixed weighted sum
    # over T, so sum_t w_t (W * y_t + b) = W * (sum_t w_t y_t) + b sum_t w_t: the same image from
    # one transposed convolution on N inputs instead of T * N (equal up to float rounding).
    # Layer-by-layer cost accounting (esvae.metrics.spikes) switches this off.
    readout_first = True

    def _last_layer_after_readout(self, h_seq: torch.Tensor, readout: MembraneReadout) -> torch.Tensor:
        """final_layer.1(readout(final_layer.0(h_seq))) with the readout moved before the last layer;
        final_layer.0's spikes are summed over time as they are made (never stored, see
        :func:`esvae.spiking.layers.tdbn_lif_readout`)."""
        first, last = self.final_layer
        assert isinstance(first, SpikingConvTranspose2d) and isinstance(last, SpikingConvTranspose2d)
        weights = readout.weights(h_seq.shape[0], h_seq.device, h_seq.dtype)
        mixed = first.forward_readout(h_seq, weights)  # (N, C0, H, W)
        bias = last.bias * weights.sum() if last.bias is not None else None
        return F.conv_transpose2d(
            mixed,
            last.weight,
            bias,
            last.stride,
            cast(Tuple[int, ...], last.padding),  # a transposed convolution's padding is never a string
            last.output_padding,
            last.groups,
            last.dilation,
        )

    def decode_code(self, rates: torch.Tensor) -> torch.Tensor:
        """Decode posterior rates ``(N, L)`` in [0, 1] without sampling noise: ``round(r T)`` evenly
        spaced spikes per unit (:func:`esvae.samplers.evenly_spaced_spikes`). Rounding, not flooring:
        ESVAE's rates are multiples of 1/T (exact either way), FSVAE's of 1/(kT)."""
        from ..samplers import evenly_spaced_spikes

        T = self.timesteps
        return self.decode(evenly_spaced_spikes(torch.round(rates.clamp(0, 1) * T) / T, T))

    def _check_images(self, images: torch.Tensor) -> None:
        c, s = self.config.in_channels, self.config.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (c, s, s):
            raise ValueError(f"expected images of shape (N, {c}, {s}, {s}), got {tuple(images.shape)}")
