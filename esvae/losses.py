"""Distribution-matching losses between posterior and prior firing rates (docs/method.md section 3)."""

from __future__ import annotations

from typing import Callable, Dict

import torch

from .errors import ConfigError


def pairwise_sq_distances(points: torch.Tensor) -> torch.Tensor:
    """``(M, L) -> (M, M)`` squared Euclidean distances."""
    diff = points.unsqueeze(0) - points.unsqueeze(1)  # (M, M, L)
    return diff.pow(2).sum(-1)


def mmd_rbf(x: torch.Tensor, y: torch.Tensor, num_kernels: int = 5, kernel_mul: float = 2.0) -> torch.Tensor:
    """Biased MMD^2 (V-statistic, diagonal included) with a sum of Gaussian kernels.

    ``x``, ``y``: ``(B, L)`` (same B). With D the pairwise squared distances of the 2B stacked
    rows, the base bandwidth is ``b = sum(D) / ((2B)^2 - 2B) / kernel_mul^(num_kernels // 2)``
    (``/4`` for the defaults; not differentiated; floored at the dtype's smallest normal number so
    identical rows give MMD 0 instead of NaN) and the kernel is
    ``sum_{i<num_kernels} exp(-D / (b * kernel_mul^i))``. Returns
    ``mean K_xx + mean K_yy - mean K_xy - mean K_yx`` as a scalar.
    """
    if x.shape != y.shape or x.dim() != 2:
        raise ValueError(
            f"mmd_rbf expects two (B, L) tensors of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    batch = x.shape[0]
    stacked = torch.cat([x, y], dim=0)  # (2B, L)
    sq_dist = pairwise_sq_distances(stacked)  # (2B, 2B)
    m = stacked.shape[0]
    bandwidth = sq_dist.detach().sum() / (m * m - m) / (kernel_mul ** (num_kernels // 2))
    # All rows identical gives b = 0 and 0/0 in the original; every kernel is then exp(0) = 1.
    bandwidth = bandwidth.clamp_min(torch.finfo(sq_dist.dtype).tiny)
    kernel = torch.exp(-sq_dist / bandwidth)  # the sum over the kernels, added in order (as sum() would)
    for i in range(1, num_kernels):
        kernel = kernel + torch.exp(-sq_dist / (bandwidth * kernel_mul**i))
    k_xx = kernel[:batch, :batch].mean()
    k_yy = kernel[batch:, batch:].mean()
    k_xy = kernel[:batch, batch:].mean()
    k_yx = kernel[batch:, :batch].mean()
    return k_xx + k_yy - k_xy - k_yx


def mmd_linear(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Linear-kernel MMD^2: squared distance between the batch means (unused by the paper)."""
    delta = x.mean(0) - y.mean(0)
    return delta.dot(delta)


MMD_KERNELS: Dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "rbf": mmd_rbf,
    "linear": mmd_linear,
}


def get_mmd(name: str):
    try:
        return MMD_KERNELS[name]
    except KeyError:
        raise ConfigError(f"unknown MMD kernel {name!r}; expected one of: {', '.join(sorted(MMD_KERNELS))}") from None
