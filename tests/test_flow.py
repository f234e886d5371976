"""Invariant 5: flow-matching schedule and sampler."""

import torch

from fastwam.model import flow


def test_shift_round_trips_and_keeps_endpoints():
    u = torch.linspace(0, 1, 101, dtype=torch.float64)
    for s in (1.0, 3.0, 5.0, 0.5):
        sigma = flow.shift_sigma(u, s)
        assert torch.allclose(flow.unshift_sigma(sigma, s), u, atol=1e-12)
        assert sigma[0] == 0 and sigma[-1] == 1
        assert (sigma[1:] > sigma[:-1]).all()
    assert torch.allclose(flow.shift_sigma(u, 1.0), u)
    assert flow.shift_sigma(torch.tensor(0.5), 5.0) > 0.5  # shift > 1 spends more time at high noise


def test_euler_sampler_reproduces_data_for_exact_velocity_field():
    torch.manual_seed(0)
    x0 = torch.randn(4, 6, 3)

    def exact_velocity(x, sigma):  # along straight paths, v = noise - x0 = (x - x0) / sigma
        return (x - x0) / sigma

    for steps, shift in [(1, 1.0), (10, 5.0), (7, 3.0)]:
        sigmas = flow.sampling_sigmas(steps, shift)
        assert sigmas[0] == 1 and sigmas[-1] == 0 and len(sigmas) == steps + 1
        x = torch.randn_like(x0)
        for s, s_next in zip(sigmas[:-1], sigmas[1:]):
            x = flow.euler_step(x, exact_velocity(x, s), s, s_next)
        assert (x - x0).abs().max() < 1e-5


def test_noising_and_velocity_convention():
    x0, noise = torch.randn(3, 5), torch.randn(3, 5)
    sigma = torch.tensor([0.0, 0.5, 1.0])
    xs = flow.add_noise(x0, noise, sigma)
    assert torch.allclose(xs[0], x0[0]) and torch.allclose(xs[2], noise[2])
    assert torch.allclose(xs[1], 0.5 * x0[1] + 0.5 * noise[1])
    # d x_sigma / d sigma is the velocity target
    eps = 1e-3
    dx = (flow.add_noise(x0, noise, sigma + eps) - xs) / eps
    assert torch.allclose(dx, flow.velocity_target(x0, noise), atol=1e-3)


def test_training_sigmas_follow_the_shift():
    g = torch.Generator().manual_seed(0)
    sig = flow.sample_sigma(20000, 5.0, generator=g)
    assert sig.min() >= 0 and sig.max() <= 1
    # median of shift(u) is shift(0.5) = 5/6
    assert abs(sig.median().item() - 5 / 6) < 0.01


def test_data_prediction_converts_to_the_velocity():
    x0, noise = torch.randn(4, 3, 5), torch.randn(4, 3, 5)
    sigma = torch.tensor([0.05, 0.3, 0.7, 1.0])
    xs = flow.add_noise(x0, noise, sigma)
    assert torch.allclose(flow.data_to_velocity(xs, x0, sigma), flow.velocity_target(x0, noise), atol=1e-5)
    # below min_sigma the division is clamped instead of exploding
    tiny = flow.data_to_velocity(x0 + 1.0, x0, torch.full((4,), 1e-6), min_sigma=0.05)
    assert torch.allclose(tiny, torch.full_like(tiny, 20.0))
