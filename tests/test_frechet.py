"""The Frechet distance against closed forms."""

import pytest
import torch

from esvae.metrics.frechet import GaussianStats, frechet_distance


def _stats(mean, cov):
    return GaussianStats(torch.tensor(mean, dtype=torch.float64), torch.tensor(cov, dtype=torch.float64), 100)


def test_one_dimensional_gaussians_by_hand():
    # N(1, 4) vs N(-2, 9): (1 + 2)^2 + (2 - 3)^2 = 10
    assert frechet_distance(_stats([1.0], [[4.0]]), _stats([-2.0], [[9.0]])) == pytest.approx(10.0)


def test_commuting_covariances_by_hand():
    a = _stats([0.0, 1.0, 2.0], [[1.0, 0, 0], [0, 4.0, 0], [0, 0, 0.25]])
    b = _stats([1.0, 1.0, 0.0], [[9.0, 0, 0], [0, 1.0, 0], [0, 0, 0.25]])
    expected = (1 + 0 + 4) + (1 - 3) ** 2 + (2 - 1) ** 2 + 0
    assert frechet_distance(a, b) == pytest.approx(expected)
    assert frechet_distance(b, a) == pytest.approx(expected)


def test_general_covariances_against_the_matrix_square_root():
    import scipy.linalg as scipy_linalg  # an independent matrix square root (scipy is a dependency)

    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(6, 6, generator=g, dtype=torch.float64), torch.randn(6, 6, generator=g, dtype=torch.float64)
    s1, s2 = m1 @ m1.T + 0.1 * torch.eye(6, dtype=torch.float64), m2 @ m2.T
    mu1, mu2 = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    covmean = scipy_linalg.sqrtm((s1 @ s2).numpy()).real  # the textbook form, (S1 S2)^{1/2}
    expected = float(((mu1 - mu2) ** 2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * covmean.trace())
    assert frechet_distance(GaussianStats(mu1, s1, 10), GaussianStats(mu2, s2, 10)) == pytest.approx(expected, rel=1e-9)


def test_stats_of_a_sample_and_distance_to_itself():
    x = torch.randn(500, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    stats = GaussianStats.of(x)
    torch.testing.assert_close(stats.cov, torch.cov(x.T))
    assert stats.n == 500 and frechet_distance(stats, stats) == pytest.approx(0.0, abs=1e-9)
    shifted = GaussianStats.of(x + torch.tensor([0.5, 0.0, 0.0, 0.0], dtype=torch.float64))
    assert frechet_distance(stats, shifted) == pytest.approx(0.25, rel=1e-9)  # a pure shift adds |d|^2
    scaled = GaussianStats.of(2 * x)  # sigma doubles
    assert frechet_distance(stats, scaled) == pytest.approx(
        float(stats.mean @ stats.mean) + float(torch.trace(stats.cov)), rel=1e-6
    )
    with pytest.raises(ValueError, match="n >= 2"):
        GaussianStats.of(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="feature dimensions differ"):
        frechet_distance(stats, GaussianStats.of(torch.randn(5, 3)))
