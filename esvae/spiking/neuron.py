"""Leaky integrate-and-fire neuron of ESVAE/FSVAE (docs/method.md section 1).

Per element, with ``u_0 = 0`` and ``o_0 = 0``, for t = 1..T::

    u_t = tau * u_{t-1} * (1 - o_{t-1}) + I_t        # charge, with hard reset via (1 - o_{t-1})
    o_t = 1[u_t > V_th]                              # fire

``tau = 0.25`` is a leak *factor* and ``V_th = 0.2``. The reset path is not detached: the gradient
flows through ``o_{t-1}``. The spike's surrogate derivative is evaluated at ``u_t`` itself (the
window is centred at 0, not at the threshold; a quirk kept from the original code).

Forms, all computing the same function and gradient:

* :func:`lif_step` -- the single-step update as a pure function (charge -> fire -> reset factor);
* :func:`lif_multistep_reference` -- a loop of :func:`lif_step` under autograd, used by the tests
  as the ground truth;
* :func:`lif_multistep` -- a fused multi-step op (custom autograd function) built on
  :func:`lif_forward_sweep` (two ops per step into preallocated buffers, outside any autograd
  graph) and :func:`lif_backward_sweep` (one reverse-time pass, no buffer of size T beyond the
  membranes it overwrites): O(T) memory traffic and no per-step graph nodes. The sweeps also serve
  the fused tdBN + LIF op of :mod:`esvae.spiking.layers` when its compiled CPU kernels
  (:mod:`esvae.spiking.kernels`) do not apply;
* :func:`lif_step_inference` -- the fused op's update for one step without autograd, for
  networks stepped one time step at a time (FSVAE's autoregressive sampling in eval mode).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from .surrogate import SurrogateFn, get_surrogate

TAU = 0.25
V_THRESHOLD = 0.2


class _HeavisideWithSurrogate(torch.autograd.Function):
    """``1[u > V_th]`` forward; ``grad * surrogate(u)`` backward (reference path only)."""

    @staticmethod
    def forward(ctx, membrane, v_threshold, surrogate):
        ctx.save_for_backward(membrane)
        ctx.surrogate = surrogate
        return (membrane > v_threshold).to(membrane.dtype)

    @staticmethod
    def backward(ctx, grad_spikes):
        (membrane,) = ctx.saved_tensors
        return grad_spikes * ctx.surrogate(membrane), None, None


def lif_step(
    membrane_prev: torch.Tensor,
    spikes_prev: torch.Tensor,
    current: torch.Tensor,
    tau: float = TAU,
    v_threshold: float = V_THRESHOLD,
    surrogate: SurrogateFn = get_surrogate("rectangle"),
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One LIF update. All tensors have the same shape; returns ``(u_t, o_t)``."""
    membrane = tau * membrane_prev * (1.0 - spikes_prev) + current  # charge with hard reset
    spikes = _HeavisideWithSurrogate.apply(membrane, v_threshold, surrogate)  # fire
    return membrane, spikes


def lif_multistep_reference(
    current_seq: torch.Tensor,
    tau: float = TAU,
    v_threshold: float = V_THRESHOLD,
    surrogate: SurrogateFn = get_surrogate("rectangle"),
) -> torch.Tensor:
    """Loop of :func:`lif_step` over the leading time axis; ``(T, ...) -> spikes (T, ...)``."""
    membrane = torch.zeros_like(current_seq[0])
    spikes = torch.zeros_like(current_seq[0])
    spikes_seq = []
    for current in current_seq:
        membrane, spikes = lif_step(membrane, spikes, current, tau, v_threshold, surrogate)
        spikes_seq.append(spikes)
    return torch.stack(spikes_seq)


def lif_step_inference(
    current: torch.Tensor,
    state: Optional[Tuple[torch.Tensor, torch.Tensor]],
    tau: float = TAU,
    v_threshold: float = V_THRESHOLD,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One LIF update without autograd, with the fused op's exact arithmetic, for stepping a
    network one time step at a time. ``state`` is ``(u_{t-1}, o_{t-1})`` or None at t = 0;
    returns ``(u_t, o_t)``, the next state."""
    if state is None:
        membrane = current.clone()
    else:
        membrane = torch.add(current, state[0].masked_fill(state[1].bool(), 0.0), alpha=tau)
    return membrane, torch.gt(membrane, v_threshold).to(current.dtype)


def lif_forward_sweep(
    current_seq: torch.Tensor,
    tau: float,
    v_threshold: float,
    keep_seq: torch.Tensor,
    membrane_seq: Optional[torch.Tensor] = None,
) -> None:
    """The LIF recurrence over the leading time axis, outside autograd, two ops per step.

    Writes ``keep_t = 1[u_t <= V_th]`` (``1 - o_t``) into ``keep_seq``; with ``membrane_seq`` given
    also every ``u_t`` (``membrane_seq`` may be ``current_seq`` itself: step t + 1 reads ``I_{t+1}``
    before writing ``u_{t+1}`` over it). ``u_t = I_t + tau * u_{t-1} * keep_{t-1}`` is the same
    arithmetic as the reference (``tau * u * (1 - o)``; the product with 0/1 is exact).
    """
    steps = current_seq.shape[0]
    if membrane_seq is None:
        membrane = current_seq[0].clone()
        spare = torch.empty_like(membrane) if steps > 1 else None
    else:
        membrane = membrane_seq[0]
        if membrane.data_ptr() != current_seq[0].data_ptr():
            membrane.copy_(current_seq[0])
    for t in range(steps):
        torch.le(membrane, v_threshold, out=keep_seq[t])
        if t + 1 == steps:
            break
        if membrane_seq is None:
            assert spare is not None  # allocated above whenever there is a next step
            nxt, spare = spare, membrane
        else:
            nxt = membrane_seq[t + 1]
        torch.addcmul(current_seq[t + 1], membrane, keep_seq[t], value=tau, out=nxt)
        membrane = nxt


def lif_backward_sweep(
    grad_spikes_seq: torch.Tensor,
    membrane_seq: torch.Tensor,
    keep_seq: torch.Tensor,
    tau: float,
    surrogate: SurrogateFn,
) -> torch.Tensor:
    """The reverse-time recursion, overwriting ``membrane_seq`` with dL/dI (returned)::

        g_o_t   = dL/do_t - tau * u_t * g_u_{t+1}                 # o_t resets u_{t+1}
        g_u_t   = g_o_t * surrogate(u_t) + tau * keep_t * g_u_{t+1}
        dL/dI_t = g_u_t

    Step t reads ``u_t`` before writing ``g_u_t`` over it, so no second buffer of size T is needed.
    """
    from .surrogate import rectangle

    grad_next = None
    for t in range(membrane_seq.shape[0] - 1, -1, -1):
        membrane = membrane_seq[t]
        if grad_next is None:
            grad_spikes = grad_spikes_seq[t].clone()
        else:
            grad_spikes = torch.addcmul(grad_spikes_seq[t], membrane, grad_next, value=-tau)
        if surrogate is rectangle:  # 1[|u| < 0.5]: zero the rest in place
            grad_spikes.masked_fill_(membrane.abs() >= 0.5, 0.0)
        else:
            grad_spikes.mul_(surrogate(membrane))
        if grad_next is None:
            membrane.copy_(grad_spikes)
        else:
            torch.addcmul(grad_spikes, keep_seq[t], grad_next, value=tau, out=membrane)
        grad_next = membrane
    return membrane_seq


class _FusedMultiStepLIF(torch.autograd.Function):
    """Multi-step LIF over the leading time axis: :func:`lif_forward_sweep` forward (no per-step
    graph nodes), :func:`lif_backward_sweep` backward (one reverse-time pass, O(T) traffic)."""

    @staticmethod
    def forward(ctx, current_seq, tau, v_threshold, surrogate):
        membrane_seq = torch.empty_like(current_seq)
        keep_seq = torch.empty_like(current_seq)
        lif_forward_sweep(current_seq, tau, v_threshold, keep_seq, membrane_seq)
        spikes_seq = torch.rsub(keep_seq, 1.0)
        ctx.save_for_backward(membrane_seq, keep_seq)
        ctx.tau = tau
        ctx.surrogate = surrogate
        ctx.mark_non_differentiable(membrane_seq)
        return spikes_seq, membrane_seq

    @staticmethod
    def backward(ctx, grad_spikes_seq, _grad_membrane_seq):
        membrane_seq, keep_seq = ctx.saved_tensors
        grad = lif_backward_sweep(grad_spikes_seq, membrane_seq.clone(), keep_seq, ctx.tau, ctx.surrogate)
        return grad, None, None, None


def lif_multistep(
    current_seq: torch.Tensor,
    tau: float = TAU,
    v_threshold: float = V_THRESHOLD,
    surrogate: SurrogateFn = get_surrogate("rectangle"),
    return_membrane: bool = False,
):
    """Fused multi-step LIF: input currents ``(T, ...)`` -> spikes ``(T, ...)`` (0/1 floats).

    With ``return_membrane=True`` also returns the membrane potentials ``u_t`` (no gradient).
    """
    if current_seq.dim() < 1 or current_seq.shape[0] < 1:
        raise ValueError(
            f"expected currents with a leading time axis of length >= 1, got shape {tuple(current_seq.shape)}"
        )
    spikes_seq, membrane_seq = _FusedMultiStepLIF.apply(current_seq, tau, v_threshold, surrogate)
    return (spikes_seq, membrane_seq) if return_membrane else spikes_seq


class LIF(nn.Module):
    """Multi-step LIF neuron module on time-first input ``(T, ...)``; holds no parameters."""

    def __init__(
        self, tau: float = TAU, v_threshold: float = V_THRESHOLD, surrogate: str = "rectangle", backend: str = "fused"
    ):
        super().__init__()
        if backend not in ("fused", "reference"):
            raise ValueError(f"unknown LIF backend {backend!r}; expected 'fused' or 'reference'")
        self.tau = float(tau)
        self.v_threshold = float(v_threshold)
        self.surrogate_name = surrogate
        self.surrogate = get_surrogate(surrogate)
        self.backend = backend

    def forward(self, current_seq: torch.Tensor) -> torch.Tensor:
        if self.backend == "reference":
            return lif_multistep_reference(current_seq, self.tau, self.v_threshold, self.surrogate)
        return lif_multistep(current_seq, self.tau, self.v_threshold, self.surrogate)

    def extra_repr(self) -> str:
        return (
            f"tau={self.tau}, v_threshold={self.v_threshold}, surrogate={self.surrogate_name}, backend={self.backend}"
        )
