"""Flow matching, stated once.

Convention: sigma = 0 is data, sigma = 1 is noise.
    x_sigma = (1 - sigma) * x0 + sigma * noise
    velocity v = dx/dsigma = noise - x0            (the network predicts v)
Training draws u ~ U(0, 1) and uses sigma = shift(u) with shift(u) = s*u / (1 + (s-1)*u),
which spends more time at high noise for s > 1. A network may instead predict the clean data x0
(useful when a token holds more values than the network's width, as with large pixel patches);
``data_to_velocity`` turns that into the velocity, and the loss stays on the velocity. Sampling integrates Euler steps on u from 1 to 0:
    x <- x + (sigma_next - sigma) * v.

Few-step students (``WAM.distillation_loss``) are trained on straight paths between a noise and
the teacher's sample from it (reflow, Liu et al. 2023), at the sigmas their samplers visit
(``student_sigmas``), so that the Euler steps above land on the teacher's sample in 1 or 2 steps.
"""

from __future__ import annotations

import torch


def shift_sigma(u: torch.Tensor, shift: float) -> torch.Tensor:
    """u in [0, 1] -> sigma = s*u / (1 + (s-1)*u)."""
    return shift * u / (1 + (shift - 1) * u)


def unshift_sigma(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """Inverse of ``shift_sigma``: sigma -> u = sigma / (s - (s-1)*sigma)."""
    return sigma / (shift - (shift - 1) * sigma)


def sample_sigma(batch: int, shift: float, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training timesteps (B,): sigma = shift(u), u ~ U(0, 1)."""
    u = torch.rand(batch, device=device, generator=generator)
    return shift_sigma(u, shift)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x_sigma = (1 - sigma) x0 + sigma noise; sigma (B,) broadcasts over the other axes."""
    s = sigma.reshape(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return (1 - s) * x0 + s * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The regression target v = noise - x0."""
    return noise - x0


def data_to_velocity(x: torch.Tensor, x0_pred: torch.Tensor, sigma: torch.Tensor, min_sigma: float = 0.05) -> torch.Tensor:
    """Velocity of x_sigma implied by a clean-data prediction: v = (x - x0) / sigma, sigma clamped below."""
    s = sigma.clamp(min=min_sigma).reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    return (x - x0_pred) / s


def sampling_sigmas(steps: int, shift: float) -> list[float]:
    """steps + 1 sigmas from 1 to 0: shift applied to u = linspace(1, 0). Python floats, so a
    compiled sampling loop unrolls over constants."""
    return [shift_sigma(1.0 - i / steps, shift) for i in range(steps + 1)]


def euler_step(x: torch.Tensor, velocity: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """One Euler step from sigma to sigma_next."""
    return x + (sigma_next - sigma) * velocity


def student_sigmas(steps: int, shift: float) -> list[float]:
    """The sigmas an Euler sampler of 1, 2, ..., ``steps`` steps evaluates the network at (sigma = 0
    excluded), each once: where a student trained for ``steps`` is taught, so it samples with any
    count up to its own."""
    return sorted({round(s, 12) for n in range(1, steps + 1) for s in sampling_sigmas(n, shift)[:-1]}, reverse=True)
