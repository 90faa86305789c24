"""The Frechet distance between Gaussians fitted to two feature sets (FID, FAD).

    d^2 = |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1^{1/2} S_2 S_1^{1/2})^{1/2})

computed in float64 through symmetric eigendecompositions: ``tr((S_1 S_2)^{1/2})`` equals the sum
of the square roots of the eigenvalues of the symmetric PSD matrix ``S_1^{1/2} S_2 S_1^{1/2}``
(tiny negative eigenvalues from rounding are clamped to 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class GaussianStats:
    mean: torch.Tensor  # (D,) float64
    cov: torch.Tensor  # (D, D) float64, unbiased (divides by n - 1)
    n: Optional[int]  # images behind the statistics; None when a published file does not say

    @classmethod
    def of(cls, features: torch.Tensor) -> "GaussianStats":
        """Mean and unbiased covariance of ``features (n, D)``; needs n >= 2."""
        if features.dim() != 2 or features.shape[0] < 2:
            raise ValueError(f"need features of shape (n >= 2, D), got {tuple(features.shape)}")
        x = features.detach().to(torch.float64)
        mean = x.mean(0)
        centred = x - mean
        return cls(mean, centred.T @ centred / (x.shape[0] - 1), x.shape[0])


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def frechet_distance(a: GaussianStats, b: GaussianStats) -> float:
    """Squared Frechet distance between N(a.mean, a.cov) and N(b.mean, b.cov)."""
    if a.mean.shape != b.mean.shape:
        raise ValueError(f"feature dimensions differ: {tuple(a.mean.shape)} vs {tuple(b.mean.shape)}")
    root_a = _psd_sqrt(a.cov)
    inner = root_a @ b.cov @ root_a
    trace_sqrt = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp_min(0).sqrt().sum()
    diff = a.mean - b.mean
    return float(diff @ diff + torch.trace(a.cov) + torch.trace(b.cov) - 2 * trace_sqrt)
