"""benchmarks/layout_coverage.py: pooling episodes per layout and the variance the layout explains."""

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "layout_coverage", Path(__file__).parents[1] / "benchmarks" / "layout_coverage.py")
coverage = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(coverage)


def run(successes, variations=(10, 11, 10, 11), training=(0, 1, 2), seed=0):
    return {"split": "test", "benchmark_seed": seed, "tasks": {"reach-v3": {
        "variations": list(variations), "episode_success": list(successes), "training_variations": list(training)}}}


def test_eta_squared_is_one_when_the_layout_decides_and_zero_when_it_does_not():
    assert coverage.eta_squared([[True, True], [False, False]]) == pytest.approx(1.0)
    assert coverage.eta_squared([[True, False], [True, False]]) == pytest.approx(0.0)
    assert coverage.eta_squared([[True, True, True], [True, False, False]]) == pytest.approx(0.5)


def test_summary_pools_runs_per_layout_and_measures_distance_to_the_demonstrations():
    runs = [run([True, False, True, False]), run([True, False, False, False])]
    assert coverage.pooled_outcomes(runs, "reach-v3") == {10: [True, True, True, False], 11: [False, False, False, False]}
    s = coverage.task_summary(runs, "reach-v3")
    assert (s["episodes"], s["layouts"], s["never"], s["always"]) == (8, 2, 1, 0)
    assert s["rate"] == [0.75, 0.0] and len(s["distance"]) == 2 and min(s["distance"]) > 0


def test_runs_on_other_demonstrations_or_layouts_are_refused(tmp_path):
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    with pytest.raises(SystemExit, match="b.json: task reach-v3 missing or trained on other variations"):
        coverage.check_comparable([run([True] * 4), run([True] * 4, training=(0, 1, 3))], paths)
    with pytest.raises(SystemExit, match="b.json: split 'test', benchmark seed 7"):
        coverage.check_comparable([run([True] * 4), run([True] * 4, seed=7)], paths)
