"""A naive port of the original ESVAE/FSVAE implementation approach, for the speed benchmark only.

It computes the same functions as :mod:`esvae.models` and :mod:`baselines.fsvae`, written the way
the authors' code is structured (docs/method.md sections 1-6), so ``python -m esvae_bench`` can measure
what this project's layout buys:

* tensors are **time-last**: ``(N, C, H, W, T)`` and ``(N, F, T)``;
* convolutions are 3-D with ``(k, k, 1)`` kernels (stride ``(s, s, 1)``, padding ``(p, p, 0)``),
  linear layers transpose time in and out;
* tdBN is written out by hand (mean and variance over every axis but the channel, the running
  statistics updated in Python);
* the LIF neuron is a Python loop over T that reads the previous step's spikes back from a
  preallocated output and writes each step's spikes into it by slice assignment, under autograd;
* FSVAE's posterior and prior run the voting MLP on the whole prefix at every autoregressive step,
  in training and in evaluation alike.

Weights come from a model of this project (:func:`naive_port`), with the same module names, and
every random draw is made in the same order and shape as the project's code (then moved to
time-last), so both produce the same spikes, outputs and gradients up to float rounding. Nothing
here is used by training or evaluation.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from esvae.spiking.surrogate import rectangle


class _SpikeFn(torch.autograd.Function):
    """``1[u > V_th]``; backward ``grad * 1[|u| < 0.5]`` (the rectangle window centred at 0)."""

    @staticmethod
    def forward(ctx, membrane, v_threshold):
        ctx.save_for_backward(membrane)
        return (membrane > v_threshold).to(membrane.dtype)

    @staticmethod
    def backward(ctx, grad):
        (membrane,) = ctx.saved_tensors
        return grad * rectangle(membrane), None


class NaiveLIF(nn.Module):
    """LIF over the last axis: a loop over T with slice assignment into a preallocated output."""

    def __init__(self, tau: float, v_threshold: float):
        super().__init__()
        self.tau, self.v_threshold = tau, v_threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., T)
        steps = x.shape[-1]
        membrane = torch.zeros(x.shape[:-1], device=x.device, dtype=x.dtype)
        out = torch.zeros(x.shape, device=x.device, dtype=x.dtype)
        for t in range(steps):
            previous = out[..., max(t - 1, 0)]  # o_{t-1} (zeros at t = 0: out starts as zeros)
            membrane = membrane * self.tau * (1 - previous) + x[..., t]
            out[..., t] = _SpikeFn.apply(membrane, self.v_threshold)
        return out


class NaiveTDBN(nn.BatchNorm2d):
    momentum: float
    running_mean: torch.Tensor
    running_var: torch.Tensor
    num_batches_tracked: torch.Tensor

    """tdBN written out: statistics over all axes but the channel (axis 1), input of any rank >= 3."""

    def __init__(self, num_features: int, alpha: float, v_threshold: float):
        super().__init__(num_features)
        self.alpha, self.v_threshold = alpha, v_threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        axes = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        if self.training:
            self.num_batches_tracked += 1
            mean = x.mean(axes)
            var = x.var(axes, unbiased=False)
            n = x.numel() / x.shape[1]
            with torch.no_grad():
                self.running_mean = self.momentum * mean + (1 - self.momentum) * self.running_mean
                self.running_var = self.momentum * var * n / (n - 1) + (1 - self.momentum) * self.running_var
        else:
            mean, var = self.running_mean, self.running_var
        x = self.alpha * self.v_threshold * (x - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        return x * self.weight.view(shape) + self.bias.view(shape)


class _Layer(nn.Module):
    """weights -> optional tdBN -> optional LIF, time-last."""

    def _attach(self, width: int, config, bn_alpha: Optional[float], spiking: bool) -> None:
        self.bn = NaiveTDBN(width, bn_alpha, config.v_threshold) if bn_alpha is not None else None
        self.lif = NaiveLIF(config.tau, config.v_threshold) if spiking else None

    def _finish(self, y: torch.Tensor) -> torch.Tensor:
        if self.bn is not None:
            y = self.bn(y)
        return self.lif(y) if self.lif is not None else y


class NaiveConv(_Layer, nn.Conv3d):
    def __init__(self, cin, cout, stride, config, bn_alpha=1.0, spiking=True):
        nn.Conv3d.__init__(self, cin, cout, (3, 3, 1), stride=(stride, stride, 1), padding=(1, 1, 0))
        self._attach(cout, config, bn_alpha, spiking)

    def forward(self, x):
        return self._finish(nn.Conv3d.forward(self, x))


class NaiveConvTranspose(_Layer, nn.ConvTranspose3d):
    def __init__(self, cin, cout, stride, output_padding, config, bn_alpha=1.0, spiking=True):
        nn.ConvTranspose3d.__init__(
            self,
            cin,
            cout,
            (3, 3, 1),
            stride=(stride, stride, 1),
            padding=(1, 1, 0),
            output_padding=(output_padding, output_padding, 0),
        )
        self._attach(cout, config, bn_alpha, spiking)

    def forward(self, x):
        return self._finish(nn.ConvTranspose3d.forward(self, x))


class NaiveLinear(_Layer, nn.Linear):
    def __init__(self, fin, fout, config, bn_alpha=1.0, spiking=True):
        nn.Linear.__init__(self, fin, fout)
        self._attach(fout, config, bn_alpha, spiking)

    def forward(self, x):  # (N, F, T)
        y = nn.Linear.forward(self, x.transpose(1, 2)).transpose(1, 2)
        return self._finish(y)


class NaiveBackbone(nn.Module):
    """Encoder, latent layer, decoder and membrane readout, time-last."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        dims = list(config.hidden_dims)
        flat = dims[-1] * 4
        channels, encoder = config.in_channels, []
        for width in dims:
            encoder.append(NaiveConv(channels, width, 2, config))
            channels = width
        self.encoder = nn.Sequential(*encoder)
        self.before_latent_layer = NaiveLinear(flat, config.latent_dim, config)
        self.decoder_input = NaiveLinear(config.latent_dim, flat, config)
        rev = dims[::-1]
        self.decoder = nn.Sequential(
            *[NaiveConvTranspose(rev[i], rev[i + 1], 2, 1, config) for i in range(len(rev) - 1)]
        )
        self.final_layer = nn.Sequential(
            NaiveConvTranspose(dims[0], dims[0], 2, 1, config),
            NaiveConvTranspose(dims[0], config.in_channels, 1, 0, config, bn_alpha=None, spiking=False),
        )

    def encode(self, images):  # (N, C, H, W) -> (N, L, T)
        x = images.unsqueeze(-1).repeat(1, 1, 1, 1, self.config.timesteps)
        h = self.encoder(x)
        return self.before_latent_layer(h.flatten(1, 3))

    def decode(self, z):  # (N, L, T) -> (N, C, H, W)
        h = self.decoder_input(z)
        h = h.view(h.shape[0], -1, 2, 2, h.shape[-1])
        y = self.final_layer(self.decoder(h))
        steps = torch.arange(y.shape[-1] - 1, -1, -1, dtype=torch.float64, device=y.device)
        coef = (self.config.readout_decay**steps).to(y.dtype)
        return torch.tanh((y * coef).sum(-1))


def _time_last(x: torch.Tensor) -> torch.Tensor:
    """``(T, N, ...) -> (N, ..., T)``: the project's draws, moved to the original layout."""
    return x.movedim(0, -1)


class _PoissonFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rate, noise):  # rate (N, L), noise (N, L, T)
        ctx.save_for_backward(rate, noise)
        return (rate.unsqueeze(-1) > noise).to(rate.dtype)

    @staticmethod
    def backward(ctx, grad):
        rate, noise = ctx.saved_tensors
        return (grad * ((rate.unsqueeze(-1) - noise).abs() < 0.5).to(grad.dtype)).sum(-1), None


class NaiveESVAE(NaiveBackbone):
    """ESVAE with the Poisson sampler, time-last. ``forward`` returns the reconstruction and the
    loss terms' inputs; ``loss`` uses the project's MMD function (not on the timed hot path)."""

    def __init__(self, config, mmd):
        super().__init__(config)
        self.prior_bottleneck = nn.Linear(config.latent_dim, config.latent_dim)
        self.mmd = mmd

    def _prior_rate(self, n, generator):
        weight = self.prior_bottleneck.weight
        eps = torch.randn(n, self.config.latent_dim, generator=generator, dtype=weight.dtype, device=weight.device)
        return torch.sigmoid(self.prior_bottleneck(eps))

    def _sample(self, rate, generator):
        noise = torch.rand(
            (self.config.timesteps, *rate.shape), generator=generator, dtype=rate.dtype, device=rate.device
        )
        return _PoissonFn.apply(rate, _time_last(noise))

    def forward(self, images, generator=None):
        latent = self.encode(images)  # (N, L, T)
        posterior_rate = latent.mean(-1)
        z = self._sample(posterior_rate, generator)
        reconstruction = self.decode(z)
        return {
            "reconstruction": reconstruction,
            "latent_spikes": latent,
            "sampled_spikes": z,
            "posterior_rate": posterior_rate,
            "prior_rate": self._prior_rate(images.shape[0], generator),
        }

    def loss(self, images, out):
        mse = F.mse_loss(out["reconstruction"], images)
        mmd = self.mmd(out["posterior_rate"], out["prior_rate"])
        return {"loss": mse + self.config.mmd_weight * mmd, "mse": mse, "mmd": mmd}

    @torch.no_grad()
    def sample(self, n, generator=None):
        return self.decode(self._sample(self._prior_rate(n, generator), generator))


class NaiveVotingMLP(nn.Sequential):
    def __init__(self, widths, config):
        super().__init__(
            *[NaiveLinear(a, b, config, bn_alpha=config.mlp_bn_alpha) for a, b in zip(widths[:-1], widths[1:])]
        )
        self.latent_dim, self.votes = config.latent_dim, config.votes

    def forward(self, x):  # (N, in, T) -> (N, L, k, T)
        y = super().forward(x)
        return y.view(y.shape[0], self.latent_dim, self.votes, y.shape[-1])


def _select(votes, choice):  # votes (N, L, k), choice (N, L)
    return votes.gather(2, choice.unsqueeze(2)).squeeze(2)


class NaiveFSVAE(NaiveBackbone):
    """FSVAE, time-last, with the original's prefix passes in training and evaluation."""

    def __init__(self, config):
        super().__init__(config)
        L, k = config.latent_dim, config.votes
        self.posterior = nn.Module()
        self.posterior.layers = NaiveVotingMLP((2 * L, 2 * L, 4 * L, k * L), config)
        self.prior = nn.Module()
        self.prior.layers = NaiveVotingMLP((L, 2 * L, 4 * L, k * L), config)
        self.scheduled_p = config.scheduled_p_start

    def _like(self):
        weight = self.prior.layers[0].weight
        return {"dtype": weight.dtype, "device": weight.device}

    def _choices(self, shape, generator):
        u = torch.rand(shape, generator=generator, **self._like())
        return (u * self.config.votes).long().clamp_max(self.config.votes - 1)

    def _posterior(self, x, generator):  # x (N, L, T)
        N, L, T = x.shape
        choice = _time_last(self._choices((T, N, L), generator))  # (N, L, T)
        z_shifted = torch.zeros(N, L, 1, dtype=x.dtype, device=x.device)
        with torch.no_grad():
            for t in range(T - 1):
                votes_t = self.posterior.layers(torch.cat([x[..., : t + 1].detach(), z_shifted], 1))[..., -1]
                z_shifted = torch.cat([z_shifted, _select(votes_t, choice[..., t]).unsqueeze(-1)], -1)
        votes = self.posterior.layers(torch.cat([x, z_shifted], 1))  # (N, L, k, T)
        return votes.gather(2, choice.unsqueeze(2)).squeeze(2), votes

    def _prior(self, z, generator):
        z = z.detach()
        N, L, T = z.shape
        z_shifted = torch.zeros(N, L, 1, dtype=z.dtype, device=z.device)
        if not (self.training and self.config.scheduled_sampling):
            return self.prior.layers(torch.cat([z_shifted, z[..., :-1]], -1))
        cfg = self.config
        with torch.no_grad():
            for t in range(T - 1):
                coin = torch.rand((), generator=generator, device=z.device) if t >= cfg.scheduled_from_step else None
                if coin is not None and coin.item() < self.scheduled_p:
                    votes_t = self.prior.layers(z_shifted)[..., -1]
                    noise = torch.randn(N, L, generator=generator, dtype=z.dtype, device=z.device)
                    z_t = (votes_t.mean(2) + cfg.guess_noise * noise > 0.5).to(z.dtype)
                else:
                    z_t = z[..., t]
                z_shifted = torch.cat([z_shifted, z_t.unsqueeze(-1)], -1)
        return self.prior.layers(z_shifted)

    def forward(self, images, generator=None):
        latent = self.encode(images)
        z, q_votes = self._posterior(latent, generator)
        p_votes = self._prior(z, generator)
        return {
            "reconstruction": self.decode(z),
            "latent_spikes": latent,
            "sampled_spikes": z,
            "posterior_votes": q_votes,
            "prior_votes": p_votes,
        }

    @staticmethod
    def _psp(x, tau):  # (..., T)
        state, out = torch.zeros_like(x[..., 0]), []
        for t in range(x.shape[-1]):
            state = state + (x[..., t] - state) / tau
            out.append(state)
        return torch.stack(out, -1)

    def loss(self, images, out):
        mse = F.mse_loss(out["reconstruction"], images)
        q_bar, p_bar = out["posterior_votes"].mean(2), out["prior_votes"].mean(2)
        tau = self.config.psp_tau
        if self.config.loss != "mmd":
            raise NotImplementedError("the naive port implements FSVAE's default 'mmd' loss only")
        term = (self._psp(q_bar, tau) - self._psp(p_bar, tau)).pow(2).mean()
        return {"loss": mse + term, "mse": mse, "mmd": term}

    @torch.no_grad()
    def sample(self, n, generator=None):
        T, L = self.config.timesteps, self.config.latent_dim
        z_shifted = torch.zeros(n, L, 1, **self._like())
        for _ in range(T):
            votes_t = self.prior.layers(z_shifted)[..., -1]  # prefix pass
            z_shifted = torch.cat([z_shifted, _select(votes_t, self._choices((n, L), generator)).unsqueeze(-1)], -1)
        return self.decode(z_shifted[..., 1:])


def naive_port(model: Any) -> nn.Module:
    """The naive port of ``model`` (an ESVAE with the Poisson sampler, or an FSVAE with the 'mmd'
    loss), holding a copy of its weights and batch-norm state, in the same train/eval mode."""
    name = type(model).__name__
    if name == "ESVAE":
        if model.sampler.name != "poisson":
            raise ValueError(f"the naive port implements ESVAE's poisson sampler only, not {model.sampler.name!r}")
        naive: nn.Module = NaiveESVAE(model.config, model.mmd)
    elif name == "FSVAE":
        if model.config.loss != "mmd":
            raise ValueError("the naive port implements FSVAE's default 'mmd' loss only")
        naive = NaiveFSVAE(model.config)
        naive.scheduled_p = model.scheduled_p
    else:
        raise ValueError(f"no naive port of {name}; the benchmark covers ESVAE and FSVAE")
    reference = next(model.parameters())
    naive = naive.to(dtype=reference.dtype, device=reference.device)
    source = model.state_dict()
    target = naive.state_dict()
    missing = sorted(set(target) - set(source))
    if missing:
        raise ValueError(f"naive port of {name}: no source for {missing[:5]}")
    with torch.no_grad():
        for key, value in target.items():
            value.copy_(source[key].reshape(value.shape))
    return naive.train(model.training)


def parameter_pairs(model: nn.Module, naive: nn.Module) -> Dict[str, List[torch.nn.Parameter]]:
    """``name -> [ours, naive]`` for every parameter the two share by name."""
    theirs = dict(naive.named_parameters())
    return {name: [p, theirs[name]] for name, p in model.named_parameters() if name in theirs}


def naive_param_groups(model: Any, naive: nn.Module, lr: float, prior_lr_multiplier: float) -> List[dict]:
    """The model's optimiser groups (``model.param_groups``) with the naive port's parameters."""
    by_id = {id(p): name for name, p in model.named_parameters()}
    theirs = dict(naive.named_parameters())
    groups = []
    for group in model.param_groups(lr, prior_lr_multiplier):
        groups.append({**group, "params": [theirs[by_id[id(p)]] for p in group["params"]]})
    return groups
