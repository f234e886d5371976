"""Real-time chunking (Black, Galliker & Levine 2025): a new action chunk that continues the previous one.

A robot keeps executing chunk k while chunk k + 1 is computed from a newer observation. The
first ``frozen`` actions of the new chunk execute during that inference delay from chunk k, so
the new chunk must agree with them; the rest of the overlap should bend away smoothly, not jump.
The action sampler is guided (PiGDM-style inpainting, training-free) toward ``target`` Y, the
previous chunk's actions at the new chunk's times, with per-step weights (``guidance_weights``):

    W_i = 1                                         i < frozen           (they execute anyway)
    W_i = c_i (e^c_i - 1) / (e - 1),  c_i = (n - i) / (n - frozen + 1)    frozen <= i < n
    W_i = 0                                         i >= n               (past the previous chunk)

with n = the overlap (len(Y)). In this library's flow convention (x_s = (1 - s) x0 + s eps,
v = eps - x0, s from 1 to 0) the clean estimate is x0_hat = x - s v(x), and each Euler step uses

    v_guided = v - c(s) J^T [W (Y - x0_hat)],   J = d x0_hat / d x,
    c(s) = min(max_weight, ((1 - s)^2 + s^2) / ((1 - s) s))

(the paper's min(beta, (1 - tau) / (tau r_tau^2)) with tau = 1 - s); one vector-Jacobian product
of the action expert per step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class ChunkGuide:
    """What a new chunk is guided toward: target (B, n, A) normalized actions at its first n steps,
    weights (n,) (``guidance_weights``), and the guidance weight's cap (the paper's beta, ~10)."""

    target: torch.Tensor
    weights: torch.Tensor
    max_weight: float = 10.0

    def __post_init__(self):
        if self.target.dim() != 3 or self.weights.shape != self.target.shape[1:2]:
            raise ValueError(f"chunk guide: expected target (B, n, A) and weights (n,), got "
                             f"{tuple(self.target.shape)} and {tuple(self.weights.shape)}")
        if not (math.isfinite(self.max_weight) and self.max_weight > 0):
            raise ValueError(f"chunk guide: max_weight must be a finite number > 0, got {self.max_weight}")


def guidance_weights(overlap: int, frozen: int) -> torch.Tensor:
    """(overlap,) weights: 1 on the ``frozen`` first steps, then decaying exponentially toward 0."""
    if not 0 <= frozen <= overlap:
        raise ValueError(f"real-time chunking: expected 0 <= frozen <= overlap, got frozen {frozen}, overlap {overlap}")
    i = torch.arange(overlap, dtype=torch.float32)
    c = (overlap - i) / (overlap - frozen + 1)
    soft = c * torch.expm1(c) / math.expm1(1.0)
    return torch.where(i < frozen, torch.ones_like(soft), soft)


def guidance_scale(sigma: float, max_weight: float) -> float:
    """c(s) = min(max_weight, ((1 - s)^2 + s^2) / ((1 - s) s)); the cap where that is unbounded (s = 0, 1)."""
    if sigma <= 0 or sigma >= 1:
        return max_weight
    return min(max_weight, ((1 - sigma) ** 2 + sigma ** 2) / ((1 - sigma) * sigma))


def guided_velocity(velocity, x: torch.Tensor, sigma: float, guide: ChunkGuide) -> torch.Tensor:
    """``velocity(x)`` corrected toward the guide: x (B, S, A) -> (B, S, A), no graph kept."""
    n = guide.target.shape[1]
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        v = velocity(x)
        x0 = x - sigma * v
        error = torch.zeros_like(x0)
        error[:, :n] = guide.weights[None, :, None] * (guide.target - x0[:, :n])
        (correction,) = torch.autograd.grad(x0, x, grad_outputs=error.detach())
    return v.detach() - guidance_scale(sigma, guide.max_weight) * correction
