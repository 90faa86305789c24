"""Poisson sampler statistics and gradient; MMD against a direct evaluation of the formula."""

import math

import pytest
import torch

from esvae.errors import ConfigError
from esvae.losses import mmd_linear, mmd_rbf
from esvae.samplers import SAMPLERS, build_sampler

RATES = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0])
# Every registered sampler, through the shared rate interface. fsvae_autoregressive's model path is
# vote selection (select/choices), tested against this interface in its own test below.
ALL_SAMPLERS = sorted(SAMPLERS)


# What each sampler is, as docs/method.md describes it; the contract tests below trust a sampler's
# own declarations (stochastic, gradient), so these must be pinned independently of the code.
DECLARED = {
    "poisson": (True, "rectangle"),
    "bernoulli_st": (True, "straight_through"),
    "rate_repeat": (False, "straight_through"),
    "fsvae_autoregressive": (True, "none"),
}


def test_each_sampler_declares_what_the_method_says():
    assert set(SAMPLERS) == set(DECLARED)
    for name, (stochastic, gradient) in DECLARED.items():
        sampler = build_sampler(name)
        assert (sampler.stochastic, sampler.gradient) == (stochastic, gradient), name


# ---- the contract every registered sampler passes -------------------------------------------


@pytest.mark.parametrize("name", ALL_SAMPLERS)
def test_contract_shape_binary_values_and_spike_mean(name):
    sampler = build_sampler(name)
    rate = RATES.repeat(2000, 1)  # (N=2000, L=5)
    spikes = sampler(rate, 16, torch.Generator().manual_seed(0))  # (T, N, L)
    assert spikes.shape == (16, 2000, 5)
    assert set(spikes.unique().tolist()) <= {0.0, 1.0}
    mean = spikes.mean((0, 1))
    n = 16 * 2000
    for r, m in zip(RATES.tolist(), mean.tolist()):
        if sampler.stochastic:  # Bernoulli(r) per step: within 4 standard errors
            assert abs(m - r) <= 4 * math.sqrt(r * (1 - r) / n) + 1e-12, (r, m)
        else:  # deterministic: floor(r T) spikes, so within 1/T below r
            assert r - 1 / 16 < m <= r + 1e-7, (r, m)
    assert mean[0] == 0.0 and mean[-1] == 1.0  # r=0 never fires, r=1 always does


@pytest.mark.parametrize("name", ALL_SAMPLERS)
def test_contract_reproducible_with_same_generator(name):
    sampler = build_sampler(name)
    rate = torch.rand(4, 7, generator=torch.Generator().manual_seed(1))
    a = sampler(rate, 5, torch.Generator().manual_seed(11))
    b = sampler(rate, 5, torch.Generator().manual_seed(11))
    c = sampler(rate, 5, torch.Generator().manual_seed(12))
    assert torch.equal(a, b)
    assert torch.equal(a, c) != sampler.stochastic  # only stochastic samplers depend on the draws


@pytest.mark.parametrize("name", ALL_SAMPLERS)
def test_contract_documented_gradient(name):
    sampler = build_sampler(name)
    rate = torch.tensor([[0.05, 0.3, 0.5, 0.75, 0.98]], requires_grad=True)
    spikes = sampler(rate, 8, torch.Generator().manual_seed(5))
    noise = torch.rand((8, 1, 5), generator=torch.Generator().manual_seed(5))  # the draws a sampler makes
    assert 0 < ((rate.detach() - noise).abs() < 0.5).float().mean() < 1  # the rectangle excludes some draws
    if sampler.stochastic:
        assert torch.equal(spikes, (rate.detach() > noise).float())
    upstream = torch.randn(8, 1, 5, generator=torch.Generator().manual_seed(9))
    if spikes.requires_grad:
        (spikes * upstream).sum().backward()
    else:  # no path from the spikes back to the rate at all: its gradient is zero
        assert sampler.gradient == "none"
        rate.grad = torch.zeros_like(rate)
    window = {
        "rectangle": ((rate.detach() - noise).abs() < 0.5).float(),
        "straight_through": torch.ones(8, 1, 5),
        "none": torch.zeros(8, 1, 5),
    }[sampler.gradient]
    torch.testing.assert_close(rate.grad, (upstream * window).sum(0), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ALL_SAMPLERS)
@pytest.mark.parametrize("bad", [-0.01, 1.01, float("nan")])
def test_contract_rejects_rates_outside_unit_interval(name, bad):
    rate = torch.full((2, 3), 0.5)
    rate[1, 2] = bad
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        build_sampler(name)(rate, 4)


def test_rate_repeat_spreads_the_count_evenly():
    spikes = build_sampler("rate_repeat")(torch.tensor([[0.25, 0.5, 3 / 16]]), 16)
    assert spikes[:, 0, 0].tolist() == [0, 0, 0, 1] * 4
    assert spikes[:, 0, 1].tolist() == [0, 1] * 8
    assert spikes[:, 0, 2].sum() == 3


def test_vote_selection_is_the_rate_interface_on_sorted_votes_and_routes_gradient_to_the_chosen_vote():
    sampler = build_sampler("fsvae_autoregressive")
    k = 5
    fired = torch.tensor([[0, 1, 2, 4, 5]])  # votes fired per unit (N=1, L=5)
    votes = (torch.arange(k).view(1, 1, k) < fired.unsqueeze(-1)).float().expand(8, 1, 5, k)  # first j fire
    votes = votes.clone().requires_grad_(True)
    choice = sampler.choices((8, 1, 5), k, votes, torch.Generator().manual_seed(3))
    z = sampler.select(votes, choice)
    assert torch.equal(z, sampler(fired / k, 8, torch.Generator().manual_seed(3)))
    upstream = torch.randn(8, 1, 5, generator=torch.Generator().manual_seed(4))
    (z * upstream).sum().backward()
    expected = torch.nn.functional.one_hot(choice, k).float() * upstream.unsqueeze(-1)
    assert torch.equal(votes.grad, expected)  # only the chosen vote gets gradient
    assert set(choice.unique().tolist()) <= set(range(k))
    many = sampler.choices((200_000,), k, votes, torch.Generator().manual_seed(5))
    counts = torch.bincount(many, minlength=k).float() / 200_000  # uniform over the k votes
    assert (counts - 1 / k).abs().max() < 4 * math.sqrt(0.2 * 0.8 / 200_000)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sampler.select(votes.detach() * 2, choice)


def test_unknown_sampler_lists_valid_ones():
    with pytest.raises(ConfigError, match="bernoulli_st, fsvae_autoregressive, poisson, rate_repeat"):
        build_sampler("gumbel")


def _mmd_double_loop(x, y, num_kernels=5, mul=2.0):
    """MMD^2 (V-statistic) evaluated element by element from docs/method.md's formula."""
    z = torch.cat([x, y]).tolist()
    m, b = len(z), x.shape[0]
    dist = [[sum((p - q) ** 2 for p, q in zip(z[i], z[j])) for j in range(m)] for i in range(m)]
    bandwidth = sum(map(sum, dist)) / (m * m - m) / 4.0
    k = [
        [sum(math.exp(-dist[i][j] / (bandwidth * mul**s)) for s in range(num_kernels)) for j in range(m)]
        for i in range(m)
    ]
    xx = sum(k[i][j] for i in range(b) for j in range(b)) / b**2
    yy = sum(k[i][j] for i in range(b, m) for j in range(b, m)) / b**2
    xy = sum(k[i][j] for i in range(b) for j in range(b, m)) / b**2
    return xx + yy - 2 * xy


def test_mmd_rbf_equals_double_loop_formula():
    g = torch.Generator().manual_seed(4)
    x = torch.rand(5, 3, generator=g, dtype=torch.float64)
    y = torch.rand(5, 3, generator=g, dtype=torch.float64) * 0.5
    assert mmd_rbf(x, y).item() == pytest.approx(_mmd_double_loop(x, y), rel=1e-12)
    assert mmd_rbf(x, x).item() == pytest.approx(0.0, abs=1e-12)


def test_mmd_rbf_bandwidth_is_not_differentiated():
    g = torch.Generator().manual_seed(6)
    x = torch.rand(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.rand(4, 3, generator=g, dtype=torch.float64)
    mmd_rbf(x, y).backward()
    # Finite difference with the bandwidth frozen at its value at x.
    with torch.no_grad():
        z = torch.cat([x, y])
        b = ((z[:, None] - z[None]) ** 2).sum(-1).sum() / (64 - 8) / 4

    def frozen(xx):
        z = torch.cat([xx, y])
        d = ((z[:, None] - z[None]) ** 2).sum(-1)
        k = sum(torch.exp(-d / (b * 2**i)) for i in range(5))
        return k[:4, :4].mean() + k[4:, 4:].mean() - 2 * k[:4, 4:].mean()

    xd = x.detach().clone().requires_grad_(True)
    frozen(xd).backward()
    torch.testing.assert_close(x.grad, xd.grad)


def test_mmd_linear_is_squared_distance_of_means():
    x = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    y = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    assert mmd_linear(x, y).item() == pytest.approx(0.5**2 + 1.0**2)


def test_mmd_of_identical_rows_is_zero_not_nan():
    x = torch.zeros(3, 4)
    assert mmd_rbf(x, x.clone()).item() == 0.0
