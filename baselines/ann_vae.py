"""The ANN VAE of Table I (docs/method.md section 4): ESVAE's conv shapes with BatchNorm + LeakyReLU.

Shapes for 32x32 (64x64 adds a 512-channel stage on both sides)::

    image (N, C, 32, 32) -> 4 x [conv s2 -> BN -> LeakyReLU]      -> (N, 256, 2, 2) -> (N, 1024)
    fc_mu, fc_logvar: 1024 -> L                                   -> mu, logvar (N, L)
    z = mu + exp(logvar / 2) * eps                                -> (N, L)
    decoder_input: linear L -> 1024 (no BN, no activation), reshape -> (N, 256, 2, 2)
    3 x [tconv s2 -> BN -> LeakyReLU]                             -> (N, 32, 16, 16)
    final: tconv s2 -> BN -> LeakyReLU -> conv 3x3 (32 -> C) -> tanh -> (N, C, 32, 32)

Loss: ``MSE + w * KLD`` with ``KLD = mean_n -1/2 sum_l (1 + logvar - mu^2 - exp(logvar))`` and
``w = 1 / (batches per epoch)``, derived from the data by :meth:`ANNVAE.configure_training`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from esvae.config import TrainConfig, hidden_dims_for, paper_setting
from esvae.errors import ConfigError
from esvae.models.ann_blocks import ann_decoder, ann_encoder, ann_final_layer
from esvae.models.base import VAEModel


@dataclass
class ANNVAEConfig:
    in_channels: int = 1
    image_size: int = 32
    latent_dim: int = 128
    hidden_dims: Tuple[int, ...] = (32, 64, 128, 256)
    leaky_slope: float = 0.01  # LeakyReLU negative slope (PyTorch's default)
    kld_weight: Optional[float] = None  # None: 1 / (batches per epoch), set when training starts
    timesteps: int = 1  # no time axis; kept so every model reports T

    def validate(self) -> "ANNVAEConfig":
        for key in ("in_channels", "latent_dim"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{key} must be a positive integer, got {value!r}")
        if self.timesteps != 1:
            raise ConfigError(f"the ANN VAE has no time steps; timesteps must be 1, got {self.timesteps}")
        if tuple(self.hidden_dims) != hidden_dims_for(self.image_size):
            raise ConfigError(
                f"hidden_dims for image_size {self.image_size} must be {list(hidden_dims_for(self.image_size))}"
            )
        if self.kld_weight is not None and self.kld_weight < 0:
            raise ConfigError(f"kld_weight must be >= 0, got {self.kld_weight}")
        return self

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["hidden_dims"] = list(self.hidden_dims)
        return d


@dataclass
class ANNVAEOutput:
    reconstruction: torch.Tensor  # (N, C, H, W) in [-1, 1]
    mu: torch.Tensor  # (N, L)
    logvar: torch.Tensor  # (N, L)
    latent: torch.Tensor  # (N, L) the sampled z


class ANNVAE(VAEModel, nn.Module):
    loss_terms = ("loss", "mse", "kld")
    stat_names = ("mu_abs", "sigma")
    spiking_latent = False

    def __init__(self, config: ANNVAEConfig):
        super().__init__()
        self.config = config.validate()
        dims = list(config.hidden_dims)
        slope = config.leaky_slope
        self.bottom_channels = dims[-1]
        flat = dims[-1] * 4
        self.encoder = ann_encoder(config.in_channels, dims, slope)
        self.fc_mu = nn.Linear(flat, config.latent_dim)
        self.fc_logvar = nn.Linear(flat, config.latent_dim)
        self.decoder_input = nn.Linear(config.latent_dim, flat)
        self.decoder = ann_decoder(dims, slope)
        self.final_layer = ann_final_layer(dims, config.in_channels, slope)
        self._kld_weight = config.kld_weight

    @property
    def timesteps(self) -> int:
        return 1

    def encode_distribution(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Images ``(N, C, H, W)`` -> ``(mu, logvar)``, each ``(N, L)``."""
        c, s = self.config.in_channels, self.config.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (c, s, s):
            raise ValueError(f"expected images of shape (N, {c}, {s}, {s}), got {tuple(images.shape)}")
        h = self.encoder(images).flatten(1)  # (N, 1024)
        return self.fc_mu(h), self.fc_logvar(h)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The posterior mean ``mu`` ``(N, L)`` (the deterministic code)."""
        return self.encode_distribution(images)[0]

    latent_code_label = "posterior mean mu"

    def latent_code(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """The posterior mean ``mu`` ``(N, L)``."""
        return self.encode(images)

    def decode_code(self, code: torch.Tensor) -> torch.Tensor:
        return self.decode(code)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """``(N, L) -> (N, C, H, W)`` in [-1, 1]."""
        h = self.decoder_input(latent).unflatten(1, (self.bottom_channels, 2, 2))  # (N, C', 2, 2)
        return self.final_layer(self.decoder(h))

    def forward(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> ANNVAEOutput:
        mu, logvar = self.encode_distribution(images)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + torch.exp(0.5 * logvar) * eps
        return ANNVAEOutput(self.decode(z), mu, logvar, z)

    @property
    def kld_weight(self) -> float:
        if self._kld_weight is None:
            raise ConfigError(
                "the ANN VAE's KLD weight is 1 / (batches per epoch): call "
                "configure_training(steps_per_epoch) or build it with kld_weight=..."
            )
        return self._kld_weight

    def configure_training(self, steps_per_epoch: int) -> Dict[str, float]:
        if self.config.kld_weight is None:
            self._kld_weight = 1.0 / steps_per_epoch
        return {"kld_weight": self.kld_weight}

    def loss(self, images: torch.Tensor, out: ANNVAEOutput) -> Dict[str, torch.Tensor]:
        mse = F.mse_loss(out.reconstruction, images)
        kld = (-0.5 * (1 + out.logvar - out.mu.pow(2) - out.logvar.exp()).sum(1)).mean()
        return {"loss": mse + self.kld_weight * kld, "mse": mse, "kld": kld}

    def batch_stats(self, out: ANNVAEOutput) -> Dict[str, torch.Tensor]:
        return {"mu_abs": out.mu.detach().abs().mean(), "sigma": out.logvar.detach().mul(0.5).exp().mean()}

    @property
    def latent_description(self) -> str:
        return "Gaussian z = mu + sigma * eps"

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Decode ``n`` draws of ``z ~ N(0, I)`` (in the model's current mode; call ``eval()`` first)."""
        weight = self.decoder_input.weight
        return self.decode(
            torch.randn(n, self.config.latent_dim, generator=generator, device=weight.device, dtype=weight.dtype)
        )


def ann_vae_paper_config(setting: str) -> ANNVAEConfig:
    spec = paper_setting(setting)
    return ANNVAEConfig(
        in_channels=spec.in_channels,
        image_size=spec.image_size,
        latent_dim=128,
        hidden_dims=hidden_dims_for(spec.image_size),
    )


def ann_vae_paper_train(setting: str) -> TrainConfig:
    """FSVAE paper's ANN VAE: AdamW lr 0.001, batch 250, 150 epochs (docs/method.md section 4).

    Weight decay is not given for the ANN VAE; FSVAE's 0.001 is used. No augmentation.
    """
    paper_setting(setting)
    return TrainConfig(
        epochs=150,
        batch_size=250,
        lr=0.001,
        prior_lr_multiplier=1.0,
        weight_decay=0.001,
        lr_derivation="the FSVAE paper's ANN VAE setting (lr 0.001, batch 250)",
        hflip=False,
    )
