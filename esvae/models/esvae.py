"""ESVAE: spiking VAE with a Poisson latent and reparameterizable spike sampling (docs/method.md section 3).

Names follow roles, not the original variable names (whose ``r_q``/``r_p`` are swapped with
respect to the paper's Fig. 2): ``posterior_rate`` is the encoder's firing rate, ``prior_rate``
the bottleneck's output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import SpikingVAEConfig
from ..losses import get_mmd
from ..samplers import LatentSampler
from .backbone import SpikingConvBackbone
from .base import OriginalLayout, VAEModel


@dataclass
class ESVAEOutput:
    reconstruction: torch.Tensor  # (N, C, H, W) in [-1, 1]
    latent_spikes: torch.Tensor  # (T, N, L) encoder's latent-layer spikes, before sampling
    sampled_spikes: torch.Tensor  # (T, N, L) sampler output fed to the decoder
    posterior_rate: torch.Tensor  # (N, L) mean of latent_spikes over T
    prior_rate: torch.Tensor  # (N, L) sigmoid(bottleneck(eps))


class ESVAE(VAEModel, SpikingConvBackbone):
    """ESVAE. ``forward(x)`` reconstructs, ``loss(x, out)`` is MSE + lambda * MMD^2, ``sample(n)`` generates."""

    loss_terms = ("loss", "mse", "mmd")
    stat_names = ("posterior_rate", "prior_rate")
    # The original ESVAE names its prior bottleneck sample_layer.0 and also builds FSVAE's
    # prior/posterior MLPs, which it never uses.
    original_layout = OriginalLayout(
        renames={"sample_layer.0.": "prior_bottleneck."}, unused_prefixes=("prior.", "posterior.")
    )

    def __init__(self, config: SpikingVAEConfig, sampler: LatentSampler):
        super().__init__(config)
        self.sampler = sampler
        # The whole prior: eps ~ N(0, I_L) -> linear (L -> L) -> sigmoid.
        self.prior_bottleneck = nn.Linear(config.latent_dim, config.latent_dim)
        self.mmd = get_mmd(config.mmd_kernel)

    def posterior_rate(self, latent_spikes: torch.Tensor) -> torch.Tensor:
        """``(T, N, L) -> (N, L)``: firing rate in {0, 1/T, ..., 1}."""
        return latent_spikes.mean(0)

    def prior_rate(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``n`` prior rate vectors ``sigmoid(bottleneck(eps))``, ``(n, L)``."""
        weight = self.prior_bottleneck.weight
        eps = torch.randn(n, self.config.latent_dim, generator=generator, device=weight.device, dtype=weight.dtype)
        return torch.sigmoid(self.prior_bottleneck(eps))

    latent_code_label = "posterior firing rates (latent-layer spike counts / T)"

    def latent_code(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Posterior firing rates ``(N, L)``: the latent layer's spike count over T, divided by T."""
        return self.encode(images).mean(0)

    def forward(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> ESVAEOutput:
        latent_spikes = self.encode(images)  # (T, N, L)
        posterior_rate = self.posterior_rate(latent_spikes)  # (N, L)
        sampled = self.sampler(posterior_rate, self.timesteps, generator)  # (T, N, L)
        reconstruction = self.decode(sampled)  # (N, C, H, W)
        prior_rate = self.prior_rate(images.shape[0], generator)  # (N, L)
        return ESVAEOutput(reconstruction, latent_spikes, sampled, posterior_rate, prior_rate)

    def loss(self, images: torch.Tensor, out: ESVAEOutput) -> Dict[str, torch.Tensor]:
        """``{"loss", "mse", "mmd"}``; MSE is the mean over all pixels of the batch."""
        mse = F.mse_loss(out.reconstruction, images)
        mmd = self.mmd(out.posterior_rate, out.prior_rate)
        return {"loss": mse + self.config.mmd_weight * mmd, "mse": mse, "mmd": mmd}

    def batch_stats(self, out: ESVAEOutput) -> Dict[str, torch.Tensor]:
        """Mean posterior and prior firing rates of the batch."""
        return {"posterior_rate": out.posterior_rate.detach().mean(), "prior_rate": out.prior_rate.detach().mean()}

    @property
    def latent_description(self) -> str:
        return f"sampled with {self.config.sampler}"

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Generate ``n`` images ``(n, C, H, W)``: eps -> bottleneck -> prior rate -> spikes -> decoder.

        Runs in the model's current mode, as every ``nn.Module`` call does: call ``model.eval()``
        first so tdBN uses its running statistics (in training mode it would also update them).
        """
        prior_rate = self.prior_rate(n, generator)
        return self.decode(self.sampler(prior_rate, self.timesteps, generator))

    def param_groups(self, lr: float, prior_lr_multiplier: float = 10.0) -> List[dict]:
        """AdamW groups: everything at ``lr``, the prior bottleneck at ``lr * prior_lr_multiplier``."""
        bottleneck = list(self.prior_bottleneck.parameters())
        ids = {id(p) for p in bottleneck}
        rest = [p for p in self.parameters() if id(p) not in ids]
        return [
            {"name": "network", "params": rest, "lr": lr},
            {"name": "prior_bottleneck", "params": bottleneck, "lr": lr * prior_lr_multiplier},
        ]
