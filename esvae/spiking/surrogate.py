"""Surrogate gradients of the Heaviside spike function, chosen by name.

A surrogate is a function ``grad(u) -> dO/du`` evaluated at the *membrane potential* ``u``.
The original ESVAE/FSVAE code centres its window at ``u = 0`` rather than at the threshold
(docs/method.md section 1, a documented quirk); the surrogate receives ``u`` itself, never ``u - V_th``,
so that quirk lives in one place: the neuron passes ``u``.
"""

from __future__ import annotations

from typing import Callable, Dict

import torch

from ..errors import ConfigError

SurrogateFn = Callable[[torch.Tensor], torch.Tensor]


def rectangle(u: torch.Tensor, half_width: float = 0.5) -> torch.Tensor:
    """Rectangular window ``1[|u| < a] / (2a)`` with ``a = 0.5`` (height 1).

    Returns a tensor of the same dtype as ``u``.
    """
    height = 1.0 / (2.0 * half_width)
    return (u.abs() < half_width).to(u.dtype) * height


SURROGATES: Dict[str, SurrogateFn] = {
    "rectangle": rectangle,
}


def get_surrogate(name: str) -> SurrogateFn:
    """Look a surrogate up by name; an unknown name lists the valid ones."""
    try:
        return SURROGATES[name]
    except KeyError:
        valid = ", ".join(sorted(SURROGATES))
        raise ConfigError(f"unknown surrogate gradient {name!r}; expected one of: {valid}") from None
