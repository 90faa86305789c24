"""FSVAE: tests that a wrong port would fail (causality, vote selection, PSP and losses by hand,
scheduled sampling)."""

import math

import pytest
import torch
from torch import nn

import esvae
from baselines.fsvae import FSVAEOutput, psp
from esvae.samplers import VoteSelectionSampler


@pytest.mark.parametrize("dataset,expected", [("fashion", 4_053_601), ("cifar10", 4_054_755)])
def test_parameter_counts_match_method_table(dataset, expected):
    model = esvae.build_model("fsvae", dataset)
    assert esvae.count_parameters(model) == expected
    assert esvae.count_parameters(model.prior) + esvae.count_parameters(model.posterior) == 3_001_856


def test_large_size_for_celeba_shares_esvaes_backbone():
    """64x64: ESVAE's large backbone (3,696,227 less its 128x128 prior bottleneck) + the MLPs."""
    model = esvae.build_model("fsvae", "celeba")
    assert model.config.hidden_dims == (32, 64, 128, 256, 512) and model.config.latent_dim == 128
    assert esvae.count_parameters(model) == 3_696_227 - (128 * 128 + 128) + 3_001_856
    assert (
        esvae.count_parameters(esvae.build_model("taid", "celeba")) == 3_696_227 - (128 * 128 + 128) + 3_001_856 + 256
    )
    with torch.no_grad():
        assert model.eval().sample(2, torch.Generator().manual_seed(0)).shape == (2, 3, 64, 64)


def _small(**kw):
    torch.manual_seed(0)
    return esvae.build_model("fsvae", "fashion", timesteps=6, latent_dim=8, votes=5, **kw)


def _trained_bn(model):
    """Give tdBN non-trivial running statistics so eval mode exercises real weights."""
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(8, 1, 32, 32) * 2 - 1, torch.Generator().manual_seed(1))
    return model.eval()


def test_posterior_is_causal_in_x_and_z():
    model = _trained_bn(_small())
    g = torch.Generator().manual_seed(2)
    x_e = (torch.rand(6, 4, 8, generator=g) < 0.4).float()
    z, votes = model.posterior(x_e, torch.Generator().manual_seed(3))
    assert 0 < z.mean() < 1
    for t0 in (1, 3):
        changed = x_e.clone()
        changed[t0 + 1 :] = 1 - changed[t0 + 1 :]  # perturb only the future of x
        z2, votes2 = model.posterior(changed, torch.Generator().manual_seed(3))
        assert torch.equal(z2[: t0 + 1], z[: t0 + 1]) and torch.equal(votes2[: t0 + 1], votes[: t0 + 1])
        assert not torch.equal(votes2, votes)
    # z_t is fed back one step later: the votes equal the MLP on concat(x_e[t], z[t-1]), z[-1] = 0.
    shifted = torch.cat([torch.zeros(1, 4, 8), z[:-1]])
    assert torch.equal(votes, model.posterior.layers(torch.cat([x_e, shifted], dim=-1)))


def test_sampled_z_is_one_of_the_votes_with_mean_equal_to_the_fired_fraction():
    model = _trained_bn(_small())
    x_e = (torch.rand(1, 1, 8, generator=torch.Generator().manual_seed(4)) < 0.5).float().expand(6, 3000, 8)
    z, votes = model.posterior(x_e, torch.Generator().manual_seed(5))
    fired = votes.mean(-1)  # (T, N, L) fraction of votes that fired
    assert ((z == 0) | (z == 1)).all()
    assert ((z == 1) <= (fired > 0)).all() and ((z == 0) <= (fired < 1)).all()  # z is one of the votes
    # Over the batch, E[z_t | votes] = fraction fired: compare per step and unit.
    diff = (z.mean(1) - fired.mean(1)).abs()
    assert diff.max() < 4 * math.sqrt(0.25 / 3000) + 1e-6, diff.max()
    assert 0.05 < fired.mean() < 0.95


def test_vote_selection_picks_the_indexed_vote_and_the_model_receives_its_sampler():
    votes = torch.tensor([[[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]])  # (N=1, L=2, k=3)
    assert VoteSelectionSampler().select(votes, torch.tensor([[1, 2]])).tolist() == [[0.0, 1.0]]
    model = _small()
    assert isinstance(model.sampler, VoteSelectionSampler)
    assert model.posterior.sampler is model.sampler and model.prior.sampler is model.sampler
    with pytest.raises(esvae.ConfigError, match="it accepts: fsvae_autoregressive"):
        esvae.build_model("fsvae", "fashion", sampler="poisson")


def test_psp_filter_by_hand():
    x = torch.tensor([1.0, 0.0, 1.0, 1.0]).view(4, 1)
    assert psp(x).flatten().tolist() == [0.5, 0.25, 0.625, 0.8125]


# Vote means (T=2, N=2, L=2) with k=4: unequal across samples, units and steps, so a wrong
# reduction (sum vs mean, over the wrong axis) changes the value.
Q_BAR = [[[1.0, 0.25], [0.5, 0.0]], [[0.75, 0.5], [0.0, 1.0]]]  # [t][n][l]
P_BAR = [[[0.25, 0.25], [1.0, 0.5]], [[0.5, 0.0], [0.25, 0.75]]]


def _votes(bar):
    """(T, N, L, k=4) votes whose means over k are ``bar``."""
    v = torch.zeros(2, 2, 2, 4)
    for t in range(2):
        for n in range(2):
            for l in range(2):
                v[t, n, l, : int(round(bar[t][n][l] * 4))] = 1.0
    return v


def _tiny_output():
    recon = torch.full((2, 1, 32, 32), 0.5)
    return FSVAEOutput(recon, None, None, _votes(Q_BAR), _votes(P_BAR))


def _psp_by_hand(bar, n, l):
    s, out = 0.0, []
    for t in range(2):
        s = s + (bar[t][n][l] - s) / 2.0
        out.append(s)
    return out


def test_mmd_loss_by_hand():
    model = esvae.build_model("fsvae", "fashion", timesteps=2, latent_dim=2, votes=4)
    terms = model.loss(torch.zeros(2, 1, 32, 32), _tiny_output())
    diffs = [
        (a - b) ** 2
        for n in range(2)
        for l in range(2)
        for a, b in zip(_psp_by_hand(Q_BAR, n, l), _psp_by_hand(P_BAR, n, l))
    ]
    expected = sum(diffs) / len(diffs)  # mean over t, n, l; weight 1
    assert terms["mmd"].item() == pytest.approx(expected)
    assert terms["loss"].item() == pytest.approx(0.25 + expected)


def test_kld_loss_by_hand():
    model = esvae.build_model("fsvae", "fashion", timesteps=2, latent_dim=2, votes=4, loss="kld")
    terms = model.loss(torch.zeros(2, 1, 32, 32), _tiny_output())

    def kl(q, p):
        return q * math.log((q + 0.01) / (p + 0.01)) + (1 - q) * math.log((1 - q + 0.01) / (1 - p + 0.01))

    per_sample = [sum(kl(Q_BAR[t][n][l], P_BAR[t][n][l]) for t in range(2) for l in range(2)) for n in range(2)]
    expected = sum(per_sample) / 2  # sum over (T, L), mean over N
    assert terms["kld"].item() == pytest.approx(expected, rel=1e-5)
    assert terms["loss"].item() == pytest.approx(0.25 + 1e-4 * expected, rel=1e-6)


class _RecordingVotes(nn.Module):
    """Stands in for the prior MLP: records its input; at position j, unit l has 3 of 4 votes
    fired when j + l is even and 1 of 4 otherwise, so the guess 1[mean_k > 0.5] made from the
    prefix z_{-1..t-1} (last position j = t) is the pattern 1[(t + l) even]."""

    def __init__(self, latent_dim):
        super().__init__()
        self.latent_dim, self.votes, self.inputs = latent_dim, 4, []

    def forward(self, z_seq):
        self.inputs.append(z_seq.clone())
        j = torch.arange(z_seq.shape[0]).view(-1, 1, 1)
        l = torch.arange(self.latent_dim).view(1, 1, -1)
        fired = torch.where((j + l) % 2 == 0, 3, 1).expand(z_seq.shape[0], z_seq.shape[1], self.latent_dim)
        return (torch.arange(4).view(1, 1, 1, 4) < fired.unsqueeze(-1)).float()


def _guess(t, n=2, latent_dim=8):
    return ((t + torch.arange(latent_dim)) % 2 == 0).float().expand(n, latent_dim)


def test_scheduled_sampling_replaces_only_steps_from_5_with_the_priors_guess_at_rate_p():
    prior = _small().prior  # the prior alone, on a 16-step z (T only matters through z's length)
    prior.layers = _RecordingVotes(8)
    prior.train()
    z = torch.ones(16, 2, 8)  # the posterior's z: all ones
    g = torch.Generator().manual_seed(0)
    replaced = torch.zeros(16)
    trials = 400
    for _ in range(trials):
        prior.layers.inputs.clear()
        prior(z, scheduled_p=0.3, generator=g)
        final = prior.layers.inputs[-1]  # (16, 2, 8): the prior's input sequence
        assert torch.equal(final[0], torch.zeros(2, 8))  # z_{-1} = 0
        for t in range(15):  # input position t + 1 holds z_t or the guess
            kept, guessed = torch.equal(final[t + 1], z[t]), torch.equal(final[t + 1], _guess(t))
            assert kept or guessed, (t, final[t + 1])
            replaced[t + 1] += float(guessed)
    rate = replaced / trials
    assert rate[1:6].sum() == 0  # inputs z_0..z_4 are never replaced
    assert rate[6:].min() > 0.3 - 4 * math.sqrt(0.21 / trials) and rate[6:].max() < 0.3 + 4 * math.sqrt(0.21 / trials)
    prior.layers.inputs.clear()
    prior(z, scheduled_p=0.0, generator=g)
    assert torch.equal(prior.layers.inputs[-1][1:], z[:-1])  # p = 0: the posterior's z, shifted
    prior.eval()
    prior.layers.inputs.clear()
    prior(z, scheduled_p=1.0, generator=g)  # eval: never scheduled
    assert len(prior.layers.inputs) == 1 and torch.equal(prior.layers.inputs[0][1:], z[:-1])


def test_scheduled_p_grows_linearly_over_epochs():
    model = _small()
    assert model.start_epoch(0, 150) == {"scheduled_p": pytest.approx(0.1)}
    assert model.start_epoch(75, 150) == {"scheduled_p": pytest.approx(0.2)}
    assert model.start_epoch(149, 150)["scheduled_p"] == pytest.approx(0.1 + 0.2 * 149 / 150)


def test_generation_runs_the_prior_autoregressively():
    model = _trained_bn(_small())
    g = torch.Generator().manual_seed(6)
    z = model.prior.sample(4, 6, generator=g)
    assert z.shape == (6, 4, 8) and ((z == 0) | (z == 1)).all()
    # Each z_t is a vote of the prior run on the z generated so far.
    votes = model.prior.layers(torch.cat([torch.zeros(1, 4, 8), z[:-1]]))
    assert (((z == 1) <= (votes.amax(-1) == 1)) & ((z == 0) <= (votes.amin(-1) == 0))).all()
    images = model.sample(3, torch.Generator().manual_seed(7))
    assert images.shape == (3, 1, 32, 32)
    assert torch.equal(images, model.sample(3, torch.Generator().manual_seed(7)))
    assert model.double().sample(2, torch.Generator().manual_seed(7)).dtype == torch.float64
    with pytest.raises(RuntimeError, match="needs eval mode"):
        model.train().sample(2)


def test_gradient_flows_through_the_chosen_posterior_votes_to_the_encoder():
    model = _small().train()
    x = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    out = model(x, torch.Generator().manual_seed(0))
    out.posterior_votes.retain_grad()
    torch.nn.functional.mse_loss(out.reconstruction, x).backward()  # the reconstruction alone
    # The posterior draws its vote indices first from the generator.
    choice = model.sampler.choices((6, 4, 8), 5, x, torch.Generator().manual_seed(0))
    chosen = torch.nn.functional.one_hot(choice, 5).bool()
    grad = out.posterior_votes.grad
    assert (grad[~chosen] == 0).all() and (grad[chosen] != 0).any()  # only the chosen votes
    assert model.posterior.layers[2].weight.grad.abs().sum() > 0
    assert model.encoder[0].weight.grad.abs().sum() > 0
    assert model.prior.layers[0].weight.grad is None  # the prior sees detached z
    model.zero_grad()
    model.loss(x, model(x, torch.Generator().manual_seed(0)))["loss"].backward()
    assert model.prior.layers[0].weight.grad.abs().sum() > 0  # through the latent loss


def test_training_mode_posterior_feeds_back_prefix_pass_votes():
    """In training the fed-back z_t comes from the MLP on the prefix (batch statistics of the
    prefix); the returned votes are one pass over concat(x_e, that z shifted)."""
    model = _small().train()
    x_e = (torch.rand(6, 4, 8, generator=torch.Generator().manual_seed(2)) < 0.4).float()
    z, votes = model.posterior(x_e, torch.Generator().manual_seed(3))
    choice = model.sampler.choices((6, 4, 8), 5, x_e, torch.Generator().manual_seed(3))
    with torch.no_grad():
        fed = torch.zeros(1, 4, 8)
        for t in range(5):
            prefix_votes = model.posterior.layers(torch.cat([x_e[: t + 1], fed], dim=-1))[-1]
            fed = torch.cat([fed, prefix_votes.gather(-1, choice[t].unsqueeze(-1)).squeeze(-1).unsqueeze(0)])
        expected = model.posterior.layers(torch.cat([x_e, fed], dim=-1))
    assert 0.05 < fed[1:].mean() < 0.95
    assert torch.equal(votes, expected)
    assert torch.equal(z, expected.gather(-1, choice.unsqueeze(-1)).squeeze(-1))


def test_original_fsvae_checkpoint_computes_the_original_function(tmp_path):
    from original_layout import naive_decode, naive_encode, naive_voting_mlp, original_fsvae_state_dict

    T, L, k, dims = 3, 16, 4, (32, 64, 128, 256)
    sd = original_fsvae_state_dict(1, L, dims, k, timesteps=T)
    torch.save({"state_dict": sd}, tmp_path / "fsvae.pth")
    model = esvae.load_original_checkpoint(
        tmp_path / "fsvae.pth", "fsvae", "fashion", timesteps=T, latent_dim=L, votes=k
    )
    assert not model.training and model.checkpoint_notes == []
    x = torch.rand(5, 1, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        x_e = model.encode(x)
        assert torch.equal(x_e, naive_encode(sd, x, T, 4).permute(2, 0, 1))
        out = model(x, torch.Generator().manual_seed(4))
        z = out.sampled_spikes.permute(1, 2, 0)  # (N, L, T)
        z_prev = torch.cat([torch.zeros(5, L, 1), z[..., :-1]], dim=-1)  # z_{-1} = 0
        q = naive_voting_mlp(sd, "posterior", torch.cat([x_e.permute(1, 2, 0), z_prev], dim=1), k)
        p = naive_voting_mlp(sd, "prior", z_prev, k)
        assert 0 < q.mean() < 1 and 0 < p.mean() < 1
        assert torch.equal(out.posterior_votes, q.permute(3, 0, 1, 2))  # (T, N, L, k)
        assert torch.equal(out.prior_votes, p.permute(3, 0, 1, 2))
        assert (((z == 1) <= (q.amax(2) == 1)) & ((z == 0) <= (q.amin(2) == 0))).all()  # z is one of its votes
        torch.testing.assert_close(out.reconstruction, naive_decode(sd, z, 4, dims[-1]), rtol=1e-4, atol=1e-5)


def test_original_fsvae_checkpoint_refusals(tmp_path):
    from original_layout import original_esvae_state_dict, original_fsvae_state_dict

    sd = original_fsvae_state_dict(1, 16, (32, 64, 128, 256), 4, timesteps=3)
    bad = dict(sd, **{"prior.initial_input": torch.ones(1, 16, 1)})
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(esvae.CheckpointError, match="'prior.initial_input' should be all zeros"):
        esvae.load_original_checkpoint(tmp_path / "bad.pth", "fsvae", "fashion", timesteps=3, latent_dim=16, votes=4)
    with pytest.raises(esvae.CheckpointError, match=r"prior.layers.2.weight.*shape \(64, 64\), expected \(80, 64\)"):
        torch.save(sd, tmp_path / "k4.pth")
        esvae.load_original_checkpoint(tmp_path / "k4.pth", "fsvae", "fashion", timesteps=3, latent_dim=16, votes=5)
    esvae_sd = original_esvae_state_dict(1, 16, (32, 64, 128, 256), timesteps=3, with_fsvae_modules=False)
    torch.save(esvae_sd, tmp_path / "esvae.pth")
    with pytest.raises(
        esvae.CheckpointError,
        match=r"missing \['posterior.layers.0.bias', .*unexpected "
        r"\['sample_layer.0.weight', 'sample_layer.0.bias'\]",
    ):
        esvae.load_original_checkpoint(tmp_path / "esvae.pth", "fsvae", "fashion", timesteps=3, latent_dim=16, votes=4)
    with pytest.raises(
        esvae.CheckpointError,
        match="no original checkpoint layout is known for model 'taid'; "
        "load_original_checkpoint supports: esvae, fsvae",
    ):
        esvae.load_original_checkpoint(tmp_path / "k4.pth", "taid", "fashion")


@pytest.mark.parametrize("timesteps", [1, 6])
def test_stepwise_eval_equals_the_original_prefix_passes(timesteps):
    model = _trained_bn(esvae.build_model("fsvae", "fashion", timesteps=6, latent_dim=8, votes=5))
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # busy MLPs: biases that make about half the votes fire, even from z = 0
        for layer in [*model.posterior.layers, *model.prior.layers]:
            layer.bn.bias.copy_(torch.rand(layer.bn.bias.shape, generator=g) * 0.4)
    x_e = (torch.rand(timesteps, 64, 8, generator=torch.Generator().manual_seed(8)) < 0.4).float()
    results = {}
    for stepwise in (True, False):
        model.posterior.stepwise = model.prior.stepwise = stepwise
        with torch.no_grad():
            z, votes = model.posterior(x_e, torch.Generator().manual_seed(9))
        grad_z, grad_votes = model.posterior(x_e, torch.Generator().manual_seed(9))
        assert grad_votes.requires_grad  # grad enabled: the parameters get gradients
        sampled = model.prior.sample(64, timesteps, generator=torch.Generator().manual_seed(10))
        results[stepwise] = (z, votes, grad_z.detach(), grad_votes.detach(), sampled)
    for a, b in zip(results[True], results[False]):
        assert torch.equal(a, b)
    assert 0.05 < results[True][1].mean() < 0.95 and 0.05 < results[True][4].mean() < 0.95
    model.train()
    with pytest.raises(RuntimeError, match="needs eval mode"):
        model.prior.layers.step(torch.zeros(2, 8))


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"votes": 0}, "votes \\(k\\) must be a positive integer"),
        ({"loss": "elbo"}, "FSVAE loss must be 'mmd' or 'kld'"),
        ({"scheduled_p_end": 1.5}, r"scheduled_p_end must lie in \[0, 1\]"),
        ({"scheduled_from_step": -1}, "scheduled_from_step must be a non-negative integer"),
        ({"psp_tau": 0.5}, "psp_tau must be a number >= 1"),
        ({"kld_weight": -1e-4}, "kld_weight must be a number >= 0"),
    ],
)
def test_bad_fsvae_settings_are_refused(overrides, message):
    with pytest.raises(esvae.ConfigError, match=message):
        esvae.build_model("fsvae", "fashion", **overrides)


def test_fsvae_refuses_a_sampler_without_vote_selection():
    from baselines.fsvae import FSVAE, fsvae_paper_config
    from esvae.samplers import PoissonSampler

    with pytest.raises(esvae.ConfigError, match="needs a vote-selection sampler"):
        FSVAE(fsvae_paper_config("fashion"), PoissonSampler())
