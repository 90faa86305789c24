"""Test helpers: the original code's checkpoint layout, built from docs/method.md section 6 alone, and
a naive time-last forward pass that reads those tensors directly (3-D ``(k, k, 1)`` convolutions,
a per-step LIF loop). Nothing here imports the package's model code."""

import torch
import torch.nn.functional as F

VTH, TAU = 0.2, 0.25


def _bn(prefix, c, g):
    return {
        f"{prefix}.bn.weight": torch.rand(c, generator=g) + 0.5,
        f"{prefix}.bn.bias": torch.randn(c, generator=g) * 0.1,
        f"{prefix}.bn.running_mean": torch.randn(c, generator=g) * 0.1,
        f"{prefix}.bn.running_var": torch.rand(c, generator=g) + 0.5,
        f"{prefix}.bn.num_batches_tracked": torch.tensor(7),
    }


def original_esvae_state_dict(in_channels, latent_dim, hidden_dims, seed=0, with_fsvae_modules=True, timesteps=16):
    """Random tensors under the original key names and time-last shapes, plus the readout's
    decay-weight buffer ``membrane_output_layer.coef`` of shape (1, 1, 1, 1, T)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    cin = in_channels
    for i, c in enumerate(hidden_dims):
        sd[f"encoder.{i}.weight"] = torch.randn(c, cin, 3, 3, 1, generator=g) / (3 * cin**0.5)
        sd[f"encoder.{i}.bias"] = torch.randn(c, generator=g) * 0.05
        sd.update(_bn(f"encoder.{i}", c, g))
        cin = c
    flat = hidden_dims[-1] * 4
    for name, (fin, fout) in {"before_latent_layer": (flat, latent_dim), "decoder_input": (latent_dim, flat)}.items():
        sd[f"{name}.weight"] = torch.randn(fout, fin, generator=g) / fin**0.5
        sd[f"{name}.bias"] = torch.randn(fout, generator=g) * 0.05
        sd.update(_bn(name, fout, g))
    rev = list(hidden_dims)[::-1]
    for i in range(len(rev) - 1):
        sd[f"decoder.{i}.weight"] = torch.randn(rev[i], rev[i + 1], 3, 3, 1, generator=g) / (3 * rev[i] ** 0.5)
        sd[f"decoder.{i}.bias"] = torch.randn(rev[i + 1], generator=g) * 0.05
        sd.update(_bn(f"decoder.{i}", rev[i + 1], g))
    c0 = hidden_dims[0]
    sd["final_layer.0.weight"] = torch.randn(c0, c0, 3, 3, 1, generator=g) / (3 * c0**0.5)
    sd["final_layer.0.bias"] = torch.randn(c0, generator=g) * 0.05
    sd.update(_bn("final_layer.0", c0, g))
    sd["final_layer.1.weight"] = torch.randn(c0, in_channels, 3, 3, 1, generator=g) / (3 * c0**0.5)
    sd["final_layer.1.bias"] = torch.randn(in_channels, generator=g) * 0.05
    sd["sample_layer.0.weight"] = torch.randn(latent_dim, latent_dim, generator=g) / latent_dim**0.5
    sd["sample_layer.0.bias"] = torch.randn(latent_dim, generator=g) * 0.1
    sd["membrane_output_layer.coef"] = torch.tensor([0.8 ** (timesteps - 1 - t) for t in range(timesteps)]).view(
        1, 1, 1, 1, -1
    )
    if with_fsvae_modules:  # built but unused by the original ESVAE
        sd["prior.layers.0.weight"] = torch.randn(2 * latent_dim, latent_dim, generator=g)
        sd["posterior.layers.0.weight"] = torch.randn(4 * latent_dim, 2 * latent_dim, generator=g)
    return sd


def original_fsvae_state_dict(in_channels, latent_dim, hidden_dims, votes, seed=0, timesteps=16):
    """The ESVAE layout without ``sample_layer`` plus FSVAE's voting MLPs ``prior.layers.{0,1,2}``
    (L -> 2L -> 4L -> kL) and ``posterior.layers.{0,1,2}`` (2L -> 2L -> 4L -> kL), each linear with
    a ``.bn``, and their zero ``initial_input`` buffers of shape (1, L, 1)."""
    sd = original_esvae_state_dict(
        in_channels, latent_dim, hidden_dims, seed, with_fsvae_modules=False, timesteps=timesteps
    )
    del sd["sample_layer.0.weight"], sd["sample_layer.0.bias"]
    g = torch.Generator().manual_seed(seed + 1000)
    L = latent_dim
    for name, widths in {"prior": (L, 2 * L, 4 * L, votes * L), "posterior": (2 * L, 2 * L, 4 * L, votes * L)}.items():
        for i, (fin, fout) in enumerate(zip(widths[:-1], widths[1:])):
            sd[f"{name}.layers.{i}.weight"] = torch.randn(fout, fin, generator=g) / fin**0.5
            sd[f"{name}.layers.{i}.bias"] = torch.randn(fout, generator=g) * 0.05
            sd.update(_bn(f"{name}.layers.{i}", fout, g))
        sd[f"{name}.initial_input"] = torch.zeros(1, L, 1)
    return sd


def naive_voting_mlp(sd, name, x, votes):
    """FSVAE's prior/posterior MLP, time last: x (N, in, T) -> votes (N, L, k, T); output unit
    l * k + j is vote j of latent l; tdBN alpha = 2."""
    for i in range(3):
        x = torch.einsum("oi,nit->not", sd[f"{name}.layers.{i}.weight"], x) + sd[f"{name}.layers.{i}.bias"].view(
            1, -1, 1
        )
        x = _lif_time_last(_bn_eval(x, sd, f"{name}.layers.{i}", alpha=2.0))
    return x.view(x.shape[0], -1, votes, x.shape[-1])


def _bn_eval(x, sd, prefix, alpha=1.0):
    """Eval-mode tdBN on (N, C, ..., T): alpha * Vth * (x - mean) / sqrt(var + eps) * weight + bias."""
    shape = [1, -1] + [1] * (x.dim() - 2)
    mean, var = sd[f"{prefix}.bn.running_mean"].view(shape), sd[f"{prefix}.bn.running_var"].view(shape)
    return alpha * VTH * (x - mean) / torch.sqrt(var + 1e-5) * sd[f"{prefix}.bn.weight"].view(shape) + sd[
        f"{prefix}.bn.bias"
    ].view(shape)


def _lif_time_last(x):
    out = torch.zeros_like(x)
    u = torch.zeros_like(x[..., 0])
    o = torch.zeros_like(x[..., 0])
    for t in range(x.shape[-1]):
        u = TAU * u * (1 - o) + x[..., t]
        o = (u > VTH).float()
        out[..., t] = o
    return out


def naive_encode(sd, images, timesteps, n_layers):
    """images (N, C, H, W) -> latent spikes (N, L, T), time last, eval-mode BN."""
    x = images.unsqueeze(-1).repeat(1, 1, 1, 1, timesteps)
    for i in range(n_layers):
        x = F.conv3d(x, sd[f"encoder.{i}.weight"], sd[f"encoder.{i}.bias"], stride=(2, 2, 1), padding=(1, 1, 0))
        x = _lif_time_last(_bn_eval(x, sd, f"encoder.{i}"))
    x = x.flatten(1, 3)  # (N, C*H*W, T)
    x = torch.einsum("oi,nit->not", sd["before_latent_layer.weight"], x) + sd["before_latent_layer.bias"].view(1, -1, 1)
    return _lif_time_last(_bn_eval(x, sd, "before_latent_layer"))


def naive_decode(sd, z, n_layers, bottom_channels):
    """latent spikes (N, L, T) -> images (N, C, H, W)."""
    x = torch.einsum("oi,nit->not", sd["decoder_input.weight"], z) + sd["decoder_input.bias"].view(1, -1, 1)
    x = _lif_time_last(_bn_eval(x, sd, "decoder_input"))
    x = x.view(x.shape[0], bottom_channels, 2, 2, x.shape[-1])
    for i in range(n_layers - 1):
        x = F.conv_transpose3d(
            x,
            sd[f"decoder.{i}.weight"],
            sd[f"decoder.{i}.bias"],
            stride=(2, 2, 1),
            padding=(1, 1, 0),
            output_padding=(1, 1, 0),
        )
        x = _lif_time_last(_bn_eval(x, sd, f"decoder.{i}"))
    x = F.conv_transpose3d(
        x,
        sd["final_layer.0.weight"],
        sd["final_layer.0.bias"],
        stride=(2, 2, 1),
        padding=(1, 1, 0),
        output_padding=(1, 1, 0),
    )
    x = _lif_time_last(_bn_eval(x, sd, "final_layer.0"))
    x = F.conv_transpose3d(x, sd["final_layer.1.weight"], sd["final_layer.1.bias"], stride=(1, 1, 1), padding=(1, 1, 0))
    T = x.shape[-1]
    coef = torch.tensor([0.8 ** (T - 1 - t) for t in range(T)])
    return torch.tanh((x * coef).sum(-1))
