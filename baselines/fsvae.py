"""FSVAE (Kamata, Mukuta, Harada, AAAI 2022): an autoregressive Bernoulli latent with k votes
(docs/method.md section 4). Same spiking encoder/decoder as ESVAE; time-first tensors.

Latent, per image, for L latent units and T steps::

    x_e (T, N, L)   latent-layer spikes of the encoder
    posterior       3-layer spiking MLP (2L -> 2L -> 4L -> kL, tdBN alpha = 2, LIF) on
                    concat(x_e[t], z[t-1]) with z[-1] = 0: k binary votes per unit and step;
                    z_t is one vote chosen uniformly at random
    prior           3-layer spiking MLP (L -> 2L -> 4L -> kL) on the shifted, detached z
    loss ("mmd")    MSE + mean_{t,l} (PSP(q_bar) - PSP(p_bar))^2,  q_bar/p_bar = vote means
    loss ("kld")    MSE + 1e-4 * mean_n sum_{l,t} KL(Bern(q_bar) || Bern(p_bar)) with +0.01 smoothing
    generation      the prior run autoregressively, one random vote per unit and step

Faithful to the original code, including two quirks:

* The posterior builds z step by step without gradient by running the MLP on the whole prefix at
  every step (so in training mode tdBN sees prefix statistics and updates its running statistics
  at every prefix); it then runs once over the whole sequence with gradient and takes z_t at the
  same vote indices, so the vote that carries the gradient may differ from the one fed back.
* Scheduled sampling (training only): for steps t >= 5 (0-based), with probability p per step
  (one draw for the whole batch) the prior's own guess ``1[mean_k(votes) + 0.001 N(0,1) > 0.5]``
  replaces the posterior's z_t as the prior's input; p grows linearly from 0.1 to 0.3 over the
  epochs (``start_epoch``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from esvae.config import SpikingVAEConfig, TrainConfig, hidden_dims_for, paper_setting
from esvae.errors import ConfigError
from esvae.models.backbone import SpikingConvBackbone
from esvae.models.base import OriginalLayout, VAEModel
from esvae.samplers import LatentSampler, VoteSelectionSampler, build_sampler
from esvae.spiking import LIF, SpikingLinear, tdbn_lif_step


@dataclass
class FSVAEConfig(SpikingVAEConfig):
    latent_dim: int = 128
    sampler: str = "fsvae_autoregressive"
    votes: int = 20  # k
    mlp_bn_alpha: float = 2.0  # tdBN alpha in the prior/posterior MLPs
    loss: str = "mmd"  # "mmd" (PSP distance, weight 1) or "kld" (Bernoulli KL)
    kld_weight: float = 1e-4
    psp_tau: float = 2.0  # PSP filter s_t = s_{t-1} + (x_t - s_{t-1}) / tau
    scheduled_sampling: bool = True
    scheduled_p_start: float = 0.1
    scheduled_p_end: float = 0.3
    scheduled_from_step: int = 5  # 0-based step from which the prior's guess may be used
    guess_noise: float = 1e-3

    # Inherited fields this model ignores: they must keep these values (and the CLI refuses their flags).
    UNUSED_FIELDS: ClassVar[Dict[str, object]] = {"mmd_kernel": "rbf", "mmd_weight": 1e-3}
    _UNUSED_WHY: ClassVar[Dict[str, str]] = {
        "mmd_kernel": "it is ESVAE's rate-MMD setting; choose the latent loss with loss='mmd' (PSP distance) or 'kld'",
        "mmd_weight": "it is ESVAE's rate-MMD setting; choose the latent loss with loss='mmd' (PSP distance) or 'kld'",
        "readout_decay": "it sets the fixed 0.8^(T-1-t) readout, which TAID replaces by temporal attention",
    }

    def validate(self) -> "FSVAEConfig":
        super().validate()
        if isinstance(self.votes, bool) or not isinstance(self.votes, int) or self.votes < 1:
            raise ConfigError(f"votes (k) must be a positive integer, got {self.votes!r}")
        if self.loss not in ("mmd", "kld"):
            raise ConfigError(f"FSVAE loss must be 'mmd' or 'kld', got {self.loss!r}")
        for key, default in self.UNUSED_FIELDS.items():
            if getattr(self, key) != default:
                raise ConfigError(f"{key} is not used by {type(self).__name__[:-6]}: " + self._UNUSED_WHY[key])
        for key in ("scheduled_p_start", "scheduled_p_end"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"{key} must lie in [0, 1], got {getattr(self, key)}")
        step = self.scheduled_from_step
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ConfigError(f"scheduled_from_step must be a non-negative integer, got {step!r}")
        for key in ("psp_tau", "kld_weight", "guess_noise"):
            value = getattr(self, key)
            if (
                not isinstance(value, (int, float))
                or isinstance(value, bool)
                or not value >= 0
                or (key == "psp_tau" and value < 1)
            ):
                bound = ">= 1 (the filter's step is 1/tau)" if key == "psp_tau" else ">= 0"
                raise ConfigError(f"{key} must be a number {bound}, got {value!r}")
        return self


def psp(spikes_seq: torch.Tensor, tau: float = 2.0) -> torch.Tensor:
    """Post-synaptic potential filter over the leading time axis: ``s_t = s_{t-1} + (x_t - s_{t-1}) / tau``."""
    out = []
    state = torch.zeros_like(spikes_seq[0])
    for x_t in spikes_seq:
        state = state + (x_t - state) / tau
        out.append(state)
    return torch.stack(out)


class VotingMLP(nn.Sequential):
    """Three spiking linear layers (tdBN alpha, LIF); ``(T, N, in) -> votes (T, N, L, k)``."""

    def __init__(self, widths, latent_dim: int, votes: int, config: SpikingVAEConfig, bn_alpha: float):
        layers = [
            SpikingLinear(
                a,
                b,
                bn_alpha=bn_alpha,
                lif=LIF(config.tau, config.v_threshold, config.surrogate, backend=config.lif_backend),
            )
            for a, b in zip(widths[:-1], widths[1:])
        ]
        super().__init__(*layers)
        self.latent_dim, self.votes = latent_dim, votes

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return super().forward(x_seq).unflatten(-1, (self.latent_dim, self.votes))

    @property
    def dtype(self) -> torch.dtype:
        first = self[0]
        assert isinstance(first, SpikingLinear)
        return first.weight.dtype

    @torch.no_grad()
    def step(self, x_t: torch.Tensor, state: Optional[List] = None) -> Tuple[torch.Tensor, List]:
        """One time step in eval mode: ``x_t (N, in)`` -> ``(votes_t (N, L, k), state)``; pass the
        returned state to the next call (None at t = 0).

        In eval mode tdBN uses running statistics, so a step does not depend on the others and this
        equals ``forward`` on the whole prefix taken at its last step, at one step's cost instead
        of t + 1 (each layer: its weights, then :func:`esvae.spiking.tdbn_lif_step`, one pass with
        the compiled kernels). In training, tdBN normalises with the statistics of the whole input,
        so stepping is refused there.
        """
        if self.training:
            raise RuntimeError(
                "VotingMLP.step needs eval mode: in training tdBN uses the statistics of the whole sequence"
            )
        state = state or [None] * len(self)
        new_state, h = [], x_t
        for layer, layer_state in zip(self, state):
            assert isinstance(layer, SpikingLinear) and layer.bn is not None and layer.lif is not None
            layer_state = tdbn_lif_step(F.linear(h, layer.weight, layer.bias), layer.bn, layer.lif, layer_state)
            new_state.append(layer_state)
            h = layer_state.spikes
        return h.unflatten(-1, (self.latent_dim, self.votes)), new_state


class FSVAEPosterior(nn.Module):
    """q(z_t | x_<=t, z_<t) with k votes; ``forward`` returns ``(z (T, N, L), votes (T, N, L, k))``.

    Building z needs the votes of step t before z_t exists. The original runs the MLP on the whole
    prefix at every step (T(T+1)/2 step evaluations); that is kept in training, where tdBN's batch
    statistics make the prefix passes part of the function. In eval mode, with ``stepwise`` on
    (the default), the MLP is stepped once per time step with its LIF state carried over: the same
    values at 2/(T+1) of the cost.
    """

    stepwise = True

    def __init__(self, config: FSVAEConfig, sampler: VoteSelectionSampler):
        super().__init__()
        L, k = config.latent_dim, config.votes
        self.layers = VotingMLP((2 * L, 2 * L, 4 * L, k * L), L, k, config, config.mlp_bn_alpha)
        self.sampler = sampler

    def forward(
        self, latent_spikes: torch.Tensor, generator: Optional[torch.Generator] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        T, N, L = latent_spikes.shape
        select = self.sampler.select
        choice = self.sampler.choices((T, N, L), self.layers.votes, latent_spikes, generator)
        x_seq = latent_spikes.detach()
        if self.stepwise and not self.layers.training:
            state, step_votes = None, []
            step_input = latent_spikes.new_zeros(N, 2 * L)  # [x_t, z_{t-1}]
            z_shifted = latent_spikes.new_zeros(T + 1, N, L)  # [z_{-1} = 0, z_0, ...]
            for t in range(T):
                step_input[:, :L] = x_seq[t]
                votes_t, state = self.layers.step(step_input, state)
                step_votes.append(votes_t)
                z_shifted[t + 1] = step_input[:, L:] = select(votes_t, choice[t])
            if not torch.is_grad_enabled():  # nothing to differentiate
                return z_shifted[1:], torch.stack(step_votes)  # = select(votes, choice)
            z_shifted = z_shifted[:-1]
        else:
            z_shifted = latent_spikes.new_zeros(1, N, L)  # [z_{-1} = 0]
            with torch.no_grad():
                for t in range(T - 1):
                    votes_t = self.layers(torch.cat([x_seq[: t + 1], z_shifted], dim=-1))[-1]  # (N, L, k), prefix pass
                    z_shifted = torch.cat([z_shifted, select(votes_t, choice[t]).unsqueeze(0)])
        votes = self.layers(torch.cat([latent_spikes, z_shifted], dim=-1))  # (T, N, L, k), with gradient
        return select(votes, choice), votes


class FSVAEPrior(nn.Module):
    """p(z_t | z_<t) with k votes. ``sample`` steps the MLP in eval mode when ``stepwise`` is on
    (see :class:`FSVAEPosterior`); otherwise it runs the original's prefix passes."""

    stepwise = True

    def __init__(self, config: FSVAEConfig, sampler: VoteSelectionSampler):
        super().__init__()
        L, k = config.latent_dim, config.votes
        self.layers = VotingMLP((L, 2 * L, 4 * L, k * L), L, k, config, config.mlp_bn_alpha)
        self.config, self.sampler = config, sampler

    def forward(
        self, z: torch.Tensor, scheduled_p: Optional[float] = None, generator: Optional[torch.Generator] = None
    ) -> torch.Tensor:
        """Votes ``(T, N, L, k)`` for the posterior's ``z (T, N, L)`` shifted by one step (detached)."""
        z = z.detach()
        T, N, L = z.shape
        z_shifted = z.new_zeros(1, N, L)
        if not (self.training and scheduled_p is not None):
            return self.layers(torch.cat([z_shifted, z[:-1]]))
        cfg = self.config
        with torch.no_grad():
            for t in range(T - 1):
                coin = torch.rand((), generator=generator, device=z.device) if t >= cfg.scheduled_from_step else None
                if coin is not None and coin.item() < scheduled_p:
                    votes_t = self.layers(z_shifted)[-1]  # (N, L, k)
                    noise = torch.randn(N, L, generator=generator, device=z.device, dtype=z.dtype)
                    z_t = (votes_t.mean(-1) + cfg.guess_noise * noise > 0.5).to(z.dtype)
                else:
                    z_t = z[t]
                z_shifted = torch.cat([z_shifted, z_t.unsqueeze(0)])
        return self.layers(z_shifted)

    @torch.no_grad()
    def sample(self, n: int, timesteps: int, device=None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Run the prior autoregressively: ``z (T, n, L)``, one random vote per unit and step."""
        z_shifted = torch.zeros(1, n, self.layers.latent_dim, device=device, dtype=self.layers.dtype)
        state = None
        for t in range(timesteps):
            if self.stepwise and not self.layers.training:
                votes_t, state = self.layers.step(z_shifted[t], state)  # (n, L, k), one step
            else:
                votes_t = self.layers(z_shifted)[-1]  # prefix pass
            z_shifted = torch.cat([z_shifted, self.sampler.draw(votes_t, generator).unsqueeze(0)])
        return z_shifted[1:]


@dataclass
class FSVAEOutput:
    reconstruction: torch.Tensor  # (N, C, H, W)
    latent_spikes: torch.Tensor  # (T, N, L) encoder spikes x_e
    sampled_spikes: torch.Tensor  # (T, N, L) z fed to the decoder
    posterior_votes: torch.Tensor  # (T, N, L, k)
    prior_votes: torch.Tensor  # (T, N, L, k)


class FSVAE(VAEModel, SpikingConvBackbone):
    stat_names = ("posterior_rate", "prior_rate")
    # The original's prior/posterior keys (prior.layers.{0,1,2}.*, posterior.layers.*) match ours;
    # their initial_input buffers are the constant z_{-1} = 0, shape (1, L, 1).
    original_layout: Optional[OriginalLayout] = OriginalLayout(
        zero_buffers=("prior.initial_input", "posterior.initial_input")
    )

    def __init__(self, config: FSVAEConfig, sampler: Optional[LatentSampler] = None):
        super().__init__(config)
        self.sampler = sampler if sampler is not None else build_sampler(config.sampler)
        if not isinstance(self.sampler, VoteSelectionSampler):
            raise ConfigError(f"FSVAE needs a vote-selection sampler (fsvae_autoregressive), got {self.sampler!r}")
        self.posterior = FSVAEPosterior(config, self.sampler)
        self.prior = FSVAEPrior(config, self.sampler)
        self.loss_terms = ("loss", "mse", config.loss)
        self.scheduled_p = config.scheduled_p_start

    def start_epoch(self, epoch_index: int, total_epochs: int) -> Dict[str, float]:
        """Scheduled-sampling probability ``p = p0 + (p1 - p0) * epoch / epochs`` (epoch from 0)."""
        cfg = self.config
        self.scheduled_p = cfg.scheduled_p_start + (cfg.scheduled_p_end - cfg.scheduled_p_start) * epoch_index / max(
            total_epochs, 1
        )
        return {"scheduled_p": self.scheduled_p}

    def forward(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> FSVAEOutput:
        latent_spikes = self.encode(images)  # (T, N, L)
        z, q_votes = self.posterior(latent_spikes, generator)
        p_votes = self.prior(z, self.scheduled_p if self.config.scheduled_sampling else None, generator)
        return FSVAEOutput(self.decode(z), latent_spikes, z, q_votes, p_votes)

    latent_code_label = (
        "posterior vote probabilities averaged over k and T (the z fed back inside the posterior is still drawn)"
    )

    def latent_code(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Posterior rates ``(N, L)``: the posterior's vote probabilities averaged over k and T."""
        return self.posterior(self.encode(images), generator)[1].mean(-1).mean(0)

    def loss(self, images: torch.Tensor, out: FSVAEOutput) -> Dict[str, torch.Tensor]:
        mse = F.mse_loss(out.reconstruction, images)
        q_bar, p_bar = out.posterior_votes.mean(-1), out.prior_votes.mean(-1)  # (T, N, L)
        if self.config.loss == "mmd":
            term = (psp(q_bar, self.config.psp_tau) - psp(p_bar, self.config.psp_tau)).pow(2).mean()
            return {"loss": mse + term, "mse": mse, "mmd": term}
        kl = q_bar * torch.log((q_bar + 1e-2) / (p_bar + 1e-2)) + (1 - q_bar) * torch.log(
            (1 - q_bar + 1e-2) / (1 - p_bar + 1e-2)
        )
        term = kl.sum(dim=(0, 2)).mean()  # sum over T and L, mean over N
        return {"loss": mse + self.config.kld_weight * term, "mse": mse, "kld": term}

    def batch_stats(self, out: FSVAEOutput) -> Dict[str, torch.Tensor]:
        return {"posterior_rate": out.posterior_votes.detach().mean(), "prior_rate": out.prior_votes.detach().mean()}

    @property
    def latent_description(self) -> str:
        return f"autoregressive posterior, one of k={self.config.votes} votes per step"

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Generate ``n`` images by running the prior autoregressively; needs eval mode."""
        if self.training:
            raise RuntimeError(
                "FSVAE.sample needs eval mode (in training tdBN would normalise the prior's prefixes "
                "with batch statistics and update its running statistics); call model.eval() first"
            )
        device = self.prior.layers[0].weight.device
        return self.decode(self.prior.sample(n, self.timesteps, device, generator))


def fsvae_paper_config(setting: str) -> FSVAEConfig:
    spec = paper_setting(setting)
    return FSVAEConfig(
        in_channels=spec.in_channels,
        image_size=spec.image_size,
        latent_dim=128,
        timesteps=16,
        hidden_dims=hidden_dims_for(spec.image_size),
    )


def fsvae_paper_train(setting: str) -> TrainConfig:
    """AdamW lr 0.001, weight decay 0.001, batch 250, 150 epochs (docs/method.md section 4); no augmentation."""
    paper_setting(setting)
    return TrainConfig(
        epochs=150,
        batch_size=250,
        lr=0.001,
        prior_lr_multiplier=1.0,
        weight_decay=0.001,
        lr_derivation="the FSVAE paper's setting (lr 0.001, batch 250)",
        hflip=False,
    )
