"""benchmarks/paired_comparison.py: the paired difference of two runs' success rates on the same episodes."""

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

_spec = importlib.util.spec_from_file_location(
    "paired_comparison", Path(__file__).parents[1] / "benchmarks" / "paired_comparison.py")
paired = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(paired)


def run(successes, variations=(10, 11, 12, 13), seed=0, split="test"):
    return {"split": split, "benchmark_seed": 0, "seed": seed, "episodes_per_task": len(successes), "max_steps": 200,
            "tasks": {"reach-v3": {"variations": list(variations), "episode_success": list(successes)}}}


def test_pairing_narrows_the_interval_when_outcomes_agree():
    rng = np.random.default_rng(0)
    layout_easy = rng.random(400) < 0.5  # the layout decides most outcomes
    a = (layout_easy ^ (rng.random(400) < 0.05)).astype(float)
    b = (layout_easy ^ (rng.random(400) < 0.05)).astype(float)
    r = paired.paired_difference(a, b)
    assert r["difference"] == pytest.approx(b.mean() - a.mean())
    d = b - a
    assert r["paired_half"] == pytest.approx(1.959964 * d.std(ddof=1) / 20)
    assert r["paired_half"] < 0.5 * r["unpaired_half"] and r["correlation"] > 0.7
    independent = paired.paired_difference(a, (rng.random(400) < 0.5).astype(float))
    assert independent["paired_half"] == pytest.approx(independent["unpaired_half"], rel=0.15)
    with pytest.raises(ValueError, match=r"expected two \(N,\) arrays with N >= 2, got \(3,\) and \(4,\)"):
        paired.paired_difference(np.zeros(3), np.zeros(4))


def test_runs_on_other_episodes_are_refused(tmp_path):
    ref, ref_path, path = run([1, 0, 1, 0]), tmp_path / "a.json", tmp_path / "b.json"
    with pytest.raises(SystemExit, match="b.json: tasks.reach-v3.variations differ"):
        paired.check_same_episodes(ref, run([1, 0, 1, 0], variations=(10, 11, 12, 14)), ref_path, path)
    with pytest.raises(SystemExit, match="b.json: seed 3, expected 0"):
        paired.check_same_episodes(ref, run([1, 0, 1, 0], seed=3), ref_path, path)
    with pytest.raises(SystemExit, match="b.json: split 'validation', expected 'test'"):
        paired.check_same_episodes(ref, run([1, 0, 1, 0], split="validation"), ref_path, path)
    legacy = run([1, 1, 1, 0])
    del legacy["split"]  # written before --split existed: a test run
    paired.check_same_episodes(ref, legacy, ref_path, path)


def test_command_prints_each_run_against_the_reference(tmp_path, capsys):
    files = []
    for name, outcomes in [("ref", [1, 0, 1, 0]), ("better", [1, 1, 1, 0])]:
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps(run(outcomes)))
    paired.main([str(f) for f in files])
    out = capsys.readouterr().out
    assert "mean 50.0 % over 4 episodes" in out
    assert "75.0%" in out and "+25.0" in out


def test_a_retrained_checkpoint_under_the_same_path_is_named(tmp_path, capsys):
    files = []
    for name, weights in [("ref", "a" * 64), ("same", "a" * 64), ("retrained", "b" * 64)]:
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps({**run([1, 0, 1, 0]), "checkpoint": "runs/x/step-1", "weights_sha256": weights}))
    paired.main([str(f) for f in files])
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("NOTE")]
    assert len(notes) == 1 and "retrained.json: checkpoint runs/x/step-1 holds other weights" in notes[0]


_spec_sw = importlib.util.spec_from_file_location(
    "same_weights", Path(__file__).parents[1] / "benchmarks" / "same_weights.py")
same_weights = importlib.util.module_from_spec(_spec_sw)
_spec_sw.loader.exec_module(same_weights)


def test_a_queue_refuses_rows_of_other_weights(tmp_path, capsys):
    step = tmp_path / "run" / "checkpoints" / "step-0000010"
    step.mkdir(parents=True)
    (step / "model.safetensors").write_bytes(b"weights of the run")
    ref = tmp_path / "sync.json"
    assert same_weights.main([str(ref), str(tmp_path / "run")]) == 0  # no rows yet: nothing to mix
    ref.write_text(json.dumps({"weights_sha256": hashlib.sha256(b"weights of the run").hexdigest()}))
    assert same_weights.main([str(ref), str(tmp_path / "run")]) == 0
    ref.write_text(json.dumps({"weights_sha256": hashlib.sha256(b"the run before retraining").hexdigest()}))
    assert same_weights.main([str(ref), str(tmp_path / "run")]) == 1
    assert "sync.json: measured weights_sha256" in capsys.readouterr().err
    ref.write_text(json.dumps({"mean_success_rate": 0.5}))
    assert same_weights.main([str(ref), str(tmp_path / "run")]) == 1
    assert "records no weights_sha256" in capsys.readouterr().err
    ref.write_text("{")
    assert same_weights.main([str(ref), str(tmp_path / "run")]) == 1
    assert "sync.json: not an eval JSON" in capsys.readouterr().err


def test_libero_failure_records_pair_by_layout(tmp_path, capsys):
    def record(outcomes, layouts=("fresh:1000000", "fresh:1000001")):
        return {"split": "validation", "episodes_per_task": 2, "episodes": [
            {"task": task, "layout": layout, "outcome": outcome}
            for task, row in zip(("soup", "milk"), outcomes) for layout, outcome in zip(layouts, row)]}

    files = [tmp_path / "old.json", tmp_path / "new.json", tmp_path / "moved.json", tmp_path / "cut.json"]
    files[0].write_text(json.dumps(record([("success", "no_lift"), ("placed_elsewhere", "success")])))
    files[1].write_text(json.dumps(record([("success", "success"), ("success", "success")])))
    paired.main([str(f) for f in files[:2]])
    out = capsys.readouterr().out
    assert "mean 50.0 % over 4 episodes (validation split)" in out and "100.0%" in out and "+50.0" in out
    files[2].write_text(json.dumps(record([("success",) * 2] * 2, layouts=("fresh:1000000", "fresh:1000002"))))
    with pytest.raises(SystemExit, match="moved.json: tasks.soup.variations differ"):
        paired.main([str(files[0]), str(files[2])])
    files[3].write_text(json.dumps({"episodes": [{"task": "soup", "outcome": "success"}]}))
    with pytest.raises(SystemExit, match=r"cut.json: episodes\[0\]: expected task, layout and outcome"):
        paired.main([str(files[0]), str(files[3])])


def test_unreadable_files_are_named(tmp_path):
    good = tmp_path / "ref.json"
    good.write_text(json.dumps(run([1, 0, 1, 0])))
    with pytest.raises(SystemExit, match=r"missing.json: cannot read \(No such file or directory\)"):
        paired.main([str(good), str(tmp_path / "missing.json")])
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(SystemExit, match="bad.json: not JSON"):
        paired.main([str(good), str(tmp_path / "bad.json")])
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(SystemExit, match="list.json: expected an eval JSON with a 'tasks' object"):
        paired.main([str(good), str(tmp_path / "list.json")])
