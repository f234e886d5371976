"""benchmarks/top_k_protocol.py: the exact expectation of a best-k-of-K success rate."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

_spec = importlib.util.spec_from_file_location(
    "top_k_protocol", Path(__file__).parents[1] / "benchmarks" / "top_k_protocol.py")
top_k = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(top_k)


@pytest.mark.parametrize("p", [0.0, 0.22, 0.7, 1.0])
def test_averaging_every_evaluation_reads_the_true_rate(p):
    assert top_k.expected_best_k(p, episodes=20, evaluations=15, k=15) == pytest.approx(p, abs=1e-12)


@pytest.mark.parametrize("p", [0.2, 0.7])
def test_best_5_of_15_matches_simulated_evaluations(p):
    rates = np.random.default_rng(0).binomial(20, p, size=(100_000, 15)) / 20
    simulated = np.sort(rates, axis=1)[:, -5:].mean(axis=1).mean()
    exact = top_k.expected_best_k(p, episodes=20, evaluations=15, k=5)
    assert exact == pytest.approx(simulated, abs=2e-3)
    assert exact > p + 0.05  # the selection is worth several points at these rates


def test_rate_reading_as_inverts_the_expectation():
    reading = top_k.expected_best_k(0.3, episodes=20, evaluations=15, k=5)
    assert top_k.rate_reading_as(reading, episodes=20, evaluations=15, k=5) == pytest.approx(0.3, abs=1e-6)


def test_rejects_a_rate_outside_zero_one_and_k_above_evaluations():
    with pytest.raises(ValueError, match="got 1.5"):
        top_k.expected_best_k(1.5, episodes=20, evaluations=15, k=5)
    with pytest.raises(ValueError, match="k=16, evaluations=15"):
        top_k.expected_best_k(0.5, episodes=20, evaluations=15, k=16)
